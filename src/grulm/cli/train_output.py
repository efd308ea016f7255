"""What ``grulm train`` shows while a run trains, and how a signal stops it cleanly.

In a data-parallel run (``torchrun``) rank 0 shows the run (:class:`Printer`) and every other
rank only listens for signals (:class:`SignalStop`): the ranks agree on the stop at the next
step (:meth:`grulm.distributed.World.agree`), and rank 0 saves the checkpoint.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from grulm.run import RunHook

# Memorisation: training perplexity near 1 with validation perplexity this many times higher.
MEMORISED_TRAIN_PPL, MEMORISED_RATIO = 1.5, 2.0
EXIT_ON_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


class SignalStop(RunHook):
    """From the run's start, SIGINT and SIGTERM stop it after the current step (with a
    checkpoint); a second signal acts as usual (SIGINT: KeyboardInterrupt, SIGTERM: exit
    without saving).

    Args:
        announce: print that the signal was received and what happens now.
    """

    def __init__(self, announce: bool = False) -> None:
        self.announce = announce
        self.signal: str | None = None
        self.previous_handlers: dict[int, Any] = {}

    def on_start(self, run) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.signal = name
        signal.signal(signum, self.previous_handlers[signum])
        if self.announce:
            print(f"\ngrulm train: {name} received; saving a checkpoint after this step "
                  "(send it again to abort without saving)", file=sys.stderr, flush=True)

    def should_stop(self) -> str | None:
        return self.signal

    def stop_listening(self) -> None:
        for sig, handler in self.previous_handlers.items():
            signal.signal(sig, handler)
        self.previous_handlers.clear()


class Printer(SignalStop):
    """The command's view of the run: a progress bar, samples, the final report (rank 0's)."""

    def __init__(self, quiet: bool, started: float) -> None:
        super().__init__(announce=True)
        self.quiet, self.started = quiet, started

    def on_start(self, run) -> None:
        self.run, spec, p = run, run.spec, run.progress
        model, val = run.model.config, run.splits.val
        print(f"grulm train: {spec.data.data} ({len(run.splits.train):,} training, "
              f"{0 if val is None else len(val):,} validation {spec.data.token} tokens, vocab "
              f"{model.vocab_size}), {model.num_layers}×{model.hidden_size} "
              f"{model.cell_label}, {model.input_kind} input, backend {run.backend}"
              + ("" if model.precision == "float32" else f" in {model.precision}")
              + f", {spec.train.optimizer} lr {spec.train.lr:g} {spec.train.schedule}, "
              f"{run.device}"
              + (f", {w.size} ranks on {w.nodes} machine{'s' * (w.nodes > 1)} × "
                 f"{torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)}"
                 if (w := run.world).distributed else "")
              + (f"; resuming at epoch {p.epoch + 1}, step {p.step}" if run.resumed else ""),
              file=sys.stderr)
        total = spec.train.epochs * run.steps_per_epoch
        total = min(total, spec.train.max_steps or total)
        self.bar = tqdm(total=total, initial=p.step, unit="step", file=sys.stderr,
                        disable=self.quiet or not sys.stderr.isatty(), dynamic_ncols=True)
        super().on_start(run)

    def on_step(self, progress, stats) -> None:
        self.bar.update(1)

    def on_epoch(self, progress, stats) -> None:
        val = "" if stats.val_loss is None else f", val ppl {stats.val_perplexity:.2f}"
        self.bar.set_postfix_str(f"epoch {stats.epoch}, ppl {stats.perplexity:.2f}{val}")
        every = self.run.spec.output.sample_every
        if every and stats.epoch % every == 0:
            self.bar.write(f"epoch {stats.epoch} (train ppl {stats.perplexity:.2f}{val}): "
                           f"{self.run.sample(self.run.sample_prefixes[0])}", file=sys.stderr)

    def on_finish(self, run, result) -> None:
        self.bar.close()
        if result.stop_reason in EXIT_ON_SIGNAL:
            return
        config, unit = run.spec.train, "char" if run.spec.data.token == "char" else "word"
        why = {"max_steps": "--max-steps {0.max_steps} reached",
               "max_time": "--max-time {0.max_time:g} s used",
               "early_stop": "no better validation for {0.early_stop} evaluations (early "
                             "stopping)"}.get(result.stop_reason, "").format(config)
        if why:
            epoch = result.epochs + (run.progress.batch > 0)
            print(f"grulm train: stopped in epoch {epoch}, step {result.step}: {why}",
                  file=sys.stderr)
        if result.validation_skipped:
            print(f"grulm train: validation skipped: evaluating {len(run.splits.val):,} tokens "
                  f"would take about {len(run.splits.val) / result.tokens_per_s:.0f} s, past "
                  f"--max-time {config.max_time:g}; evaluate later with: grulm eval "
                  f"{result.out}", file=sys.stderr)
        train_ppl, val, val_ppl = result.train_perplexity, result.val_loss, result.val_perplexity
        if val is not None:
            best = math.exp(result.best_val_loss) if result.best_val_loss is not None else val_ppl
            print(f"validation perplexity {val_ppl:.2f} ({val:.4f} nats/{unit}, "
                  f"{val / math.log(2):.4f} bits/{unit}); training perplexity {train_ppl:.2f}; "
                  f"best validation perplexity {best:.2f} (saved in {result.best})")
            if train_ppl < MEMORISED_TRAIN_PPL and val_ppl > MEMORISED_RATIO * train_ppl:
                print(f"memorisation: training perplexity {train_ppl:.2f} but validation "
                      f"perplexity {val_ppl:.2f}: the model recites its {len(run.splits.train):,}"
                      " training tokens and does not generalise to held-out text (train on more "
                      "text, e.g. --max-tokens 0, or see --preset shakespeare)")
        if result.recall_accuracy is not None:
            print(f"recall accuracy {result.recall_accuracy:.4f} on the validation split "
                  "(chance ≈ 0.04)")
        print(f"perplexity {train_ppl:.1f}, {result.tokens_per_s or math.nan:,.0f} tokens/s on "
              f"{run.device}")
        for prefix in run.sample_prefixes:
            print(run.sample(prefix))
        written = [("checkpoint", result.out), ("best", result.best), ("plot", result.plot),
                   ("metrics", result.metrics)]
        print("   ".join(f"{name}: {path}" for name, path in written if path is not None)
              + f"   ({time.perf_counter() - self.started:.0f} s)", file=sys.stderr)
