"""One training loop for every method (standard, PGD-AT, TRADES, MART, GAIRAT, MAIL, DONE, IBP, CROWN-IBP).

Every random choice derives from a generator keyed by ``(seed, purpose, epoch, step)``: the data order, the PGD
start noise (drawn for the whole global batch, so any number of ranks attacks exactly as one process would) and the
validation attack. A run resumed from its epoch-k checkpoint therefore ends with the same weights as an
uninterrupted one. Under torchrun every rank trains on its shard of each global batch; gradients are summed
(see ``robust_train.distributed``) and only rank 0 writes files.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from robust_train import runs
from robust_train.attacks import default_step_size, pgd_from
from robust_train.config import ConfigError, TrainConfig, parse_device
from robust_train.distributed import Collective, setup, shard, teardown
from robust_train.methods import Batch, Method, build_method
from robust_train.schedule import RampSchedule, lr_factor

# Purposes of the keyed generators.
_PERM, _NOISE, _VAL, _LATENT = 1, 2, 3, 4


def keyed_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, *keys)`` through numpy's SeedSequence (independent streams)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def resolve_device(name: str) -> torch.device:
    """"auto": this process's GPU (LOCAL_RANK under torchrun) when CUDA is available, else the CPU; a GPU that is
    not there is a ConfigError, never a silent CPU run."""
    dev = parse_device(name)
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA GPU is available (torch {torch.__version__})")
    index = dev.index if dev.index is not None else int(os.environ.get("LOCAL_RANK", 0))
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device cuda:{index} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", index)


def load_splits(cfg: TrainConfig):
    """``models.data.load_dataset`` (``models.regression_data.load_regression`` for regression) with the config's
    data options."""
    if cfg.task == "regression":
        from models.regression_data import load_regression
        return load_regression(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction,
                               subset=cfg.subset, data_dir=cfg.data_dir)
    from models.data import load_dataset
    return load_dataset(cfg.data, data_dir=cfg.data_dir, seed=cfg.seed, val_fraction=cfg.val_fraction,
                        subset=cfg.subset, test_subset=cfg.test_subset, imbalance=cfg.imbalance)


def build_model(cfg: TrainConfig, input_shape: tuple[int, ...], classes: int) -> nn.Module:
    if cfg.task == "regression":
        from models.regressor import build_regressor
        return build_regressor(cfg.model, tuple(input_shape), seed=cfg.seed)
    from models.zoo import build_model as zoo_build
    return zoo_build(cfg.model, tuple(input_shape), classes, seed=cfg.seed)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _tensors(dataset) -> tuple[Tensor, Tensor]:
    """(x, y) of a TensorDataset (or any dataset of pairs)."""
    if hasattr(dataset, "tensors"):
        x, y = dataset.tensors[:2]
        return x, y
    xs, ys = zip(*[dataset[i] for i in range(len(dataset))], strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


class _Stats:
    """Per-epoch sums, all-reduced once at the epoch's end."""

    def __init__(self, regression: bool = False):
        self.v = torch.zeros(6, dtype=torch.float64)  # loss sum, steps, clean correct, clean n, robust correct, n
        self.regression = regression  # then v[2], v[3]: sum of squared errors, number of target values

    def add(self, loss: Tensor, y: Tensor, clean: Tensor | None, robust: Tensor | None) -> None:
        self.v[0] += float(loss.detach())
        if clean is not None and self.regression:
            self.v[2] += float((clean.double() - y.double()).square().sum())
            self.v[3] += y.numel()
        elif clean is not None:
            self.v[2] += float((clean.argmax(1) == y).sum())
            self.v[3] += y.shape[0]
        if robust is not None:
            self.v[4] += float(robust.sum())
            self.v[5] += y.shape[0]

    def reduce(self, collective: Collective, steps: int, device: torch.device) -> dict:
        v = collective.sum(self.v.to(device)).cpu()
        # each rank's loss is its share of the batch mean: the sum over ranks is the batch mean
        if self.regression:
            return {"train_loss": float(v[0]) / max(steps, 1),
                    "train_rmse": math.sqrt(float(v[2] / v[3])) if v[3] else None}
        return {"train_loss": float(v[0]) / max(steps, 1),
                "train_acc": float(v[2] / v[3]) if v[3] else None,
                "train_robust_acc": float(v[4] / v[5]) if v[5] else None}


def train(config: TrainConfig, splits=None, progress: bool = True, *, resume: bool = False, overwrite: bool = False,
          model_fn: Callable[[], nn.Module] | None = None) -> Path:
    """Train ``config.method`` and write the run directory ``config.out`` (see ``robust_train.runs``); returns it.

    ``splits``: an object with ``.train`` / ``.val`` TensorDatasets (and ``.classes``, ``.input_shape``,
    ``.class_names``), default ``models.data.load_dataset`` of the config. ``model_fn``: builds the network
    (default ``models.zoo.build_model(config.model, ...)``). ``resume``: continue an existing run from its last
    checkpoint (the config must match but for device / out); ``overwrite``: replace an existing run directory.
    Under torchrun (or inside an initialised process group) the same call trains data-parallel.
    """
    cfg = config
    device = resolve_device(cfg.device)
    collective, created = setup(device)
    try:
        return _train(cfg, splits, progress, resume, overwrite, model_fn, device, collective)
    finally:
        teardown(created)


def _train(cfg: TrainConfig, splits, progress: bool, resume: bool, overwrite: bool,
           model_fn: Callable[[], nn.Module] | None, device: torch.device, collective: Collective) -> Path:
    out = Path(cfg.out)
    lead = collective.rank == 0
    runs.prepare(out, cfg, resume=resume, overwrite=overwrite, write=False)  # every rank checks first
    collective.barrier()
    if splits is None:
        splits = load_splits(cfg)
    x_train, y_train = _tensors(splits.train)
    x_val, y_val = _tensors(splits.val)
    input_shape = tuple(getattr(splits, "input_shape", None) or x_train.shape[1:])
    regression = cfg.task == "regression"
    classes = 1 if regression else int(getattr(splits, "classes", None) or int(y_train.max()) + 1)
    dtype = getattr(torch, cfg.dtype)
    n = x_train.shape[0]
    if n < collective.world:
        raise ConfigError(f"the training set has {n} examples, fewer than the {collective.world} processes")
    batch = min(cfg.batch_size, n)
    if batch < collective.world:
        raise ConfigError(f"batch_size {batch} is smaller than the number of processes {collective.world}")
    steps_per_epoch = n // batch  # the partial last batch is dropped: every step has the full global batch
    total_steps = steps_per_epoch * cfg.epochs
    x_train, y_train = x_train.to(device, dtype), y_train.to(device)
    x_val, y_val = x_val.to(device, dtype), y_val.to(device)

    torch.manual_seed(cfg.seed)
    model = (model_fn() if model_fn is not None else build_model(cfg, input_shape, classes)).to(device, dtype)
    collective.broadcast_module(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg.lr_schedule, s, total_steps))
    domain = (0.0, 1.0)
    if regression:
        from robust_train.regression import build_regression_method, input_domain, reference_widths
        domain = input_domain(splits)
        method = build_regression_method(cfg, model, input_shape, collective,
                                         reference_widths(cfg, model, x_train, y_train), domain)
    else:
        method = build_method(cfg, model, input_shape, collective)
    best = _Selection(regression, cfg.eps if regression and cfg.band_weight > 0 else 0.0)
    ramp = RampSchedule(cfg.eps, cfg.warmup_epochs, cfg.ramp_epochs, cfg.kappa_final, cfg.beta_final)

    start_epoch = 0
    ckpt = runs.latest_checkpoint(out) if resume and out.is_dir() else None
    if lead:
        if ckpt is None:
            runs.prepare(out, cfg, resume=resume, overwrite=overwrite, write=True)
            if resume:
                runs.truncate_metrics(out, 0)
    collective.barrier()
    if ckpt is not None:
        state = runs.load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        method.load_state_dict(state.get("method", {}))
        best.load_state_dict(state.get("best", {}))
        runs.set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        if lead:
            runs.truncate_metrics(out, start_epoch)

    bar = _ProgressBar(cfg, steps_per_epoch, start_epoch, enabled=progress and lead)
    with bar:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            stats = _Stats(regression)
            perm = torch.randperm(n, generator=keyed_generator(cfg.seed, _PERM, epoch)).to(device)
            for step in range(steps_per_epoch):
                t = epoch + step / steps_per_epoch
                idx = perm[step * batch:(step + 1) * batch]
                rows = shard(batch, collective.rank, collective.world)
                b = _make_batch(cfg, x_train, y_train, idx, rows, batch, ramp, t,
                                keyed_generator(cfg.seed, _NOISE, epoch, step),
                                functools.partial(keyed_generator, cfg.seed, _LATENT, epoch, step))
                res = method(b)
                optimizer.zero_grad(set_to_none=True)
                res.loss.backward()
                collective.sum_grads(params)
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                stats.add(res.loss, b.y, res.clean_logits, res.robust)
                bar.step(float(res.loss.detach()) * collective.world, epoch)
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "eps": b.eps, "seconds": seconds,
                   **stats.reduce(collective, steps_per_epoch, device)}
            if cfg.certified:  # kappa and beta mean nothing to the other methods
                row.update(kappa=b.kappa, beta=b.beta)
            if regression:
                row["ib_beta"] = method.beta_at(b)
            else:
                row["log_u"] = method.state_dict().get("log_u")
            if not math.isfinite(row["train_loss"]):
                raise FloatingPointError(f"non-finite training loss in epoch {epoch + 1}")
            if lead:
                t1 = time.perf_counter()
                if regression:
                    from robust_train.regression import validate_regression
                    row.update(validate_regression(cfg, model, x_val, y_val, domain,
                                                   keyed_generator(cfg.seed, _VAL, epoch)))
                else:
                    row.update(validate(cfg, model, method, x_val, y_val, epoch))
                row["val_seconds"] = time.perf_counter() - t1
                best.offer(epoch + 1, row, model)
                runs.save_checkpoint(out, epoch + 1, {
                    "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "method": method.state_dict(), "rng": runs.rng_state(),
                    "global_step": (epoch + 1) * steps_per_epoch, "config": cfg.to_json(),
                    "best": best.state_dict()})
                runs.append_metrics(out, row)
                bar.epoch_done(row)
    if lead:
        best.restore(model)
        runs.save_final(out, model, cfg, input_shape, classes, getattr(splits, "class_names", None),
                        zoo=model_fn is None, selected_epoch=best.epoch)
    collective.barrier()
    return out


class _Selection:
    """Model selection on the validation split (regression: the epoch of least ``val_rmse``; its weights become
    the run's final model). Classification keeps the last epoch (``epoch`` stays None). With a certified
    band-width penalty only epochs trained at the full eps compete (an epoch of the eps warm-up would otherwise
    win on RMSE and the run would be the unpenalised network); if none exists, the last epoch is kept."""

    def __init__(self, active: bool, min_eps: float = 0.0):
        self.active, self.min_eps = active, min_eps
        self.epoch: int | None = None
        self.value = math.inf
        self.weights: dict | None = None

    def offer(self, epoch: int, row: dict, model: nn.Module) -> None:
        v = row.get("val_rmse")
        if row.get("eps", 0.0) < self.min_eps:
            return
        if self.active and v is not None and math.isfinite(v) and v < self.value:
            self.epoch, self.value = epoch, v
            self.weights = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self.weights is not None:
            model.load_state_dict(self.weights)

    def state_dict(self) -> dict:
        return {} if self.epoch is None else {"epoch": self.epoch, "value": self.value, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.epoch, self.value, self.weights = int(state["epoch"]), float(state["value"]), state["weights"]


def _make_batch(cfg: TrainConfig, x: Tensor, y: Tensor, idx: Tensor, rows: slice, n_global: int,
                ramp: RampSchedule, t: float, gen: torch.Generator,
                latent_gen: Callable[[], torch.Generator] | None = None) -> Batch:
    """This rank's rows of the global batch ``idx``, with start noise (and latent noise) drawn for the whole
    global batch."""
    mine = idx[rows]
    xb, yb = x[mine], y[mine]
    eps = ramp.eps_at(t)
    shape = (n_global, *x.shape[1:])

    def noise(kind: str) -> Tensor:
        if kind == "normal":
            full = 0.001 * torch.randn(shape, generator=gen, dtype=x.dtype)
        else:
            full = (2 * torch.rand(shape, generator=gen, dtype=x.dtype) - 1) * eps
        return full[rows].to(x.device)

    def latent(dim: int) -> Tensor:
        full = torch.randn((n_global, dim), generator=latent_gen(), dtype=x.dtype)
        return full[rows].to(x.device)

    return Batch(xb, yb, n_global, eps, ramp.kappa_at(t), ramp.beta_at(t), t / cfg.epochs, noise,
                 latent if latent_gen is not None else None)


def validate(cfg: TrainConfig, model: nn.Module, method: Method, x: Tensor, y: Tensor, epoch: int) -> dict:
    """Clean accuracy on the validation set; PGD accuracy (``val_pgd_steps`` steps at ``eps``) and, for certified
    methods, IBP-certified accuracy on its first ``val_points`` examples."""
    was = model.training
    model.eval()
    try:
        out: dict = {"val_clean_acc": None, "val_pgd_acc": None, "val_ibp_certified_acc": None}
        if x.shape[0] == 0:
            return out
        with torch.no_grad():
            out["val_clean_acc"] = float(sum((model(xb).argmax(1) == yb).sum() for xb, yb in _chunks(x, y))) / len(y)
        m = min(cfg.val_points, x.shape[0])
        if m == 0:
            return out
        xs, ys = x[:m], y[:m]
        gen = keyed_generator(cfg.seed, _VAL, epoch)
        correct = 0
        for xb, yb in _chunks(xs, ys):
            noise = (2 * torch.rand(xb.shape, generator=gen, dtype=xb.dtype) - 1).to(xb.device) * cfg.eps
            x_adv, _ = pgd_from(model, xb, yb, cfg.eps, noise if cfg.eps > 0 else None, steps=cfg.val_pgd_steps,
                                step_size=default_step_size(cfg.eps, cfg.val_pgd_steps))
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == yb).sum())
        out["val_pgd_acc"] = correct / m
        bound = getattr(method, "bound", None) or getattr(getattr(method, "certified", None), "bound", None)
        if bound is not None:
            with torch.no_grad():
                cert = sum(int((bound.margins(xb, yb, cfg.eps, beta=0.0) > 0).all(1).sum())
                           for xb, yb in _chunks(xs, ys))
            out["val_ibp_certified_acc"] = cert / m
        return out
    finally:
        model.train(was)


def _chunks(x: Tensor, y: Tensor, size: int = 256):
    for i in range(0, x.shape[0], size):
        yield x[i:i + size], y[i:i + size]


class _ProgressBar:
    """A rich progress bar on stderr (rank 0): one task per epoch with the running loss and the epoch's metrics."""

    def __init__(self, cfg: TrainConfig, steps: int, start_epoch: int, enabled: bool):
        self.cfg, self.steps, self.enabled = cfg, steps, enabled
        self.progress = None
        self.task = None
        self.loss_sum, self.count = 0.0, 0
        self.start_epoch = start_epoch

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     console=Console(file=sys.stderr), transient=False)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def step(self, loss: float, epoch: int) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task(f"{self.cfg.method} epoch {epoch + 1}/{self.cfg.epochs}",
                                               total=self.steps, info="")
            self.loss_sum, self.count = 0.0, 0
        self.loss_sum += loss
        self.count += 1
        self.progress.update(self.task, advance=1, info=f"loss {self.loss_sum / self.count:.4f}")

    def epoch_done(self, row: dict) -> None:
        if self.progress is None or self.task is None:
            return
        parts = [f"loss {row['train_loss']:.4f}"]
        for key, name in (("train_acc", "acc"), ("val_clean_acc", "val"), ("val_pgd_acc", "val-pgd"),
                          ("val_ibp_certified_acc", "val-ibp")):
            if row.get(key) is not None:
                parts.append(f"{name} {100 * row[key]:.1f}%")
        for key, name in (("val_rmse", "val-rmse"), ("val_pgd_rmse", "val-pgd-rmse")):
            if row.get(key) is not None:
                parts.append(f"{name} {row[key]:.4f}")
        self.progress.update(self.task, info=" ".join(parts))
        self.task = None
