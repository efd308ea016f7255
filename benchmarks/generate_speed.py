"""Single-stream generation speed: characters per second, grulm against the seed's loop.

All in one run, on the same weights (a reset-before one-hot GRULM of the seed's shape,
converted exactly to the textbook's parameters for the seed):

- ``seed predict_ch8``: :func:`grulm.textbook.predict`, the book's loop as written (one call of
  the from-scratch model per character, autograd on, as d2l runs it) — the baseline;
- ``seed loop, no_grad``: the same under ``torch.no_grad()``, the fairest form of it;
- ``GRULM.forward per char``: :func:`grulm.generate.generate` with ``fast=False``, stepping the
  model's ``forward`` one character at a time (last, because a multi-threaded backend can
  leave its thread pool spinning for a while and slow whatever runs next);
- ``grulm greedy`` / ``grulm sample`` / ``grulm sample top-k/top-p`` / ``grulm stream``: the
  library as users call it: the one-pass warm-up, then the decoding backend's single step
  (``backend='auto'``: on a CPU the compiled ``cpu`` one, one call per step and one for a
  whole greedy run; the table's header names the backend that ran).

Each row is the median of ``--repeats`` timed runs after one untimed warm-up run; each run
generates ``--num-chars`` characters after the prefix "time traveller" (warm-up included, as a
user sees it). The repeats go round-robin over all rows, so that a change in the load from
other processes on the machine hits every row alike. Prints a table, the load average while
measuring, and one JSON line.

    python benchmarks/generate_speed.py
    python benchmarks/generate_speed.py --hidden-size 512 --num-chars 2000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from grulm import textbook
from grulm.data.vocab import Vocab
from grulm.generate import GRUStepDecoder, generate, predict, stream
from grulm.model import GRULM, GRUConfig

PREFIX = "time traveller"
# The 28 tokens of The Time Machine under d2l cleaning, in the seed vocabulary's order.
TOKENS = ["<unk>", " ", *"etaoinsrhdlumwcfgypbvkxjqz"]


def median_seconds(cases: dict, repeats: int) -> dict[str, float]:
    """The median seconds of each case, timing them round-robin after one untimed run each."""
    for run in cases.values():
        run()  # warm-up: first calls, caches, lazy initialisation
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-chars", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    vocab = Vocab(TOKENS)
    torch.manual_seed(0)
    model = GRULM(GRUConfig(vocab_size=len(vocab), hidden_size=args.hidden_size)).eval()
    net = textbook.gru_model(len(vocab), args.hidden_size)
    net.params = textbook.from_grulm(model)
    n = args.num_chars

    def seed_no_grad():
        with torch.no_grad():
            return textbook.predict(PREFIX, n, net, vocab, "cpu")

    def sample(**options):
        g = torch.Generator().manual_seed(0)
        return generate(model, vocab, PREFIX, max_new=n, strategy="sample", generator=g, **options)[
            0
        ]

    cases = {
        "seed predict_ch8": lambda: textbook.predict(PREFIX, n, net, vocab, "cpu"),
        "seed loop, no_grad": seed_no_grad,
        "grulm greedy": lambda: predict(model, vocab, PREFIX, n),
        "grulm stream greedy": lambda: PREFIX + "".join(stream(model, vocab, PREFIX, max_new=n)),
        "grulm sample": sample,
        "grulm sample top-k 5": lambda: sample(top_k=5),
        "grulm sample top-p 0.9": lambda: sample(top_p=0.9),
        "GRULM.forward per char": lambda: generate(model, vocab, PREFIX, max_new=n, fast=False)[0],
    }
    # The same greedy text from every greedy path, or the comparison means nothing.
    greedy_texts = {cases[name]() for name in cases if "sample" not in name}
    assert len(greedy_texts) == 1, greedy_texts

    load_before = os.getloadavg()[0]
    seconds = median_seconds(cases, args.repeats)
    load_after = os.getloadavg()[0]

    baseline = seconds["seed predict_ch8"]
    decode_backend = GRUStepDecoder(model, model.begin_state(1)).backend.name
    print(
        f"single-stream generation, H={args.hidden_size}, V={len(vocab)}, {n} chars after "
        f"{PREFIX!r}, median of {args.repeats}, torch threads {torch.get_num_threads()}, "
        f"decoding backend {decode_backend!r}"
    )
    print(f"{'path':26s} {'chars/s':>10s} {'µs/char':>9s} {'vs seed':>8s}")
    for name, secs in seconds.items():
        print(f"{name:26s} {n / secs:10.0f} {secs / n * 1e6:9.1f} {baseline / secs:7.1f}×")
    print(
        f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after, "
        f"on {os.cpu_count()} cores"
    )
    result = {
        "benchmark": "generate_speed",
        "hidden_size": args.hidden_size,
        "vocab_size": len(vocab),
        "num_chars": n,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "decode_backend": decode_backend,
        "chars_per_s": {name: round(n / secs, 1) for name, secs in seconds.items()},
        "speedup_greedy_vs_seed": round(baseline / seconds["grulm greedy"], 2),
        "speedup_sample_vs_seed": round(baseline / seconds["grulm sample"], 2),
        "speedup_greedy_vs_seed_no_grad": round(
            seconds["seed loop, no_grad"] / seconds["grulm greedy"], 2
        ),
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
