"""``TrainConfig``: everything that defines a training run, validated on construction, saved as config.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

CLASSIFICATION_METHODS = ("standard", "pgd-at", "trades", "mart", "gairat", "mail", "done", "ibp", "crown-ibp")
REGRESSION_METHODS = ("mse", "vib", "csib", "hsic")
METHODS = (*CLASSIFICATION_METHODS, *REGRESSION_METHODS)
NORMALIZATIONS = ("paper", "reference")
BAND_METHODS = ("ibp", "crown-ibp")
INNERS = ("pgd", "barrier", "ibp", "crown-ibp")
OPTIMIZERS = ("adam", "sgd")
DTYPES = ("float32", "float64")
ATTACK_METHODS = ("pgd-at", "trades", "mart", "gairat", "mail")

# Fields that may change between a run and its resumption without changing the trajectory.
RESUMABLE_CHANGES = ("device", "out")


class ConfigError(ValueError):
    """A configuration value out of range or an unknown name (one line)."""


@dataclass
class TrainConfig:
    """One training run. ``None`` for ``warmup_epochs`` / ``ramp_epochs`` / ``reweight_start`` means the
    method's default, resolved on construction (so config.json always holds concrete values)."""

    # data (models.data.load_dataset)
    data: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    subset: int | None = None
    test_subset: int | None = None
    imbalance: float = 1.0
    # model (models.zoo.build_model) and method
    model: str = "cnn-small"
    method: str = "standard"
    eps: float = 0.1
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    grad_clip: float = 0.0  # global-norm clipping; 0 = off
    # eps / kappa / beta schedules (certified methods default to 10 % warm-up, 50 % ramp)
    warmup_epochs: float | None = None
    ramp_epochs: float | None = None
    kappa_final: float = 0.5
    beta_final: float = 0.0
    loss_fusion: bool = False  # crown-ibp: one CROWN row per example (robust_train.certified)
    # attacks during training
    pgd_steps: int = 10
    pgd_step_size: float | None = None  # None: 2.5 eps / steps
    trades_beta: float = 6.0
    mart_beta: float = 6.0
    gairat_lambda: float = -1.0
    mail_bias: float = -1.5
    mail_slope: float = 1.0
    reweight_start: float | None = None  # fraction of training before GAIRAT / MAIL / DONE reweighting starts
    # DONE
    r: float = 1.0
    tau: float = 0.5
    inner: str = "pgd"
    barrier_c: float = 1e-3
    barrier_cg_iters: int = 10
    barrier_damping: float = 1e-3
    # regression (mse / vib / csib / hsic; robust_train.regression): the bottleneck weight beta, ramped linearly from 0
    # over ib_beta_warmup epochs; one kernel width for every CS kernel (None: median heuristic on a reference
    # batch, then fixed; sigma_x_scale multiplies the x width: the conditional divergence compares y and y_hat over
    # x-neighbourhoods of that size); the optional certified band-width penalty band_weight * mean(f_hi - f_lo) at eps
    ib_beta: float = 0.01
    ib_beta_warmup: float = 0.0
    sigma: float | None = None
    sigma_x_scale: float = 0.1  # validation chose 0.1 over 1 in 9 of 9 benchmark runs (3 data sets x 3 seeds)
    csib_normalization: str = "paper"
    csib_normalized_mi: bool = True
    band_weight: float = 0.0
    band_method: str = "ibp"
    # validation after every epoch
    val_pgd_steps: int = 10
    val_points: int = 1000
    # run
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    out: str = "runs/train"

    def __post_init__(self) -> None:
        if isinstance(self.r, str):  # "inf" from a command line
            try:
                self.r = float(self.r)
            except ValueError:
                raise ConfigError(f"r must be a number > 0 or inf, got {self.r!r}") from None
        self._check_names()
        self._check_numbers()
        self._check_task()
        ramped = self.certified or (self.task == "regression" and self.band_weight > 0)
        if self.warmup_epochs is None:
            self.warmup_epochs = round(0.1 * self.epochs, 6) if ramped else 0.0
        if self.ramp_epochs is None:
            self.ramp_epochs = round(0.5 * self.epochs, 6) if ramped else 0.0
        if self.reweight_start is None:
            # GAIRAT starts reweighting at epoch 60 of 120; MAIL fine-tunes from epoch 75 of 120 (authors' code).
            # DONE: PGD-AT for the first 70 % (measured on Fashion-MNIST: README, robust training)
            self.reweight_start = {"gairat": 0.5, "mail": 0.625, "done": 0.7}.get(self.method, 0.0)

    @property
    def task(self) -> str:
        """"regression" for the regression data sets (``models.regression_data``), else "classification"."""
        from models.regression_data import REGRESSION_DATASETS
        return "regression" if self.data in REGRESSION_DATASETS else "classification"

    def _check_task(self) -> None:
        """Method, data and model must belong to the same task."""
        from models.regressor import REGRESSION_MODELS
        regression = self.task == "regression"
        if (self.method in REGRESSION_METHODS) != regression:
            kind = "a regression" if self.method in REGRESSION_METHODS else "a classification"
            raise ConfigError(f"method {self.method!r} needs {kind} data set, got data {self.data!r}")
        if (self.model in REGRESSION_MODELS) != regression:
            want = ", ".join(REGRESSION_MODELS) if regression else "a classifier of the zoo"
            raise ConfigError(f"model {self.model!r} does not fit data {self.data!r}; choose {want}")

    @property
    def certified(self) -> bool:
        """True when the loss goes through the engine's bounds (IBP / CROWN-IBP, or DONE over them)."""
        return self.method in ("ibp", "crown-ibp") or (self.method == "done" and self.inner in ("ibp", "crown-ibp"))

    def _check_names(self) -> None:
        choices = {"method": METHODS, "inner": INNERS, "optimizer": OPTIMIZERS, "dtype": DTYPES,
                   "csib_normalization": NORMALIZATIONS, "band_method": BAND_METHODS}
        for name, allowed in choices.items():
            v = getattr(self, name)
            if v not in allowed:
                raise ConfigError(f"unknown {name} {v!r}; choose one of {', '.join(allowed)}")
        from robust_train.schedule import LR_SCHEDULES
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        for name in ("data", "model", "out"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{name} must be a non-empty string, got {v!r}")
        parse_device(self.device)
        known = (("data", ("models.data", "DATASETS"), ("models.regression_data", "REGRESSION_DATASETS")),
                 ("model", ("models.zoo", "MODELS"), ("models.regressor", "REGRESSION_MODELS")))
        for name, *sources in known:
            parts = [_known(module, attr) for module, attr in sources]
            allowed = None if any(p is None for p in parts) else tuple(n for p in parts for n in p)
            if allowed is not None and getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")

    def _check_numbers(self) -> None:
        ints = {"epochs": 1, "batch_size": 1, "pgd_steps": 0, "barrier_cg_iters": 0, "val_pgd_steps": 0,
                "val_points": 0, "seed": 0}
        for name, low in ints.items():
            _check_int(name, getattr(self, name), low)
        for name in ("subset", "test_subset"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        # (name, low, high, low inclusive, high inclusive)
        ranges = [("eps", 0, math.inf, True, False), ("lr", 0, math.inf, False, False),
                  ("val_fraction", 0, 1, True, False), ("imbalance", 1, math.inf, True, False),
                  ("momentum", 0, 1, True, False), ("weight_decay", 0, math.inf, True, False),
                  ("grad_clip", 0, math.inf, True, False), ("kappa_final", 0, 1, True, True),
                  ("beta_final", 0, 1, True, True), ("trades_beta", 0, math.inf, True, False),
                  ("mart_beta", 0, math.inf, True, False), ("gairat_lambda", -math.inf, math.inf, False, False),
                  ("mail_bias", -math.inf, math.inf, False, False), ("mail_slope", -math.inf, math.inf, False, False),
                  ("tau", 0, 1, False, True), ("barrier_c", 0, math.inf, False, False),
                  ("barrier_damping", 0, math.inf, True, False), ("ib_beta", 0, math.inf, True, False),
                  ("ib_beta_warmup", 0, math.inf, True, False), ("band_weight", 0, math.inf, True, False),
                  ("sigma_x_scale", 0, math.inf, False, False)]
        optional = [("warmup_epochs", 0, math.inf, True, False), ("ramp_epochs", 0, math.inf, True, False),
                    ("reweight_start", 0, 1, True, True), ("pgd_step_size", 0, math.inf, False, False),
                    ("sigma", 0, math.inf, False, False)]
        for name, lo, hi, lo_in, hi_in in ranges + [o for o in optional if getattr(self, o[0]) is not None]:
            _check_float(name, getattr(self, name), lo, hi, lo_in, hi_in)
        for flag in ("csib_normalized_mi", "loss_fusion"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        r = self.r
        if not _is_number(r) or math.isnan(r) or r <= 0:
            raise ConfigError(f"r must be a number > 0 or inf, got {r!r}")
        if self.seed >= 2**63:
            raise ConfigError(f"seed must be < 2**63, got {self.seed}")

    # -- persistence -------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}")
        return cls(**raw)

    def differences(self, other: TrainConfig, ignore: tuple[str, ...] = RESUMABLE_CHANGES) -> list[str]:
        """Names of the fields that differ (``ignore`` left out)."""
        a, b = asdict(self), asdict(other)
        return [k for k in a if k not in ignore and a[k] != b[k]]


def load_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig saved in a run directory (a ConfigError naming the file if missing or malformed)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a training run directory (no config.json)")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        return TrainConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: malformed config ({e})") from None
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed config ({' '.join(str(e).split())})") from None


def parse_device(name: str) -> torch.device | None:
    """The device a name asks for, None for "auto"; a ConfigError for anything but auto / cpu / cuda[:N]."""
    if name == "auto":
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    return dev


def _known(module: str, attr: str) -> tuple[str, ...] | None:
    """The names a models module offers (None if that module cannot be imported)."""
    import importlib
    try:
        return tuple(getattr(importlib.import_module(module), attr))
    except (ImportError, AttributeError):
        return None


def _is_number(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _check_int(name: str, v, low: int) -> None:
    if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")


def _check_float(name: str, v, lo: float, hi: float, lo_in: bool, hi_in: bool) -> None:
    ok = _is_number(v) and math.isfinite(v)
    if ok:
        ok = (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)
    if not ok:
        left, right = "[" if lo_in else "(", "]" if hi_in else ")"
        raise ConfigError(f"{name} must be a finite number in {left}{lo}, {hi}{right}, got {v!r}")
