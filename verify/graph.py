"""The graph IR: a DAG of typed nodes with per-sample shapes, built by the ONNX and torch frontends.

Per-sample shapes are the source model's full shapes (ONNX's leading batch dim of 1 included); the
engine prepends its own batch axis ``B`` of boxes/points, and a spec axis ``S`` in backward passes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from verify.errors import ModelError, ShapeError
from verify.ops.base import Op


@dataclass
class Node:
    name: str
    op: Op
    inputs: tuple[str, ...]
    shape: tuple[int, ...] = ()


def _same_weights(a: list[tuple[Tensor, int]], b: list[tuple[Tensor, int]]) -> bool:
    """The same tensor objects, none modified in place since (identity, not ``id``: ids are reused)."""
    return len(a) == len(b) and all(x is y and vx == vy for (x, vx), (y, vy) in zip(a, b, strict=True))


@dataclass
class Graph:
    """``input_name``/``input_shape`` describe the single variable input; ``nodes`` are topologically
    sorted; ``output`` names the node whose value is the network output."""

    input_name: str
    input_shape: tuple[int, ...]
    nodes: list[Node]
    output: str
    source: str = "<memory>"
    user_input_shape: tuple[int, ...] | None = None  # torch modules: the shape callers use, without the 1
    _by_name: dict[str, Node] = field(default_factory=dict, repr=False)
    _widened: dict = field(default_factory=dict, repr=False, compare=False)  # with_dtype's copies, by dtype

    def __post_init__(self) -> None:
        self._by_name = {n.name: n for n in self.nodes}
        known = {self.input_name}
        for n in self.nodes:
            missing = [i for i in n.inputs if i not in known]
            if missing:
                raise ModelError(f"{self.source}: node '{n.name}' uses undefined value(s) {missing}")
            known.add(n.name)
        if self.output not in known:
            raise ModelError(f"{self.source}: output '{self.output}' is not computed by the graph")
        self._prune()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_widened": {}}  # a cache: not worth pickling or copying

    def _prune(self) -> None:
        """Drop nodes the output does not depend on (e.g. unused Dropout masks)."""
        needed = {self.output}
        for n in reversed(self.nodes):
            if n.name in needed:
                needed.update(n.inputs)
        self.nodes = [n for n in self.nodes if n.name in needed]
        self._by_name = {n.name: n for n in self.nodes}

    # -- structure -------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self._by_name[name]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.input_shape if name == self.input_name else self._by_name[name].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shape_of(self.output)

    @property
    def input_numel(self) -> int:
        return int(torch.Size(self.input_shape).numel())

    @property
    def output_numel(self) -> int:
        return int(torch.Size(self.output_shape).numel())

    def ancestors(self, name: str) -> list[Node]:
        """Nodes ``name`` depends on (itself included), topologically sorted."""
        needed = {name}
        for n in reversed(self.nodes):
            if n.name in needed:
                needed.update(n.inputs)
        return [n for n in self.nodes if n.name in needed]

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {self.input_name: []}
        for n in self.nodes:
            out.setdefault(n.name, [])
            for i in n.inputs:
                out[i].append(n)
        return out

    def bounded_nodes(self) -> list[str]:
        """Names whose bounds nonlinear ops need (inputs of relaxed ops), topologically sorted."""
        need = {i for n in self.nodes if n.op.needs_input_bounds for i in n.inputs}
        order = [self.input_name] + [n.name for n in self.nodes]
        return [x for x in order if x in need]

    # -- evaluation ------------------------------------------------------------------------
    def prepare_input(self, x: Tensor) -> Tensor:
        """Accepts ``[B, *input_shape]``, ``[B, numel]`` or a single sample; returns ``[B, *input_shape]``."""
        x = x if isinstance(x, Tensor) else torch.as_tensor(x)
        n = self.input_numel
        if x.dim() >= 1 and tuple(x.shape[1:]) == self.input_shape:
            return x
        if self.user_input_shape is not None and tuple(x.shape[1:]) == self.user_input_shape:
            return x.reshape(x.shape[0], *self.input_shape)
        if x.numel() == n:
            return x.reshape(1, *self.input_shape)
        if x.dim() >= 2 and int(torch.Size(x.shape[1:]).numel()) == n:
            return x.reshape(x.shape[0], *self.input_shape)
        raise ShapeError(
            f"input of shape {tuple(x.shape)} does not fit the model input {self.input_shape} ({n} values)")

    def forward_all(self, x: Tensor) -> dict[str, Tensor]:
        vals = {self.input_name: self.prepare_input(x)}
        for n in self.nodes:
            vals[n.name] = n.op.forward(*[vals[i] for i in n.inputs])
        return vals

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[self.output]

    __call__ = forward

    def cast(self, dtype: torch.dtype) -> Graph:
        for n in self.nodes:
            n.op.cast(dtype)
        return self

    def with_dtype(self, dtype: torch.dtype) -> Graph:
        """This graph computed in ``dtype``: ops copied with their float tensors cast (differentiably); ``self``
        is unchanged. Only widening is allowed: a narrower precision would round the weights, i.e. bound
        another network."""
        if dtype == self.dtype:
            return self
        if torch.finfo(dtype).eps > torch.finfo(self.dtype).eps:
            raise ModelError(f"{self.source}: cannot compute a {self.dtype} model in {dtype} (its weights would "
                             "be rounded)")
        key = self._weights_key()
        hit = self._widened.get(dtype)
        if key is not None and hit is not None and _same_weights(hit[0], key):
            return hit[1]
        widened = self._with_copied_ops(lambda op: op.cast(dtype))
        if key is not None:
            self._widened[dtype] = (key, widened)
        return widened

    def _weights_key(self) -> list[tuple[Tensor, int]] | None:
        """Every op tensor with its version counter, for :meth:`with_dtype`'s cache; None (no caching) when some
        tensor is differentiable (a torch model's parameters: each call must cast them afresh, in the graph of
        autograd) or an op wraps a module (its parameters are not listed)."""
        key = []
        for n in self.nodes:
            for v in vars(n.op).values():
                if isinstance(v, torch.nn.Module) or (isinstance(v, Tensor) and v.requires_grad):
                    return None
                if isinstance(v, Tensor):
                    key.append((v, v._version))
        return key

    def to(self, device: torch.device | str) -> Graph:
        """This graph with every op's tensors on ``device`` (copied ops; ``self`` is unchanged). A torch module's
        parameters are read through differentiable copies, so gradients still reach them."""
        device = torch.device(device)
        if device == self.device:
            return self
        return self._with_copied_ops(lambda op: op.to_device(device))

    def _with_copied_ops(self, change) -> Graph:
        """A graph of shallow copies of the ops, each changed in place by ``change``."""
        nodes = []
        for n in self.nodes:
            op = copy.copy(n.op)
            change(op)
            nodes.append(Node(n.name, op, n.inputs, n.shape))
        return Graph(self.input_name, self.input_shape, nodes, self.output, self.source, self.user_input_shape)

    @property
    def device(self) -> torch.device:
        for n in self.nodes:
            for t in n.op.tensors().values():
                return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for n in self.nodes:
            for t in n.op.tensors().values():
                if t.is_floating_point():
                    return t.dtype
        return torch.float32

    def check_finite(self) -> None:
        for n in self.nodes:
            for k, t in n.op.tensors().items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ModelError(f"{self.source}: non-finite weights ({k}) in node '{n.name}'")

    def summary(self) -> str:
        lines = [f"input {self.input_name}: {self.input_shape}"]
        lines += [f"{n.name}: {n.op!r} <- {', '.join(n.inputs)} -> {n.shape}" for n in self.nodes]
        return "\n".join(lines)


class GraphBuilder:
    """Incremental construction with shape inference (used by both frontends)."""

    def __init__(self, input_name: str, input_shape: Sequence[int], source: str = "<memory>"):
        self.input_name, self.input_shape = input_name, tuple(int(d) for d in input_shape)
        self.source = source
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {input_name: self.input_shape}
        self._names: set[str] = {input_name}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        return name

    def add(self, name: str, op: Op, inputs: Iterable[str]) -> str:
        inputs = tuple(inputs)
        name = self.fresh(name)
        try:
            shape = op.bind([self.shapes[i] for i in inputs])
        except (RuntimeError, ValueError, IndexError) as e:
            msg = str(e).splitlines()[0]
            raise ShapeError(f"{self.source}: shapes do not fit at node '{name}' ({op!r}): {msg}") from None
        self.nodes.append(Node(name, op, inputs, shape))
        self.shapes[name] = shape
        self._names.add(name)
        return name

    def build(self, output: str) -> Graph:
        if output == self.input_name:  # the network is the identity: one node that copies its input
            from verify.ops.affine import Scale

            output = self.add(self.fresh("identity"), Scale(), [output])
        g = Graph(self.input_name, self.input_shape, self.nodes, output, source=self.source)
        g.check_finite()
        return g
