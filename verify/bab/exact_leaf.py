"""Exact MIP on small boxes with few unstable ReLUs (the leaves of input-split BaB).

Near a property's boundary the margin is tiny and every box still has a handful of unstable ReLUs: their
relaxation error keeps CROWN below zero, so bisection would go on for thousands of boxes. With ``k``
unstable ReLUs the MILP has ``k`` binaries and is solved in milliseconds (Tjeng et al., ICLR 2019), exactly.
A MIP witness still goes through the caller's onnxruntime check before anyone says ``sat``; a refutation counts
only once its dual bound, less the tolerance margin and the encoding's error (``verify.mip``), is positive.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from verify.bab.common import CexCheck
from verify.errors import ClarkeError
from verify.graph import Graph
from verify.mip import _float64_copy, encode, mip_verify
from verify.ops.activation import Relu
from verify.spec import RowSpec


def unstable_relus(graph: Graph, bounds: dict[str, tuple[Tensor, Tensor]], n_boxes: int) -> Tensor:
    """Number of ReLUs with ``l < 0 < u`` in each box: ``[N]``."""
    count = None
    for n in graph.nodes:
        if isinstance(n.op, Relu):
            lo, hi = bounds[n.inputs[0]]
            k = ((lo < 0) & (hi > 0)).reshape(n_boxes, -1).sum(1)
            count = k if count is None else count + k
    return count if count is not None else torch.zeros(n_boxes, dtype=torch.long)


class ExactLeaves:
    """Decides boxes of one graph and spec by MILP, re-using a float64 copy of the graph and its affine
    matrices across boxes (thousands of leaves: set-up, not the solve, would dominate otherwise)."""

    def __init__(self, graph: Graph, spec: RowSpec, check: CexCheck):
        self.graph, self.check = _float64_copy(graph.to("cpu")), check  # the solvers read numpy arrays
        self.cache: dict = {}
        self.count = 0
        # Per disjunct, its rows as float64 arrays (A f(x) + A_x x <= b): the same for every box.
        self.disjuncts = []
        for d in range(spec.n_groups):
            rows = (spec.group == d).nonzero().flatten()
            self.disjuncts.append((spec.C[rows].double().cpu().numpy(),
                                   None if spec.Ax is None else spec.Ax[rows].double().cpu().numpy(),
                                   spec.b[rows].double().cpu().numpy()))

    def decide(self, lo: Tensor, hi: Tensor, open_groups: list[int], time_limit: float
               ) -> tuple[str, np.ndarray | None]:
        """``("unsat", None)`` when every open disjunct is refuted on the box, ``("sat", x)`` with a checked
        counterexample, else ``("open", None)`` (timeout, solver trouble, or an unconfirmed witness)."""
        self.count += 1
        try:
            enc = encode(self.graph, lo.double().cpu().numpy(), hi.double().cpu().numpy(), linear_cache=self.cache)
            for d in open_groups:
                A, A_x, b = self.disjuncts[d]
                v = mip_verify(self.graph, None, None, A, b, timeout=time_limit, A_x=A_x, crown_check=False,
                               encoding=enc, light=True)
                if v.status == "sat" and v.x is not None:
                    x = self.check(torch.as_tensor(v.x, dtype=torch.float32, device="cpu").reshape(1, -1))
                    return ("sat", x) if x is not None else ("open", None)
                if v.status != "unsat":
                    return "open", None
        except ClarkeError:  # solver unavailable or model over a license: keep splitting instead
            return "open", None
        return "unsat", None
