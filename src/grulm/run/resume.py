"""Resuming a run: the training state a checkpoint carries, and every check that refuses a
resume which would not continue the same run.

A training checkpoint is an ordinary :mod:`grulm.checkpoint` directory whose JSON also holds
``training_state`` (the :class:`~grulm.train.Progress` scalars, the optimiser's parameter
groups and non-tensor entries, the schedule's state) and whose tensors file also holds:

=====================  ===============================================================
``state.optim.<i>.<k>``  optimiser state of parameter i (moments, step counts)
``state.hidden``         the carried hidden state (L, B, H), when stopped mid-epoch
``state.hidden_cell``    an LSTM's carried memory cell c (L, B, H), beside it
``state.loss_sum``       the unfinished epoch's summed loss (float64)
``state.torch_rng``      ``torch.get_rng_state()`` (dropout draws from it)
``state.cuda_rng.<d>``   each CUDA device's generator state, when CUDA is in use
=====================  ===============================================================

The data RNG's state is in the JSON (Python's Mersenne Twister, 625 integers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

import torch
from torch import Tensor

from grulm.cells import State, state_tensors
from grulm.checkpoint import METADATA_FILE, Checkpoint, DataInfo
from grulm.data.vocab import Vocab
from grulm.errors import CheckpointError, ConfigError
from grulm.model import GRULM, GRUConfig
from grulm.optim import Schedule, load_optimizer_state, optimizer_state
from grulm.run.spec import DataSpec, OutputSpec, RunSpec
from grulm.train import BUDGET_FIELDS, Progress, TrainConfig

HIDDEN_TENSORS = ("hidden", "hidden_cell")  # the state's tensors: h (and an LSTM's c)


def training_state(
    model: GRULM, optimizer: torch.optim.Optimizer, schedule: Schedule, progress: Progress,
    hidden: State | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:  # fmt: skip
    """The JSON (:attr:`~grulm.checkpoint.CheckpointMeta.training_state`) and the tensors that
    resume a run.

    Args:
        hidden: the carried state of the whole batch (L, B, H) (an LSTM's: (h, c)) where
            ``progress.hidden`` holds one rank's rows; None: ``progress.hidden``.
    """
    optim_tensors, optim_json = optimizer_state(optimizer)
    tensors = {f"optim.{k}": v for k, v in optim_tensors.items()}
    tensors["torch_rng"] = torch.get_rng_state()
    if model.head.weight.device.type == "cuda":
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_rng.{index}"] = state
    hidden = progress.hidden if hidden is None else hidden
    if hidden is not None:
        tensors.update(zip(HIDDEN_TENSORS, state_tensors(hidden), strict=False))  # h (, c)
    if progress.loss_sum is not None:
        tensors["loss_sum"] = progress.loss_sum
    state = {"progress": progress.to_json(), "optimizer": optim_json,
             "schedule": schedule.state_dict()}
    return state, tensors


def restore_training_state(
    checkpoint: Checkpoint, optimizer: torch.optim.Optimizer, schedule: Schedule,
    device: torch.device,
) -> Progress:  # fmt: skip
    """Load the optimiser and schedule states and the RNGs; return the saved progress.

    Raises:
        CheckpointError: the checkpoint has no training state (e.g. a ``best/`` copy) or
            it does not fit.
    """
    state = checkpoint.meta.training_state
    if state is None:
        raise CheckpointError(
            f"{checkpoint.directory} holds a model but no training state to resume from; "
            "pass the run directory `grulm train --out` wrote (not its best/ copy)"
        )
    tensors = checkpoint.state_tensors
    try:
        optim = {k.removeprefix("optim."): v.to(device) for k, v in tensors.items()
                 if k.startswith("optim.")}
        load_optimizer_state(optimizer, optim, state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(tensors["torch_rng"])
        cuda = sorted(k for k in tensors if k.startswith("cuda_rng."))
        if cuda and device.type == "cuda":
            torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
        hidden = tuple(tensors[name].to(device) for name in HIDDEN_TENSORS if name in tensors)
        if hidden and len(hidden) != len(state_tensors(checkpoint.model.begin_state(1))):
            raise KeyError("the hidden state's tensors do not match the cell")
        loss_sum = tensors.get("loss_sum")
        return Progress.from_json(
            state["progress"],
            hidden=(hidden if len(hidden) > 1 else hidden[0]) if hidden else None,
            loss_sum=None if loss_sum is None else loss_sum.to(device),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{checkpoint.directory}: the training state is incomplete or damaged ({error!r}); "
            "start a new run without --resume"
        ) from None


def differences(what: str, saved: Mapping[str, Any], now: Mapping[str, Any],
                ignore: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """One line per key whose value differs: ``what.key: X in the checkpoint, Y now``."""
    keys = [k for k in dict.fromkeys([*saved, *now]) if k not in ignore]
    return [f"{what}.{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
            for k in keys if saved.get(k) != now.get(k)]


def vocab_differences(saved: Vocab, now: Vocab) -> list[str]:
    """Empty if the vocabularies are equal, else one line saying where they first differ."""
    a, b = saved.idx_to_token, now.idx_to_token
    if a == b:
        return []
    pairs = enumerate(zip(a, b, strict=False))
    first = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
    return [f"vocabulary: {len(a)} tokens in the checkpoint, {len(b)} now; first difference "
            f"at id {first}: {a[first] if first < len(a) else None!r} vs "
            f"{b[first] if first < len(b) else None!r}"]


def spec_from_checkpoint(checkpoint: Checkpoint) -> RunSpec:
    """The spec a checkpointed run was started with (its settings, as saved).

    Raises:
        CheckpointError: a field the settings come from is missing or damaged.
    """
    meta = checkpoint.meta
    data = None if meta.data is None else meta.data.to_json()
    train, run = meta.train, {} if meta.run is None else meta.run
    damaged = [name for name, value, ok in (
        ("data", data, lambda d: isinstance(d.get("source"), str)),
        ("train", train, lambda t: set(t) <= {f.name for f in fields(TrainConfig)}),
        ("run", run, lambda r: set(r) <= {f.name for f in fields(OutputSpec)}),
    ) if not isinstance(value, dict) or not ok(value)]
    if damaged:
        raise CheckpointError(
            f"{checkpoint.directory / METADATA_FILE}: the field(s) {', '.join(damaged)} are "
            "missing or damaged, so the run's settings are unknown and it cannot be resumed; "
            "start a new run (its model can still be used by eval and generate)"
        )
    settings = {"data": data["source"],
                **{f.name: data[f.name] for f in fields(DataSpec) if f.name in data and
                   f.name != "data"},
                **{k: v for k, v in checkpoint.model.config.to_dict().items()
                   if k != "vocab_size"},
                **train, **run}
    try:
        return RunSpec.from_settings(settings, preset=meta.preset or "d2l")
    except ConfigError as error:
        raise CheckpointError(f"{checkpoint.directory / METADATA_FILE}: {error}") from None


def refuse_differences(checkpoint: Checkpoint, spec: RunSpec, model_config: GRUConfig,
                       vocab: Vocab, data: DataInfo) -> None:  # fmt: skip
    """Refuse to resume ``checkpoint`` with another model (its precision included),
    vocabulary, data or training settings than it was saved with (only budgets may change).

    Raises:
        ConfigError: listing every difference.
    """
    saved = checkpoint.meta
    problems = [
        *differences("model", asdict(checkpoint.model.config), asdict(model_config),
                     ignore=("backend",)),
        *vocab_differences(checkpoint.vocab, vocab),
        *differences("data", (saved.data or DataInfo()).to_json(), data.to_json()),
        *differences("train", saved.train or {}, spec.train.to_dict(),
                     ignore=BUDGET_FIELDS),
    ]
    saved_precision = checkpoint.model.config.precision
    if saved_precision != model_config.precision:
        problems.append(
            f"the precision is part of the run's arithmetic: its steps so far were taken in "
            f"{saved_precision}, so resume it without --precision (it continues in "
            f"{saved_precision}); to train in {model_config.precision}, start a new run "
            "(grulm eval and generate may use either precision on this checkpoint)")
    if problems:
        raise ConfigError(
            f"cannot resume {checkpoint.directory}: this run differs from the one saved there:\n  "
            + "\n  ".join(problems)
            + "\nresume with the run's own settings (only --epochs, --max-steps, --max-time, "
            "--early-stop, --eval-every, --backend and output flags may change), or start a "
            "new run with another --out"
        )


def check_budget_left(progress: Progress, config: TrainConfig) -> None:
    """Refuse a resume that has nothing left to do, saying which budget to raise."""
    done = []
    if progress.epoch >= config.epochs:
        done.append(f"{progress.epoch} epochs, and --epochs is {config.epochs} (raise it above "
                    f"{progress.epoch})")
    if config.max_steps is not None and progress.step >= config.max_steps:
        done.append(f"{progress.step} steps, and --max-steps is {config.max_steps} (raise it)")
    if config.max_time is not None and progress.seconds >= config.max_time:
        done.append(f"{progress.seconds:.0f} s, and --max-time is {config.max_time:g} (raise "
                    "it)")
    if done:
        raise ConfigError(f"the run has nothing left to do: it has already trained "
                          f"{'; '.join(done)}")
