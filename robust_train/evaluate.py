"""Honest evaluation of a classifier at l_inf radius eps: clean, attacked (PGD, AutoAttack's APGD) and certified
accuracy, per class and on the tail classes.

Point i with label y is *attacked* when some attack finds x' in the threat box with max_{j≠y} f_j(x') >= f_y(x')
(the clean point counts as the first attempt); *robust* when no attack succeeds; *certified* when the engine
proves f_y − f_j > 0 for all j ≠ y on the whole box: lower bounds of C f with C = e_y − e_j
(``verify.bound``), or ``unsat`` from the complete verifier (``bab``). Certified implies robust, so every
point is checked and a violation raises :class:`SoundnessError` naming the point.

RA-Tail-30 (robust_training.md §1.4, the DONE paper's metric): the mean of the ⌈0.3·C⌉ lowest per-class
robust accuracies, C the number of classes present in the evaluated set, ties broken by class id.
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robust_train.apgd import apgd, apgd_targeted, fooled, threat_box
from robust_train.certified import margin_spec

__all__ = ["ATTACKS", "CERTIFY_METHODS", "SoundnessError", "evaluate", "margin_spec", "per_class_accuracy",
           "tail_accuracy", "write_robustness_vnnlib"]

ATTACKS = ("pgd20", "pgd50", "apgd-ce", "apgd-dlr", "apgd-t")
CERTIFY_METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")
PGD_STEP = 0.25
"""PGD step size as a fraction of eps: 2/255 at 8/255, the usual RA-PGD setting (robust_training.md §1.4)."""
TAIL_FRACTION = 0.3


class SoundnessError(RuntimeError):
    """A point was certified although an attack (checked again in float64) misclassifies a point of its box."""


# ------------------------------------------------------------------------------------------- metrics


def per_class_accuracy(hits: Tensor, y: Tensor, classes: int) -> list[float | None]:
    """``mean(hits[y == c])`` for c = 0..classes−1; ``None`` for a class with no point."""
    hits, y = hits.detach().cpu().double(), y.detach().cpu()
    out: list[float | None] = []
    for c in range(classes):
        sel = y == c
        out.append(float(hits[sel].mean()) if bool(sel.any()) else None)
    return out


def tail_accuracy(per_class: Sequence[float | None], fraction: float = TAIL_FRACTION
                  ) -> tuple[float | None, list[int]]:
    """Mean of the ⌈fraction·C⌉ lowest per-class accuracies over the C classes present (``None`` entries are
    absent classes), and their class ids (lowest first, ties by id). ⌈·⌉ in exact arithmetic: 0.3·10 is 3."""
    present = [(a, c) for c, a in enumerate(per_class) if a is not None]
    if not present:
        return None, []
    m = max(1, math.ceil(Fraction(str(fraction)) * len(present)))
    worst = sorted(present)[:m]
    return sum(a for a, _ in worst) / m, [c for _, c in worst]


# ------------------------------------------------------------------------------------------- BaB


def write_robustness_vnnlib(path: str | Path, lo: Tensor, hi: Tensor, label: int, classes: int) -> None:
    """VNNLIB for ``x in [lo, hi]`` (flattened, C order) and the counterexample set ``∨_{j≠y} Y_j >= Y_y``.

    Bounds are written with ``repr`` of the float64 value, which reads back to the same double."""
    lo64 = lo.detach().cpu().double().reshape(-1).tolist()
    hi64 = hi.detach().cpu().double().reshape(-1).tolist()
    lines = [f"; robustness of class {label}: box of {len(lo64)} inputs (written by robust_train.evaluate)"]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lo64))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
    for i, (a, b) in enumerate(zip(lo64, hi64, strict=True)):
        lines.append(f"(assert (<= X_{i} {b!r}))")
        lines.append(f"(assert (>= X_{i} {a!r}))")
    ors = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label)
    lines.append(f"(assert (or {ors}))")
    Path(path).write_text("\n".join(lines) + "\n")


def _export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """The model as ONNX (``models.checkpoint.export_onnx`` when present, else the Sequential writer)."""
    cpu = copy.deepcopy(model).cpu().float().eval()
    try:
        from models.checkpoint import export_onnx
    except ImportError:
        export_onnx = None
    if export_onnx is not None:
        export_onnx(cpu, input_shape, path)
        return
    import onnx

    from models.onnx_export import sequential_to_onnx
    onnx.save(sequential_to_onnx(cpu, input_shape), str(path))


# ------------------------------------------------------------------------------------------- evaluation


def _tensors(dataset: Any) -> tuple[Tensor, Tensor]:
    if hasattr(dataset, "tensors"):
        x, y = dataset.tensors[:2]
    elif isinstance(dataset, tuple | list) and len(dataset) == 2:
        x, y = dataset
    else:
        raise TypeError("dataset must be a TensorDataset or an (x, y) pair of tensors")
    x, y = torch.as_tensor(x), torch.as_tensor(y).long()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"dataset has {x.shape[0]} inputs but {y.shape[0]} labels")
    return x, y


def _run_attack(name: str, model, x: Tensor, y: Tensor, eps: float, gen: torch.Generator, apgd_steps: int
                ) -> Tensor:
    if name in ("pgd20", "pgd50"):
        from robust_train.attacks import pgd
        return pgd(model, x, y, eps, steps=int(name[3:]), step_size=PGD_STEP * eps, loss="ce",
                   random_start=True, generator=gen)
    if name == "apgd-ce":
        return apgd(model, x, y, eps, steps=apgd_steps, loss="ce", generator=gen)
    if name == "apgd-dlr":
        return apgd(model, x, y, eps, steps=apgd_steps, loss="dlr", generator=gen)
    return apgd_targeted(model, x, y, eps, steps=apgd_steps, n_targets=9, generator=gen)


def evaluate(model: torch.nn.Module, dataset: Any, eps: float, *,
             attacks: Sequence[str] = ("pgd20", "pgd50", "apgd-ce", "apgd-t"),
             certify: Sequence[str] = ("crown",), bab: int = 0, batch_size: int = 256,
             classes: int | None = None, class_names: Sequence[str] | None = None, seed: int = 0,
             progress: bool = False, apgd_steps: int = 100, bab_timeout: float = 30.0,
             alpha_iterations: int = 20, precision: str = "float64", per_point: bool = False,
             cluster: Any = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` (a TensorDataset or ``(x, y)``; x in [0, 1]) at l_inf radius ``eps``.

    ``attacks``: any of :data:`ATTACKS` (PGD-K: step eps/4, random start; APGD: ``apgd_steps`` iterations;
    APGD-T: DLR-T, 9 targets), each run on every clean-correct point. ``certify``: any of
    :data:`CERTIFY_METHODS`, each bounding every point's box (``precision`` of the engine). ``bab``: the first
    ``bab`` points (dataset order) neither certified nor attacked go to ``verify.pipeline.verify_instance``
    (``bab_timeout`` seconds each): ``unsat`` certifies, ``sat`` (validated) counts as a successful attack.
    Raises :class:`SoundnessError` naming the point if a certified point is attacked.

    Returns a JSON-able dict; accuracies are fractions, per-class lists are ordered by class id (``None`` for a
    class without points): ``clean_accuracy``, ``robust_accuracy`` (worst case over the attacks and BaB),
    ``attack_accuracy`` {attack: acc}, ``certified_accuracy`` (any method or BaB), ``certified_by_method``,
    ``per_class`` {count, clean, robust, certified, attack: {attack: [...]}, certified_by_method: {...}},
    ``ra_tail_30`` / ``ra_tail_30_classes`` (worst-case robust), ``ra_tail_30_by_attack`` {attack: {value,
    classes}}, ``certified_tail_30(_classes)``, ``clean_tail_30(_classes)``, ``bab`` {requested, points, status,
    seconds, stage, unsat, sat, undecided}, ``rounding_conflicts`` (points whose float64 certificate was
    withdrawn because only the float32 evaluation misclassifies), ``seconds`` {clean, attack: {..}, certify:
    {..}, bab, total}, ``n``, ``eps``, ``classes``, ``class_names``, ``seed``, ``attacks``, ``certify``,
    ``precision``, ``config``; with ``per_point``, ``points`` {label, correct, robust, certified, attacked}.

    ``cluster`` (a ``verify.cluster.ClusterSpec``): the attacks and certificates run on Ray, in shards of whole
    batches (each batch's random starts depend on (seed, attack, first index) only, so the answers are a local
    run's); the complete verifier, when asked for, runs here on the merged result."""
    attacks, certify = tuple(attacks), tuple(certify)
    try:
        eps_f = float(eps)
    except (TypeError, ValueError):
        eps_f = math.nan
    if not (math.isfinite(eps_f) and eps_f >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    eps = eps_f
    for a in attacks:
        if a not in ATTACKS:
            raise ValueError(f"unknown attack {a!r}; choose from {', '.join(ATTACKS)}")
    for m in certify:
        if m not in CERTIFY_METHODS:
            raise ValueError(f"unknown certification method {m!r}; choose from {', '.join(CERTIFY_METHODS)}")
    if not (isinstance(bab, int) and bab >= 0) or not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"bab must be >= 0 and batch_size >= 1, got bab={bab!r}, batch_size={batch_size!r}")
    if precision not in ("float64", "model"):
        raise ValueError(f"precision must be 'float64' or 'model', got {precision!r}")
    x_all, y_all = _tensors(dataset)
    n = x_all.shape[0]
    if n and not (float(x_all.min()) >= 0.0 and float(x_all.max()) <= 1.0):
        raise ValueError("inputs must lie in [0, 1] (the threat box is the eps-ball intersected with [0, 1])")
    input_shape = tuple(x_all.shape[1:])
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32

    t_start = time.perf_counter()
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():  # attacks and bounds differentiate w.r.t. inputs only
        p.requires_grad_(False)
    try:
        if classes is None:
            with torch.no_grad():
                classes = int(model(x_all[:1].to(device, dtype)).shape[1])
        if n and (int(y_all.min()) < 0 or int(y_all.max()) >= classes):
            raise ValueError(f"labels must lie in 0..{classes - 1}, found {int(y_all.min())}..{int(y_all.max())}")
        names = [str(c) for c in range(classes)] if class_names is None else [str(c) for c in class_names]
        if len(names) != classes:
            raise ValueError(f"{len(names)} class names for {classes} classes")
        report = _evaluate(model, x_all, y_all, eps, attacks, certify, bab, batch_size, classes, seed, progress,
                           apgd_steps, bab_timeout, alpha_iterations, precision, input_shape, device, dtype, cluster)
    finally:
        model.train(was_training)
        for p, f in zip(model.parameters(), grad_flags, strict=True):
            p.requires_grad_(f)
    report.update(_summary(report.pop("_points"), y_all, classes, attacks, certify, per_point))
    report.update(class_names=names, classes=classes, n=n, eps=float(eps), seed=seed, attacks=list(attacks),
                  certify=list(certify), precision=precision,
                  config={"batch_size": batch_size, "pgd_step_size": PGD_STEP * float(eps),
                          "apgd_steps": apgd_steps, "apgd_t_targets": 9, "bab": bab, "bab_timeout": bab_timeout,
                          "alpha_iterations": alpha_iterations})
    report["seconds"]["total"] = time.perf_counter() - t_start
    return report


def _evaluate(model, x_all, y_all, eps, attacks, certify, bab, batch_size, classes, seed, progress, apgd_steps,
              bab_timeout, alpha_iterations, precision, input_shape, device, dtype, cluster=None) -> dict[str, Any]:
    if cluster is not None:
        from robust_train.evaluate_cluster import attack_and_certify_on_cluster

        part = attack_and_certify_on_cluster(cluster, model, x_all, y_all, eps, attacks, certify, batch_size,
                                             classes, seed, progress, apgd_steps, alpha_iterations, precision,
                                             input_shape)
    else:
        part = attack_and_certify(model, x_all, y_all, eps, attacks, certify, batch_size, classes, seed, progress,
                                  apgd_steps, alpha_iterations, precision, input_shape, device, dtype)
    seconds, conflicts, correct, attacked, cert = (part[k] for k in ("seconds", "conflicts", "correct", "attacked",
                                                                     "cert"))
    bab_report = _bab(model, x_all, y_all, eps, bab, correct, attacked, cert, classes, input_shape, seed,
                      bab_timeout, device, dtype, seconds, progress)
    return {"seconds": seconds, "rounding_conflicts": conflicts, "bab": bab_report["summary"],
            "_points": {"correct": correct, "attacked": attacked, "cert": cert,
                        "bab_unsat": bab_report["unsat"], "bab_sat": bab_report["sat"]}}


def attack_generator(seed: int, attack: str, index: int) -> torch.Generator:
    """The random stream of ``attack`` on the batch starting at point ``index``: a function of (seed, attack, index)
    only, so a shard of whole batches run anywhere draws the starts of an undivided run."""
    digest = hashlib.sha256(f"{seed}/{attack}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def attack_and_certify(model, x_all, y_all, eps, attacks, certify, batch_size, classes, seed, progress, apgd_steps,
                       alpha_iterations, precision, input_shape, device, dtype, offset: int = 0) -> dict[str, Any]:
    """Clean accuracy, attacks and certificates of points ``x_all`` (global indices ``offset`` onwards), batch by
    batch: ``seconds``, ``conflicts`` (global indices), ``correct`` / ``attacked`` / ``cert`` masks."""
    n = x_all.shape[0]
    seconds: dict[str, Any] = {"clean": 0.0, "attack": dict.fromkeys(attacks, 0.0),
                               "certify": dict.fromkeys(certify, 0.0), "bab": 0.0}
    correct = torch.zeros(n, dtype=torch.bool)
    attacked = {a: torch.zeros(n, dtype=torch.bool) for a in attacks}
    cert = {m: torch.zeros(n, dtype=torch.bool) for m in certify}
    conflicts: list[int] = []
    bounded = None
    if certify:
        from verify import BoundedModel
        bounded = BoundedModel(model, input_shape, precision=precision)
    model64: list[torch.nn.Module] = []  # float64 copy, made on first need

    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        xb, yb = x_all[sl].to(device, dtype), y_all[sl].to(device)
        lo, hi = threat_box(xb, eps)
        t0 = time.perf_counter()
        with torch.no_grad():
            ok = ~fooled(model(xb), yb)
        correct[sl] = ok.cpu()
        seconds["clean"] += time.perf_counter() - t0
        witness: dict[str, Tensor] = {}  # attack -> points (the clean point where the attack did not run)
        idx = ok.nonzero()[:, 0]
        for a in attacks:
            t0 = time.perf_counter()
            adv = xb.clone()
            if idx.numel():
                # Clamp onto the shared box: an attack point must lie in the box the verifier bounds.
                adv[idx] = torch.minimum(torch.maximum(
                    _run_attack(a, model, xb[idx], yb[idx], eps, attack_generator(seed, a, offset + start),
                                apgd_steps), lo[idx]), hi[idx])
            with torch.no_grad():
                attacked[a][sl] = (fooled(model(adv), yb) | ~ok).cpu()
            witness[a] = adv
            seconds["attack"][a] += time.perf_counter() - t0
        for m in certify:
            t0 = time.perf_counter()
            C = margin_spec(yb, classes, torch.float64)
            lower, _ = bounded.bound(lo, hi, C=C, method=m, iterations=alpha_iterations,
                                              bound_upper=False)
            cert[m][sl] = (lower > 0).all(1).cpu()
            seconds["certify"][m] += time.perf_counter() - t0
        _check_batch(model, model64, xb, yb, start, ok, witness, attacked, cert, conflicts, precision, offset)
        if progress:
            done = sl.stop
            rob = _robust(correct[:done], attacked, done)
            cer = _any(cert, done)
            print(f"evaluate: {done}/{n} points, clean {float(correct[:done].double().mean()):.3f}"
                  + (f", robust {float(rob.double().mean()):.3f}" if attacks else "")
                  + (f", certified {float(cer.double().mean()):.3f}" if certify else "")
                  + f", {_total(seconds):.1f} s",
                  file=sys.stderr, flush=True)

    return {"seconds": seconds, "conflicts": conflicts, "correct": correct, "attacked": attacked, "cert": cert}


def _total(seconds: dict[str, Any]) -> float:
    """Total of a (nested) timing dict."""
    return sum(_total(v) if isinstance(v, dict) else float(v) for v in seconds.values())


def _any(masks: dict[str, Tensor], n: int) -> Tensor:
    out = torch.zeros(n, dtype=torch.bool)
    for v in masks.values():
        out |= v[:n]
    return out


def _robust(correct: Tensor, attacked: dict[str, Tensor], n: int) -> Tensor:
    return correct[:n] & ~_any(attacked, n)


def _check_batch(model, model64, xb, yb, start, ok, witness, attacked, cert, conflicts, precision, offset=0) -> None:
    """Certified ⇒ robust for every point of the batch. An attack point that contradicts a certificate is
    re-evaluated with a float64 copy of the model: the bounds hold for the exact (and the float64) network, so
    a float64 misclassification is a soundness bug; a float32-only one is the documented float32 rounding gap
    of ``precision='float64'`` bounds, and the certificate is withdrawn (the index is reported)."""
    b = xb.shape[0]
    sl = slice(start, start + b)
    certified = _any({m: v[sl] for m, v in cert.items()}, b)
    attacked_b = {a: v[sl] for a, v in attacked.items()}
    bad = certified & (~ok.cpu() | _any(attacked_b, b))
    for i in bad.nonzero()[:, 0].tolist():
        methods = [m for m, v in cert.items() if bool(v[start + i])]
        if not bool(ok[i]):
            source, point = "the clean point", xb[i]
        else:
            a = next(a for a, v in attacked_b.items() if bool(v[i]))
            source, point = f"attack {a}", witness[a][i]
        if not model64:
            model64.append(copy.deepcopy(model).double().eval())
        with torch.no_grad():
            logits64 = model64[0](point[None].double())
        if precision == "model" or bool(fooled(logits64, yb[i:i + 1])[0]):
            raise SoundnessError(
                f"point {offset + start + i}: certified by {', '.join(methods)} but {source} is misclassified "
                f"(float64 logits {[round(v, 6) for v in logits64[0].tolist()]}, label {int(yb[i])}): "
                "a soundness bug in the bounds or the attack box")
        conflicts.append(offset + start + i)
        for m in methods:
            cert[m][start + i] = False


def _bab(model, x_all, y_all, eps, bab, correct, attacked, cert, classes, input_shape, seed, bab_timeout, device,
         dtype, seconds, progress) -> dict[str, Any]:
    n = x_all.shape[0]
    unsat = torch.zeros(n, dtype=torch.bool)
    sat = torch.zeros(n, dtype=torch.bool)
    summary: dict[str, Any] = {"requested": bab, "points": [], "status": [], "seconds": [], "stage": []}
    if bab == 0:
        return {"unsat": unsat, "sat": sat, "summary": summary}
    undecided = (_robust(correct, attacked, n) & ~_any(cert, n)).nonzero()[:, 0][:bab].tolist()
    if not undecided:
        return {"unsat": unsat, "sat": sat, "summary": summary}
    from verify.pipeline import verify_instance

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clarke-eval-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        _export_onnx(model, input_shape, onnx_path)
        for k, i in enumerate(undecided):
            xb = x_all[i:i + 1].to(device, dtype)
            lo, hi = threat_box(xb, eps)
            spec = Path(tmp) / f"point_{i}.vnnlib"
            write_robustness_vnnlib(spec, lo, hi, int(y_all[i]), classes)
            res = verify_instance(onnx_path, spec, timeout=bab_timeout, seed=seed)
            summary["points"].append(i)
            summary["status"].append(res.status)
            summary["seconds"].append(res.seconds)
            summary["stage"].append(res.stage)
            if res.status == "unsat":
                unsat[i] = True
            elif res.status == "sat":  # a counterexample validated with onnxruntime
                sat[i] = True
            if progress:
                print(f"evaluate: bab {k + 1}/{len(undecided)}: point {i} {res.status} ({res.seconds:.1f} s)",
                      file=sys.stderr, flush=True)
    seconds["bab"] = time.perf_counter() - t0
    if bool((unsat & sat).any()) or bool((unsat & ~_robust(correct, attacked, n)).any()):
        i = int((unsat & (sat | ~_robust(correct, attacked, n))).nonzero()[0, 0])
        raise SoundnessError(f"point {i}: the complete verifier answered unsat but the point is attacked")
    summary.update(unsat=int(unsat.sum()), sat=int(sat.sum()), undecided=len(undecided) - int((unsat | sat).sum()))
    return {"unsat": unsat, "sat": sat, "summary": summary}


def _summary(points: dict[str, Any], y: Tensor, classes: int, attacks: tuple[str, ...], certify: tuple[str, ...],
             per_point: bool) -> dict[str, Any]:
    n = y.shape[0]
    correct, attacked, cert = points["correct"], points["attacked"], points["cert"]
    # A BaB counterexample is one more successful attack; a BaB unsat is one more certificate.
    robust = _robust(correct, attacked, n) & ~points["bab_sat"]
    certified = _any(cert, n) | points["bab_unsat"]
    bad = certified & ~robust
    if bool(bad.any()):
        raise SoundnessError(f"point {int(bad.nonzero()[0, 0])}: certified but attacked")

    def acc(v: Tensor) -> float | None:
        return float(v.double().mean()) if n else None

    robust_by = {a: correct & ~attacked[a] for a in attacks}
    per_class = {
        "count": torch.bincount(y, minlength=classes).tolist(),
        "clean": per_class_accuracy(correct, y, classes),
        "robust": per_class_accuracy(robust, y, classes) if attacks else None,
        "certified": per_class_accuracy(certified, y, classes) if certify or points["bab_unsat"].any() else None,
        "attack": {a: per_class_accuracy(v, y, classes) for a, v in robust_by.items()},
        "certified_by_method": {m: per_class_accuracy(v, y, classes) for m, v in cert.items()},
    }
    out: dict[str, Any] = {
        "clean_accuracy": acc(correct),
        "robust_accuracy": acc(robust) if attacks else None,
        "attack_accuracy": {a: acc(v) for a, v in robust_by.items()},
        "certified_accuracy": acc(certified) if certify or bool(points["bab_unsat"].any()) else None,
        "certified_by_method": {m: acc(v) for m, v in cert.items()},
        "per_class": per_class,
    }
    ra, ra_ids = tail_accuracy(per_class["robust"]) if attacks else (None, [])
    out["ra_tail_30"], out["ra_tail_30_classes"] = ra, ra_ids
    out["ra_tail_30_by_attack"] = {a: dict(zip(("value", "classes"), tail_accuracy(v), strict=True))
                                   for a, v in per_class["attack"].items()}
    ct, ct_ids = tail_accuracy(per_class["certified"]) if per_class["certified"] is not None else (None, [])
    out["certified_tail_30"], out["certified_tail_30_classes"] = ct, ct_ids
    out["clean_tail_30"], out["clean_tail_30_classes"] = tail_accuracy(per_class["clean"])
    if per_point:
        out["points"] = {"label": y.tolist(), "correct": correct.tolist(), "robust": robust.tolist(),
                         "certified": certified.tolist(),
                         "attacked": {a: v.tolist() for a, v in attacked.items()}}
    return out
