"""What a run is while it trains (:class:`RunContext`, what hooks see) and how it ended
(:class:`RunResult`, what :func:`grulm.run.start` and :func:`grulm.run.resume` return)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from grulm.data.corpus import Corpus
from grulm.data.splits import Splits
from grulm.distributed import World
from grulm.generate import TextFormat, predict
from grulm.model import GRULM
from grulm.optim import Schedule
from grulm.run.hooks import exp
from grulm.run.spec import RunSpec
from grulm.train import Progress


@dataclass
class RunContext:
    """A run set up and about to train (what hooks see).

    Attributes:
        spec: the run's settings (a resumed run's, with its budget overrides).
        out: the run directory.
        corpus, splits: the data; ``splits.val`` is what validation reads.
        model, optimizer, schedule: on ``device``; restored when resuming.
        backend: the recurrence implementation in use (``cpu``, ``torch``, ``reference``).
        progress: where training starts (epoch, step …); updated in place while it runs.
        resumed: whether this continues a saved run.
        sample_prefixes: what samples are primed with.
        steps_per_epoch: optimiser steps in one epoch.
        world: the ranks training this run (size 1 outside ``torchrun``).
    """

    spec: RunSpec
    out: Path
    corpus: Corpus
    splits: Splits
    model: GRULM
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    device: torch.device
    backend: str
    progress: Progress
    resumed: bool
    sample_prefixes: tuple[str, ...]
    steps_per_epoch: int
    world: World

    def sample(self, prefix: str, num_preds: int = 50) -> str:
        """Greedy continuation of ``prefix`` (the seed's ``predict``), in eval mode."""
        was_training = self.model.training
        self.model.eval()
        text_format = TextFormat(token=self.spec.data.token, cleaning=self.spec.data.cleaning)
        text = predict(self.model, self.corpus.vocab, prefix, num_preds, text_format)
        self.model.train(was_training)
        return text


@dataclass(frozen=True)
class RunResult:
    """How a run ended.

    Attributes:
        out: the run directory (its last checkpoint).
        stop_reason: ``epochs``, ``max_steps``, ``max_time``, ``early_stop``, or what a
            hook asked (``SIGINT``, ``SIGTERM``).
        epochs, step: epochs completed and optimiser steps taken.
        train_loss: mean loss of the last (or the unfinished) epoch, nats per token.
        val_loss: validation loss of the final model; None without a validation split, after
            a signal, or when skipped (``validation_skipped``).
        best_val_loss, best_epoch: the best validation so far (None, 0 before any).
        tokens_per_s: training throughput over the whole run.
        seconds: training time over every session of the run.
        best: the ``best/`` checkpoint, when one was written.
        plot, metrics: the files, when they could be written.
        recall_accuracy: on ``recall:K`` data, the final model's recall accuracy on the
            validation split (:func:`grulm.evaluate.recall_accuracy`); None otherwise, or
            when validation did not run.
    """

    out: Path
    stop_reason: str
    epochs: int
    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    best_epoch: int
    tokens_per_s: float | None
    seconds: float
    validation_skipped: bool
    best: Path | None
    plot: Path | None
    metrics: Path | None
    recall_accuracy: float | None = None

    @property
    def val_perplexity(self) -> float | None:
        return None if self.val_loss is None else exp(self.val_loss)

    @property
    def train_perplexity(self) -> float | None:
        return None if self.train_loss is None else exp(self.train_loss)
