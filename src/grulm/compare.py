"""Several models trained on the same data under the same budget, side by side.

:func:`compare` trains each contender as a real run (:func:`grulm.run.start`, into
``OUT/<name>/``, so ``grulm eval``, ``generate`` and ``info`` read it) from one
:class:`~grulm.run.RunSpec`: the same data, seed, batches, optimiser and budget
(``max_time`` or ``max_steps``), only the contender's own model settings changed
(:data:`CONTENDERS`) and, with ``match_params``, its hidden size chosen so that every contender
has about the same number of parameters. It writes, besides the runs::

    OUT/compare.csv, OUT/compare.md   one row per contender
    OUT/val_loss.png                  validation loss against seconds of training

Validation loss over time comes from :class:`ValidationCurve`, a hook that evaluates the
held-out split at evenly spaced points of the budget. Its evaluations count towards
``max_time`` (as a run's own validations do) but not towards throughput: tokens/s is training
tokens over training seconds. The runs do not validate at epoch ends (``eval_every`` is set
past the last epoch unless given), so that every contender pays for the same number of
evaluations; each is evaluated once more at its end, with recall accuracy on ``recall:K`` data.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grulm.data.corpus import load_corpus
from grulm.errors import ConfigError
from grulm.evaluate import evaluate
from grulm.model import GRULM
from grulm.plot import save_curves_plot
from grulm.run import RunHook, RunSpec, start
from grulm.run.directory import describe_run

# Contender name → the model settings (ModelSpec fields) that make it; the rest is the spec's.
CONTENDERS: dict[str, dict[str, Any]] = {
    "gru": {},
    "gru-reset-after": {"variant": "reset_after"},
    "gru-update-only": {"gates": "update"},
    "gru-reset-only": {"gates": "reset"},
    "gru-no-gates": {"gates": "none"},
    "rnn": {"cell": "rnn"},
    "lstm": {"cell": "lstm"},
    "mingru": {"cell": "mingru"},
}
RESULT_FILES = ("compare.csv", "compare.md", "val_loss.png")
CURVE_POINTS = 10  # validations per contender, the final one included
MAX_HIDDEN = 1 << 15


def contender_overrides(name: str) -> dict[str, Any]:
    """The model settings of contender ``name``; ``ConfigError`` naming the known ones."""
    if name not in CONTENDERS:
        raise ConfigError(f"unknown contender {name!r}; the contenders are "
                          f"{', '.join(CONTENDERS)}")
    return CONTENDERS[name]


@dataclass(frozen=True)
class Contender:
    """How one contender did.

    Attributes:
        name: the contender (a key of :data:`CONTENDERS`).
        params: trainable parameters.
        hidden_size: its hidden size (chosen by ``match_params`` when given).
        steps: optimiser steps taken within the budget.
        tokens_per_s: training tokens per second of training (evaluations excluded).
        val_nats: final validation loss per token in nats; None when skipped.
        recall_accuracy: on ``recall:K`` data, on the validation split; else None.
        curve: ``(training seconds, step, validation nats)`` points, the final one last.
        out: its run directory.
    """

    name: str
    params: int
    hidden_size: int
    steps: int
    tokens_per_s: float | None
    val_nats: float | None
    recall_accuracy: float | None
    curve: list[tuple[float, int, float]]
    out: Path

    @property
    def val_bits(self) -> float | None:
        return None if self.val_nats is None else self.val_nats / math.log(2)

    def to_dict(self) -> dict[str, Any]:
        """The JSON line's entry."""
        return {"name": self.name, "params": self.params, "steps": self.steps,
                "tokens_per_s": self.tokens_per_s, "val_nats": self.val_nats,
                "val_bits": self.val_bits, "recall_accuracy": self.recall_accuracy}


@dataclass(frozen=True)
class Comparison:
    """Every contender's result, in the order given, and the files written."""

    contenders: list[Contender]
    unit: str
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"results": [c.to_dict() for c in self.contenders]}

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """The table: a header and one row of formatted cells per contender."""
        header = ["contender", "parameters", "hidden", "steps", "tokens/s",
                  f"val nats/{self.unit}", f"val bits/{self.unit}", "recall accuracy"]
        rows = [[c.name, f"{c.params:,}", str(c.hidden_size), f"{c.steps:,}",
                 _format(c.tokens_per_s, ",.0f"), _format(c.val_nats, ".4f"),
                 _format(c.val_bits, ".4f"), _format(c.recall_accuracy, ".4f")]
                for c in self.contenders]
        return header, rows

    def markdown(self) -> str:
        header, rows = self.rows()
        lines = [header, ["---"] + ["---:"] * (len(header) - 1), *rows]
        return "\n".join(f"| {' | '.join(line)} |" for line in lines) + "\n"


class ValidationCurve(RunHook):
    """Validation loss at ``points`` evenly spaced marks of a run's budget: of ``max_time``
    when that is the budget, else of its steps (``max_steps`` or every epoch's).

    Attributes:
        curve: ``(training seconds, step, validation nats)`` per evaluation.
        eval_seconds: time spent evaluating (not training).
        last_step_seconds: training seconds when the last step ended (where the run's final
            validation belongs).
        params: the model's trainable parameters (known from ``on_start``).
    """

    def __init__(self, points: int = CURVE_POINTS) -> None:
        self.points = points
        self.curve: list[tuple[float, int, float]] = []
        self.eval_seconds = 0.0
        self.last_step_seconds = 0.0
        self.params = 0

    def on_start(self, run) -> None:
        self.run, config = run, run.spec.train
        self.params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        self.started = time.perf_counter()
        self.by_time = config.max_time is not None and config.max_steps is None
        steps = config.epochs * run.steps_per_epoch
        total = config.max_time if self.by_time else min(steps, config.max_steps or steps)
        self.marks = [total * k / self.points for k in range(1, self.points)]

    def training_seconds(self) -> float:
        return time.perf_counter() - self.started - self.eval_seconds

    def on_step(self, progress, stats) -> None:
        self.last_step_seconds = self.training_seconds()
        now = self.last_step_seconds if self.by_time else stats.step
        if not self.marks or now < self.marks[0] or self.run.splits.val is None:
            return
        while self.marks and now >= self.marks[0]:
            self.marks.pop(0)
        began = time.perf_counter()
        config = self.run.spec.train
        loss = evaluate(self.run.model, self.run.splits.val, config.batch_size,
                        config.num_steps, self.run.world).loss
        self.eval_seconds += time.perf_counter() - began
        self.curve.append((self.training_seconds(), stats.step, loss))


def hidden_size_for(spec: RunSpec, vocab_size: int, params: int) -> int:
    """The hidden size whose model (``spec.model`` otherwise) has the number of trainable
    parameters nearest ``params``; models are built on the meta device (no memory)."""

    def count(hidden: int) -> int:
        with torch.device("meta"):
            model = GRULM(spec.replace(hidden_size=hidden).model.config(vocab_size))
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    low, high = 1, MAX_HIDDEN  # count() grows with the hidden size
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if count(middle) < params else (low, middle)
    return min((max(low - 1, 1), low), key=lambda hidden: abs(count(hidden) - params))


def contender_specs(spec: RunSpec, names: Sequence[str],
                    match_params: int | None = None) -> dict[str, RunSpec]:  # fmt: skip
    """Each contender's spec: ``spec`` with its model settings (and matched hidden size).

    Raises:
        ConfigError: fewer than two contenders, one named twice, an unknown one, or a
            ``match_params`` below 1.
    """
    if len(names) < 2:
        raise ConfigError(f"compare needs at least two contenders (e.g. --cells gru,"
                          f"gru-reset-after), got {len(names)}: {', '.join(names) or 'none'}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"contender {', '.join(repeated)} is named more than once; name "
                          "each contender once")
    specs = {name: spec.replace(**contender_overrides(name)) for name in names}
    if match_params is None:
        return specs
    if isinstance(match_params, bool) or not isinstance(match_params, int) or match_params < 1:
        raise ConfigError(f"match_params must be a number of parameters ≥ 1, got "
                          f"{match_params!r}")
    data = spec.data
    vocab_size = len(load_corpus(data.data, cleaning=data.cleaning, token=data.token,
                                 min_freq=data.min_freq).vocab)
    return {name: s.replace(hidden_size=hidden_size_for(s, vocab_size, match_params))
            for name, s in specs.items()}


def compare(spec: RunSpec, names: Sequence[str], out: str | os.PathLike, *,
            match_params: int | None = None, overwrite: bool = False, device: str = "auto",
            hooks: Callable[[str], Sequence[RunHook]] = lambda name: (),
            eval_every: int | None = None) -> Comparison:  # fmt: skip
    """Train every contender of ``names`` from ``spec`` into ``out/<name>`` and compare them.

    Every check runs before the first contender trains: the names, every contender's spec,
    and that neither ``out`` nor a contender's directory holds earlier results (unless
    ``overwrite``, which replaces them as ``grulm train --overwrite`` does).

    Args:
        hooks: the caller's hooks for the run of each contender, by name.
        eval_every: validate at every N-th epoch's end too; None: only the curve's points.

    Raises:
        ConfigError: see :func:`contender_specs`; earlier results without ``overwrite``.
        GrulmError: whatever a run raises (see :func:`grulm.run.start`).
    """
    out = Path(out)
    specs = contender_specs(spec, names, match_params)
    if not overwrite:
        _refuse_earlier_results(out, names)
    results = []
    for name, contender_spec in specs.items():
        train = contender_spec.train
        contender_spec = contender_spec.replace(eval_every=eval_every or train.epochs + 1)
        curve = ValidationCurve()
        result = start(contender_spec, out / name, overwrite=overwrite, device=device,
                       hooks=[curve, *hooks(name)])
        tokens = result.step * train.batch_size * train.num_steps
        # Training seconds: the epochs' time (no epoch-end validation) less the curve's.
        seconds = tokens / result.tokens_per_s - curve.eval_seconds if tokens else 0.0
        if result.val_loss is not None:
            curve.curve.append((curve.last_step_seconds, result.step, result.val_loss))
        results.append(Contender(
            name=name, params=curve.params, hidden_size=contender_spec.model.hidden_size,
            steps=result.step, tokens_per_s=tokens / seconds if seconds > 0 else None,
            val_nats=result.val_loss, recall_accuracy=result.recall_accuracy,
            curve=curve.curve, out=result.out))
    comparison = Comparison(results, "char" if spec.data.token == "char" else "token")
    return _write(comparison, out, spec.data.data)


def _refuse_earlier_results(out: Path, names: Sequence[str]) -> None:
    found = [out / name for name in names if describe_run(out / name) is not None]
    found += [out / name for name in RESULT_FILES if (out / name).exists()]
    if found:
        raise ConfigError(f"{found[0]} holds results of an earlier run; replace them with "
                          "--overwrite, or choose another --out")


def _write(comparison: Comparison, out: Path, data: str) -> Comparison:
    header, rows = comparison.rows()
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["name", "params", "hidden_size", "steps", "tokens_per_s", "val_nats",
                     "val_bits", "recall_accuracy"])
    for c in comparison.contenders:
        writer.writerow([c.name, c.params, c.hidden_size, c.steps, _raw(c.tokens_per_s),
                         _raw(c.val_nats), _raw(c.val_bits), _raw(c.recall_accuracy)])
    files = {"csv": out / "compare.csv", "markdown": out / "compare.md"}
    files["csv"].write_text(table.getvalue())
    files["markdown"].write_text(comparison.markdown())
    curves = {c.name: [(seconds, loss) for seconds, _, loss in c.curve]
              for c in comparison.contenders if c.curve}
    if curves:
        files["plot"] = save_curves_plot(
            out / "val_loss.png", curves, xlabel="seconds of training",
            ylabel=f"validation nats/{comparison.unit}", title=f"grulm compare --data {data}")
    return Comparison(comparison.contenders, comparison.unit, files)


def _format(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _raw(value: float | None) -> str:
    return "" if value is None else repr(value)
