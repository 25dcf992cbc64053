"""Float64 references for soundness tests: an independent float64 interpreter of ONNX models (float32 weights
are exact in float64), and random float32 ONNX networks covering every supported op."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper


class Reference:
    """``f(x)`` of an ONNX model in float64 for float64 points ``[N, n]``: an independent interpreter (torch
    functional ops in float64, ONNX semantics: ``x / c`` divides, BatchNorm is not folded) for the ops the
    random networks below use; onnxruntime has no float64 Conv."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.consts = {i.name: torch.from_numpy(numpy_helper.to_array(i).astype(np.float64)) for i in g.initializer}
        inp = next(i for i in g.input if i.name not in self.consts)
        self.name = inp.name
        self.shape = [max(1, d.dim_value) for d in inp.type.tensor_type.shape.dim]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        return np.stack([self._run(xi.reshape(self.shape)).reshape(-1).numpy() for xi in x])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        v = dict(self.consts)
        v[self.name] = x
        for node in self.model.graph.node:
            a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
            i = [v[n] for n in node.input]
            op = node.op_type
            if op in ("Add", "Sub", "Mul", "Div"):
                out = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](i[0], i[1])
            elif op == "MatMul":
                out = i[0] @ i[1]
            elif op == "Gemm":
                A = i[0].T if a.get("transA", 0) else i[0]
                B = i[1].T if a.get("transB", 0) else i[1]
                out = a.get("alpha", 1.0) * (A @ B) + (a.get("beta", 1.0) * i[2] if len(i) > 2 else 0)
            elif op == "Conv":
                p = a.get("pads", [0, 0, 0, 0])
                xin = F.pad(i[0], (p[1], p[3], p[0], p[2]))
                out = F.conv2d(xin, i[1], i[2] if len(i) > 2 else None, a.get("strides", [1, 1]))
            elif op == "BatchNormalization":
                s_, b_, m_, var = (t.reshape(1, -1, 1, 1) for t in i[1:5])
                out = s_ * (i[0] - m_) / torch.sqrt(var + float(np.float32(a.get("epsilon", 1e-5)))) + b_
            elif op in ("Relu", "Sigmoid", "Tanh"):
                out = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh}[op](i[0])
            elif op == "MaxPool":
                out = F.max_pool2d(i[0], a["kernel_shape"], a.get("strides", [1, 1]))
            elif op == "AveragePool":
                out = F.avg_pool2d(i[0], a["kernel_shape"], a.get("strides", [1, 1]))
            elif op == "Pad":
                p = a["pads"]
                n = len(p) // 2
                torch_pads = [q for k in reversed(range(n)) for q in (p[k], p[k + n])]
                out = F.pad(i[0], torch_pads, value=a.get("value", 0.0))
            elif op == "Transpose":
                out = i[0].permute(*a["perm"])
            elif op == "Flatten":
                out = i[0].reshape(int(np.prod(i[0].shape[:a.get("axis", 1)])), -1)
            elif op == "Concat":
                out = torch.cat(i, dim=a["axis"])
            else:
                raise NotImplementedError(op)
            v[node.output[0]] = out
        return v[self.model.graph.output[0].name]


def _init(name: str, a) -> onnx.TensorProto:
    a = np.asarray(a)
    return numpy_helper.from_array(a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int64), name)


def random_onnx_network(seed: int) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """A random float32 network of one of four families, together using every op the frontend reads: Sub/Div by
    non-representable constants, Gemm with alpha/beta, MatMul, Add, Mul, Conv (symmetric and asymmetric pads),
    BatchNormalization, Relu/Sigmoid/Tanh, MaxPool/AveragePool, Pad, Transpose, Flatten/Reshape, Concat with a
    constant, residual Add of two variables. Returns the model and its input shape."""
    rng = np.random.default_rng(seed)
    act = ("Relu", "Sigmoid", "Tanh")[seed % 3]
    family = ("mlp", "cnn", "residual", "pooling")[(seed // 3) % 4]
    inits, nodes = [], []

    def w(name, *shape, scale=1.0):
        inits.append(_init(name, rng.normal(size=shape) * scale))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    if family in ("mlp", "residual"):
        d = int(rng.integers(2, 7))
        shape = (1, d)
        inits += [_init("mean", rng.normal(size=(1, d))), _init("std", rng.uniform(0.3, 3, (1, d)))]
        h = node("Div", [node("Sub", ["x", "mean"], "s0"), "std"], "s1")
        k = int(rng.integers(3, 10))
        h = node(act, [node("Gemm", [h, w("W1", k, d), w("b1", k)], "g1", transB=1, alpha=0.7, beta=1.3)], "a1")
        if family == "residual":
            z = node("Add", [node("MatMul", [h, w("W2", k, k)], "m2"), w("b2", k)], "z2")
            h = node(act, [node("Add", [h, z], "res")], "a2")
            inits.append(_init("cst", rng.normal(size=(1, 2))))
            h = node("Concat", [h, "cst"], "cat", axis=1)
            k += 2
        out = int(rng.integers(1, 4))
        y = node("Gemm", [h, w("W3", k, out), w("b3", out)], "y")
    else:
        c, side = int(rng.integers(1, 3)), int(rng.integers(5, 8))
        shape = (1, c, side, side)
        inits += [_init("mean", rng.normal(size=(1, c, 1, 1))), _init("std", rng.uniform(0.3, 3, (1, c, 1, 1)))]
        h = node("Div", [node("Sub", ["x", "mean"], "s0"), "std"], "s1")
        ch = int(rng.integers(2, 4))
        pads = [1, 0, 0, 1] if family == "pooling" else [1, 1, 1, 1]
        h = node("Conv", [h, w("K", ch, c, 3, 3), w("kb", ch)], "conv", pads=pads, kernel_shape=[3, 3])
        inits += [_init("bn_s", rng.uniform(0.5, 1.5, ch)), _init("bn_b", rng.normal(size=ch)),
                  _init("bn_m", rng.normal(size=ch)), _init("bn_v", rng.uniform(0.3, 2, ch))]
        h = node(act, [node("BatchNormalization", [h, "bn_s", "bn_b", "bn_m", "bn_v"], "bn", epsilon=1e-3)], "a1")
        if family == "pooling":
            h = node("MaxPool", [h], "mp", kernel_shape=[2, 2], strides=[1, 1])
            h = node("Pad", [h], "pd", pads=[0, 0, 1, 0, 0, 0, 0, 1], value=0.25)
            h = node("AveragePool", [h], "ap", kernel_shape=[2, 2], strides=[1, 1])
            h = node("Transpose", [h], "tr", perm=[0, 1, 3, 2])
        h = node("Flatten", [h], "fl", axis=1)
        inits.append(_init("k3", np.array([0.3])))
        h = node("Mul", [h, "k3"], "mul")
        import onnx.shape_inference as si
        probe = helper.make_model(helper.make_graph(nodes, "p", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, list(shape))], [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)],
            inits), opset_imports=[helper.make_opsetid("", 9)])
        dims = si.infer_shapes(probe).graph.output[0].type.tensor_type.shape.dim
        n = int(np.prod([d.dim_value for d in dims]))
        out = int(rng.integers(1, 4))
        y = node("Gemm", [h, w("W3", out, n, scale=0.5), w("b3", out)], "y", transB=1)
    g = helper.make_graph(nodes, f"rand{seed}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 7
    return m, shape
