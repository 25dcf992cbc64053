#!/usr/bin/env bash
# The physics stack's one prepared GPU check (about 5 minutes on one H200; nothing is installed, the machine's own
# python3 with CUDA PyTorch, numpy, scipy and rich is used):
#   1. tests/test_physics_device.py: GPU training steps (PI-SC, PI-HC, MoE, MoE with interface rows, heat,
#      Navier-Stokes; float64) equal the CPU steps, and no tensor is created off the inputs' device;
#   2. benchmarks/pde_moe.py --device "$dev": PI-HC vs PI-HC-MoE time per training step and per inference at
#      1e2 / 1e3 / 1e4 points (41 x 256 grid, K = 1, 2, 4, 8), then 1e4 / 1e5 points on the paper's 101 x 1024 grid.
# Logs and the JSON tables go to $OUT (the device tool's folder) or ./pde_gpu_check.
#     bash benchmarks/pde_gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
out=${OUT:-pde_gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}  # DEVICE=cpu runs the same steps on the CPU (a dry run of this script)
nvidia-smi -L 2>&1 | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$out/gpu.txt"
rc=0
"$py" -m pytest -p no:cacheprovider -q tests/test_physics_device.py 2>&1 | tee "$out/tests.log" || rc=1
"$py" benchmarks/pde_moe.py --sections timing --device "$dev" --points 100,1000,10000 --experts 1,2,4,8 --json \
    2>&1 | tee "$out/timing_41x256.log" || rc=1
"$py" benchmarks/pde_moe.py --sections timing --device "$dev" --grid 101x1024 --points 10000,100000 --experts 1,4 \
    --json 2>&1 | tee "$out/timing_101x1024.log" || rc=1
exit $rc
