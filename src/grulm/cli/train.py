"""``grulm train``: train a GRU language model; with no flags, the seed experiment of d2l §9.1.

Flags become a :class:`grulm.run.RunSpec` (a preset's values, the flags given on top) for
:func:`grulm.run.start` or :func:`grulm.run.resume`; this module parses, shows and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from grulm import backends
from grulm.backends.precision import PRECISIONS
from grulm.cells import CELLS, GATES
from grulm.cli.train_output import EXIT_ON_SIGNAL, Printer, SignalStop
from grulm.data.text import CLEANINGS, TOKENS
from grulm.distributed import DEFAULT_TIMEOUT_S, World
from grulm.errors import ConfigError
from grulm.model import INITS, INPUT_KINDS, VARIANTS
from grulm.optim import IMPLEMENTATIONS, OPTIMIZERS, SCHEDULES
from grulm.presets import PRESETS
from grulm.run import RunSpec, resume, start
from grulm.run.spec import FLAG_NAMES, RENAMED, override_names
from grulm.train import PARTITIONS

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
    add_spec_flags(parser)
    group = parser.add_argument_group("machine")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto [auto]")
    group.add_argument("--threads", type=int, help="CPU threads [one per core; under "
                       "torchrun, the cores ÷ the ranks on this machine]")
    group.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                       metavar="SECONDS", help="under torchrun: how long to wait for the "
                       "other ranks, at the start and in every exchange [%(default)g]")
    group = _add(parser, SEED, "output", *[(f"--{n}", {"type": int, "metavar": "N"}) for n in (
        "checkpoint-every-epochs", "checkpoint-every-steps", "log-every-steps", "sample-every")],
        ("--sample-prefixes", {"nargs": "+", "metavar": "TEXT"}))
    group.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                       help="no TensorBoard events even when tensorboard is installed")
    group.add_argument("--out", type=Path, help="run directory [runs/seed; with --preset NAME, "
                       "runs/NAME; with --resume, DIR]")
    group.add_argument("--overwrite", action="store_true", default=False,
                       help="replace the run in --out (only what a run writes)")
    group.add_argument("--no-progress", action="store_true", default=False)
    parser.set_defaults(func=run)


def add_spec_flags(parser, shown: dict[str, Any] = SEED) -> None:
    """The data, model and optimisation flags: overrides of a :class:`grulm.run.RunSpec`
    (``grulm compare`` takes them too); each help ends with its value in ``shown``."""
    _add(parser, shown, "data",
         ("--data", {"help": "built-in corpus (timemachine, tinyshakespeare), recall:K (a "
                     "letter to remember across K characters, generated) or a text file"}),
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
    _add(parser, shown, "model", ("--hidden-size", {"type": int}),
         ("--num-layers", {"type": int}),
         ("--variant", {"choices": VARIANTS, "help": "reset_before: the textbook's; "
                        "reset_after: nn.GRU's"}),
         ("--input", {"choices": INPUT_KINDS}),
         ("--embedding-size", {"type": int, "help": "for --input embedding; none: hidden size"}),
         ("--dropout", {"type": float, "help": "between layers"}),
         ("--init", {"choices": INITS, "help": "d2l: randn*0.01; torch: nn.GRU's uniform"}),
         ("--backend", {"choices": backends.backend_names(), "help": "auto: the fastest that "
                        "runs the cell"}),
         ("--cell", {"metavar": "|".join(CELLS), "help": "the recurrent cell"}),
         ("--gates", {"metavar": "|".join(GATES), "help": "a GRU's gates; update: R≡1, reset: "
                      "Z≡0, none: a plain RNN"}),
         ("--precision", {"metavar": "|".join(PRECISIONS), "help": "of the recurrent "
                          "layers' matrix products; bf16: bfloat16 operands, float32 "
                          "accumulation, weights and loss"}))
    _add(parser, shown, "optimisation", *[(f"--{n}", {"type": t}) for n, t in (
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


def _add(parser, shown: dict[str, Any], title: str, *flags: tuple[str, dict[str, Any]]):
    """A group of spec flags; each help ends with the setting's value in ``shown``."""
    group = parser.add_argument_group(title)
    for flag, options in flags:
        name = flag[2:].replace("-", "_")
        field = RENAMED.get(name, name)
        value = shown[field]
        value = ",".join(map(str, value)) if isinstance(value, tuple) else value
        help_text = options.pop("help", "")
        group.add_argument(flag, **options,
                           help=f"{help_text} [{'none' if value is None else value}]".strip())
    return group


def flag_error(error: ConfigError) -> ConfigError:
    """``error`` naming its setting by its flag: ``--max-time``, not ``max_time``."""
    name, _, rest = str(error).partition(" ")
    name = FLAG_NAMES.get(name, name)
    renamed = ConfigError(f"--{name.replace('_', '-')} {rest}" if name in override_names()
                          else str(error))
    renamed.quiet = error.quiet
    return renamed


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
    world = World.from_environment(args.dist_timeout)
    if "threads" in options or world.distributed:  # torchrun's default is one per rank
        torch.set_num_threads(options.get("threads") or max(
            1, len(os.sched_getaffinity(0)) // world.local_size))
    printer = Printer(args.no_progress, started) if world.writes else SignalStop()
    common = {"device": args.device, "hooks": [printer], "progress": not args.no_progress,
              "world": world}
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
    except ConfigError as error:
        raise flag_error(error) from None
    finally:
        printer.stop_listening()
    if result.stop_reason in EXIT_ON_SIGNAL:
        if world.writes:
            print(f"grulm train: stopped by {result.stop_reason} at step {result.step}; checkpoint "
                  f"saved in {result.out}; continue with: grulm train --resume {result.out}",
                  file=sys.stderr)
        return EXIT_ON_SIGNAL[result.stop_reason]
    return 0
