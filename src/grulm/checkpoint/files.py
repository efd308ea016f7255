"""Writing checkpoints atomically, and sweeping what interrupted writes left behind.

The tensors go to a new content-named file first, then ``checkpoint.json`` is replaced in one
rename, then the old tensors file is swept away. Until that rename the previous checkpoint stays
whole and loadable, even if the disk fills up or the process is killed in between; a failed
save removes what it wrote. Files are created with mode ``0o666 & ~umask``, like any other file
the user writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from grulm import __version__
from grulm.checkpoint.meta import CheckpointMeta
from grulm.checkpoint.validate import (
    FORMAT,
    FORMAT_VERSION,
    METADATA_FILE,
    TENSORS_NAME,
    check_fields,
    one_line,
)
from grulm.data.vocab import Vocab
from grulm.errors import CheckpointError
from grulm.model import GRULM

TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"
TEMP_NAME = re.compile(r"\.tmp-[A-Za-z0-9_]{1,64}\.part")
"""This module's temporary files (``.tmp-<random>.part``), swept when a save was interrupted."""
SAFETENSORS_TEMP_NAME = re.compile(r"\.tmp[A-Za-z0-9]{6}")
"""The temporary file ``safetensors.save_file`` writes beside its target, then renames."""


def save_checkpoint(
    directory: str | os.PathLike,
    model: GRULM,
    vocab: Vocab,
    meta: CheckpointMeta | Mapping[str, Any],
    state_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write (or atomically replace) a checkpoint in ``directory``.

    After the new ``checkpoint.json`` is in place, :func:`sweep_checkpoint_dir` removes the
    previous weights file and anything an interrupted save left behind. A file named by the
    previous ``checkpoint.json`` is only ever removed if it is a plain ``tensors-<hex>
    .safetensors`` name in ``directory``.

    Args:
        directory: created if missing.
        model: the unwrapped GRULM (its config and parameters are saved).
        vocab: the vocabulary the model's ids refer to.
        meta: a :class:`CheckpointMeta`, or its JSON (:meth:`CheckpointMeta.to_json`):
            ``data`` (source, cleaning, token…), ``train`` (the training config), ``run``,
            ``metrics``, ``training_state``, ``preset``. The fields this module writes
            (``format``, ``format_version``, ``grulm_version``, ``created``, ``model_config``,
            ``tensors_file``…) cannot be overridden.
        state_tensors: extra tensors needed to resume (optimiser moments, hidden state…).

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: ``meta`` has a field of the wrong type, or the directory cannot be
            created or written (disk full, read-only…); whatever this call wrote is removed
            and any previous checkpoint there is left as it was.
    """
    directory = Path(directory)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "grulm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tensors_file": "",  # set once the weights are written
        "tensors_sha256": "",
        "model_config": model.config.to_dict(),
        "vocab": vocab.to_dict(),
    }
    metadata = {**header, **(meta.to_json() if isinstance(meta, CheckpointMeta) else meta)}
    metadata.update(header)  # this module's fields win, in their places
    where = f"the metadata given for {directory / METADATA_FILE}"
    check_fields(metadata, where, "load_checkpoint would refuse such a checkpoint")
    metadata = {**header, **CheckpointMeta.from_json(metadata, where).to_json()}
    json.dumps(metadata)  # a value that is not JSON is a caller's bug: raise before writing
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"state.{k}": v for k, v in (state_tensors or {}).items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(
            f"cannot create the checkpoint directory {directory}: {one_line(error)}; "
            "choose another --out directory"
        ) from error
    previous = _current_tensors_name(directory)
    temporary = placed = None
    stage = "the weights"
    try:
        temporary = _write_new(directory, lambda path: save_file(tensors, str(path)))
        digest = file_sha256(temporary)
        metadata["tensors_file"] = tensors_name = f"tensors-{digest[:16]}.safetensors"
        metadata["tensors_sha256"] = digest
        stage = f"the weights ({tensors_name})"
        os.replace(temporary, directory / tensors_name)
        temporary, placed = None, directory / tensors_name
        stage = METADATA_FILE
        text = json.dumps(metadata, indent=2) + "\n"
        temporary = _write_new(directory, lambda path: path.write_text(text, "utf-8"))
        os.replace(temporary, directory / METADATA_FILE)
        temporary = placed = None
    except BaseException as error:
        if temporary is not None:
            _remove(temporary)
        if placed is not None and placed.name not in (previous, _current_tensors_name(directory)):
            _remove(placed)  # no checkpoint.json names it: an orphan that would fill the disk
        if isinstance(error, (OSError, SafetensorError)):
            raise CheckpointError(
                f"could not save the checkpoint in {directory}: writing {stage} failed "
                f"({one_line(error)}); the previous checkpoint there, if any, is unchanged — "
                "free some space or choose another --out directory"
            ) from error
        raise
    _fsync_directory(directory)
    try:
        sweep_checkpoint_dir(directory)
    except CheckpointError:
        pass  # the checkpoint is saved; leftovers are swept next time
    return directory


def sweep_checkpoint_dir(directory: str | os.PathLike) -> list[Path]:
    """Remove what interrupted saves left in a checkpoint directory; return what was removed.

    Removes regular files only, never symbolic links, directories or anything else, and only
    those with these names: this module's temporary ``.tmp-<random>.part`` files, the
    ``.tmp<6 letters or digits>`` file ``safetensors`` writes before renaming it, and
    ``tensors-<hex>.safetensors`` files that ``checkpoint.json`` does not name. Weights files
    are only removed while ``checkpoint.json`` names an existing weights file, so a missing or
    damaged ``checkpoint.json`` never costs weights that may still be recovered.

    Call it only while no other process writes to the directory (under the run's lock): a
    concurrent save's files look exactly like leftovers.

    Args:
        directory: a checkpoint or run directory; a missing one has nothing to sweep.

    Returns:
        The removed paths, sorted.

    Raises:
        CheckpointError: the directory exists but cannot be listed.
    """
    directory = Path(directory)
    current = _current_tensors_name(directory)
    if current is not None and not _is_regular_file(directory / current):
        current = None
    try:
        with os.scandir(directory) as entries:
            names = [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as error:
        raise CheckpointError(
            f"cannot list the checkpoint directory {directory}: {one_line(error)}; check "
            "that it is a readable directory"
        ) from error
    removed = []
    for name in sorted(names):
        stale = TEMP_NAME.fullmatch(name) or SAFETENSORS_TEMP_NAME.fullmatch(name)
        orphan = current is not None and name != current and TENSORS_NAME.fullmatch(name)
        if (stale or orphan) and _is_regular_file(directory / name):
            if _remove(directory / name):
                removed.append(directory / name)
    return removed


def _write_new(directory: Path, write) -> Path:
    """Write through ``write(path)`` into a new temporary file in ``directory``, fsynced.

    The file is created exclusively with mode ``0o666`` less the umask (read back from the
    new file, so no process-wide ``os.umask`` call races with other threads); if ``write``
    replaces the file (``safetensors`` writes its own temporary file, mode 0600, and renames
    it), that mode is set again.

    Returns:
        The temporary file. On any error it is removed.
    """
    for _ in range(100):
        path = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary file name", str(directory))
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
        write(path)
        if stat.S_IMODE(os.stat(path).st_mode) != mode:
            os.chmod(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _remove(path)
        raise
    return path


def _remove(path: Path) -> bool:
    """Unlink ``path`` (never what a link points to); False if it could not be removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError:
        return False
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable; best effort (some filesystems cannot fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_tensors_name(directory: Path) -> str | None:
    """The plain weights file name ``checkpoint.json`` gives, or None (absent, damaged, or a
    name outside the directory, which is then never touched)."""
    path = directory / METADATA_FILE
    if not _is_regular_file(path, follow_symlinks=True):  # never block reading a FIFO
        return None
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    name = metadata.get("tensors_file") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and TENSORS_NAME.fullmatch(name) else None


def _is_regular_file(path: Path, follow_symlinks: bool = False) -> bool:
    try:
        return stat.S_ISREG(os.stat(path, follow_symlinks=follow_symlinks).st_mode)
    except (OSError, ValueError):
        return False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
