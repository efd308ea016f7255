"""Does ``grulm bench`` measure what ``grulm train`` does? Both timed back to back, interleaved.

Each round runs, as separate processes one right after the other (in turn first), a real
``grulm train`` on the seed's settings (``--preset d2l``, a short run) and ``grulm bench
--config seed --only grulm/cpu``, in the same thread count. The training run's figure is the
median of the tokens/s its log records per epoch (``metrics.jsonl``; the first epoch, which
builds and warms up, left out); the bench's is its ``grulm/cpu`` median. Background load
hits the two of a round alike, not one round like the next: the agreement is the median over
the rounds of each round's bench/train ratio.

    python benchmarks/bench_vs_train.py                    # 5 rounds, 30-epoch runs
    python benchmarks/bench_vs_train.py --rounds 9 --threads 2

Prints a table, a verdict against ``--tolerance``, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def grulm(*args: str) -> str:
    """``python -m grulm.cli ARGS`` in a fresh process; its stdout. Raises on failure."""
    done = subprocess.run([sys.executable, "-m", "grulm.cli", *args], capture_output=True,
                          text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(f"grulm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def train_tokens_per_s(out: Path, epochs: int, threads: list[str]) -> float:
    """The median per-epoch tokens/s of a seed-settings ``grulm train``, epoch 1 left out."""
    grulm("train", "--preset", "d2l", "--epochs", str(epochs), "--no-progress",
          "--sample-every", "0", "--no-tensorboard", "--out", str(out), "--overwrite", *threads)
    with open(out / "metrics.jsonl", encoding="utf-8") as log:
        records = [json.loads(line) for line in log]
    epochs_logged = [r["tokens_per_s"] for r in records if r.get("kind") == "epoch"]
    return statistics.median(epochs_logged[1:])


def bench_tokens_per_s(threads: list[str]) -> tuple[float, dict]:
    """``grulm bench --config seed``'s grulm/cpu median tokens/s, and its report."""
    line = grulm("bench", "--config", "seed", "--only", "grulm/cpu", "--json-only", *threads)
    report = json.loads(line.strip().splitlines()[-1])["reports"][0]
    result = next(r for r in report["results"] if r["contender"] == "grulm/cpu")
    if result["tokens_per_s"] is None:
        raise SystemExit(f"grulm/cpu did not run: {result['skipped']}")
    return result["tokens_per_s"], report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs of each training run (default 30)")
    parser.add_argument("--threads", type=int, help="--threads for both (default: theirs)")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="the largest relative difference that counts as agreement")
    args = parser.parse_args()
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="grulm-bench-vs-train-") as tmp:
        for index in range(args.rounds):
            if index % 2 == 0:
                train = train_tokens_per_s(Path(tmp) / f"run{index}", args.epochs, threads)
            bench, report = bench_tokens_per_s(threads)
            if index % 2 == 1:
                train = train_tokens_per_s(Path(tmp) / f"run{index}", args.epochs, threads)
            rows.append({"train": train, "bench": bench, "ratio": bench / train})
    train = statistics.median(r["train"] for r in rows)
    bench = statistics.median(r["bench"] for r in rows)
    ratio = statistics.median(r["ratio"] for r in rows)
    agree = abs(ratio - 1) <= args.tolerance
    print(f"seed settings, grulm/cpu, {report['threads']} threads, cpu kernels {report['isa']}; "
          f"train: median epoch of {args.epochs}-epoch runs; bench: median round")
    print(f"{'round':>6} {'train tok/s':>12} {'bench tok/s':>12} {'bench/train':>12}")
    for index, r in enumerate(rows, 1):
        print(f"{index:>6} {r['train']:>12,.0f} {r['bench']:>12,.0f} {r['ratio']:>12.3f}")
    print(f"{'median':>6} {train:>12,.0f} {bench:>12,.0f} {ratio:>12.3f}   "
          f"{'agree' if agree else 'DISAGREE'} within {args.tolerance:.0%}")
    print(json.dumps({"rounds": rows, "train_tokens_per_s": train, "bench_tokens_per_s": bench,
                      "ratio": ratio, "tolerance": args.tolerance, "agree": agree,
                      "threads": report["threads"], "isa": report["isa"],
                      "epochs": args.epochs}))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
