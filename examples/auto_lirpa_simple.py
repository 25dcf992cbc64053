"""auto_LiRPA's "simple verification" walk-through, runnable on Clarke or on auto_LiRPA itself.

    python examples/auto_lirpa_simple.py                 # Clarke (verify.lirpa)
    python examples/auto_lirpa_simple.py --auto-lirpa    # auto_LiRPA, where it is importable

The only difference between the two runs is the import (see ``load``): a small CIFAR CNN, two images, an l_inf
ball; bounds of every logit by IBP, CROWN-IBP, CROWN and alpha-CROWN; the linear coefficients of the CROWN
bounds (``return_A``); and the bound of one margin through a specification matrix ``C``. Random weights and
images (nothing is downloaded), seed 0.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn

METHODS = ("IBP", "IBP+backward (CROWN-IBP)", "backward (CROWN)", "CROWN-Optimized (alpha-CROWN)")


def load(auto_lirpa: bool):
    """``(BoundedModule, BoundedTensor, PerturbationLpNorm)`` from auto_LiRPA or from Clarke."""
    if auto_lirpa:
        from auto_LiRPA import BoundedModule, BoundedTensor
        from auto_LiRPA.perturbations import PerturbationLpNorm
    else:
        from verify.lirpa import BoundedModule, BoundedTensor
        from verify.lirpa.perturbations import PerturbationLpNorm
    return BoundedModule, BoundedTensor, PerturbationLpNorm


def cifar_cnn() -> nn.Sequential:
    """The two-convolution CIFAR network of the convex_adversarial / oval21 family."""
    return nn.Sequential(nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, 10))


def run(auto_lirpa: bool = False, eps: float = 0.01, norm: float = np.inf, verbose: bool = True) -> dict:
    """Every bound of the walk-through, keyed by (demonstration, method)."""
    BoundedModule, BoundedTensor, PerturbationLpNorm = load(auto_lirpa)
    torch.manual_seed(0)
    model = cifar_cnn().eval()
    n, classes = 2, 10
    image = torch.rand(n, 3, 32, 32)
    label = model(image).argmax(1)
    lirpa_model = BoundedModule(model, torch.empty_like(image))
    x = BoundedTensor(image, PerturbationLpNorm(norm=norm, eps=eps))
    lirpa_model(x)
    out: dict = {}
    for method in METHODS:  # 1: bounds of every logit
        if "Optimized" in method:
            lirpa_model.set_bound_opts({"optimize_bound_args": {"iteration": 20, "lr_alpha": 0.1}})
        lb, ub = lirpa_model.compute_bounds(x=(x,), method=method.split()[0])
        out[("logits", method)] = (lb.detach(), ub.detach())
        if verbose:
            print(f"{method}: mean width {float((ub - lb).mean()):.6g}")
    need = defaultdict(set)  # 2: linear coefficients of the output bounds w.r.t. the input
    need[lirpa_model.output_name[0]].add(lirpa_model.input_name[0])
    for method in METHODS[1:3]:
        lb, ub, a_dict = lirpa_model.compute_bounds(x=(x,), method=method.split()[0], return_A=True,
                                                    needed_A_dict=need)
        a = a_dict[lirpa_model.output_name[0]][lirpa_model.input_name[0]]
        out[("A", method)] = {k: a[k].detach() for k in ("lA", "uA", "lbias", "ubias")}
        if verbose:
            print(f"{method}: lA {list(a['lA'].shape)}, lbias {list(a['lbias'].shape)}")
    C = torch.zeros(n, 1, classes)  # 3: the margin between the prediction and the next class
    C.scatter_(2, label.view(n, 1, 1), 1.0)
    C.scatter_(2, ((label + 1) % classes).view(n, 1, 1), -1.0)
    for method in METHODS:
        lb, ub = lirpa_model.compute_bounds(x=(x,), method=method.split()[0], C=C)
        out[("margin", method)] = (lb.detach(), ub.detach())
        if verbose:
            print(f"{method}: margin lower bounds {lb.flatten().tolist()}")
    out["image"] = image
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--auto-lirpa", action="store_true", help="run on auto_LiRPA instead of Clarke")
    ap.add_argument("--eps", type=float, default=0.01, help="l_inf radius (default 0.01)")
    args = ap.parse_args()
    run(args.auto_lirpa, args.eps)


if __name__ == "__main__":
    main()
