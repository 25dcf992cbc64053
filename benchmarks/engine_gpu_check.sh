#!/usr/bin/env bash
# The bound engine's one prepared GPU check (a few minutes on one H100/H200; nothing is installed, the machine's own
# python3 with CUDA PyTorch, numpy, onnx, onnxruntime and rich is used):
#   1. tests/test_engine_device.py: on the GPU, IBP / CROWN-IBP / CROWN / alpha-CROWN bounds (float64 and the
#      model's float32, TF32 off) contain float64 evaluations at sampled points and agree with the CPU's, on random
#      ONNX networks of every op family, the new ops and convolution stacks (patch form); and no tensor is created
#      off the inputs' device (the "meta" check);
#   2. benchmarks/bounds_speed.py on the GPU and on the CPU (Clarke only): time and width per input;
#   3. `clarke verify --device` on 12 ACAS Xu instances (from ../shared/data when present) and `clarke lipschitz
#      --device --method bab` on the example MLP, on the GPU and on the CPU: verdicts (0 wrong) and times.
# Logs go to $OUT (the device tool's folder) or ./engine_gpu_check.
#     bash benchmarks/engine_gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
out=${OUT:-engine_gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of this script on the CPU
nvidia-smi -L 2>&1 | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$out/gpu.txt"
rc=0
"$py" -m pytest -p no:cacheprovider -q tests/test_engine_device.py 2>&1 | tee "$out/tests.log" || rc=1
for d in "$dev" cpu; do
  "$py" benchmarks/bounds_speed.py --no-peer --device "$d" --inputs 3 --models mnist_cnn,cifar_wide,cifar_deep \
      --json 2>&1 | tee "$out/bounds_speed_$d.log" || rc=1
done
acas=../shared/data/vnncomp/acasxu/instances.csv
for d in "$dev" cpu; do
  if [ -f "$acas" ]; then
    "$py" -m verify.cli.main verify --instances "$acas" --limit 12 --device "$d" --report "$out/verify_$d.csv" \
        --json 2>&1 | tail -3 | tee "$out/verify_$d.log" || rc=1
  fi
  "$py" -m verify.cli.main lipschitz examples/mlp_8x32x32x3.onnx --center examples/x0.npy --eps 0.1 \
      --method bab --timeout 10 --device "$d" --json 2>&1 | tee "$out/lipschitz_$d.log" || rc=1
done
exit $rc
