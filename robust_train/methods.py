"""The training methods as per-step loss functions on one rank's shard of a global batch.

Each method returns ``loss = sum_{i in shard} w_i l_i / n_global`` (summed over ranks: the joint-batch mean), the
clean logits when they were computed, and which examples were robust during training (at the PGD point, or
certified by the bound). Attacks run with the model in eval mode (as the reference implementations do).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robust_train import losses as L
from robust_train.attacks import default_step_size, pgd_from
from robust_train.barrier import implicit_losses, solve_inner
from robust_train.certified import CertifiedLoss
from robust_train.config import TrainConfig
from robust_train.distributed import Collective
from robust_train.done import DoneNormaliser


@dataclass
class Batch:
    """One rank's shard of a global batch and the scheduled values at this step."""

    x: Tensor
    y: Tensor
    n_global: int
    eps: float
    kappa: float
    beta: float
    progress: float  # fraction of training done, in [0, 1]
    noise: Callable[[str], Tensor]  # start noise for these rows ("uniform" in the eps-ball or "normal" * 0.001)
    latent_noise: Callable[[int], Tensor] | None = None  # N(0, I) draws [rows, dim] for a stochastic encoder


@dataclass
class StepResult:
    loss: Tensor
    clean_logits: Tensor | None = None
    robust: Tensor | None = None  # bool per example


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class Method:
    """Base: no state."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, collective: Collective):
        self.cfg, self.model, self.collective = cfg, model, collective

    def __call__(self, batch: Batch) -> StepResult:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def attack(self, batch: Batch, loss: str = "ce", noise: str = "uniform", track: bool = False
               ) -> tuple[Tensor, Tensor | None]:
        """PGD-K at the scheduled eps from the given start noise."""
        cfg = self.cfg
        if batch.eps == 0 and not track:
            return batch.x, None
        step = cfg.pgd_step_size if cfg.pgd_step_size is not None else default_step_size(batch.eps, cfg.pgd_steps)
        with eval_mode(self.model):
            return pgd_from(self.model, batch.x, batch.y, batch.eps, batch.noise(noise), steps=cfg.pgd_steps,
                            step_size=step, loss=loss, track_correct=track)

    def clean_logits(self, batch: Batch) -> Tensor:
        """Clean logits for the training accuracy, without a graph (attack methods never need their gradient)."""
        with torch.no_grad(), eval_mode(self.model):
            return self.model(batch.x)

    def global_sum(self, t: Tensor) -> Tensor:
        return self.collective.sum(t)


class Standard(Method):
    def __call__(self, batch: Batch) -> StepResult:
        logits = self.model(batch.x)
        return StepResult(L.ce(logits, batch.y).sum() / batch.n_global, logits.detach())


class PGDAT(Method):
    def __call__(self, batch: Batch) -> StepResult:
        x_adv, _ = self.attack(batch)
        logits = self.model(x_adv)
        return StepResult(L.pgd_at(logits, batch.y).sum() / batch.n_global, self.clean_logits(batch),
                          logits.detach().argmax(1) == batch.y)


class TRADES(Method):
    def __call__(self, batch: Batch) -> StepResult:
        x_adv, _ = self.attack(batch, loss="kl", noise="normal")
        clean, adv = self.model(batch.x), self.model(x_adv)
        per = L.trades(clean, adv, batch.y, self.cfg.trades_beta)
        return StepResult(per.sum() / batch.n_global, clean.detach(), adv.detach().argmax(1) == batch.y)


class MART(Method):
    def __call__(self, batch: Batch) -> StepResult:
        x_adv, _ = self.attack(batch, noise="normal")  # MART's code starts at x + 0.001 N(0, I)
        clean, adv = self.model(batch.x), self.model(x_adv)
        per = L.mart(clean, adv, batch.y, self.cfg.mart_beta)
        return StepResult(per.sum() / batch.n_global, clean.detach(), adv.detach().argmax(1) == batch.y)


class GAIRAT(Method):
    def __call__(self, batch: Batch) -> StepResult:
        x_adv, kappa = self.attack(batch, track=True)
        logits = self.model(x_adv)
        per = L.ce(logits, batch.y)
        if batch.progress >= self.cfg.reweight_start:
            w = L.gairat_weights(kappa, self.cfg.pgd_steps, self.cfg.gairat_lambda)
            # normalised to mean 1 over the global batch (the all-reduced sum), as GAIR.py over its batch
            w = (w * batch.n_global / self.global_sum(w.sum())).to(per.dtype)
            per = per * w
        return StepResult(per.sum() / batch.n_global, self.clean_logits(batch), logits.detach().argmax(1) == batch.y)


class MAIL(Method):
    def __call__(self, batch: Batch) -> StepResult:
        x_adv, _ = self.attack(batch, noise="normal")  # MAIL's code starts at x + 0.001 N(0, I)
        logits = self.model(x_adv)
        per = L.ce(logits, batch.y)
        if batch.progress >= self.cfg.reweight_start:
            per = per * L.mail_weights(logits, batch.y, self.cfg.mail_bias, self.cfg.mail_slope)
        return StepResult(per.sum() / batch.n_global, self.clean_logits(batch), logits.detach().argmax(1) == batch.y)


class Certified(Method):
    """IBP / CROWN-IBP: ``kappa CE(f(x), y) + (1 - kappa) CE(-m_lower, y)`` through the engine."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, collective: Collective, input_shape: tuple[int, ...],
                 kind: str | None = None):
        super().__init__(cfg, model, collective)
        self.bound = CertifiedLoss(model, input_shape, kind or cfg.method, loss_fusion=cfg.loss_fusion)

    def per_example(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        return self.bound(batch.x, batch.y, batch.eps, batch.kappa, batch.beta)

    def __call__(self, batch: Batch) -> StepResult:
        per, logits, robust = self.per_example(batch)
        return StepResult(per.sum() / batch.n_global, logits.detach(), robust)


class DONE(Method):
    """DONE: ``sum_i stopgrad(exp(l_i / r - log u)) l_i / n`` with l_i the PGD loss (``inner="pgd"``), the
    log-barrier inner solution with its implicit hypergradient (``"barrier"``), or the certified loss
    (``"ibp"`` / ``"crown-ibp"``)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, collective: Collective, input_shape: tuple[int, ...]):
        super().__init__(cfg, model, collective)
        self.normaliser = DoneNormaliser(cfg.r, cfg.tau)
        self.certified = Certified(cfg, model, collective, input_shape, cfg.inner) \
            if cfg.inner in ("ibp", "crown-ibp") else None

    def __call__(self, batch: Batch) -> StepResult:
        cfg = self.cfg
        clean, robust, extra = None, None, None
        if self.certified is not None:
            per, clean, robust = self.certified.per_example(batch)
            clean = clean.detach()
        elif cfg.inner == "barrier" and batch.eps > 0:
            step = cfg.pgd_step_size if cfg.pgd_step_size is not None else default_step_size(batch.eps, cfg.pgd_steps)
            with eval_mode(self.model):
                d = solve_inner(self.model, batch.x, batch.y, batch.eps, c=cfg.barrier_c, steps=cfg.pgd_steps,
                                step_size=step, noise=batch.noise("uniform"))
                per, extra = implicit_losses(self.model, batch.x, batch.y, d, batch.eps, c=cfg.barrier_c,
                                             cg_iters=cfg.barrier_cg_iters, damping=cfg.barrier_damping)
            with torch.no_grad():
                robust = self.model(batch.x + d).argmax(1) == batch.y
            clean = self.clean_logits(batch)
        else:
            x_adv, _ = self.attack(batch)
            logits = self.model(x_adv)
            per = L.ce(logits, batch.y)
            clean, robust = self.clean_logits(batch), logits.detach().argmax(1) == batch.y
        self.normaliser.update(per.detach(), self.collective)  # also during a burn-in: warm when reweighting starts
        w = self.normaliser.weights(per) if batch.progress >= cfg.reweight_start else torch.ones_like(per)
        if extra is not None:  # the hypergradient term has value 0; weighted like its loss
            per = per + extra
        return StepResult((w * per).sum() / batch.n_global, clean, robust)

    def state_dict(self) -> dict:
        return self.normaliser.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.normaliser.load_state_dict(state)


def build_method(cfg: TrainConfig, model: nn.Module, input_shape: tuple[int, ...], collective: Collective) -> Method:
    if cfg.method in ("ibp", "crown-ibp"):
        return Certified(cfg, model, collective, input_shape)
    if cfg.method == "done":
        return DONE(cfg, model, collective, input_shape)
    cls = {"standard": Standard, "pgd-at": PGDAT, "trades": TRADES, "mart": MART, "gairat": GAIRAT,
           "mail": MAIL}[cfg.method]
    return cls(cfg, model, collective)
