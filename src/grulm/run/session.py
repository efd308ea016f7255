"""A training run from start to finish: :func:`start` a new one, :func:`resume` a saved one.

Both claim the run directory (:mod:`grulm.run.directory`: the lock, no run replaced by
accident), read the data, check that the model fits in memory and a step in the time budget,
build the model, optimiser and schedule (restored exactly when resuming), train with
:func:`grulm.train.fit`, evaluate on the held-out split, write the last checkpoint, ``best/``,
the metrics and the plot (:class:`grulm.run.hooks.RunWriter`), and return a
:class:`RunResult`. Nothing is printed; callers watch through :class:`grulm.run.hooks.RunHook`.

Under ``torchrun`` (:mod:`grulm.distributed`) every rank calls the same function: rank 0
claims the directory and reads the checkpoint, every rank reads the data (the first rank of
each machine first, so that the others find it prepared) and trains its share of each
batch's rows, rank 0 alone writes, and every rank returns the same result. A set-up error on
any rank fails every rank with that rank's message.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from grulm.cells import map_state
from grulm.checkpoint import Checkpoint, CheckpointMeta, DataInfo, load_checkpoint
from grulm.compute import check_step_fits_time
from grulm.data.batches import RowShare, check_batchable, epoch_batches
from grulm.data.corpus import load_corpus
from grulm.data.splits import Splits
from grulm.devices import resolve_device
from grulm.distributed import World
from grulm.errors import DataError
from grulm.evaluate import evaluate, evaluate_recall
from grulm.memory import check_fits, describe, training_bytes
from grulm.model import GRULM
from grulm.optim import Schedule
from grulm.run.context import RunContext, RunResult
from grulm.run.directory import BEST_DIR, RunDirectory, open_run_directory
from grulm.run.hooks import RunHook, RunWriter, exp, finite, tokens_per_s
from grulm.run.resume import (
    check_budget_left,
    refuse_differences,
    restore_training_state,
    spec_from_checkpoint,
)
from grulm.run.spec import SEED_DATA, SEED_PREFIXES, RunSpec
from grulm.train import (
    Hooks,
    Progress,
    build_optimizer,
    evaluation_fits,
    fit,
    training_splits,
)

SIGNAL_STOPS = ("SIGINT", "SIGTERM")  # stop reasons after which no final evaluation runs


def start(spec: RunSpec, out: str | os.PathLike, *, device: str = "auto",
          overwrite: bool = False, hooks: Sequence[RunHook] = (),
          progress: bool = False, world: World | None = None) -> RunResult:  # fmt: skip
    """Train a new run described by ``spec`` into ``out``.

    Args:
        overwrite: replace a run already in ``out`` (only what a run writes is removed, and
            only once everything is set up); otherwise such a directory is refused.
        hooks: watch the run (progress, printing); ``should_stop`` may stop it cleanly.
        progress: tqdm bars while downloading and preparing data.
        world: the ranks of a data-parallel run; None: the one ``torchrun`` describes in
            the environment (this process alone outside it).

    Raises:
        GrulmError: bad settings or data, a directory that holds a run or is locked, a model
            that does not fit, a checkpoint that cannot be written, a rank that failed.
    """
    world, device_ = _join(world, device)
    try:
        mode = "overwrite" if overwrite else "new"
        with world.settle(lambda: _claim(out, mode, world)) as directory:
            return _train(spec, directory, None, device_, hooks, progress, overwrite, world)
    finally:
        world.leave()


def resume(out: str | os.PathLike, *, device: str = "auto", hooks: Sequence[RunHook] = (),
           progress: bool = False, world: World | None = None,
           **overrides: Any) -> RunResult:  # fmt: skip
    """Continue the run saved in ``out`` exactly where it stopped.

    ``overrides`` use :meth:`RunSpec.from_preset`'s names; budgets (``epochs``,
    ``max_steps``, ``max_time``, ``early_stop``, ``eval_every``), the backend and output
    settings may change, anything else is refused with the list of differences. A
    data-parallel run may continue with another number of ranks that divides its batch.

    Raises:
        GrulmError: not a run directory (or a ``best/`` copy), a locked one, another model,
            vocabulary, data or training settings, or nothing left to do.
    """
    world, device_ = _join(world, device)
    try:
        def claim() -> tuple[RunDirectory, Checkpoint | None]:
            directory = _claim(out, "resume", world)
            try:
                return directory, load_checkpoint(directory.path) if world.writes else None
            except BaseException:
                directory.release()
                raise

        directory, checkpoint = world.settle(claim)
        with directory:
            checkpoint = world.same(checkpoint)  # the run directory may be on rank 0 only
            spec = world.settle(lambda: spec_from_checkpoint(checkpoint).replace(**overrides))
            return _train(spec, directory, checkpoint, device_, hooks, progress, False, world)
    finally:
        world.leave()


def _join(world: World | None, device: str) -> tuple[World, torch.device]:
    world = world if world is not None else World.from_environment()
    device_ = world.device(resolve_device(device))
    world.join(device_)
    return world, device_


def _claim(out: str | os.PathLike, mode: str, world: World) -> RunDirectory:
    """Rank 0 claims the directory; the other ranks only know its name."""
    return open_run_directory(out, mode) if world.writes else RunDirectory(Path(out))


def _set_up(spec: RunSpec, checkpoint: Checkpoint | None, device: torch.device,
            show_progress: bool, world: World) -> tuple:  # fmt: skip
    """Data, model, optimiser, schedule and progress, every check passed (the part of a run
    that may fail on one rank only: :meth:`World.settle` runs it)."""
    config, data = spec.train, spec.data
    world.check_divides(config.batch_size)
    corpus = load_corpus(data.data, cleaning=data.cleaning, token=data.token,
                         min_freq=data.min_freq, progress=show_progress and world.writes)
    fractions = None if data.split_fractions is None else list(data.split_fractions)
    splits = training_splits(corpus.ids, data.max_tokens, fractions)
    _check_splits(splits, config.batch_size, config.num_steps, config.partition)
    data_info = DataInfo(**corpus.describe(), max_tokens=data.max_tokens,
                         split_fractions=fractions,
                         ranges={k: list(v) for k, v in splits.ranges.items()})
    model_config = spec.model.config(vocab_size=len(corpus.vocab))
    batch, steps = config.batch_size, config.num_steps
    local_batch = batch // world.size
    check_fits(training_bytes(model_config, local_batch, steps, config.optimizer),
               f"training {describe(model_config, local_batch, steps)}",
               "use a smaller --hidden-size, --num-layers, --batch-size or --num-steps",
               device=device)
    check_step_fits_time(model_config, local_batch, steps, config.max_time, device)
    if checkpoint is None:
        torch.manual_seed(config.seed)
    model = GRULM(model_config).to(device)
    optimizer = build_optimizer(model, config)
    schedule = Schedule(config.schedule_config(), config.lr)
    if checkpoint is not None:
        refuse_differences(checkpoint, spec, model_config, corpus.vocab, data_info)
        model.load_state_dict(checkpoint.model.state_dict())
        progress = restore_training_state(checkpoint, optimizer, schedule, device)
        check_budget_left(progress, config)
        if progress.hidden is not None:
            # this rank's rows of each (L, B, H) tensor
            progress.hidden = map_state(lambda h: world.rows(h, dim=1).clone(), progress.hidden)
    else:
        progress = Progress.start(config.seed)
    if world.rank:  # dropout masks differ across ranks, reproducibly
        torch.manual_seed(config.seed * 1_000_003 + world.rank * 7919 + progress.step)
    return corpus, splits, data_info, model, optimizer, schedule, progress


def _train(spec: RunSpec, directory: RunDirectory, checkpoint: Checkpoint | None,
           device: torch.device, hooks: Sequence[RunHook], show_progress: bool,
           overwrite: bool, world: World) -> RunResult:  # fmt: skip
    config, data = spec.train, spec.data
    # The first rank of each machine prepares the data; then the others read it prepared.
    def set_up():
        return _set_up(spec, checkpoint, device, show_progress, world)

    ready = world.settle(set_up if world.local_rank == 0 else lambda: None)
    ready = world.settle(lambda: ready if world.local_rank == 0 else set_up())
    corpus, splits, data_info, model, optimizer, schedule, progress = ready
    reference = world.same(_fingerprint(data_info))
    world.settle(lambda: _check_same_data(reference, data_info, world))
    world.broadcast(list(model.parameters()))  # one model, whatever each rank initialised
    batch, steps = config.batch_size, config.num_steps
    train_ids = splits.train.to(device)
    rows = (world.rank * batch // world.size, (world.rank + 1) * batch // world.size)

    def make_batches(rng: random.Random):
        batches = epoch_batches(train_ids, batch, steps, rng, config.partition)
        return RowShare(batches, *rows) if world.distributed else batches

    prefixes = spec.output.sample_prefixes or (
        SEED_PREFIXES if data.data == SEED_DATA  # "time traveller" means nothing elsewhere
        else (corpus.decode(splits.train[: 16 if data.token == "char" else 3]),))
    run = RunContext(spec, directory.path, corpus, splits, model, optimizer, schedule, device,
                     model.backend().name, progress, checkpoint is not None, tuple(prefixes),
                     len(make_batches(random.Random(0))), world)
    if world.writes:
        if overwrite:
            directory.clear_previous_run()  # only now, when every check above has passed
        directory.sweep()
    output = {**spec.to_dict()["output"], "sample_prefixes": list(prefixes)}
    writer = RunWriter(run, CheckpointMeta(data=data_info, train=config.to_dict(), run=output,
                                           preset=spec.preset))
    try:
        for hook in hooks:
            hook.on_start(run)
        fit(model, make_batches, config, val_ids=splits.val, progress=progress,
            optimizer=optimizer, schedule=schedule, hooks=_Chain(writer, hooks), world=world)
        result = _finish(run, writer)
    finally:
        writer.close()
    for hook in hooks:
        hook.on_finish(run, result)
    return result


def _finish(run: RunContext, writer: RunWriter) -> RunResult:
    """The final evaluation and checkpoint (after a signal: the checkpoint only)."""
    progress, config, val_ids = run.progress, run.spec.train, run.splits.val
    last = progress.history[-1] if progress.history else None
    train_loss = progress.partial_loss() if progress.batch else (last and last.loss)
    throughput = tokens_per_s(progress)
    val, skipped = None, False
    if val_ids is not None and progress.stop_reason not in SIGNAL_STOPS:
        if progress.batch == 0 and last is not None and last.val_loss is not None:
            val = last.val_loss
        elif run.world.same(evaluation_fits(config, progress.seconds, len(val_ids),
                                            throughput or 0.0)):
            val = evaluate(run.model, val_ids, config.batch_size, config.num_steps,
                           run.world).loss
        else:
            skipped = True
    recall = None
    if val is not None:  # on recall:K data, the final model's recall accuracy too
        recall = evaluate_recall(run.model, run.corpus.vocab, run.spec.data.data, val_ids,
                                 config.batch_size, config.num_steps, run.world)
        writer.final_metrics = recall.to_dict() if recall is not None else {}
        if val < progress.best_val_loss:
            progress.best_val_loss, progress.best_epoch = val, progress.epoch
            writer.save_best(progress)
    writer.save(progress)
    if writer.log is not None and progress.stop_reason not in SIGNAL_STOPS:
        writer.log.write({"kind": "final", "step": progress.step, "epoch": progress.epoch,
                          "loss": train_loss, "perplexity": _exp_or_none(train_loss),
                          "val_loss": val, "val_perplexity": _exp_or_none(val),
                          **writer.final_metrics, "stop_reason": progress.stop_reason,
                          "seconds": progress.seconds})
    best = run.out / BEST_DIR
    return RunResult(
        out=run.out, stop_reason=progress.stop_reason or "epochs", epochs=progress.epoch,
        step=progress.step, train_loss=train_loss, val_loss=val,
        best_val_loss=finite(progress.best_val_loss), best_epoch=progress.best_epoch,
        tokens_per_s=throughput, seconds=progress.seconds, validation_skipped=skipped,
        best=best if best.is_dir() else None, plot=writer.plot_path,
        metrics=writer.log.path if writer.log is not None and writer.log.active else None,
        recall_accuracy=None if recall is None else recall.accuracy,
    )


class _Chain(Hooks):
    """The writer first, then the caller's hooks; the first stop request wins."""

    def __init__(self, writer: RunWriter, hooks: Sequence[Hooks]) -> None:
        self.hooks = [writer, *hooks]

    def on_step(self, progress, stats) -> None:
        for hook in self.hooks:
            hook.on_step(progress, stats)

    def on_epoch(self, progress, stats) -> None:
        for hook in self.hooks:
            hook.on_epoch(progress, stats)

    def should_stop(self) -> str | None:
        return next((r for h in self.hooks if (r := h.should_stop()) is not None), None)


def _check_splits(splits: Splits, batch_size: int, num_steps: int, partition: str) -> None:
    """Training needs one batch whatever the offset; a held-out split needs one token per
    evaluation stream plus one (it is read in ``batch_size`` streams, state carried)."""
    check_batchable(splits.train, batch_size, num_steps, partition, what="the train split")
    for name in ("val", "test"):
        split = getattr(splits, name)
        if split is not None and len(split) < batch_size + 1:
            raise DataError(
                f"the {name} split has {len(split)} tokens, too few to evaluate in "
                f"{batch_size} streams: it needs at least {batch_size + 1} (batch size + 1); "
                "give it a larger fraction, use more text, or a smaller --batch-size"
            )


def _fingerprint(data: DataInfo) -> dict[str, Any]:
    return {"sha256": data.sha256, "tokens": data.num_tokens, "vocabulary": data.vocab_size,
            "splits": data.ranges}


def _check_same_data(reference: dict[str, Any], mine: DataInfo, world: World) -> None:
    """Every rank must train on the same tokens (a node may hold another copy of a file)."""
    ours = _fingerprint(mine)
    if ours != reference:
        differ = ", ".join(k for k in ours if ours[k] != reference[k])
        raise DataError(f"rank {world.rank} reads other data than rank 0 (its {differ} "
                        "differ); give every node the same --data file")


def _exp_or_none(loss: float | None) -> float | None:
    return None if loss is None else exp(loss)
