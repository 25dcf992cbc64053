"""Evaluation of robust training: APGD (Croce & Hein 2020), robust / certified / per-class accuracy, RA-Tail-30,
the certified-implies-robust check, BaB verdicts, and the PNG plots."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import verify
from robust_train.apgd import apgd, apgd_targeted, checkpoints, dlr_loss, dlr_targeted_loss, fooled
from robust_train.attacks import pgd
from robust_train.evaluate import (
    SoundnessError,
    evaluate,
    margin_spec,
    per_class_accuracy,
    tail_accuracy,
    write_robustness_vnnlib,
)
from robust_train.plots import plot_per_class, plot_training_curves, read_metrics

EPS = 0.1
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:1400], y[:1400], x[1400:1600], y[1400:1600]


@pytest.fixture(scope="module")
def trained(digits) -> nn.Sequential:
    """A 64-32-10 MLP: 100 clean Adam steps, then 200 of PGD-3 adversarial training at EPS (under a second)."""
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    for it in range(300):
        b = torch.randint(0, xtr.shape[0], (256,), generator=g)
        xa = pgd(model, xtr[b], ytr[b], EPS, steps=3, generator=g) if it >= 100 else xtr[b]
        loss = F.cross_entropy(model(xa), ytr[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def report(trained, digits) -> dict:
    _, _, xte, yte = digits
    return evaluate(trained, (xte, yte), EPS, attacks=("pgd20", "apgd-ce", "apgd-t"), certify=("crown",),
                    per_point=True)


# ------------------------------------------------------------------------------------------- APGD


def test_checkpoints_follow_the_paper():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (exact rationals: 0.22 * 100 is 22, not 23).
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == []


def test_dlr_losses_hand_computed():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    y = torch.tensor([0])
    assert dlr_loss(z, y).item() == pytest.approx(-(3 - 2) / (3 - 1))
    assert dlr_targeted_loss(z, y, torch.tensor([1])).item() == pytest.approx(-(3 - 1) / (3 - (1 + 0) / 2))
    assert fooled(torch.tensor([[1.0, 1.0], [2.0, 1.0]]), torch.tensor([0, 0])).tolist() == [True, False]


@pytest.mark.parametrize("eps", [0.0, 0.03, 0.3])
def test_apgd_never_leaves_the_ball_or_the_unit_box(eps):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 5))
    x = torch.rand(40, 1, 4, 4)
    x[:10] = x[:10].round()  # pixels exactly at 0 and 1: the box clips there
    y = torch.randint(0, 5, (40,))
    g = torch.Generator().manual_seed(0)
    runs = [apgd(model, x, y, eps, steps=15, generator=g), apgd(model, x, y, eps, steps=15, loss="dlr"),
            apgd(model, x, y, eps, steps=15, loss=lambda z, t: -z.gather(1, t[:, None])[:, 0], random_start=False),
            apgd_targeted(model, x, y, eps, steps=10, generator=g)]
    for adv in runs:
        assert adv.shape == x.shape and adv.dtype == x.dtype
        assert float((adv.double() - x.double()).abs().max()) <= eps  # exact, no tolerance
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert not any(p.grad is not None for p in model.parameters())


def test_apgd_at_least_as_strong_as_pgd20(report):
    acc = report["attack_accuracy"]
    assert acc["apgd-ce"] <= acc["pgd20"] + 0.01
    assert acc["apgd-t"] <= acc["pgd20"] + 0.01
    pts = report["points"]
    pgd_only = apgd_only = 0
    for p, a, t in zip(pts["attacked"]["pgd20"], pts["attacked"]["apgd-ce"], pts["attacked"]["apgd-t"],
                       strict=True):
        pgd_only += p and not (a or t)
        apgd_only += (a or t) and not p
    assert pgd_only <= apgd_only + 2, (pgd_only, apgd_only)
    assert report["robust_accuracy"] <= min(acc.values())
    assert 0.3 < report["robust_accuracy"] < report["clean_accuracy"]  # a non-trivial model


def test_apgd_agrees_with_torchattacks(trained, digits):
    ta = pytest.importorskip("torchattacks")
    _, _, xte, yte = digits
    ours = 1 - fooled(trained(apgd(trained, xte, yte, EPS, generator=torch.Generator().manual_seed(0))),
                      yte).float().mean().item()
    theirs = 1 - fooled(trained(ta.APGD(trained, eps=EPS, steps=100, loss="ce", seed=0)(xte, yte)),
                        yte).float().mean().item()
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


# ------------------------------------------------------------------------------------------- certified vs robust


def test_certified_implies_robust_per_point(report):
    pts = report["points"]
    for i, (c, r) in enumerate(zip(pts["certified"], pts["robust"], strict=True)):
        assert r or not c, i
    assert 0.3 < report["certified_accuracy"] <= report["robust_accuracy"]
    assert report["certified_by_method"]["crown"] == report["certified_accuracy"]
    assert report["rounding_conflicts"] == []


def test_forged_certificate_raises_naming_the_point(trained, digits, monkeypatch):
    _, _, xte, yte = digits
    x, y = xte[:60], yte[:60]
    honest = evaluate(trained, (x, y), EPS, attacks=("pgd20",), certify=(), per_point=True)
    first_bad = honest["points"]["robust"].index(False)

    def forged(self, x_lo, x_hi, C=None, method="crown", **options):
        ones = torch.ones(C.shape[0], C.shape[1], dtype=torch.float32)
        return ones, ones  # claims every margin positive

    monkeypatch.setattr(verify.BoundedModel, "bound", forged)
    with pytest.raises(SoundnessError, match=rf"^point {first_bad}: certified by crown"):
        evaluate(trained, (x, y), EPS, attacks=("pgd20",), certify=("crown",))


@pytest.mark.parametrize("precision", ["float64", "model"])
def test_float32_tie_is_a_rounding_conflict_not_a_certificate(precision):
    # Logits (1 + 1e-9 x, 1): the real margin is 1e-9 x > 0 on the whole box, so float64 bounds certify it,
    # but float32 rounds 1 + 5e-10 to 1, a tie, i.e. misclassified. The certificate is withdrawn and the
    # point reported; float32-precision bounds ("model") contain the float32 evaluation and do not certify.
    model = nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e-9], [0.0]]))
        model[0].bias.copy_(torch.tensor([1.0, 1.0]))
    r = evaluate(model, (torch.tensor([[0.5]]), torch.tensor([0])), 0.1, attacks=("pgd20",), certify=("crown",),
                 precision=precision)
    assert r["clean_accuracy"] == 0.0 and r["certified_accuracy"] == 0.0
    assert r["rounding_conflicts"] == ([0] if precision == "float64" else [])


def test_margin_spec_rows():
    C = margin_spec(torch.tensor([2, 0]), 3)
    assert C[0].tolist() == [[-1, 0, 1], [0, -1, 1]]
    assert C[1].tolist() == [[1, -1, 0], [1, 0, -1]]


def test_bab_verdicts_consistent_with_attacks(trained, digits, report):
    _, _, xte, yte = digits
    # IBP leaves many points open; without attacks the open points include attackable ones, so BaB must
    # answer both ways: unsat only where the attacks failed, sat (validated by onnxruntime) never where
    # the bounds certified.
    res = evaluate(trained, (xte, yte), EPS, attacks=(), certify=("ibp",), bab=5, bab_timeout=20, per_point=True)
    bab = res["bab"]
    assert len(bab["points"]) == 5 and set(bab["status"]) <= {"sat", "unsat", "timeout", "unknown"}
    assert bab["unsat"] >= 1 and bab["sat"] >= 1, bab
    for i, status in zip(bab["points"], bab["status"], strict=True):
        if status == "unsat":
            assert report["points"]["robust"][i], i  # attack-robust in the full evaluation
            assert res["points"]["certified"][i]
        if status == "sat":
            assert not report["points"]["certified"][i] and not res["points"]["robust"][i], i
    assert res["certified_accuracy"] == pytest.approx(res["certified_by_method"]["ibp"] + bab["unsat"] / 200)
    # Points that CROWN leaves open and PGD cannot break: ReLU-split BaB decides them, never as sat.
    res = evaluate(trained, (xte, yte), EPS, attacks=("pgd20",), certify=("crown",), bab=2, bab_timeout=20,
                   per_point=True)
    assert res["bab"]["status"] == ["unsat", "unsat"], res["bab"]
    for i in res["bab"]["points"]:
        assert report["points"]["robust"][i] and res["points"]["certified"][i], i
    assert res["certified_accuracy"] > res["certified_by_method"]["crown"]


def test_robustness_vnnlib_roundtrip(tmp_path):
    from verify.vnnlib import parse_vnnlib

    lo = torch.tensor([0.1, 0.0, 1 / 3], dtype=torch.float32)
    hi = lo + 0.25
    path = tmp_path / "p.vnnlib"
    write_robustness_vnnlib(path, lo, hi, 1, 3)
    spec = parse_vnnlib(path, n_inputs=3, n_outputs=3)
    box = spec.properties[0].box
    assert box.lo.tolist() == lo.double().tolist() and box.hi.tolist() == hi.double().tolist()
    assert spec.is_counterexample(lo.double().numpy(), [0.0, 1.0, 1.0])  # Y_2 >= Y_1
    assert not spec.is_counterexample(lo.double().numpy(), [0.0, 1.0, 0.5])


# ------------------------------------------------------------------------------------------- per-class, tail


def test_tail_accuracy_hand_computed():
    acc = [0.9, 0.2, 0.5, 0.2, 1.0, 0.7, 0.4, 0.8, 0.6, 0.95]
    value, ids = tail_accuracy(acc)  # ceil(0.3 * 10) = 3: classes 1, 3 (tie, by id), 6
    assert ids == [1, 3, 6] and value == pytest.approx((0.2 + 0.2 + 0.4) / 3)
    value, ids = tail_accuracy([0.5, None, 0.1, 0.3])  # 3 classes present: ceil(0.9) = 1
    assert ids == [2] and value == pytest.approx(0.1)
    assert tail_accuracy([0.4, 0.3, 0.2, 0.1]) == (pytest.approx(0.15), [3, 2])  # ceil(1.2) = 2
    assert per_class_accuracy(torch.tensor([True, False, True]), torch.tensor([0, 0, 2]), 4) == [0.5, None, 1.0,
                                                                                                 None]


def test_per_class_numbers_on_a_toy_model(tmp_path):
    # Logits (x0, x1, 0.5): class 0 wins where x0 is largest, class 2 where both coordinates stay below 0.5.
    # At eps = 0.1 a point is robust iff its margin exceeds 0.2 (both logits can move by 0.1), and the
    # network is linear, so CROWN is exact: certified = robust.
    model = nn.Sequential(nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    x = torch.tensor([[0.9, 0.1], [0.55, 0.1],               # class 0: robust, margin 0.05 vs class 2
                      [0.1, 0.9], [0.9, 0.2],                # class 1: robust, clean error
                      [0.1, 0.1], [0.45, 0.1], [0.2, 0.2]])  # class 2: robust, margin 0.05, robust
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    r = evaluate(model, (x, y), 0.1, attacks=("pgd20", "apgd-ce", "apgd-t"), certify=("crown", "ibp"),
                 class_names=["a", "b", "c"])
    pc = r["per_class"]
    assert pc["count"] == [2, 2, 3]
    assert pc["clean"] == [1.0, 0.5, 1.0]
    assert pc["robust"] == pytest.approx([0.5, 0.5, 2 / 3])
    assert pc["certified"] == pytest.approx([0.5, 0.5, 2 / 3])
    assert r["clean_accuracy"] == pytest.approx(6 / 7)
    assert r["robust_accuracy"] == pytest.approx(4 / 7) and r["certified_accuracy"] == pytest.approx(4 / 7)
    assert r["ra_tail_30"] == pytest.approx(0.5) and r["ra_tail_30_classes"] == [0]  # ceil(0.9) = 1; tie by id
    assert r["ra_tail_30_by_attack"]["pgd20"] == {"value": pytest.approx(0.5), "classes": [0]}
    assert r["class_names"] == ["a", "b", "c"] and r["n"] == 7
    assert set(r["seconds"]) >= {"clean", "attack", "certify", "bab", "total"}
    import json
    json.dumps(r)  # JSON-able as returned
    png = plot_per_class(r, tmp_path / "per_class.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_evaluate_rejects_bad_options(trained, digits):
    _, _, xte, yte = digits
    for kw in ({"eps": math.nan}, {"eps": -0.1}, {"eps": EPS, "attacks": ("fgsm",)},
               {"eps": EPS, "certify": ("mip",)}, {"eps": EPS, "bab": -1}):
        with pytest.raises(ValueError):
            evaluate(trained, (xte[:4], yte[:4]), **kw)
    with pytest.raises(ValueError, match="labels"):
        evaluate(trained, (xte[:4], torch.tensor([0, 1, 2, 10])), EPS)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(trained, (xte[:4] * 2, yte[:4]), EPS)
    assert trained.training is False and all(p.requires_grad for p in trained.parameters())


# ------------------------------------------------------------------------------------------- plots


def test_training_curves_png(tmp_path):
    csv = tmp_path / "metrics.csv"
    # The trainer's columns (robust_train/runs.py); log_u is empty unless the method is DONE.
    csv.write_text("epoch,lr,eps,kappa,beta,train_loss,train_acc,train_robust_acc,val_clean_acc,val_pgd_acc,"
                   "val_ibp_certified_acc,log_u,seconds,val_seconds,method\n"
                   "1,0.01,0.05,1,,2.1,0.30,0.10,0.35,0.12,0.05,,1.5,0.2,pgd-at\n"
                   "2,0.01,0.1,0.5,,1.2,0.60,0.30,0.62,0.31,0.20,,1.4,0.2,pgd-at\n"
                   "3,,0.1,0,,0.8,0.75,0.41,0.74,0.45,0.33,,1.6,0.2,pgd-at\n")
    data = read_metrics(csv)
    assert "method" not in data and "log_u" not in data and "beta" not in data  # no number at all
    assert math.isnan(data["lr"][2]) and data["epoch"] == [1.0, 2.0, 3.0]
    for out, cols in ((tmp_path / "all.png", None), (tmp_path / "sub.png", ["val_clean_acc", "val_pgd_acc"])):
        png = plot_training_curves(csv, out, columns=cols, title="run")
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    with pytest.raises(ValueError, match=re.escape("'nope'")):
        plot_training_curves(csv, tmp_path / "x.png", columns=["nope"])
