"""``grulm bench``: training tokens/s of the seed's models and every grulm backend, side by side."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys

import torch

from grulm import bench
from grulm.backends.precision import PRECISIONS
from grulm.cells import CELLS, GATES, cell_label
from grulm.errors import ConfigError

CONFIGS = {"seed": bench.SEED, "large": bench.LARGE}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="training throughput against nn.GRU and the textbook loop",
        description="Train every contender on random batches and report tokens/s: the seed's "
        "from-scratch GRU and its nn.GRU model in the seed's loop (the baseline), and GRULM "
        "on every backend through grulm's training loop, as grulm train runs it. Contenders "
        "take turns within each round; a round is whole epochs over the same batches, enough "
        "to last --min-round-seconds; the median round counts. Prints a table per "
        "configuration, then one JSON line.",
    )
    parser.add_argument(
        "--config", choices=[*CONFIGS, "all"], default="all",
        help="seed: B=32, T=35, H=256, V=28, one-hot, reset-before; large: 2 layers, H=512, "
        "embedding input, B=64, T=100 (default: both)",
    )
    parser.add_argument("--variant", choices=["reset_before", "reset_after"],
                        help="override the configurations' GRU variant")
    parser.add_argument("--cell", metavar="|".join(CELLS),
                        help="benchmark this cell instead of the GRU (the baseline stays nn.GRU)")
    parser.add_argument("--gates", metavar="|".join(GATES),
                        help="a GRU's gates: both (default), update, reset, none")
    parser.add_argument("--precision", metavar="|".join(PRECISIONS),
                        help="of grulm's recurrent products: float32 (default) or bf16; "
                        "the textbook and nn.GRU baselines stay float32")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    timing.add_argument("--warmup", type=int, default=1,
                        help="untimed epochs first (default 1; the last sizes the rounds)")
    timing.add_argument("--batches", type=int, default=None,
                        help="training steps per epoch (default: 10 seed, 2 large)")
    timing.add_argument("--min-round-seconds", type=float, default=1.0, metavar="S",
                        help="each contender's round is whole epochs lasting at least this "
                        "long (default 1; 0: one epoch a round)")
    timing.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: PyTorch's choice)")
    timing.add_argument("--only", nargs="+", metavar="NAME",
                        help="contenders to run besides the nn.GRU baseline, e.g. grulm/cpu")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("repeats", "batches", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be zero or more, got {args.warmup}")
    if not (math.isfinite(args.min_round_seconds) and args.min_round_seconds >= 0):
        raise ConfigError("--min-round-seconds must be a number of seconds ≥ 0, got "
                          f"{args.min_round_seconds}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = list(CONFIGS) if args.config == "all" else [args.config]
    reports = []
    for name in names:
        config = CONFIGS[name]
        overrides = {name: getattr(args, name) for name in ("variant", "cell", "gates", "precision")
                     if getattr(args, name) is not None}
        config = bench.BenchConfig(**{**config.__dict__, **overrides})
        batches = args.batches or (10 if name == "seed" else 2)
        load_before = _load_average()
        report = bench.run(config, device=args.device, batches=batches, warmup=args.warmup,
                           repeats=args.repeats, only=args.only,
                           min_round_seconds=args.min_round_seconds)
        load = {"before": load_before, "after": _load_average()}
        reports.append({**report.to_dict(), "load_average_1min": load})
        if not args.json_only:
            print(_table(report))
            print(f"load average (1 min) {load['before']} before, {load['after']} after: "
                  "other processes share these cores", end="\n\n")
            sys.stdout.flush()
    machine = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps({"machine": machine, "reports": reports}))
    return 0


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def _table(report: bench.Report) -> str:
    c = report.config
    precision = "" if c.precision == "float32" else f"grulm in {c.precision}, "
    lines = [
        f"{c.name}: {c.num_layers}×{c.hidden_size} {cell_label(c.cell, c.gates, c.variant)}, "
        f"{c.input_kind} input, {precision}"
        f"V={c.vocab_size}, B={c.batch_size}, T={c.num_steps}; {report.device}, "
        f"{report.threads} threads, cpu kernels {report.isa or 'unavailable'}; median of "
        f"{report.repeats} rounds, each whole epochs of {report.batches} steps lasting "
        f"≥ {report.min_round_seconds:g} s",
        f"{'contender':<16} {'tokens/s':>10} {'× nn.GRU':>9}   {'min–max':>17} {'epochs':>7}",
    ]
    for r in report.results:
        if r.tokens_per_s is None:
            if r.skipped is not None:
                lines.append(f"{r.contender:<16} {'—':>10} {'':>9}   skipped: {r.skipped}")
            continue
        spread = f"{min(r.rounds):,.0f}–{max(r.rounds):,.0f}"
        lines.append(f"{r.contender:<16} {r.tokens_per_s:>10,.0f} {r.ratio:>8.2f}×   {spread:>17} "
                     f"{r.epochs_per_round:>7}")
    return "\n".join(lines)
