"""What a run writes while it trains, as hooks of :func:`grulm.train.fit`.

:class:`RunWriter` keeps the run directory: the resumable checkpoint on its cadence (every N
epochs and/or steps, and at the end), the best-validation checkpoint in ``best/``, the
metrics log and the perplexity plot. In a data-parallel run every rank has one, taking the
same decisions at the same steps: the others send rank 0 their rows of the hidden state for
each checkpoint, and rank 0 alone writes. :class:`RunHook` is what a caller adds on top (the CLI's
progress bar and printed samples): ``fit``'s three hooks plus ``on_start`` and ``on_finish``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grulm.cells import map_state
from grulm.checkpoint import CheckpointMeta, save_checkpoint
from grulm.metrics_log import AuxiliaryFileWarning, MetricsLog
from grulm.plot import save_perplexity_plot
from grulm.run.directory import BEST_DIR, METRICS_FILE, PLOT_FILE, TENSORBOARD_DIR
from grulm.run.resume import training_state
from grulm.train import EpochStats, Hooks, Progress, StepStats, check_finite

if TYPE_CHECKING:
    from grulm.run.context import RunContext, RunResult


class RunHook(Hooks):
    """A caller's hook: :class:`grulm.train.Hooks` plus the start and the end of the run.

    ``on_start`` sees the run set up (data, model, where it resumes); ``on_finish`` sees the
    result after the last checkpoint is written. Every method is optional.
    """

    def on_start(self, run: RunContext) -> None:
        pass

    def on_finish(self, run: RunContext, result: RunResult) -> None:
        pass


class RunWriter(Hooks):
    """Checkpoints, ``best/``, metrics and plot of one run directory.

    Args:
        run: the run being trained.
        base_meta: the checkpoint metadata that does not change while training (data, train,
            run settings, preset).
    """

    def __init__(self, run: RunContext, base_meta: CheckpointMeta) -> None:
        self.run, self.base_meta = run, base_meta
        self.output = run.spec.output
        resume_step = run.progress.step if run.resumed else None
        tensorboard = run.out / TENSORBOARD_DIR if self.output.tensorboard else None
        self.log = (MetricsLog(run.out / METRICS_FILE, tensorboard, resume_step=resume_step)
                    if run.world.writes else None)
        self.window_start, self.window_tokens = time.perf_counter(), 0
        self.plot_path: Path | None = None
        self.plot_failed = False
        self.final_metrics: dict[str, Any] = {}  # the final model's (recall accuracy)

    def on_step(self, progress: Progress, stats: StepStats) -> None:
        self.window_tokens += stats.tokens
        every = self.output.log_every_steps
        if every and stats.step % every == 0:
            loss = stats.loss.item()  # waits for the device, only when logging
            check_finite(self.run.model, progress)
            now = time.perf_counter()
            self._log({
                "kind": "step", "step": stats.step, "epoch": progress.epoch + 1,
                "loss": loss, "perplexity": exp(loss), "lr": stats.lr,
                "grad_norm": stats.grad_norm.item(),
                "tokens_per_s": self.window_tokens / max(now - self.window_start, 1e-9),
            })
            self.window_start, self.window_tokens = now, 0
        every = self.output.checkpoint_every_steps
        if every and stats.step % every == 0:
            self.save(progress)

    def on_epoch(self, progress: Progress, stats: EpochStats) -> None:
        record = {"kind": "epoch", "step": progress.step, "epoch": stats.epoch,
                  "loss": stats.loss, "perplexity": stats.perplexity, "lr": stats.lr,
                  "tokens_per_s": stats.tokens_per_s, "seconds": stats.seconds}
        if stats.val_loss is not None:
            record.update(val_loss=stats.val_loss, val_perplexity=stats.val_perplexity)
        self._log(record)
        self.window_start, self.window_tokens = time.perf_counter(), 0
        if progress.best_epoch == stats.epoch:
            self.save_best(progress)
        every = self.output.checkpoint_every_epochs
        if every and stats.epoch % every == 0:
            self.save(progress)

    def metrics(self, progress: Progress) -> dict[str, Any]:
        """The checkpoint's ``metrics``: where the run is and how it went."""
        history = progress.history
        last = history[-1] if history else None
        return {
            "epochs": progress.epoch, "step": progress.step,
            "loss": last.loss if last else None,
            "perplexity": last.perplexity if last else None,
            "best_val_loss": finite(progress.best_val_loss), "best_epoch": progress.best_epoch,
            "tokens_per_s": tokens_per_s(progress),
            "train_seconds": progress.seconds, "device": str(self.run.device),
            "ranks": self.run.world.size,
            "backend": self.run.backend,
            "perplexity_history": [s.perplexity for s in history],
            "val_perplexity_history": [s.val_perplexity for s in history],
            **self.final_metrics,
        }

    def save(self, progress: Progress) -> None:
        """The resumable checkpoint in the run directory, and the plot."""
        run = self.run
        check_finite(run.model, progress)  # never overwrite a good checkpoint with NaNs
        hidden = progress.hidden
        if hidden is not None:
            # every rank's rows of each (L, B, H) tensor
            hidden = map_state(lambda h: run.world.gather_rows(h, dim=1), hidden)
        if not run.world.writes:
            return
        state, tensors = training_state(run.model, run.optimizer, run.schedule, progress,
                                        hidden)
        meta = replace(self.base_meta, metrics=self.metrics(progress), training_state=state)
        save_checkpoint(run.out, run.model, run.corpus.vocab, meta, tensors)
        self.plot_path = self.plot(progress) or self.plot_path

    def save_best(self, progress: Progress) -> None:
        """The model as it is now in ``best/`` (no training state)."""
        check_finite(self.run.model, progress)
        if not self.run.world.writes:
            return
        save_checkpoint(self.run.out / BEST_DIR, self.run.model, self.run.corpus.vocab,
                        replace(self.base_meta, metrics=self.metrics(progress)))

    def plot(self, progress: Progress) -> Path | None:
        """Train and validation perplexity per epoch; a failure warns once and returns None."""
        history = progress.history
        if not history:
            return None
        curves = {"train": [s.perplexity for s in history]}
        if any(s.val_loss is not None for s in history):
            curves["validation"] = [math.nan if s.val_perplexity is None else s.val_perplexity
                                    for s in history]
        path = self.run.out / PLOT_FILE
        try:
            return save_perplexity_plot(path, curves,
                                        title=f"grulm train --data {self.run.spec.data.data}")
        except (OSError, ValueError, RuntimeError) as error:  # PIL's disk full, a font…
            path.with_name(f".{path.name}.part").unlink(missing_ok=True)
            if not self.plot_failed:
                warnings.warn(AuxiliaryFileWarning(
                    f"cannot write the plot {path} ({getattr(error, 'strerror', None) or error});"
                    " checkpoints and metrics are still saved"), stacklevel=2)
            self.plot_failed = True
            return None

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def _log(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(record)


def tokens_per_s(progress: Progress) -> float | None:
    """Training throughput over every epoch so far, the unfinished one included."""
    tokens = sum(s.tokens for s in progress.history) + progress.tokens
    seconds = sum(s.seconds for s in progress.history) + progress.epoch_seconds
    return tokens / seconds if seconds else None


def exp(loss: float) -> float:
    """Perplexity of a mean loss in nats (inf where exp overflows)."""
    return math.exp(loss) if loss < 700 else math.inf


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
