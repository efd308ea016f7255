"""A run directory as a guarded resource: one writer at a time, no run replaced by accident.

A training run writes into one directory::

    .grulm.lock                             held (``flock``) by the process writing the run
    checkpoint.json, tensors-*.safetensors  the last checkpoint (see :mod:`grulm.checkpoint`)
    best/                                   the best-validation checkpoint
    metrics.jsonl, perplexity.png, tensorboard/

:func:`open_run_directory` is how a run claims it:

- the lock is taken without waiting, so a second writer fails at once and is told the
  holder's pid; the kernel drops the lock when the holder exits, ``kill -9`` included, so a
  lock is never stale;
- a new run refuses a directory that already holds a run (or a ``best/`` copy, or lies inside
  a run directory) unless asked to overwrite it, and then removes only the files a run writes,
  never anything else there;
- temporary files left by a killed run are swept once the lock is held (never before: they
  may belong to the writer that holds it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from grulm.checkpoint import METADATA_FILE, find_checkpoint, sweep_checkpoint_dir
from grulm.errors import CheckpointError, ConfigError, GrulmError

LOCK_FILE = ".grulm.lock"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "perplexity.png"
TENSORBOARD_DIR = "tensorboard"
MODES = ("new", "resume", "overwrite")
TENSORS_GLOB = "tensors-*.safetensors"
# Temporary names the metrics log and the plot write through (see metrics_log, plot).
AUXILIARY_TEMPS = (f".{METRICS_FILE}.part", f".{PLOT_FILE}.part")


class RunLockedError(GrulmError):
    """Another process is writing the run directory."""


class LockUnavailableWarning(UserWarning):
    """The file system cannot lock files; the run goes on unguarded."""


@dataclass
class RunDirectory:
    """A run directory this process holds the lock of (release it with :meth:`release`).

    Attributes:
        path: the directory.
        created: whether :func:`open_run_directory` created it (an unused one is removed
            again by :meth:`release`).
    """

    path: Path
    created: bool = False
    _fd: int | None = field(default=None, repr=False)

    def clear_previous_run(self) -> None:
        """Remove what a run writes (checkpoints, ``best/``, metrics, plot, TensorBoard
        events) and nothing else; for an explicit overwrite, once the new run is set up."""
        for directory in (self.path / BEST_DIR, self.path):
            if directory.is_dir() and not directory.is_symlink():
                _remove_checkpoint_files(directory)
        for name in (METRICS_FILE, PLOT_FILE):
            (self.path / name).unlink(missing_ok=True)
        tensorboard = self.path / TENSORBOARD_DIR
        if tensorboard.is_dir() and not tensorboard.is_symlink():
            shutil.rmtree(tensorboard)
        best = self.path / BEST_DIR
        if best.is_dir() and not best.is_symlink() and not any(best.iterdir()):
            best.rmdir()

    def sweep(self) -> list[Path]:
        """Remove temporary and orphaned files a killed run left behind; return them."""
        removed = []
        for directory in (self.path, self.path / BEST_DIR):
            if directory.is_dir() and not directory.is_symlink():
                removed += sweep_checkpoint_dir(directory)
        for name in AUXILIARY_TEMPS:
            path = self.path / name
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
        return removed

    def release(self) -> None:
        """Drop the lock; a directory this run created and never wrote to is removed."""
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if self.created and [p.name for p in self.path.iterdir()] == [LOCK_FILE]:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            self.path.rmdir()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def describe_run(directory: Path) -> str | None:
    """What a directory holds from a previous run, in words, or None when it holds none."""
    directory = Path(directory)
    metadata = directory / METADATA_FILE
    if metadata.is_file():
        return _describe_checkpoint(metadata)
    best = directory / BEST_DIR / METADATA_FILE
    if best.is_file():
        return "a best/ checkpoint"
    if (directory / METRICS_FILE).is_file() or any(directory.glob(TENSORS_GLOB)):
        return "files of an unfinished run (metrics.jsonl or a weights file, no checkpoint yet)"
    return None


def open_run_directory(path: str | os.PathLike, mode: str = "new") -> RunDirectory:
    """Claim ``path`` for a run: create it if needed, lock it, and check what it holds.

    Args:
        path: the run directory.
        mode: ``new`` refuses a directory that holds a run; ``resume`` needs one (the caller
            loads it); ``overwrite`` accepts either (call :meth:`RunDirectory.clear_previous_run`
            once the new run is ready to start).

    Raises:
        ConfigError: the directory holds a run (``new``), lies inside another run's
            directory, or cannot be created or written.
        CheckpointError: ``resume`` of a directory without a resumable checkpoint.
        RunLockedError: another process holds the lock.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    path = Path(path)
    if mode == "resume":
        _refuse_unresumable(path)
    else:
        _refuse_nested(path)
    if mode == "new":
        _refuse_existing(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the run directory {path} ({error.strerror}); choose "
                          "another with --out") from None
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; choose another run directory with --out")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(_not_writable(path, mode))
    run_directory = RunDirectory(path, created, _lock(path, mode))
    if mode == "new":
        try:
            _refuse_existing(path)  # a writer may have finished between the check and the lock
        except GrulmError:
            run_directory.release()
            raise
    return run_directory


def _lock(path: Path, mode: str) -> int | None:
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as error:
        raise ConfigError(f"cannot create the lock file {lock_path} ({error.strerror}); "
                          + _not_writable(path, mode)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            warnings.warn(LockUnavailableWarning(
                f"cannot lock {lock_path} ({error.strerror}); nothing stops a second run from "
                "writing the same directory"), stacklevel=3)
            return fd
        holder = _read_pid(fd)
        os.close(fd)
        raise RunLockedError(
            f"another grulm process ({'pid ' + holder if holder else 'unknown pid'}) is writing "
            f"the run in {path}; wait for it to finish or stop it, or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _refuse_existing(path: Path) -> None:
    if not path.is_dir():
        return
    found = describe_run(path)
    if found is not None:
        raise ConfigError(
            f"{path} already holds {found}; continue it with --resume {path}, replace it with "
            "--overwrite, or choose another --out"
        )


def _refuse_unresumable(path: Path) -> None:
    """Before anything is created or locked: ``path`` must hold a checkpoint with training
    state (a ``best/`` copy has none)."""
    find_checkpoint(path)
    try:
        meta = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return  # loading the checkpoint says what is wrong with it
    if isinstance(meta, dict) and "training_state" not in meta:
        raise CheckpointError(
            f"{path} holds a model but no training state to resume from; pass the run "
            "directory `grulm train --out` wrote (not its best/ copy)"
        )


def _refuse_nested(path: Path) -> None:
    for parent in Path(os.path.abspath(path)).parents:
        if (parent / METADATA_FILE).is_file():
            raise ConfigError(
                f"{path} lies inside the run directory {parent}; choose an --out outside it"
            )


def _not_writable(path: Path, mode: str) -> str:
    if mode == "resume":
        return (f"the run directory {path} is not writable; make it writable "
                f"(chmod u+w {path}) to resume it, or resume a copy of it")
    return f"the run directory {path} is not writable; choose another with --out"


def _describe_checkpoint(metadata: Path) -> str:
    try:
        meta = json.loads(metadata.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "a run (its checkpoint.json is unreadable)"
    metrics = meta.get("metrics") if isinstance(meta, dict) else None
    if not isinstance(metrics, dict):
        return "a checkpoint"
    parts = []
    for key, label in (("step", "step"), ("epochs", "epoch")):
        value = metrics.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{label} {value:,}")
    best = metrics.get("best_val_loss")
    if isinstance(best, int | float) and not isinstance(best, bool) and best < 700:
        parts.append(f"best validation perplexity {math.exp(best):.2f}")
    what = "a run" if "training_state" in meta else "a checkpoint"
    return f"{what} ({', '.join(parts)})" if parts else what


def _remove_checkpoint_files(directory: Path) -> None:
    (directory / METADATA_FILE).unlink(missing_ok=True)
    for path in directory.glob(TENSORS_GLOB):
        if path.is_file() and not path.is_symlink():
            path.unlink()
    sweep_checkpoint_dir(directory)
