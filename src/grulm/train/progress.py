"""Where a training run is (:class:`Progress`) and what its steps and epochs measured."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import Tensor

from grulm.cells import State
from grulm.data.batches import rng_state


@dataclass(frozen=True)
class EpochStats:
    """What one epoch measured.

    Attributes:
        epoch: 1-based epoch number.
        loss: mean training cross-entropy per token, in nats.
        tokens: tokens trained on.
        seconds: training time (validation excluded), device-synchronised.
        lr: the learning rate of the epoch's last step.
        val_loss: validation cross-entropy per token (None if not validated this epoch).
    """

    epoch: int
    loss: float
    tokens: int
    seconds: float
    lr: float = math.nan
    val_loss: float | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def val_perplexity(self) -> float | None:
        return None if self.val_loss is None else math.exp(self.val_loss)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepStats:
    """One optimiser step, as the device left it (reading a tensor waits for the device).

    Attributes:
        step: 1-based count of optimiser steps so far.
        loss: the batch's mean loss, a 0-dim tensor on the device.
        grad_norm: the gradients' global norm before clipping, a 0-dim tensor on the device.
        lr: the learning rate used.
        tokens: tokens in the batch.
    """

    step: int
    loss: Tensor
    grad_norm: Tensor
    lr: float
    tokens: int


@dataclass
class Progress:
    """Where a run is: everything besides model, optimiser and schedule that resuming needs.

    Attributes:
        epoch: epochs completed.
        batch: batches done in the current epoch (0 between epochs).
        step: optimiser steps done.
        seconds: training wall time so far, over every session of the run.
        rng_state: the data RNG's state from which the current (or next) epoch's batches are
            drawn (:func:`grulm.data.batches.rng_state`).
        hidden: the carried state (L, B, H) (an LSTM's: the pair (h, c)) after batch
            ``batch − 1``; None at an epoch start.
        loss_sum: the current epoch's summed token loss so far (float64, on the device).
        tokens: the current epoch's tokens so far.
        epoch_seconds: the current epoch's training time so far.
        lr: the last learning rate used.
        best_val_loss, best_epoch: the best validation so far (inf, 0 before any).
        evals_since_best: validations since the best one (early stopping counts these).
        history: every completed epoch.
        stop_reason: why :func:`grulm.train.fit` returned: ``epochs``, ``max_steps``,
            ``max_time``, ``early_stop`` or what a hook's ``should_stop`` said (e.g.
            ``SIGTERM``).
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    seconds: float = 0.0
    rng_state: dict[str, Any] | None = None
    hidden: State | None = None
    loss_sum: Tensor | None = None
    tokens: int = 0
    epoch_seconds: float = 0.0
    lr: float = math.nan
    best_val_loss: float = math.inf
    best_epoch: int = 0
    evals_since_best: int = 0
    history: list[EpochStats] = field(default_factory=list)
    stop_reason: str | None = None

    @classmethod
    def start(cls, seed: int) -> Progress:
        """A run's beginning: the data RNG seeded with ``seed``, as ``random.seed(seed)``."""
        return cls(rng_state=rng_state(random.Random(seed)))

    def partial_loss(self) -> float | None:
        """Mean loss of the current, unfinished epoch (None if it has no step yet)."""
        return None if not self.tokens else self.loss_sum.item() / self.tokens

    def to_json(self) -> dict[str, Any]:
        """The JSON part (the tensors ``hidden`` and ``loss_sum`` are saved separately)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("hidden", "loss_sum", "history")}
        data["history"] = [s.to_dict() for s in self.history]
        data["best_val_loss"] = _finite_or_none(self.best_val_loss)  # strict JSON: no Infinity
        data["lr"] = _finite_or_none(self.lr)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], hidden: State | None,
                  loss_sum: Tensor | None) -> Progress:  # fmt: skip
        data = dict(data)
        history = [EpochStats(**s) for s in data.pop("history")]
        data["best_val_loss"] = _none_to(data["best_val_loss"], math.inf)
        data["lr"] = _none_to(data["lr"], math.nan)
        return cls(**data, history=history, hidden=hidden, loss_sum=loss_sum)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _none_to(value: float | None, default: float) -> float:
    return default if value is None else value
