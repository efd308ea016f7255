"""``grulm train``: train a GRU language model; with no flags, the seed experiment of d2l §9.1.

Flags become a :class:`grulm.run.RunSpec` (a preset's values, the flags given on top) for
:func:`grulm.run.start` or :func:`grulm.run.resume`; this module parses, shows and prints.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from grulm import backends
from grulm.data.text import CLEANINGS, TOKENS
from grulm.errors import ConfigError
from grulm.model import INITS, INPUT_KINDS, VARIANTS
from grulm.optim import IMPLEMENTATIONS, OPTIMIZERS, SCHEDULES
from grulm.presets import PRESETS
from grulm.run import RunHook, RunSpec, resume, start
from grulm.run.spec import FLAG_NAMES, RENAMED, override_names
from grulm.train import PARTITIONS

# Memorisation: training perplexity near 1 with validation perplexity this many times higher.
MEMORISED_TRAIN_PPL, MEMORISED_RATIO = 1.5, 2.0
EXIT_ON_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}
SEED = RunSpec.from_preset("d2l").flat()  # what a flag-less run uses, shown in --help


def add_parser(subparsers) -> None:
    presets = "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())
    parser = subparsers.add_parser(
        "train", help="train a model (no flags: the seed experiment)",
        description="Train a GRU language model, validating on held-out text, and save "
        "checkpoints. With no flags this is the seed experiment of d2l §9.1 (preset d2l). "
        "Unset flags take the preset's value (with --resume, the run's); [values] are a "
        "flag-less run's.", epilog=f"presets — {presets}",
        argument_default=argparse.SUPPRESS)  # only the flags given become overrides
    group = parser.add_argument_group("recipe")
    group.add_argument("--preset", choices=list(PRESETS), help="the recipe [d2l]")
    group.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR "
                       "where it stopped (only budgets and output settings may change)")
    _add(parser, "data", ("--data", {"help": "built-in corpus (timemachine, tinyshakespeare) "
                                     "or a text file"}),
         ("--cleaning", {"choices": CLEANINGS, "help": "d2l: letters only, lower case; raw: "
                         "UTF-8, a leading BOM dropped, universal newlines; none: exactly as "
                         "is (another --data: raw)"}),
         ("--token", {"choices": TOKENS}),
         ("--min-freq", {"type": int, "help": "rarer tokens become <unk>"}),
         ("--max-tokens", {"type": int, "help": "train on the first N tokens of the training "
                           "split; 0 = all (another --data: 0)"}),
         ("--split-fractions", {"type": _fractions, "metavar": "TRAIN,VAL[,TEST]",
                                "help": "contiguous splits, e.g. 0.9,0.1; none: validate on "
                                "the last 10%%"}))
    _add(parser, "model", ("--hidden-size", {"type": int}), ("--num-layers", {"type": int}),
         ("--variant", {"choices": VARIANTS, "help": "reset_before: the textbook's; "
                        "reset_after: nn.GRU's"}),
         ("--input", {"choices": INPUT_KINDS}),
         ("--embedding-size", {"type": int, "help": "for --input embedding; none: hidden size"}),
         ("--dropout", {"type": float, "help": "between layers"}),
         ("--init", {"choices": INITS, "help": "d2l: randn*0.01; torch: nn.GRU's uniform"}),
         ("--backend", {"choices": backends.backend_names(), "help": "auto: the fastest"}))
    _add(parser, "optimisation", *[(f"--{n}", {"type": t}) for n, t in (
        ("epochs", int), ("batch-size", int), ("num-steps", int), ("lr", float), ("clip", float),
        ("seed", int), ("weight-decay", float), ("beta1", float), ("beta2", float),
        ("warmup-steps", int), ("min-lr-ratio", float), ("step-size", int), ("gamma", float),
        ("plateau-patience", int), ("plateau-factor", float))],
         *[(f"--{n}", {"choices": c}) for n, c in (
             ("partition", PARTITIONS), ("optimizer", OPTIMIZERS),
             ("optimizer-impl", IMPLEMENTATIONS), ("schedule", SCHEDULES))],
         ("--max-steps", {"type": int, "help": "stop after N optimiser steps"}),
         ("--max-time", {"type": float, "metavar": "SECONDS", "help": "stop after this much "
                         "training, with a checkpoint"}),
         ("--early-stop", {"type": int, "metavar": "N", "help": "stop after N validations "
                           "without a new best; 0 = never"}),
         ("--eval-every", {"type": int, "metavar": "EPOCHS", "help": "validate every N epochs "
                           "and after the last"}))
    group = parser.add_argument_group("machine")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto [auto]")
    group.add_argument("--threads", type=int, help="CPU threads [one per core]")
    group = _add(parser, "output", *[(f"--{n}", {"type": int, "metavar": "N"}) for n in (
        "checkpoint-every-epochs", "checkpoint-every-steps", "log-every-steps",
        "sample-every")], ("--sample-prefixes", {"nargs": "+", "metavar": "TEXT"}))
    group.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                       help="no TensorBoard events even when tensorboard is installed")
    group.add_argument("--out", type=Path, help="run directory [runs/seed; with --preset NAME, "
                       "runs/NAME; with --resume, DIR]")
    group.add_argument("--overwrite", action="store_true", default=False,
                       help="replace the run in --out (only what a run writes)")
    group.add_argument("--no-progress", action="store_true", default=False)
    parser.set_defaults(func=run)


def _add(parser, title: str, *flags: tuple[str, dict[str, Any]]):
    """A group of spec flags; each help ends with the flag-less run's value."""
    group = parser.add_argument_group(title)
    for flag, options in flags:
        name = flag[2:].replace("-", "_")
        field = RENAMED.get(name, name)
        shown = SEED[field]
        shown = ",".join(map(str, shown)) if isinstance(shown, tuple) else shown
        help_text = options.pop("help", "")
        group.add_argument(flag, **options,
                           help=f"{help_text} [{'none' if shown is None else shown}]".strip())
    return group


def _fractions(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions such as 0.9,0.1, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    started, options = time.perf_counter(), vars(args)
    overrides = {k: v for k, v in options.items() if k in override_names()}
    if options.get("threads", 1) < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {args.threads}")
    if "threads" in options:
        torch.set_num_threads(args.threads)
    printer = _Printer(args.no_progress, started)
    common = {"device": args.device, "hooks": [printer], "progress": not args.no_progress}
    try:
        if "resume" in options:
            clash = ("--preset" if "preset" in options else "--overwrite" if args.overwrite
                     else "--out" if Path(options.get("out", args.resume)).resolve()
                     != args.resume.resolve() else None)
            if clash:
                raise ConfigError(f"--resume continues a run with its own settings in its own "
                                  f"directory; drop {clash}")
            result = resume(args.resume, **common, **overrides)
        else:
            preset = options.get("preset", "d2l")
            out = options.get("out", Path("runs") / ("seed" if preset == "d2l" else preset))
            result = start(RunSpec.from_preset(preset, **overrides), out,
                           overwrite=args.overwrite, **common)
    except ConfigError as error:  # name a setting by its flag: --max-time, not max_time
        name, _, rest = str(error).partition(" ")
        name = FLAG_NAMES.get(name, name)
        raise ConfigError(f"--{name.replace('_', '-')} {rest}" if name in override_names()
                          else str(error)) from None
    finally:
        printer.stop_listening()
    if result.stop_reason in EXIT_ON_SIGNAL:
        print(f"grulm train: stopped by {result.stop_reason} at step {result.step}; checkpoint "
              f"saved in {result.out}; continue with: grulm train --resume {result.out}",
              file=sys.stderr)
        return EXIT_ON_SIGNAL[result.stop_reason]
    return 0


class _Printer(RunHook):
    """The command's view of the run: a progress bar, samples, the final report."""

    def __init__(self, quiet: bool, started: float) -> None:
        self.quiet, self.started = quiet, started
        self.signal: str | None = None
        self.previous_handlers: dict[int, Any] = {}

    def on_start(self, run) -> None:
        self.run, spec, p = run, run.spec, run.progress
        model, val = run.model.config, run.splits.val
        print(f"grulm train: {spec.data.data} ({len(run.splits.train):,} training, "
              f"{0 if val is None else len(val):,} validation {spec.data.token} tokens, vocab "
              f"{model.vocab_size}), {model.num_layers}×{model.hidden_size} {model.variant} "
              f"GRU, {model.input_kind} input, backend {run.backend}, {spec.train.optimizer} "
              f"lr {spec.train.lr:g} {spec.train.schedule}, {run.device}"
              + (f"; resuming at epoch {p.epoch + 1}, step {p.step}" if run.resumed else ""),
              file=sys.stderr)
        total = spec.train.epochs * run.steps_per_epoch
        total = min(total, spec.train.max_steps or total)
        self.bar = tqdm(total=total, initial=p.step, unit="step", file=sys.stderr,
                        disable=self.quiet or not sys.stderr.isatty(), dynamic_ncols=True)
        for sig in (signal.SIGINT, signal.SIGTERM):  # from now on a signal saves, then stops
            self.previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        """Stop after this step; a second signal acts as usual (SIGINT: KeyboardInterrupt,
        SIGTERM: exit without saving)."""
        name = signal.Signals(signum).name
        self.signal = name
        signal.signal(signum, self.previous_handlers[signum])
        print(f"\ngrulm train: {name} received; saving a checkpoint after this step "
              "(send it again to abort without saving)", file=sys.stderr, flush=True)

    def stop_listening(self) -> None:
        for sig, handler in self.previous_handlers.items():
            signal.signal(sig, handler)
        self.previous_handlers.clear()

    def on_step(self, progress, stats) -> None:
        self.bar.update(1)

    def on_epoch(self, progress, stats) -> None:
        val = "" if stats.val_loss is None else f", val ppl {stats.val_perplexity:.2f}"
        self.bar.set_postfix_str(f"epoch {stats.epoch}, ppl {stats.perplexity:.2f}{val}")
        every = self.run.spec.output.sample_every
        if every and stats.epoch % every == 0:
            self.bar.write(f"epoch {stats.epoch} (train ppl {stats.perplexity:.2f}{val}): "
                           f"{self.run.sample(self.run.sample_prefixes[0])}", file=sys.stderr)

    def should_stop(self) -> str | None:
        return self.signal

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
        print(f"perplexity {train_ppl:.1f}, {result.tokens_per_s or math.nan:,.0f} tokens/s on "
              f"{run.device}")
        for prefix in run.sample_prefixes:
            print(run.sample(prefix))
        written = [("checkpoint", result.out), ("best", result.best), ("plot", result.plot),
                   ("metrics", result.metrics)]
        print("   ".join(f"{name}: {path}" for name, path in written if path is not None)
              + f"   ({time.perf_counter() - self.started:.0f} s)", file=sys.stderr)
