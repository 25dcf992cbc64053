"""``BoundedModule``: auto_LiRPA's wrapper class, computed by Clarke's engine (``verify.bound``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from verify.api import bound
from verify.errors import InputError
from verify.lirpa.bounded_tensor import BoundedTensor

METHOD_ALIASES = {
    "ibp": "ibp",
    "ibp+backward": "crown-ibp", "crown-ibp": "crown-ibp",
    "backward": "crown", "crown": "crown",
    "crown-optimized": "alpha-crown", "alpha-crown": "alpha-crown",
}
"""auto_LiRPA's method names (any capitalisation) -> Clarke's."""


def clarke_method(method: str, ibp: bool = False) -> str:
    name = METHOD_ALIASES.get(str(method).lower())
    if name is None:
        raise ValueError(f"unknown method {method!r}; choose from IBP, IBP+backward (CROWN-IBP), backward (CROWN), "
                         "CROWN-Optimized (alpha-CROWN); forward mode is not implemented")
    return "crown-ibp" if ibp and name == "crown" else name


class BoundedModule(nn.Module):
    """``BoundedModule(model, global_input, bound_opts=None, device="auto")``: ``model`` traced once for inputs
    shaped like ``global_input`` (batch axis first); it reads the model's parameters on every call.

    ``bound_opts``: ``optimize_bound_args`` (``iteration``, ``lr_alpha``) as auto_LiRPA's (``CROWN-Optimized``
    optimises the slopes of the intermediate passes too, as auto_LiRPA's does when no ``interm_bounds`` are given;
    Clarke's ``optimize_intermediate: False`` there keeps CROWN intermediate bounds: faster, a little looser), and
    Clarke's
    ``precision`` (``"float64"``, the default: as tight as auto_LiRPA and rigorous; ``"model"``: the network's own
    float32, faster on a CPU but its rigorous rounding allowances widen CROWN bounds on wide layers).
    Other auto_LiRPA options are accepted and ignored (``ignored_options`` lists them)."""

    def __init__(self, model: nn.Module, global_input: Tensor | Sequence[Tensor], bound_opts: Mapping | None = None,
                 device: str | torch.device = "auto", verbose: bool = False, custom_ops: Any = None):
        super().__init__()
        from verify.frontends.torch_frontend import from_torch

        x = global_input[0] if isinstance(global_input, tuple | list) else global_input
        self.model = model
        self.device = None if str(device) == "auto" else device  # "auto": where the inputs are
        self.graph = from_torch(model, tuple(x.shape[1:]))
        self.input_name, self.output_name = [self.graph.input_name], [self.graph.output]
        optimize = {"iteration": 20, "lr_alpha": 0.5, "optimize_intermediate": True}
        self.bound_opts: dict = {"optimize_bound_args": optimize, "precision": "float64"}
        self.ignored_options: set[str] = set()
        self.set_bound_opts(bound_opts or {})
        self._last_x: BoundedTensor | None = None

    def set_bound_opts(self, opts: Mapping) -> None:
        for key, value in opts.items():
            if key == "optimize_bound_args":
                self.bound_opts["optimize_bound_args"].update(value)
            elif key == "precision":
                self.bound_opts["precision"] = value
            else:
                self.ignored_options.add(key)

    def forward(self, *x: Tensor) -> Tensor:
        if x and isinstance(x[0], BoundedTensor):
            self._last_x = x[0]
        plain = [t.as_subclass(Tensor) if isinstance(t, BoundedTensor) else t for t in x]
        return self.model(*plain)

    def compute_bounds(self, x: Tensor | Sequence[Tensor] | None = None, aux: Any = None, C: Tensor | None = None,
                       method: str = "backward", IBP: bool = False, forward: bool = False,  # noqa: N803
                       bound_lower: bool = True, bound_upper: bool = True, return_A: bool = False,  # noqa: N803
                       needed_A_dict: Mapping | None = None, **unused: Any):
        """``(lb, ub)`` of ``C f(x)`` (``f(x)`` without ``C``), ``[B, S]``; ``None`` for a side not asked for.
        ``return_A=True`` adds auto_LiRPA's ``A_dict[output][input] = {"lA", "uA", "lbias", "ubias"}``."""
        if forward:
            raise NotImplementedError("forward-mode bounds are not implemented; use method='backward' (CROWN)")
        if not (bound_lower or bound_upper):
            raise ValueError("bound_lower and bound_upper are both False")
        xt = self._input(x)
        ptb = xt.ptb
        plain = xt.as_subclass(Tensor)
        lo, hi = ptb.box(plain)
        ball = None if ptb.norm == math.inf or ptb.eps is None else (plain, float(ptb.eps), ptb.norm)
        name = clarke_method(method, IBP)
        opt = self.bound_opts["optimize_bound_args"]
        linear: dict | None = {} if return_A else None
        spec = C if bound_lower else (-C if C is not None else -torch.eye(self.graph.output_numel, dtype=plain.dtype))
        lower, upper = bound(self.graph, lo, hi, C=spec, method=name, iterations=int(opt.get("iteration", 20)),
                             lr=float(opt.get("lr_alpha", 0.5)), precision=self.bound_opts["precision"],
                             optimize_intermediate=bool(opt.get("optimize_intermediate", True)),
                             bound_upper=bound_lower and bound_upper, linear=linear, ball=ball, device=self.device)
        if not bound_lower:  # only the upper side: the lower bound of -C f
            lb, ub = None, -lower
        else:
            lb, ub = lower, upper
        if not return_A:
            return lb, ub
        out, inp = self.output_name[0], self.input_name[0]
        shape = (*lower.shape[:2], *plain.shape[1:])  # auto_LiRPA's [B, S, *input_dims]
        linear = {k: v.reshape(shape) if k.endswith("A") else v for k, v in linear.items()}
        if bound_lower:
            entry = {"lA": linear["lA"], "lbias": linear["lbias"], "uA": linear.get("uA"), "ubias": linear.get("ubias")}
        else:
            entry = {"lA": None, "lbias": None, "uA": -linear["lA"], "ubias": -linear["lbias"]}
        return lb, ub, {out: {inp: entry}}

    def _input(self, x) -> BoundedTensor:
        if x is None:
            if self._last_x is None:
                raise InputError("compute_bounds needs x=(BoundedTensor, ...) (no earlier forward with one)")
            return self._last_x
        if isinstance(x, tuple | list):
            if len(x) != 1:
                raise InputError(f"the model has one input; got {len(x)} tensors in x")
            x = x[0]
        if not isinstance(x, BoundedTensor) or x.ptb is None:
            raise InputError("x must be a BoundedTensor with a perturbation: BoundedTensor(x, PerturbationLpNorm(...))")
        self._last_x = x
        return x
