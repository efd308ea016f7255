"""Why gates: every cell and GRU ablation side by side, through ``grulm compare``.

1. tinyshakespeare (``--preset shakespeare``): rnn, the GRU with only its update gate, with
   only its reset gate, the GRU, the LSTM and minGRU at about the same number of parameters
   (``--match-params``), each with the same time budget; validation nats per character on the
   last 2% of the text (22k characters: ten validations of it fit in every budget).
2. the recall task (``--preset recall``) at K ∈ {5, 10, 20, 40, 80}: the same contenders, each
   with the same time budget per K; recall accuracy against K, plotted.

Every contender is a real run (``grulm compare`` → ``grulm.run.start``) under ``OUT``. The
ablated GRUs run on the ``reference`` backend (the fused kernel has no gate switches), so in a
time budget they take fewer steps than the GRU on ``cpu``: the tables give the steps too.

    python benchmarks/gates_study.py --out runs/gates-study      # ~25 min on 2 cores
    python benchmarks/gates_study.py --ks 10 40 --recall-time 20 --shakespeare-time 30
"""

from __future__ import annotations

import argparse
import json
import string
import subprocess
import sys
from pathlib import Path

CELLS = "rnn,gru-update-only,gru-reset-only,gru,lstm,mingru"
GRULM = [sys.executable, "-m", "grulm"]


def compare(out: Path, *args: str) -> list[dict]:
    """One ``grulm compare`` run; its final JSON line's results."""
    command = [*GRULM, "compare", "--cells", CELLS, "--seed", "0", "--out", str(out),
               "--overwrite", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    print(result.stderr, end="", file=sys.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])["results"]


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        cells = [fmt.format(**row) if all(row.get(k) is not None for k in _keys(fmt)) else "—"
                 for _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _keys(fmt: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(fmt) if name]


def plot(sweep: dict[int, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(sweep)
    names = [r["name"] for r in sweep[ks[0]]]
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for name in names:
        accuracy = [next(r for r in sweep[k] if r["name"] == name)["recall_accuracy"] for k in ks]
        axes.plot(ks, accuracy, marker="o", label=name)
    axes.axhline(1 / 26, color="grey", linestyle=":", label="chance (1/26)")
    axes.set(xscale="log", xlabel="K (characters to remember across)",
             ylabel="recall accuracy", ylim=(0, 1.02),
             title="recall:K, same time budget per contender")
    axes.minorticks_off()
    axes.set_xticks(ks, [str(k) for k in ks])
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gates-study"))
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    parser.add_argument("--recall-time", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--recall-params", type=int, default=66_000)
    parser.add_argument("--shakespeare-time", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--shakespeare-params", type=int, default=250_000)
    parser.add_argument("--no-shakespeare", dest="shakespeare", action="store_false")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if args.shakespeare:
        rows = compare(args.out / "shakespeare", "--preset", "shakespeare", "--max-time",
                       str(args.shakespeare_time), "--match-params",
                       str(args.shakespeare_params), "--split-fractions", "0.98,0.02")
        results["shakespeare"] = rows
        print(table(rows, [("contender", "{name}"), ("parameters", "{params:,}"),
                           ("steps", "{steps:,}"), ("tokens/s", "{tokens_per_s:,.0f}"),
                           ("val nats/char", "{val_nats:.4f}"),
                           ("val bits/char", "{val_bits:.4f}")]))
    sweep = {}
    for k in args.ks:
        sweep[k] = compare(args.out / f"recall{k}", "--data", f"recall:{k}", "--max-time",
                           str(args.recall_time), "--match-params", str(args.recall_params))
    if sweep:
        names = [r["name"] for r in sweep[args.ks[0]]]
        rows = [{"name": name, **{f"k{k}": next(r for r in sweep[k] if r["name"] == name)
                                  ["recall_accuracy"] for k in args.ks}} for name in names]
        print(table(rows, [("contender", "{name}")]
                    + [(f"K = {k}", f"{{k{k}:.3f}}") for k in args.ks]))
        plot(sweep, args.out / "recall_vs_k.png")
        results["recall"] = {str(k): rows for k, rows in sweep.items()}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
