"""Write ``nn.Sequential`` models to ONNX with ``onnx.helper`` (no torch exporter, no onnxscript).

Supports Linear, Conv2d, ReLU, Sigmoid, Tanh, Flatten, MaxPool2d, AvgPool2d, BatchNorm1d/2d, Dropout.
Used for the shipped examples and for checking our ONNX interpreter against onnxruntime.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper


def _pair(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def _layers(model: nn.Sequential) -> list[nn.Module]:
    """The leaf layers of ``model``, nested ``nn.Sequential`` blocks flattened in order."""
    out: list[nn.Module] = []
    for m in model:
        out.extend(_layers(m) if isinstance(m, nn.Sequential) else [m])
    return out


_DOUBLE_LAYERS = (nn.Linear, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Flatten, nn.Dropout, nn.Identity)


def sequential_to_onnx(model: nn.Sequential, input_shape: Sequence[int], opset: int = 13) -> onnx.ModelProto:
    """ONNX graph computing ``model`` on inputs of shape ``[1, *input_shape]``; nested ``nn.Sequential`` blocks are
    flattened. A float64 model of layers onnxruntime runs in double (Linear, activations, Flatten) stays float64
    (rounding its weights would make the file another network); anything else is written in float32 (onnxruntime
    has no double Conv, pooling or BatchNorm kernels)."""
    nodes, inits = [], []
    cur = "input"
    counter = 0
    first = next(model.parameters(), None)
    double = (first is not None and first.dtype == torch.float64
              and all(isinstance(m, _DOUBLE_LAYERS) for m in _layers(model)))
    np_dtype, onnx_dtype = (np.float64, TensorProto.DOUBLE) if double else (np.float32, TensorProto.FLOAT)

    def const(name: str, t: torch.Tensor) -> str:
        inits.append(numpy_helper.from_array(t.detach().cpu().numpy().astype(np_dtype), name))
        return name

    for m in _layers(model):
        counter += 1
        out = f"t{counter}"
        if isinstance(m, nn.Linear):
            w = const(f"W{counter}", m.weight)
            ins = [cur, w] + ([const(f"b{counter}", m.bias)] if m.bias is not None else [])
            nodes.append(helper.make_node("Gemm", ins, [out], transB=1))
        elif isinstance(m, nn.Conv2d):
            w = const(f"W{counter}", m.weight)
            ins = [cur, w] + ([const(f"b{counter}", m.bias)] if m.bias is not None else [])
            p = _pair(m.padding)
            nodes.append(helper.make_node("Conv", ins, [out], strides=_pair(m.stride), pads=p + p,
                                          dilations=_pair(m.dilation), group=m.groups,
                                          kernel_shape=list(m.weight.shape[-2:])))
        elif isinstance(m, nn.ReLU | nn.Sigmoid | nn.Tanh):
            nodes.append(helper.make_node({nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh"}[type(m)],
                                          [cur], [out]))
        elif isinstance(m, nn.Flatten):
            nodes.append(helper.make_node("Flatten", [cur], [out], axis=1))
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
            k = _pair(m.kernel_size)
            p = _pair(m.padding)
            kw = dict(kernel_shape=k, strides=_pair(m.stride or k), pads=p + p)
            if isinstance(m, nn.AvgPool2d):
                kw["count_include_pad"] = int(m.count_include_pad)
            nodes.append(helper.make_node("MaxPool" if isinstance(m, nn.MaxPool2d) else "AveragePool",
                                          [cur], [out], **kw))
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            ins = [cur] + [const(f"{k}{counter}", t) for k, t in (
                ("s", m.weight), ("b", m.bias), ("m", m.running_mean), ("v", m.running_var))]
            nodes.append(helper.make_node("BatchNormalization", ins, [out], epsilon=m.eps))
        elif isinstance(m, nn.Dropout | nn.Identity):
            nodes.append(helper.make_node("Identity", [cur], [out]))
        else:
            raise TypeError(f"cannot export {type(m).__name__}")
        cur = out
    with torch.no_grad():  # a dry run in the model's own dtype and device gives the output shape
        probe = torch.zeros(1, *input_shape, dtype=first.dtype if first is not None else torch.float32,
                            device=first.device if first is not None else "cpu")
        out_shape = list(model(probe).shape)
    graph = helper.make_graph(
        nodes, "clarke_model",
        [helper.make_tensor_value_info("input", onnx_dtype, [1, *input_shape])],
        [helper.make_tensor_value_info(cur, onnx_dtype, out_shape)], inits)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                    producer_name="clarke")
    model_proto.ir_version = min(model_proto.ir_version, 8)
    onnx.checker.check_model(model_proto)
    return model_proto


def save_sequential(model: nn.Sequential, input_shape: Sequence[int], path: str | os.PathLike,
                    opset: int = 13) -> None:
    onnx.save(sequential_to_onnx(model, input_shape, opset), str(path))
