"""``grulm compare``: train several contenders on the same data under the same budget and
print one table (and one JSON line); :func:`grulm.compare.compare` does the work."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from grulm.cli.train import add_spec_flags, flag_error
from grulm.compare import CONTENDERS, compare
from grulm.errors import ConfigError
from grulm.presets import PRESETS
from grulm.run import RunHook, RunSpec
from grulm.run.spec import override_names

DEFAULT_PRESET = "recall"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="train several models under one budget and compare them",
        description="Train each contender as a run in OUT/NAME from the same settings (the "
        "preset's, the flags given on top): the same data, seed, batches, optimiser and budget "
        "(--max-time or --max-steps each). Print one table — parameters, steps, tokens/s, "
        "validation nats and bits per token, recall accuracy on recall:K data — and a final "
        "JSON line; write OUT/compare.csv, OUT/compare.md and OUT/val_loss.png (validation "
        f"loss over seconds of training). [values] are --preset {DEFAULT_PRESET}'s.",
        argument_default=argparse.SUPPRESS)  # only the flags given become overrides
    group = parser.add_argument_group("contenders")
    group.add_argument("--cells", required=True, metavar="A,B,…",
                       help=f"comma-separated contenders, at least two: {', '.join(CONTENDERS)}")
    group.add_argument("--match-params", type=int, metavar="N", help="give each contender "
                       "the hidden size that makes about N trainable parameters")
    group.add_argument("--preset", choices=list(PRESETS),
                       help=f"the settings every contender starts from [{DEFAULT_PRESET}]")
    add_spec_flags(parser, RunSpec.from_preset(DEFAULT_PRESET).flat())
    group = parser.add_argument_group("output")
    group.add_argument("--out", type=Path, default=Path("runs/compare"),
                       help="where the runs and the tables go [runs/compare]")
    group.add_argument("--overwrite", action="store_true", default=False,
                       help="replace earlier results in --out (only what compare writes)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto [auto]")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = vars(args)
    overrides = {k: v for k, v in options.items() if k in override_names()}
    names = [name.strip() for name in args.cells.split(",") if name.strip()]
    match = options.get("match_params")
    if match is not None and "hidden_size" in overrides:
        raise ConfigError("--match-params chooses each contender's hidden size; drop "
                          "--hidden-size or --match-params")
    if match is not None and match < 1:
        raise ConfigError(f"--match-params must be a number of parameters ≥ 1, got {match}")
    try:
        spec = RunSpec.from_preset(options.get("preset", DEFAULT_PRESET), **overrides)
    except ConfigError as error:
        raise flag_error(error) from None
    result = compare(spec, names, args.out, match_params=match, overwrite=args.overwrite,
                     device=args.device, hooks=lambda name: [_Report(name, names)],
                     eval_every=options.get("eval_every"))
    print(result.markdown(), end="")
    print("   ".join(f"{kind}: {path}" for kind, path in result.files.items()), file=sys.stderr)
    print(json.dumps(result.to_dict()))
    return 0


class _Report(RunHook):
    """One line as a contender starts and one as it ends (on stderr)."""

    def __init__(self, name: str, names: list[str]) -> None:
        self.name, self.names = name, names

    def on_start(self, run) -> None:
        self.started = time.perf_counter()
        model = run.model.config
        params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        print(f"grulm compare: {self.name} ({self.names.index(self.name) + 1}/"
              f"{len(self.names)}): {model.num_layers}×{model.hidden_size}, {params:,} "
              f"parameters, backend {run.backend} → {run.out}", file=sys.stderr, flush=True)

    def on_finish(self, run, result) -> None:
        val = (f", validation {result.val_loss:.4f} nats" if result.val_loss is not None
               else ", final validation skipped: it would run past the budget (— in the table; "
               f"evaluate later with: grulm eval {run.out})" if result.validation_skipped
               else "")
        recall = ("" if result.recall_accuracy is None
                  else f", recall accuracy {result.recall_accuracy:.4f}")
        print(f"grulm compare: {self.name}: {result.step:,} steps ({result.stop_reason}) in "
              f"{time.perf_counter() - self.started:.0f} s{val}{recall}", file=sys.stderr,
              flush=True)
