"""Errors raised by Clarke. Each carries a one-line message naming the problem (file, line, op)."""

from __future__ import annotations


class ClarkeError(Exception):
    """Base class: anything the CLI reports as a one-line error with a non-zero exit."""


class ModelError(ClarkeError):
    """A model file that cannot be read or is malformed (bad protobuf, NaN weights, bad shapes)."""


class UnsupportedOperator(ModelError):
    """An ONNX/torch operator the engine has no sound rule for."""

    def __init__(self, op_type: str, node_name: str = "", opset: int | None = None, detail: str = ""):
        self.op_type, self.node_name, self.opset = op_type, node_name, opset
        where = f" (node '{node_name}'" + (f", opset {opset}" if opset is not None else "") + ")"
        super().__init__(f"unsupported operator {op_type}{where}" + (f": {detail}" if detail else ""))


class UnboundedError(ClarkeError):
    """A bound that does not exist: a divisor whose range holds 0 on the input box (the quotient is unbounded).
    ``clarke verify`` answers ``unknown`` for it."""


class ShapeError(ClarkeError, ValueError):
    """Shapes of inputs, boxes, specs or weights do not agree."""


class InputError(ClarkeError, ValueError):
    """An invalid argument value: NaN or infinite numbers, an empty box, an option out of range."""


class VnnlibError(ClarkeError):
    """A VNNLIB file that does not parse; the message names file, line and token."""

    def __init__(self, message: str, path: str = "<string>", line: int | None = None, token: str | None = None):
        self.path, self.line, self.token = path, line, token
        loc = f"{path}:{line}" if line is not None else path
        tok = f" (at token {token!r})" if token is not None else ""
        super().__init__(f"{loc}: {message}{tok}")
