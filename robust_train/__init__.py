"""Robust training on the Clarke engine: standard, PGD-AT, TRADES, MART, GAIRAT, MAIL, DONE, IBP and CROWN-IBP on
one training loop (``train``), with resume and torchrun data parallelism."""

from robust_train.attacks import pgd
from robust_train.certified import CertifiedLoss, margin_spec, worst_case_logits
from robust_train.config import METHODS, ConfigError, TrainConfig, load_config
from robust_train.done import DoneNormaliser, done_loss, done_weights
from robust_train.train import train

__all__ = [
    "METHODS", "CertifiedLoss", "ConfigError", "DoneNormaliser", "TrainConfig", "done_loss", "done_weights",
    "load_config", "margin_spec", "pgd", "train", "worst_case_logits",
]
