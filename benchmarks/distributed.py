"""Data-parallel training on one machine: 1 process × all cores against N ranks × (cores ÷ N)
threads under torchrun, and each rank's resident memory on a 100 MB corpus.

Throughput: real ``grulm train`` runs on the whole timemachine book for ``--steps`` optimiser
steps each (no validation until the end, which is not timed), the two ways taking turns for
``--repeats`` rounds; the tokens/s is the run's own (its checkpoint's ``tokens_per_s``: training
time only) and the median round is reported. Configurations as in ``grulm bench``: **seed**
(1×256, one-hot, B=32, T=35) and **large** (2×512, embedding 512, B=64, T=100).

Memory: a 100 MB English-like text (``prepare_bench.make_block``) is prepared once, then trained
for a few steps by N ranks; every 0.2 s the script reads each rank's ``/proc/<pid>/status``
and reports the peak ``VmRSS`` with its parts: ``RssAnon`` (the process's own memory) and
``RssFile`` (file pages mapped from the page cache — the memory-mapped token ids among them —
which every rank on the machine shares).

    python benchmarks/distributed.py                       # both configurations + memory
    python benchmarks/distributed.py --config seed --repeats 5 --no-memory
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prepare_bench import make_block, write_corpus

BIN = Path(sys.executable).parent
CONFIGS = {
    "seed": ["--hidden-size", "256", "--num-layers", "1", "--input", "onehot",
             "--batch-size", "32", "--num-steps", "35"],
    "large": ["--hidden-size", "512", "--num-layers", "2", "--input", "embedding",
              "--embedding-size", "512", "--batch-size", "64", "--num-steps", "100"],
}
STEPS = {"seed": 300, "large": 40}


def train_command(ranks: int, *args: str) -> list[str]:
    grulm = [str(BIN / "grulm"), "train", *args, "--no-progress", "--overwrite"]
    if ranks == 1:
        return grulm
    return [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(ranks),
            "--no-python", *grulm]


def throughput(config: str, ranks: int, steps: int, out: Path, env: dict) -> float:
    args = ["--data", "timemachine", "--max-tokens", "0", "--epochs", "1000", "--eval-every",
            "1000", "--max-steps", str(steps), "--out", str(out), *CONFIGS[config]]
    result = subprocess.run(train_command(ranks, *args), env=env, capture_output=True,
                            text=True)
    if result.returncode:
        raise SystemExit(f"{config} with {ranks} rank(s) failed:\n{result.stderr}")
    return json.loads((out / "checkpoint.json").read_text())["metrics"]["tokens_per_s"]


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children] + [d for c in children for d in descendants(int(c))]


def memory(ranks: int, corpus: str, workdir: Path, env: dict) -> list[dict[str, int]]:
    """Each rank's peak resident memory (KiB) while training a few steps on ``corpus``."""
    data = ["--data", corpus, "--cleaning", "d2l", "--max-tokens", "0",
            "--split-fractions", "0.999,0.001", *CONFIGS["seed"]]
    prepare = [*data, "--max-steps", "1", "--out", str(workdir / "prepare-run")]
    subprocess.run(train_command(1, *prepare), env=env, check=True, capture_output=True)
    run = [*data, "--max-steps", "60", "--out", str(workdir / "memory-run")]
    process = subprocess.Popen(train_command(ranks, *run), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    peaks: dict[int, dict[str, int]] = {}
    while process.poll() is None:
        for pid in descendants(process.pid) if ranks > 1 else [process.pid]:
            try:
                now = status_kib(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            if "RssAnon" in now and now["VmRSS"] > peaks.get(pid, {}).get("VmRSS", 0):
                peaks[pid] = now
        time.sleep(0.2)
    if process.returncode:
        raise SystemExit(f"the memory run failed:\n{process.stderr.read()}")
    return sorted(peaks.values(), key=lambda p: -p["VmRSS"])[:ranks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["seed", "large", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    configs = configs if args.repeats > 0 else []  # --repeats 0: memory only
    results: dict = {"cores": cores, "ranks": args.ranks, "throughput": {}}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GRULM_CACHE": str(Path(tmp) / "cache")}
        for config in configs:
            rounds: dict[int, list[float]] = {1: [], args.ranks: []}
            for _ in range(args.repeats):
                for ranks in rounds:  # taking turns: background load hits both alike
                    rounds[ranks].append(throughput(config, ranks, STEPS[config],
                                                    Path(tmp) / f"{config}-{ranks}", env))
            one, many = (statistics.median(rounds[r]) for r in rounds)
            results["throughput"][config] = {"one_process": one, "ranks": many,
                                             "ratio": many / one, "rounds": rounds}
            print(f"{config:6s} 1 process × {cores} threads: {one:9,.0f} tok/s   "
                  f"{args.ranks} ranks × {max(1, cores // args.ranks)} thread(s): "
                  f"{many:9,.0f} tok/s   ratio {many / one:.2f}")
        if args.memory:  # the 0.18 MB book first: what a rank holds besides the data
            big = Path(tmp) / "corpus100mb.txt"
            write_corpus(big, 100, make_block())
            results["memory"] = {}
            for name, corpus in (("timemachine", "timemachine"), ("100 MB", str(big))):
                results["memory"][name] = memory(args.ranks, corpus, Path(tmp), env)
                for rank in results["memory"][name]:
                    print(f"{name:11s} one rank's peak: VmRSS {rank['VmRSS'] / 1024:,.0f} MiB "
                          f"= RssAnon {rank['RssAnon'] / 1024:,.0f} + RssFile "
                          f"{rank['RssFile'] / 1024:,.0f} (shared file pages)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
