"""Quality in a time budget: `grulm train --preset shakespeare` against a plain nn.GRU.

Both train for the same wall-clock budget (default 180 s) on tinyshakespeare's first 90 %
(raw characters) and are scored on the last 10 % with the state carried, in nats per
character. The baseline is a plain one: embedding → 1×256 ``torch.nn.GRU`` → linear, AdamW
lr 3e-3, batch 32 × 128 (sequential, state carried), gradient clipping 1, constant lr. The
preset runs as the real command (``grulm train --preset shakespeare --max-time …`` in a
subprocess, then ``grulm eval``). Both use ``torch.set_num_threads`` threads (default 2).

    .venv/bin/python benchmarks/quality.py                  # 180 s each, 2 threads
    .venv/bin/python benchmarks/quality.py --max-time 60    # a quicker look
    .venv/bin/python benchmarks/quality.py --plot curve.png # and the preset's curve as a PNG

Prints a table, the preset's validation curve (every validated epoch from the run's
``metrics.jsonl``, then the final model) and one JSON line holding both. Timings depend on the
machine's load: another process on the same cores makes both runs see fewer tokens and score
worse.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from grulm.data import epoch_batches, eval_batches, load_corpus, split_ids
from grulm.metrics_log import read_log
from grulm.plot import save_curves_plot

TARGET = 1.45  # nats/char on the validation split that the preset must reach in 180 s


class BaselineGRU(nn.Module):
    """embedding (V → 256) → 1×256 ``nn.GRU`` → linear (256 → V), batch-first."""

    def __init__(self, vocab_size: int, hidden_size: int = 256) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, x, state=None):  # x: (B, T) → logits (B, T, V), state (1, B, H)
        out, state = self.gru(self.embedding(x), state)
        return self.head(out), state


def train_baseline(train_ids, vocab_size: int, seconds: float, seed: int = 0):
    """The issue's baseline loop until ``seconds`` of training have passed."""
    torch.manual_seed(seed)
    model = BaselineGRU(vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    steps = tokens = 0
    start = time.perf_counter()
    while True:
        state = None
        for X, Y in epoch_batches(train_ids, 32, 128, rng):
            state = None if state is None else state.detach()
            logits, state = model(X, state)  # (B, T, V), (1, B, H)
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), Y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            steps, tokens = steps + 1, tokens + Y.numel()
            if time.perf_counter() - start >= seconds:
                return model, {"steps": steps, "tokens": tokens,
                               "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate_baseline(model, ids, batch_size: int = 32, num_steps: int = 35) -> float:
    """Validation loss in nats/char, state carried (as :func:`grulm.evaluate.evaluate`)."""
    model.eval()
    state, loss_sum, count = None, 0.0, 0
    for X, Y in eval_batches(ids, batch_size, num_steps):
        logits, state = model(X, state)
        loss_sum += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1),
                                    reduction="sum").item()
        count += Y.numel()
    return loss_sum / count


def run_preset(preset: str, seconds: float, threads: int, extra: list[str]) -> dict:
    """`grulm train --preset … --max-time …` then `grulm eval --json`, as subprocesses."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        train = [sys.executable, "-m", "grulm.cli", "train", "--preset", preset,
                 "--max-time", str(seconds), "--threads", str(threads), "--no-progress",
                 "--sample-every", "0", "--out", str(out), *extra]
        result = subprocess.run(train, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"grulm train failed:\n{result.stderr}")
        evaluated = subprocess.run(
            [sys.executable, "-m", "grulm.cli", "eval", str(out), "--json"],
            capture_output=True, text=True, check=True,
        )
        records = read_log(out / "metrics.jsonl")
        info = json.loads(evaluated.stdout)
        checkpoint = json.loads((out / "checkpoint.json").read_text())
    final = [r for r in records if r["kind"] == "final"][-1]
    steps = final["step"]
    train = checkpoint["train"]
    return {"val_loss": info["loss"], "steps": steps,
            "tokens": steps * train["batch_size"] * train["num_steps"],
            "seconds": final["seconds"], "curve": validation_curve(records, info["loss"]),
            "model": checkpoint["model_config"]}


def validation_curve(records: list[dict], final_loss: float) -> list[dict]:
    """Validation loss over training from a run's metrics records, one point per validation.

    Every epoch record with a ``val_loss`` gives ``{step, epoch, seconds, val_loss}``, where
    ``seconds`` is the training time so far (the epochs' own times, validation excluded). The
    model the run ended with (``final_loss``, as ``grulm eval`` scored it) closes the curve
    unless the last validated epoch ended at the same step; its ``seconds`` is the run's
    clock, which includes the validations.
    """
    curve, seconds = [], 0.0
    for record in records:
        if record["kind"] == "epoch":
            seconds += record["seconds"]
            if record.get("val_loss") is not None:
                curve.append({"step": record["step"], "epoch": record["epoch"],
                              "seconds": round(seconds, 2), "val_loss": record["val_loss"]})
    final = [r for r in records if r["kind"] == "final"][-1]
    if not curve or curve[-1]["step"] != final["step"]:
        curve.append({"step": final["step"], "epoch": final["epoch"],
                      "seconds": round(final["seconds"], 2), "val_loss": final_loss})
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-time", type=float, default=180.0, help="seconds per contender")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--preset", default="shakespeare")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--grulm-args", default="",
                        help="extra flags for grulm train (e.g. '--hidden-size 512')")
    parser.add_argument("--plot", metavar="PNG", type=Path,
                        help="also draw the preset's validation loss against steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("GRULM_DATA_PATH", str(Path(__file__).resolve().parents[1].parent
                                                 / "shared" / "data"))
    corpus = load_corpus("tinyshakespeare", cleaning="raw", token="char")
    splits = split_ids(corpus.ids, (0.9, 0.1))
    load = os.getloadavg()[0]

    rows = {}
    if not args.skip_baseline:
        model, stats = train_baseline(splits.train, len(corpus.vocab), args.max_time)
        rows["nn.GRU baseline"] = {**stats, "val_loss": evaluate_baseline(model, splits.val)}
    rows[f"grulm --preset {args.preset}"] = run_preset(args.preset, args.max_time, args.threads,
                                                       args.grulm_args.split())

    print(f"tinyshakespeare, 90/10 split, {args.max_time:g} s each, {args.threads} threads, "
          f"load average {load:.2f} at start")
    print(f"{'contender':<28} {'val nats/char':>13} {'bits/char':>9} {'steps':>7} "
          f"{'tokens':>11} {'tokens/s':>9}")
    for name, row in rows.items():
        print(f"{name:<28} {row['val_loss']:>13.4f} {row['val_loss'] / math.log(2):>9.4f} "
              f"{row['steps']:>7,} {row['tokens']:>11,} {row['tokens'] / row['seconds']:>9,.0f}")
    preset = rows[f"grulm --preset {args.preset}"]
    print(f"\nvalidation curve of grulm --preset {args.preset}:")
    print(f"{'step':>7} {'epoch':>5} {'train s':>8} {'val nats/char':>13}")
    for point in preset["curve"]:
        print(f"{point['step']:>7,} {point['epoch']:>5} {point['seconds']:>8.1f} "
              f"{point['val_loss']:>13.4f}")
    if args.plot is not None:
        points = [(p["step"], p["val_loss"]) for p in preset["curve"]]
        save_curves_plot(args.plot, {f"grulm --preset {args.preset}": points},
                         xlabel="optimiser step", ylabel="validation nats/char",
                         title=f"tinyshakespeare, {args.max_time:g} s budget")
        print(f"plot: {args.plot}")
    preset_loss = preset["val_loss"]
    print(f"target ≤ {TARGET:.2f} nats/char: {'met' if preset_loss <= TARGET else 'NOT met'}")
    print(json.dumps({"benchmark": "quality", "max_time": args.max_time,
                      "threads": args.threads, "load_average": load, "target": TARGET,
                      "results": {k: {kk: vv for kk, vv in v.items() if kk != "model"}
                                  for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
