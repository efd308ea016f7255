"""A run's metrics as JSON lines (always) and TensorBoard scalars (when installed).

``metrics.jsonl`` gets one object per line, each with ``kind`` (``step`` or ``epoch``),
``step`` and ``epoch``, then the numbers: ``loss``, ``perplexity``, ``lr``, ``grad_norm``
(before clipping), ``tokens_per_s``, and for epochs ``val_loss``/``val_perplexity`` when
validated. Lines are flushed as written, so ``tail -f`` works and a killed run loses nothing.

When a run resumes, lines past the checkpoint's step are dropped first (they belong to the
stretch of training the resume replays), so the log reads as one uninterrupted run; a line
cut short by a killed process is dropped too.

The log is auxiliary: the checkpoint is what a run must not lose. When the file cannot be
written (disk full, permissions), the log warns once with :class:`AuxiliaryFileWarning`,
removes its temporary file and stops logging; training goes on.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any


class AuxiliaryFileWarning(UserWarning):
    """A metrics log or plot could not be written; the run and its checkpoints go on."""


class MetricsLog:
    """Appends records to ``path``; mirrors numbers to TensorBoard under ``tensorboard_dir``.

    Args:
        path: the JSONL file.
        tensorboard_dir: where to write TensorBoard events, or None for none. If the
            ``tensorboard`` package is missing this is skipped and ``tensorboard`` stays None.
        resume_step: when resuming, drop existing records with ``step`` beyond this.
    """

    def __init__(self, path: Path, tensorboard_dir: Path | None = None,
                 resume_step: int | None = None) -> None:  # fmt: skip
        self.path = Path(path)
        self._file = None
        try:
            if resume_step is not None and self.path.is_file():
                _truncate_after(self.path, resume_step)
            elif resume_step is None:
                self.path.unlink(missing_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        except OSError as error:
            self._fail(error)
        self.tensorboard = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self.tensorboard = SummaryWriter(str(tensorboard_dir))

    @property
    def active(self) -> bool:
        """Whether records still reach the file (False after a write error)."""
        return self._file is not None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (non-finite floats become null)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        if self._file is not None:
            try:
                self._file.write(json.dumps(clean) + "\n")
                self._file.flush()
            except OSError as error:
                self._fail(error)
        if self.tensorboard is not None:
            prefix = record["kind"]
            for key, value in clean.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, int | float):
                    self.tensorboard.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                self._fail(error)
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _fail(self, error: OSError) -> None:
        """Stop logging after one warning; leave no temporary file behind."""
        _temporary(self.path).unlink(missing_ok=True)
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the same error again while flushing what could not be written
        self._file = None
        warnings.warn(AuxiliaryFileWarning(
            f"cannot write the metrics log {self.path} ({error.strerror or error}); metrics "
            "are no longer logged in this run, checkpoints still are"), stacklevel=3)


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


def _truncate_after(path: Path, step: int) -> None:
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # blank, or cut short by a killed process
        if isinstance(record, dict) and _step(record) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    tmp = _temporary(path)
    try:
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _step(record: dict[str, Any]) -> int | float:
    step = record.get("step", 0)
    return step if isinstance(step, int | float) else math.inf
