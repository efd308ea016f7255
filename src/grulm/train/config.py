"""How to train: :class:`TrainConfig`, the settings every checkpoint records."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from grulm.data.batches import PARTITIONS
from grulm.errors import ConfigError
from grulm.optim import IMPLEMENTATIONS, OPTIMIZERS, ScheduleConfig

# TrainConfig fields a resumed run may change: how long to go on, not how to train.
BUDGET_FIELDS = ("epochs", "max_steps", "max_time", "early_stop", "eval_every")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (saved in every checkpoint). The defaults are the seed experiment's.

    Attributes:
        epochs: passes over the training data.
        batch_size: B, sequences per batch.
        num_steps: T, time steps per sequence.
        lr: the (peak) learning rate.
        clip: θ, the maximum global gradient norm.
        partition: ``sequential`` (state carried across batches) or ``random``.
        seed: seeds the weights and the data order; the same seed repeats a run exactly.
        optimizer: ``sgd`` (the seed), ``adam`` or ``adamw``.
        optimizer_impl: ``foreach`` (multi-tensor kernels) or ``fused`` (one kernel).
        weight_decay: decoupled for AdamW, L2 for SGD/Adam; matrices only.
        beta1, beta2: Adam's moment decay rates.
        schedule, warmup_steps, min_lr_ratio, step_size, gamma, plateau_patience,
            plateau_factor: the learning-rate schedule, see :mod:`grulm.optim`.
        max_steps: stop after this many optimiser steps (None: no limit).
        max_time: stop after this many seconds of training (None: no limit).
        early_stop: stop after this many validations in a row without a new best (0: never).
        eval_every: validate every this many epochs (and after the last).
    """

    epochs: int = 500
    batch_size: int = 32
    num_steps: int = 35
    lr: float = 1.0
    clip: float = 1.0
    partition: str = "sequential"
    seed: int = 0
    optimizer: str = "sgd"
    optimizer_impl: str = "foreach"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    step_size: int = 1000
    gamma: float = 0.5
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    max_steps: int | None = None
    max_time: float | None = None
    early_stop: int = 0
    eval_every: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_steps", "eval_every"):
            _check_int(name, getattr(self, name), least=1)
        _check_int("early_stop", self.early_stop, least=0)
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, least=1)
        for name in ("lr", "clip") + (("max_time",) if self.max_time is not None else ()):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be ≥ 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name, choices in (("partition", PARTITIONS), ("optimizer", OPTIMIZERS),
                              ("optimizer_impl", IMPLEMENTATIONS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}; got "
                                  f"{getattr(self, name)!r}")
        self.schedule_config()  # validates the schedule's fields

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(
            kind=self.schedule, warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio,
            step_size=self.step_size, gamma=self.gamma, patience=self.plateau_patience,
            factor=self.plateau_factor,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown training config fields: {', '.join(sorted(unknown))}")
        return cls(**data)


def _check_int(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an integer ≥ {least}, got {value!r}")
