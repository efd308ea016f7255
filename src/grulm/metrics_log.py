"""A run's metrics as JSON lines (always) and TensorBoard scalars (when installed).

``metrics.jsonl`` gets one object per line, each with ``kind`` (``step`` or ``epoch``),
``step`` and ``epoch``, then the numbers: ``loss``, ``perplexity``, ``lr``, ``grad_norm``
(before clipping), ``tokens_per_s``, and for epochs ``val_loss``/``val_perplexity`` when
validated. Lines are flushed as written, so ``tail -f`` works and a killed run loses nothing.

When a run resumes, lines past the checkpoint's step are dropped first (they belong to the
stretch of training the resume replays), so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


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
        if resume_step is not None and self.path.is_file():
            _truncate_after(self.path, resume_step)
        elif resume_step is None:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.tensorboard = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self.tensorboard = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (non-finite floats become null)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self.tensorboard is not None:
            prefix = record["kind"]
            for key, value in clean.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, int | float):
                    self.tensorboard.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: Path, step: int) -> None:
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)
