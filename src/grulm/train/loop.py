"""The training loop (:func:`fit`) and its one step (:func:`train_step`).

One step (d2l's ``train_epoch_ch8``): the state starts from zeros at the first batch of an
epoch (at every batch with random partitioning) and is otherwise carried over, detached; the
loss is the mean cross-entropy over all B·T tokens; the gradients' global L2 norm is clipped
to θ; then one optimiser step at the schedule's learning rate. Perplexity is exp of the mean
loss over the epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import torch
from torch import Tensor

from grulm.cells import State, map_state
from grulm.data.batches import EpochBatches, rng_from_state, rng_state
from grulm.distributed import World
from grulm.errors import GrulmError
from grulm.evaluate import evaluate
from grulm.model import GRULM
from grulm.optim import ClippedStep, Schedule, make_optimizer, set_lr
from grulm.train.config import TrainConfig
from grulm.train.progress import EpochStats, Progress, StepStats

# How far an evaluation may run past max_time (see evaluation_fits).
EVAL_OVERRUN_FRACTION, EVAL_OVERRUN_S = 0.1, 10.0


class TrainingDiverged(GrulmError):
    """The loss (or a parameter) became NaN or infinite."""


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


def build_optimizer(model: GRULM, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, over ``model``'s parameters."""
    return make_optimizer(
        model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
        betas=(config.beta1, config.beta2), implementation=config.optimizer_impl,
    )


def build_step(
    model: GRULM, config: TrainConfig, optimizer: torch.optim.Optimizer | None = None
) -> ClippedStep:
    """The update :func:`fit` takes after every backward pass: clip to ``config.clip``, step.

    Args:
        optimizer: the optimiser to step (e.g. one restored for a resume); None builds the
            one ``config`` names (:func:`build_optimizer`).

    Returns:
        A :class:`grulm.optim.ClippedStep` over ``model``'s trainable parameters, its
        ``optimizer`` the one it steps. Where the model's backend has a fused clipping + SGD
        kernel and the optimiser is plain SGD, the step runs that kernel: chosen here, once.
    """
    optimizer = optimizer if optimizer is not None else build_optimizer(model, config)
    parameters = [p for p in model.parameters() if p.requires_grad]
    return ClippedStep(optimizer, parameters, config.clip, model.backend().clip_sgd)


def train_step(
    model: GRULM, X: Tensor, Y: Tensor, state: State, update: ClippedStep,
    world: World | None = None,
) -> tuple[Tensor, State, Tensor]:  # fmt: skip
    """One optimiser step on one batch.

    Args:
        X, Y: (B, T) int64 inputs and next-token labels (this rank's rows of the batch).
        state: (L, B, H) the state to start from (detached from any earlier graph; an
            LSTM's: the pair (h, c)).
        update: clips the gradients and steps the optimiser (:func:`build_step`).
        world: the ranks sharing the batch: gradients and loss are averaged over them
            before clipping (:meth:`grulm.distributed.World.average`); None: this process.

    Returns:
        The batch's mean loss (0-dim, over the whole batch), the final state (as ``state``, still
        attached to this step's graph) and the gradient norm before clipping (0-dim), all on
        the device.
    """
    loss, state = model.loss(X, Y, state)  # mean over B·T tokens, (L, B, H)
    update.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    loss = loss.detach()
    if world is not None and world.distributed:
        loss = world.average(update.parameters, loss)
    grad_norm = update()  # clip the global norm to θ, then the optimiser's step
    return loss, state, grad_norm


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
    optimizer: torch.optim.Optimizer | ClippedStep | None = None,
    schedule: Schedule | None = None,
    hooks: Hooks | None = None,
    world: World | None = None,
) -> list[EpochStats]:
    """Train ``model`` until a budget in ``config`` runs out or a hook asks to stop.

    Args:
        make_batches: builds one epoch's batches from the data RNG (drawing its offset and
            shuffle from it), already on the model's device.
        val_ids: (N,) held-out token ids, validated every ``config.eval_every`` epochs with
            the state carried (:func:`grulm.evaluate.evaluate`); None: no validation.
        progress: where to continue from (updated in place); None starts a new run.
        optimizer: the update after every backward pass: a :class:`grulm.optim.ClippedStep`
            (:func:`build_step`), used as it is; a bare optimiser (e.g. one restored for a
            resume), which :func:`build_step` wraps once; None builds both from ``config``.
        schedule: a restored one when resuming; None makes it from ``config``.
        hooks: logging, checkpoints, stop requests.
        world: the ranks of a data-parallel run; ``make_batches`` then gives this rank's
            rows, and losses, gradients, evaluations and stop decisions are shared so that
            every rank takes the same steps (:mod:`grulm.distributed`). None: this process.

    Returns:
        The statistics of every completed epoch (``progress.history``).

    Raises:
        TrainingDiverged: the loss or a parameter became NaN/inf (checked at every epoch's
            end; hooks may check more often with :func:`check_finite`).
    """
    progress = progress if progress is not None else Progress.start(config.seed)
    update = optimizer if isinstance(optimizer, ClippedStep) else build_step(model, config,
                                                                             optimizer)
    schedule = schedule if schedule is not None else Schedule(config.schedule_config(), config.lr)
    hooks = hooks if hooks is not None else Hooks()
    world = world if world is not None else World()
    device = model.head.weight.device
    session_start, seconds_before = time.perf_counter(), progress.seconds

    def seconds() -> float:
        return seconds_before + time.perf_counter() - session_start

    def stop_reason(next_step_seconds: float = 0.0) -> str | None:
        return world.agree(local_stop_reason(next_step_seconds))  # ranks stop together

    def local_stop_reason(next_step_seconds: float) -> str | None:
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
            set_lr(update.optimizer, progress.lr)
            if progress.hidden is None or config.partition == "random":
                state = model.begin_state(X.shape[0])
            else:
                state = map_state(Tensor.detach, progress.hidden)  # not its history
            loss, state, grad_norm = train_step(model, X, Y, state, update, world)
            tokens = Y.numel() * world.size  # every rank holds as many rows
            progress.hidden = map_state(Tensor.detach, state)
            progress.loss_sum += loss * tokens
            progress.tokens += tokens
            progress.step += 1
            progress.batch += 1
            # kept current, so that a checkpoint a hook writes mid-epoch times the run right
            progress.epoch_seconds = time.perf_counter() - epoch_start
            progress.seconds = seconds()
            hooks.on_step(progress, StepStats(progress.step, loss, grad_norm, progress.lr,
                                              tokens))
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
                and world.same(evaluation_fits(config, seconds(), len(val_ids),
                                               progress.tokens / max(epoch_seconds, 1e-9)))):
            val_loss = evaluate(model, val_ids, config.batch_size, config.num_steps,
                                world).loss
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
