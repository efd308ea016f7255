"""The training loop, with the seed's semantics by default, resumable at any step.

One step (d2l's ``train_epoch_ch8``): the state starts from zeros at the first batch of an
epoch (at every batch with random partitioning) and is otherwise carried over, detached; the
loss is the mean cross-entropy over all B·T tokens; the gradients' global L2 norm is clipped
to θ; then one optimiser step at the schedule's learning rate. Perplexity is exp of the mean
loss over the epoch.

:func:`fit` runs epochs of steps until a budget runs out (epochs, ``max_steps``,
``max_time``, early stopping on validation, or a stop asked for by a hook, e.g. on SIGTERM).
``max_time`` is checked before every step, against the last step's duration, so a run ends
within its budget once it has timed one step; an evaluation estimated to run far past it is
skipped (:func:`evaluation_fits`).
Everything needed to continue a run exactly lives in :class:`Progress`: epoch, step, position
in the epoch, the data RNG's state at the epoch's start, the carried hidden state, the
epoch's partial loss, the best validation loss. Saved with the model, optimiser, schedule and
torch RNG states (:mod:`grulm.resume`), it lets a stopped run continue with the very same
losses.

The loop keeps the device busy: losses accumulate on the device, clipping and the optimiser
step use multi-tensor kernels (one fused kernel for plain SGD on the ``cpu`` backend, see
:func:`grulm.optim.clip_and_step`), and the host reads the loss (and checks it is finite)
only at an epoch's end and when a hook asks for it (logging, checkpoints).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from grulm.data.batches import PARTITIONS, EpochBatches, rng_from_state, rng_state
from grulm.data.splits import Splits, seed_splits, split_ids
from grulm.errors import ConfigError, GrulmError
from grulm.evaluate import evaluate
from grulm.model import GRULM
from grulm.optim import (
    IMPLEMENTATIONS,
    OPTIMIZERS,
    Schedule,
    ScheduleConfig,
    clip_and_step,
    make_optimizer,
    set_lr,
)

Batches = Iterable[tuple[Tensor, Tensor]]

# TrainConfig fields a resumed run may change: how long to go on, not how to train.
# How far an evaluation may run past max_time (see evaluation_fits).
EVAL_OVERRUN_FRACTION, EVAL_OVERRUN_S = 0.1, 10.0
BUDGET_FIELDS = ("epochs", "max_steps", "max_time", "early_stop", "eval_every")


class TrainingDiverged(GrulmError):
    """The loss (or a parameter) became NaN or infinite."""


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
        hidden: the carried state (L, B, H) after batch ``batch − 1``; None at an epoch start.
        loss_sum: the current epoch's summed token loss so far (float64, on the device).
        tokens: the current epoch's tokens so far.
        epoch_seconds: the current epoch's training time so far.
        lr: the last learning rate used.
        best_val_loss, best_epoch: the best validation so far (inf, 0 before any).
        evals_since_best: validations since the best one (early stopping counts these).
        history: every completed epoch.
        stop_reason: why :func:`fit` returned: ``epochs``, ``max_steps``, ``max_time``,
            ``early_stop`` or what a hook's ``should_stop`` said (e.g. ``SIGTERM``).
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    seconds: float = 0.0
    rng_state: dict[str, Any] | None = None
    hidden: Tensor | None = None
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
    def from_json(cls, data: dict[str, Any], hidden: Tensor | None,
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


class Hooks:
    """What :func:`fit` calls out to; subclass and override (every method is optional).

    ``on_step`` runs after every optimiser step and ``on_epoch`` after every epoch (after
    validation), both with the live :class:`Progress`; they may save checkpoints, log, plot.
    ``should_stop`` is asked after every step; a non-empty answer stops the run cleanly at
    that step and becomes ``progress.stop_reason``.
    """

    def on_step(self, progress: Progress, stats: StepStats) -> None:
        pass

    def on_epoch(self, progress: Progress, stats: EpochStats) -> None:
        pass

    def should_stop(self) -> str | None:
        return None


def train_step(
    model: GRULM,
    X: Tensor,
    Y: Tensor,
    state: Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: list[Tensor],
    clip: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One optimiser step on one batch.

    Args:
        X, Y: (B, T) int64 inputs and next-token labels.
        state: (L, B, H) the state to start from (detached from any earlier graph).
        parameters: the parameters to clip (the trainable ones).

    Returns:
        The batch's mean loss (0-dim), the final state (L, B, H, still attached to this
        step's graph) and the gradient norm before clipping (0-dim), all on the device.
    """
    loss, state = model.loss(X, Y, state)  # mean over B·T tokens, (L, B, H)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_and_step(optimizer, parameters, clip, model.backend(X.device).clip_sgd)
    return loss.detach(), state, grad_norm


def train_epoch(
    model: GRULM,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    *,
    clip: float,
    fresh_state_every_batch: bool,
) -> tuple[Tensor, int]:
    """Train on every batch once, in the seed's way, at the optimiser's learning rate.

    Args:
        batches: (X, Y) pairs of (B, T) int64 token ids on the model's device; Y is X shifted
            by one token.
        clip: θ for :func:`grulm.optim.clip_gradients`.
        fresh_state_every_batch: start each batch from the zero state (random partitioning)
            instead of carrying the previous batch's final state.

    Returns:
        The summed token loss (a 0-dim tensor on the device, not yet synchronised) and the
        number of tokens.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    state = None
    loss_sum = torch.zeros((), dtype=torch.float64, device=model.head.weight.device)
    num_tokens = 0
    model.train()
    for X, Y in batches:
        if state is None or fresh_state_every_batch:
            state = model.begin_state(X.shape[0])
        else:
            state = state.detach()  # carry the state, not its history
        loss, state, _ = train_step(model, X, Y, state, optimizer, parameters, clip)
        loss_sum += loss * Y.numel()
        num_tokens += Y.numel()
    return loss_sum, num_tokens


def training_splits(ids: Tensor, max_tokens: int = 0,
                    fractions: list[float] | None = None) -> Splits:  # fmt: skip
    """The splits a run trains and validates on (recorded in its checkpoint).

    ``fractions`` None: the seed's split (:func:`grulm.data.splits.seed_splits`): training
    from the start, validation = the last 10 % of ``ids`` (N,). Otherwise contiguous
    train/val[/test] fractions (:func:`grulm.data.splits.split_ids`). ``max_tokens > 0``
    then keeps only the first ``max_tokens`` tokens of the training split.
    """
    if fractions is None:
        return seed_splits(ids, max_tokens=max_tokens)
    splits = split_ids(ids, fractions)
    if max_tokens > 0 and len(splits.train) > max_tokens:
        start = splits.ranges["train"][0]
        ranges = {**splits.ranges, "train": (start, start + max_tokens)}
        splits = Splits(splits.train[:max_tokens], splits.val, splits.test, ranges)
    return splits


def build_optimizer(model: GRULM, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, over ``model``'s parameters."""
    return make_optimizer(
        model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
        betas=(config.beta1, config.beta2), implementation=config.optimizer_impl,
    )


def run_fraction(config: TrainConfig, progress: Progress, epoch_len: int, seconds: float) -> float:
    """How far the run is towards its first budget, in [0, 1] (drives cosine schedules)."""
    fractions = [(progress.epoch + progress.batch / max(epoch_len, 1)) / config.epochs]
    if config.max_steps is not None:
        fractions.append(progress.step / config.max_steps)
    if config.max_time is not None:
        fractions.append(seconds / config.max_time)
    return min(1.0, max(fractions))


def evaluation_fits(
    config: TrainConfig, seconds: float, eval_tokens: int, train_tokens_per_s: float
) -> bool:
    """Whether evaluating ``eval_tokens`` keeps the run within ``max_time`` (plus a margin).

    An evaluation may overrun the time budget by ``EVAL_OVERRUN_FRACTION`` of it (at least
    ``EVAL_OVERRUN_S``); one estimated to take longer is skipped rather than keep a user who
    asked for ``max_time`` seconds waiting minutes (a deep model's evaluation of a long
    held-out split can take many training steps' time). The estimate assumes an evaluated
    token costs no more than a trained one.
    """
    if config.max_time is None:
        return True
    estimate = eval_tokens / max(train_tokens_per_s, 1e-9)
    margin = max(EVAL_OVERRUN_FRACTION * config.max_time, EVAL_OVERRUN_S)
    return seconds + estimate <= config.max_time + margin


def check_finite(model: GRULM, progress: Progress) -> None:
    """Raise :class:`TrainingDiverged` if the epoch's loss so far or a parameter is not finite.

    Reads from the device (a host sync): called at an epoch's end and before checkpoints.
    """
    loss = progress.partial_loss()
    if loss is not None and not math.isfinite(loss):
        raise TrainingDiverged(
            f"the training loss became {loss} in epoch {progress.epoch + 1} (by step "
            f"{progress.step}); lower --lr, --clip or --warmup-steps"
        )
    norms = torch._foreach_norm([p.detach() for p in model.parameters()])
    if not bool(torch.isfinite(torch.stack(norms)).all()):
        raise TrainingDiverged(
            f"a parameter became NaN or infinite by step {progress.step} (epoch "
            f"{progress.epoch + 1}); lower --lr, --clip or --warmup-steps"
        )


def fit(
    model: GRULM,
    make_batches: Callable[[random.Random], EpochBatches],
    config: TrainConfig,
    *,
    val_ids: Tensor | None = None,
    progress: Progress | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: Schedule | None = None,
    hooks: Hooks | None = None,
) -> list[EpochStats]:
    """Train ``model`` until a budget in ``config`` runs out or a hook asks to stop.

    Args:
        make_batches: builds one epoch's batches from the data RNG (drawing its offset and
            shuffle from it), already on the model's device.
        val_ids: (N,) held-out token ids, validated every ``config.eval_every`` epochs with
            the state carried (:func:`grulm.evaluate.evaluate`); None: no validation.
        progress: where to continue from (updated in place); None starts a new run.
        optimizer, schedule: restored ones when resuming; None makes them from ``config``.
        hooks: logging, checkpoints, stop requests.

    Returns:
        The statistics of every completed epoch (``progress.history``).

    Raises:
        TrainingDiverged: the loss or a parameter became NaN/inf (checked at every epoch's
            end; hooks may check more often with :func:`check_finite`).
    """
    progress = progress if progress is not None else Progress.start(config.seed)
    optimizer = optimizer if optimizer is not None else build_optimizer(model, config)
    schedule = schedule if schedule is not None else Schedule(config.schedule_config(), config.lr)
    hooks = hooks if hooks is not None else Hooks()
    parameters = [p for p in model.parameters() if p.requires_grad]
    device = model.head.weight.device
    session_start, seconds_before = time.perf_counter(), progress.seconds

    def seconds() -> float:
        return seconds_before + time.perf_counter() - session_start

    def stop_reason(next_step_seconds: float = 0.0) -> str | None:
        if (reason := hooks.should_stop()) is not None:
            return reason
        if config.max_steps is not None and progress.step >= config.max_steps:
            return "max_steps"
        if config.max_time is not None and seconds() + next_step_seconds > config.max_time:
            return "max_time"  # a step that would end past the budget is not started
        return None

    model.train()
    while progress.epoch < config.epochs:
        rng = rng_from_state(progress.rng_state)
        batches = make_batches(rng)  # draws this epoch's offset (and shuffle) from rng
        if progress.batch == 0:
            progress.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            progress.tokens, progress.epoch_seconds, progress.hidden = 0, 0.0, None
        epoch_start = time.perf_counter() - progress.epoch_seconds
        for X, Y in batches.iter_from(progress.batch):
            step_start = time.perf_counter()
            progress.lr = schedule.lr(progress.step,
                                      run_fraction(config, progress, len(batches), seconds()))
            set_lr(optimizer, progress.lr)
            if progress.hidden is None or config.partition == "random":
                state = model.begin_state(X.shape[0])
            else:
                state = progress.hidden.detach()  # carry the state, not its history
            loss, state, grad_norm = train_step(model, X, Y, state, optimizer, parameters,
                                                config.clip)
            progress.hidden = state.detach()
            progress.loss_sum += loss * Y.numel()
            progress.tokens += Y.numel()
            progress.step += 1
            progress.batch += 1
            hooks.on_step(progress, StepStats(progress.step, loss, grad_norm, progress.lr,
                                              Y.numel()))
            step_seconds = time.perf_counter() - step_start
            if progress.batch < len(batches) and (reason := stop_reason(step_seconds)):
                progress.epoch_seconds = time.perf_counter() - epoch_start
                progress.seconds, progress.stop_reason = seconds(), reason
                return progress.history

        check_finite(model, progress)  # reads the epoch's loss: the one regular host sync
        epoch_seconds = time.perf_counter() - epoch_start
        epoch = progress.epoch + 1
        val_loss = None
        if (val_ids is not None and (epoch % config.eval_every == 0 or epoch == config.epochs)
                and evaluation_fits(config, seconds(), len(val_ids),
                                    progress.tokens / max(epoch_seconds, 1e-9))):
            val_loss = evaluate(model, val_ids, config.batch_size, config.num_steps).loss
        stats = EpochStats(epoch, progress.loss_sum.item() / progress.tokens, progress.tokens,
                           epoch_seconds, progress.lr, val_loss)
        progress.history.append(stats)
        progress.epoch, progress.batch, progress.hidden = epoch, 0, None
        progress.loss_sum, progress.tokens, progress.epoch_seconds = None, 0, 0.0
        progress.rng_state = rng_state(rng)
        if val_loss is not None:
            schedule.observe(val_loss)
            if val_loss < progress.best_val_loss:
                progress.best_val_loss, progress.best_epoch = val_loss, epoch
                progress.evals_since_best = 0
            else:
                progress.evals_since_best += 1
        progress.seconds = seconds()
        hooks.on_epoch(progress, stats)
        reason = stop_reason()
        if reason is None and config.early_stop and progress.evals_since_best >= config.early_stop:
            reason = "early_stop"
        if reason is not None:
            progress.stop_reason = reason
            return progress.history
    progress.seconds, progress.stop_reason = seconds(), "epochs"
    return progress.history
