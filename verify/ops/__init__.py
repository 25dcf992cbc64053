"""Operator families of the graph IR (one module per family: forward, interval and CROWN rules)."""

from verify.ops.activation import Activation, Erf, LeakyRelu, Relu, Sigmoid, Tanh
from verify.ops.affine import AddVars, Scale
from verify.ops.base import LinearOp, Op
from verify.ops.bilinear import Mul, Power, Reciprocal, Square
from verify.ops.exp_log import Exp, Log, Softplus, Sqrt
from verify.ops.interval_relaxed import Floor, Sign
from verify.ops.linear import Conv2d, ConvTranspose2d, Dense
from verify.ops.periodic import Cos, Sin
from verify.ops.pooling import AvgPool2d, MaxPool2d
from verify.ops.reduce import ReduceSum
from verify.ops.shape import Concat, Gather, Pad, Reshape, Slice, Transpose, UpsampleNearest
from verify.ops.softmax import LogSoftmax, Softmax

__all__ = [
    "Activation", "AddVars", "AvgPool2d", "Concat", "Conv2d", "Cos", "ConvTranspose2d", "Dense", "Erf", "Exp", "Floor",
    "Gather", "LeakyRelu", "LinearOp", "Log", "LogSoftmax", "MaxPool2d", "Mul", "Op", "Pad", "Power", "Reciprocal",
    "ReduceSum", "Relu", "Reshape", "Scale", "Sigmoid", "Sign", "Sin", "Slice", "Softmax", "Softplus", "Sqrt", "Square",
    "Tanh", "Transpose", "UpsampleNearest",
]
