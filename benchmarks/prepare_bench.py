"""Time data preparation (text file → cached compact token ids) at growing sizes.

Generates English-like text of each size into a temporary directory (a 1 MB block of random
words and punctuation from a fixed seed, repeated with a numbered heading per repeat), then
for each size measures:

- cold: ``load_prepared`` with an empty cache (hash, read, clean, tokenize, count, map, write
  the cache entry), the median of ``--repeats`` runs (one run at ≥ 100 MB);
- warm: ``load_prepared`` again, served from the cache (hash + read ids), median of repeats.

Prints a table and one JSON line. Preparation is called linear when the cold seconds per MB at
the largest size are at most 1.5× those at the smallest (fixed costs make small sizes cost
more per MB, never less, so this bounds the growth from above). A tiny warm-up preparation runs
first so one-time costs (lazy imports, first torch calls) are not timed.

    python benchmarks/prepare_bench.py                       # 1, 10, 100 MB, d2l chars
    python benchmarks/prepare_bench.py --sizes 1 10 --cleaning raw --token word
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

MB = 1_000_000


def make_block(seed: int = 0, size: int = MB) -> bytes:
    """About ``size`` bytes of lines of random words, capitals and punctuation."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [13, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    words = ["".join(rng.choices(letters, weights, k=rng.randint(1, 10))) for _ in range(5000)]
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choices(words, k=rng.randint(3, 14)))
        line = line[0].upper() + line[1:] + rng.choice([".", ",", ";", "!", "?", " --"])
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def write_corpus(path: Path, megabytes: int, block: bytes) -> None:
    with open(path, "wb") as file:
        for part in range(megabytes):
            file.write(f"Part {part}\n".encode())
            file.write(block)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="MB")
    parser.add_argument("--cleaning", default="d2l", choices=["d2l", "raw"])
    parser.add_argument("--token", default="char", choices=["char", "word"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    block = make_block()
    rows = []
    with tempfile.TemporaryDirectory(prefix="grulm-prepare-bench-") as tmp:
        root = Path(tmp)
        os.environ["GRULM_CACHE"] = str(root / "cache")  # before load_prepared reads it
        from grulm.data.prepare import load_prepared

        warmup = root / "warmup.txt"
        warmup.write_bytes(block[:10_000])
        load_prepared(warmup, cleaning=args.cleaning, token=args.token, use_cache=False)
        for megabytes in args.sizes:
            path = root / f"corpus-{megabytes}mb.txt"
            write_corpus(path, megabytes, block)
            size = path.stat().st_size
            repeats = 1 if megabytes >= 100 else args.repeats
            options = {"cleaning": args.cleaning, "token": args.token}
            colds, warms = [], []
            for repeat in range(repeats):
                os.environ["GRULM_CACHE"] = str(root / f"cache-{megabytes}-{repeat}")
                seconds, cold = timed(lambda: load_prepared(path, **options))  # noqa: B023
                assert not cold.cached
                colds.append(seconds)
                seconds, warm = timed(lambda: load_prepared(path, **options))  # noqa: B023
                assert warm.cached and warm.vocab == cold.vocab
                warms.append(seconds)
            rows.append(
                {
                    "mb": size / MB,
                    "tokens": cold.ids.numel(),
                    "vocab": len(cold.vocab),
                    "cold_s": statistics.median(colds),
                    "warm_s": statistics.median(warms),
                }
            )
            path.unlink()

    print(f"prepare {args.cleaning}/{args.token}")
    header = ("MB", 8), ("tokens", 12), ("vocab", 6), ("cold s", 8), ("MB/s", 7), ("warm s", 8)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'s/MB':>7}")
    for row in rows:
        row["cold_s_per_mb"] = row["cold_s"] / row["mb"]
        print(
            f"{row['mb']:8.1f} {row['tokens']:12d} {row['vocab']:6d} {row['cold_s']:8.3f} "
            f"{row['mb'] / row['cold_s']:7.1f} {row['warm_s']:8.3f} {row['cold_s_per_mb']:7.4f}"
        )
    growth = rows[-1]["cold_s_per_mb"] / rows[0]["cold_s_per_mb"]
    verdict = "linear" if growth <= 1.5 else "NOT linear"
    print(
        f"cold s/MB at {rows[-1]['mb']:.0f} MB is {growth:.2f}x that at {rows[0]['mb']:.0f} MB: "
        f"{verdict}"
    )
    summary = {"cleaning": args.cleaning, "token": args.token, "rows": rows, "growth": growth}
    print(json.dumps({"benchmark": "prepare", **summary}))


if __name__ == "__main__":
    main()
