"""Clarke's bound-propagation engine: graph IR, IBP / CROWN / alpha-CROWN, verification front ends."""

from verify.allocator import tune_allocator
from verify.api import METHODS, BoundedModel, as_graph, bound
from verify.errors import ClarkeError, InputError, ModelError, ShapeError, UnsupportedOperator, VnnlibError
from verify.graph import Graph

__version__ = "0.1.0"


def load_onnx(path, dtype=None) -> Graph:
    """Read an ONNX file into the graph IR, in the model's own precision unless a wider ``dtype`` is given
    (see ``verify.frontends.onnx_frontend``)."""
    from verify.frontends.onnx_frontend import load_onnx as _load

    return _load(path, dtype)


def from_torch(module, input_shape) -> Graph:
    """Trace a torch module into the graph IR (see ``verify.frontends.torch_frontend``)."""
    from verify.frontends.torch_frontend import from_torch as _from

    return _from(module, input_shape)


def __getattr__(name: str):
    # ``verify.lipschitz(...)`` without an explicit import of the (heavier) subpackage.
    if name == "lipschitz":
        import importlib

        return importlib.import_module("verify.lipschitz")
    if name == "evaluation_error":
        from verify.float_evaluation import evaluation_error

        return evaluation_error
    raise AttributeError(f"module 'verify' has no attribute {name!r}")


__all__ = [
    "METHODS", "BoundedModel", "ClarkeError", "Graph", "InputError", "ModelError", "ShapeError",
    "UnsupportedOperator", "VnnlibError", "tune_allocator",
    "__version__", "as_graph", "bound", "evaluation_error", "from_torch", "load_onnx",
]
