"""A VNNLIB property in the engine's terms: rows ``r(x) = C f(x) + Ax x - b`` grouped into disjuncts.

The counterexample set of one property is ``x in box and OR_d AND_{rows r in d} r(x) <= 0``; a
domain is proved safe when every disjunct has a row whose lower bound is positive.

Rows are kept in float64 (``C``, ``Ax`` exact: VNNLIB atoms compare two terms; ``b`` the float64 reading of a
decimal, within one unit roundoff of it); row lower bounds are float64 and pay for every rounding, including
the distance between ``b`` and the decimal it was read from, and ``C`` cast to the model's precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verify.bounds.crown import RoundingCache, backward_pass, concretize_lower, node_bounds
from verify.graph import Graph
from verify.rounding import F64, down, gamma, magnitude, unit_roundoff
from verify.vnnlib import Property


@dataclass
class RowSpec:
    C: Tensor  # [R, K] on the flattened output, float64
    Ax: Tensor | None  # [R, n] input coefficients (mixed X/Y atoms), or None; float64
    b: Tensor  # [R], float64
    group: Tensor  # [R] disjunct index of each row
    n_groups: int

    @classmethod
    def from_property(cls, prop: Property, n_in: int, n_out: int, device: torch.device | str = "cpu") -> RowSpec:
        """The property's rows, in float64 (module docstring), on ``device``."""
        Cs, Axs, bs, groups = [], [], [], []
        any_mixed = False
        for d, dj in enumerate(prop.disjuncts):
            Cs.append(dj.A)
            Axs.append(np.zeros((dj.A.shape[0], n_in)))
            bs.append(dj.b)
            groups += [d] * dj.A.shape[0]
            if dj.mixed is not None:
                ax, ay, bm = dj.mixed
                Cs.append(ay)
                Axs.append(ax)
                bs.append(bm)
                groups += [d] * ay.shape[0]
                any_mixed = True
        C = torch.tensor(np.concatenate(Cs).reshape(-1, n_out), dtype=F64, device=device)
        Ax = torch.tensor(np.concatenate(Axs).reshape(-1, n_in), dtype=F64, device=device) if any_mixed else None
        return cls(C, Ax, torch.tensor(np.concatenate(bs), dtype=F64, device=device),
                   torch.tensor(groups, device=device), len(prop.disjuncts))

    def to(self, device: torch.device | str) -> RowSpec:
        """The same rows on ``device``."""
        return RowSpec(self.C.to(device), None if self.Ax is None else self.Ax.to(device), self.b.to(device),
                       self.group.to(device), self.n_groups)

    def subset(self, groups: list[int]) -> RowSpec:
        """The rows of the given disjuncts only, renumbered ``0..len(groups)-1`` in that order."""
        keep = torch.cat([(self.group == d).nonzero().flatten() for d in groups])
        new_id = {d: i for i, d in enumerate(groups)}
        group = torch.tensor([new_id[int(d)] for d in self.group[keep]], dtype=self.group.dtype,
                             device=self.group.device)
        return RowSpec(self.C[keep], None if self.Ax is None else self.Ax[keep], self.b[keep], group, len(groups))

    def values(self, x: Tensor, y: Tensor) -> Tensor:
        """Row values ``r(x)`` at points ``x [N, n]`` with outputs ``y [N, K]``: ``[N, R]`` (in ``y``'s dtype; a
        screen for candidate points, not a bound)."""
        r = y @ self.C.T.to(y.dtype) - self.b.to(y.dtype)
        if self.Ax is not None:
            r = r + x.to(y.dtype) @ self.Ax.T.to(y.dtype)
        return r

    def violated(self, x: Tensor, y: Tensor) -> Tensor:
        """``[N]`` bool: some disjunct has all rows <= 0 (a counterexample)."""
        return self.group_max(self.values(x, y)).min(-1).values <= 0

    def group_max(self, rows: Tensor) -> Tensor:
        """Max over the rows of each disjunct: ``[N, R] -> [N, D]``."""
        out = torch.full((rows.shape[0], self.n_groups), float("-inf"), dtype=rows.dtype, device=rows.device)
        return out.scatter_reduce(1, self.group.expand(rows.shape[0], -1), rows, reduce="amax")

    def proved(self, lower: Tensor) -> bool:
        """Row lower bounds ``[N, R]`` refute every disjunct in every box (``group_max > 0``)."""
        return bool((self.group_max(lower).min(1).values > 0).all())

    def output_lam(self, graph: Graph, b: int = 1) -> Tensor:
        """The rows' output coefficients as a CROWN start ``Lambda [b, R, *output_shape]`` (model precision)."""
        return self.C.to(graph.dtype).expand(b, -1, -1).reshape(b, self.C.shape[0], *graph.output_shape)

    def constant_slack(self, graph: Graph, bounds, cache: RoundingCache | None = None) -> Tensor:
        """What the rows lose to rounding outside CROWN: ``b`` is within ``u |b|`` of its decimal, and ``C`` cast
        to the model's precision misses ``|C - fl(C)| |y|`` (zero for the usual +-1 coefficients). ``[B|1, R]``."""
        slack = (2 * unit_roundoff(F64) * self.b.abs()).unsqueeze(0)
        dC = (self.C - self.C.to(graph.dtype).to(F64)).abs()
        if bool(dC.any()):
            out = node_bounds(graph, bounds, graph.output, (cache or RoundingCache()).derived)
            a = magnitude(*out).reshape(out[0].shape[0], -1).to(F64)
            slack = slack + (a @ dC.T) * (1 + 1e-6)
        return slack

    def finish(self, lower: Tensor, graph: Graph, bounds) -> Tensor:
        """Row lower bounds from lower bounds of ``C f`` (float64 ``[B, R]``): ``- b``, rounding paid."""
        return down(lower - self.b - self.constant_slack(graph, bounds))

    def lower_bounds(self, graph: Graph, bounds, betas=None, alphas=None, record=None,
                     cache: RoundingCache | None = None) -> tuple[Tensor, Tensor]:
        """Rigorous CROWN lower bounds of every row over each box (float64 ``[B, R]``) and ``Lambda_x [B, R, n]``
        (with the input terms ``Ax``; float64 when there are any)."""
        x_lo, x_hi = bounds[graph.input_name]
        b = x_lo.shape[0]
        lam_x, kappa = backward_pass(graph, graph.output, self.output_lam(graph, b), bounds, alphas, betas, record,
                                     cache)
        lam_x = lam_x.reshape(b, self.C.shape[0], -1)
        if self.Ax is not None:
            lam_x = lam_x.to(F64) + self.Ax
            # the float64 sum rounds once per entry: pay u |sum| against the input magnitudes
            a_x = magnitude(x_lo, x_hi).reshape(b, -1, 1).to(F64)
            kappa = kappa - 2 * unit_roundoff(F64) * (lam_x.detach().abs() @ a_x).squeeze(-1)
        return self.finish(concretize_lower(lam_x, kappa, x_lo, x_hi), graph, bounds), lam_x


def _project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v [N, k]`` onto the probability simplex (Duchi et al., 2008)."""
    u = v.sort(1, descending=True).values
    css = u.cumsum(1) - 1
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype, device=v.device)
    cond = u - css / k > 0
    rho = cond.to(v.dtype).cumsum(1).argmax(1, keepdim=True)
    theta = css.gather(1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp(min=0)


def combined_margins(spec: RowSpec, lb: Tensor, lam_x: Tensor, x_lo: Tensor, x_hi: Tensor,
                     iterations: int = 25) -> Tensor:
    """Disjunct margins ``[N, D]`` at least ``group_max(lb)``, from convex combinations of each disjunct's rows.

    Each row satisfies ``r_j(x) >= Lambda_j x + c_j`` on the box with ``c_j = lb_j - min_box Lambda_j x`` (rounded
    down); for ``mu >= 0``, ``min_box sum_j mu_j (Lambda_j x + c_j) > 0`` means no point of the box has every row
    ``<= 0`` (Farkas-style certificate, as LP duality would combine them). ``mu`` by projected supergradient
    ascent on the simplex, best value kept. All in float64 with the rounding of each sum paid."""
    margins = spec.group_max(lb)
    lo = x_lo.reshape(x_lo.shape[0], -1).double()
    hi = x_hi.reshape(x_hi.shape[0], -1).double()
    a_x = torch.maximum(lo.abs(), hi.abs())
    n = lo.shape[1]
    for d in range(spec.n_groups):
        rows = (spec.group == d).nonzero().flatten()
        if rows.numel() < 2:
            continue
        g = gamma(n + rows.numel() + 2, F64)
        lam = lam_x[:, rows].double()  # [N, k, n]
        lo_, hi_ = lo.unsqueeze(1), hi.unsqueeze(1)
        mins = torch.minimum(lam * lo_, lam * hi_)
        mass = lam.abs() @ a_x.unsqueeze(-1)  # [N, k, 1]
        c = down(lb[:, rows].double() - mins.sum(-1) - g * mass.squeeze(-1))  # [N, k], below the true constants
        mu = torch.nn.functional.one_hot(lb[:, rows].argmax(1), rows.numel()).double()
        best = torch.full((lb.shape[0],), -torch.inf, dtype=torch.float64, device=lb.device)
        step = 0.5
        for _ in range(iterations):
            a = (mu.unsqueeze(-1) * lam).sum(1)  # [N, n]
            corner = torch.where(a > 0, lo, hi)
            terms = a * corner
            value = terms.sum(1) + (mu * c).sum(1)
            # rounding of the combination a (against |x| <= a_x), of the sums, and of mu * c
            slack = g * ((mu * mass.squeeze(-1)).sum(1) + terms.abs().sum(1) + (mu * c).abs().sum(1))
            best = torch.maximum(best, down(value - slack))
            grad = (lam * corner.unsqueeze(1)).sum(-1) + c  # supergradient in mu
            grad = grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
            mu = _project_simplex(mu + step * grad)
            step *= 0.85
        margins[:, d] = torch.maximum(margins[:, d], best.to(margins.dtype))
    return margins


def minimizers(lam_x: Tensor, x_lo: Tensor, x_hi: Tensor) -> Tensor:
    """Box corner minimising each row's linear bound: ``[B, R, n]`` (a free counterexample candidate)."""
    lo, hi = x_lo.reshape(x_lo.shape[0], 1, -1), x_hi.reshape(x_hi.shape[0], 1, -1)
    return torch.where(lam_x > 0, lo, hi)
