"""Checkpoints that describe themselves: safetensors weights beside one JSON file, no pickle.

A checkpoint is a directory::

    checkpoint.json                 format version, grulm version, model config, vocabulary,
                                    data and training configs, metrics, the weights file's
                                    name and SHA-256, and any JSON training state
    tensors-<sha256 prefix>.safetensors
                                    ``model.<name>`` for every parameter of the unwrapped
                                    GRULM, ``state.<name>`` for training-state tensors

Writes are atomic: the tensors go to a new content-named file first, then ``checkpoint.json``
is replaced in one rename, then the old tensors file is swept away. Until that rename the
previous checkpoint stays whole and loadable, even if the disk fills up or the process is
killed in between; a failed save removes what it wrote. Files are created with mode
``0o666 & ~umask``, like any other file the user writes.

Loading trusts nothing in ``checkpoint.json``: the weights file must be a plain
``tensors-<hex>.safetensors`` name inside the directory, every field has the JSON type its
readers expect, and the model config is checked against the tensor shapes in the safetensors
header before a model is built, so an edited ``hidden_size: 100000`` fails at once instead of
allocating 120 GB.
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from grulm import __version__
from grulm.data.vocab import Vocab
from grulm.errors import CheckpointError, GrulmError
from grulm.model import GRULM, GRUConfig, parameter_shapes

FORMAT = "grulm-checkpoint"
FORMAT_VERSION = 1
METADATA_FILE = "checkpoint.json"

TENSORS_NAME = re.compile(r"tensors-[0-9a-f]{1,64}\.safetensors")
"""The only weights file names a checkpoint may refer to: plain names in its directory."""
TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"
TEMP_NAME = re.compile(r"\.tmp-[A-Za-z0-9_]{1,64}\.part")
"""This module's temporary files (``.tmp-<random>.part``), swept when a save was interrupted."""
SAFETENSORS_TEMP_NAME = re.compile(r"\.tmp[A-Za-z0-9]{6}")
"""The temporary file ``safetensors.save_file`` writes beside its target, then renames."""

OBJECT_FIELDS = ("data", "train", "run", "metrics", "training_state")
"""Top-level fields that must be JSON objects when present (their readers call ``.items()``)."""
NESTED_OBJECT_FIELDS = {"training_state": ("progress", "optimizer", "schedule")}
STRING_FIELDS = ("grulm_version", "created")
NESTED_STRING_FIELDS = {"data": ("source", "token", "cleaning")}
MAX_NESTING = 64
"""Deeper metadata is refused: grulm writes 4 levels, and printing 1000 levels would recurse."""
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

_REPAIR = "undo the edit or use an undamaged copy of the checkpoint"


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model: the GRULM, in eval mode, on the CPU unless ``map_location`` said otherwise.
        vocab: its vocabulary.
        meta: everything else from ``checkpoint.json``, validated so that readers can rely on
            the types: ``format_version`` an int; ``grulm_version``, ``created`` strings;
            ``data``, ``train``, ``run``, ``metrics``, ``training_state`` dicts when present
            (``data``'s ``source``, ``token``, ``cleaning`` strings; ``training_state``'s
            ``progress``, ``optimizer``, ``schedule`` dicts); ``preset`` a string or None.
        state_tensors: training-state tensors saved beside the weights (empty if none).
        directory: where it was loaded from.
    """

    model: GRULM
    vocab: Vocab
    meta: dict[str, Any]
    state_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    directory: Path | None = None


# --------------------------------------------------------------------------------- saving
def save_checkpoint(
    directory: str | os.PathLike,
    model: GRULM,
    vocab: Vocab,
    meta: Mapping[str, Any],
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
        meta: JSON-serialisable extras: ``data`` (source, cleaning, token…), ``train``
            (the training config), ``run``, ``metrics``, ``training_state``, ``preset``.
            The fields this module writes (``format``, ``model_config``, ``tensors_file``…)
            cannot be overridden.
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
    metadata = {**header, **meta}
    metadata.update(header)  # this module's fields win, in their places
    _check_fields(metadata, f"the metadata given for {directory / METADATA_FILE}",
                  "load_checkpoint would refuse such a checkpoint")
    json.dumps(metadata)  # a value that is not JSON is a caller's bug: raise before writing
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"state.{k}": v for k, v in (state_tensors or {}).items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(
            f"cannot create the checkpoint directory {directory}: {_one_line(error)}; "
            "choose another --out directory"
        ) from error
    previous = _current_tensors_name(directory)
    temporary = placed = None
    stage = "the weights"
    try:
        temporary = _write_new(directory, lambda path: save_file(tensors, str(path)))
        digest = _sha256(temporary)
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
                f"({_one_line(error)}); the previous checkpoint there, if any, is unchanged — "
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
            f"cannot list the checkpoint directory {directory}: {_one_line(error)}; check "
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------- loading
def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory ``path`` names: the directory itself or a run directory's.

    Raises:
        CheckpointError: nothing there is a checkpoint.
    """
    path = Path(path)
    try:
        if path.is_file() and path.name == METADATA_FILE:
            return path.parent
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist; pass the directory `grulm "
                                  "train --out` wrote")
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} is not a directory; pass the directory "
                                  f"that holds {METADATA_FILE}")
        if not (path / METADATA_FILE).is_file():
            raise CheckpointError(f"{path} holds no checkpoint (no {METADATA_FILE}); pass the "
                                  "directory `grulm train --out` wrote")
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {_one_line(error)}; pass the "
                              "directory `grulm train --out` wrote") from error
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Load and validate a checkpoint.

    Checks, in this order and before any tensor is read or model built: the format and its
    version; the JSON type of every field readers use; that the model config and vocabulary
    parse and agree; that the weights file is a plain ``tensors-<hex>.safetensors`` name in
    the directory; its SHA-256; and that the safetensors header holds exactly the tensors,
    shapes and one floating-point dtype the config implies.

    Raises:
        CheckpointError: anything missing, corrupt, inconsistent or of the wrong type, named
            in the message.
    """
    directory = find_checkpoint(path)
    metadata = _read_metadata(directory)
    where = directory / METADATA_FILE
    try:
        config = GRUConfig.from_dict(metadata["model_config"])
    except (GrulmError, TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: invalid model_config: {_one_line(error)}; "
                              f"{_REPAIR}") from error
    try:
        vocab = Vocab.from_dict(metadata["vocab"])
    except GrulmError as error:
        raise CheckpointError(f"{where}: invalid vocab: {_one_line(error)}") from error
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"{directory}: the vocabulary has {len(vocab)} tokens but the model expects "
            f"{config.vocab_size}; {_REPAIR}"
        )
    tensors_path = _tensors_path(directory, metadata["tensors_file"])
    if _sha256(tensors_path) != metadata["tensors_sha256"]:
        raise CheckpointError(f"{tensors_path} does not match its recorded SHA-256; the "
                              "weights are corrupt")
    dtype = _check_header(tensors_path, config)
    try:
        tensors = load_file(str(tensors_path), device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{tensors_path} is not a readable safetensors file: {_one_line(error)}"
        ) from error
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    model = GRULM(config).to(device=map_location, dtype=dtype)
    model.load_state_dict(weights)
    model.eval()
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    meta = {
        k: v
        for k, v in metadata.items()
        if k not in ("model_config", "vocab", "tensors_file", "tensors_sha256")
    }
    return Checkpoint(model, vocab, meta, state, directory)


def _read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(
            f"{path} is not readable JSON ({_one_line(error)}); the checkpoint is corrupt — "
            f"{_REPAIR}"
        ) from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a grulm checkpoint (no 'format': {FORMAT!r}); "
                              "pass the directory `grulm train --out` wrote")
    version = metadata.get("format_version")
    if _is_int(version) and version != FORMAT_VERSION:
        grulm_version = metadata.get("grulm_version")
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this grulm reads version "
            f"{FORMAT_VERSION} — use the grulm version that wrote it "
            f"({_short(grulm_version) if isinstance(grulm_version, str) else 'unknown'})"
        )
    _check_fields(metadata, str(path), _REPAIR)
    return metadata


def _check_fields(metadata: dict[str, Any], where: str, repair: str) -> None:
    """Raise ``CheckpointError`` naming the first field whose JSON type readers cannot use."""
    def wrong(name: str, value: Any, expected: str) -> CheckpointError:
        return CheckpointError(f"{where}: '{name}' must be {expected}, not {_json_type(value)} "
                               f"{_short(value)}; {repair}")

    for name, expected in (("format_version", "an integer"), ("tensors_file", "a string"),
                           ("tensors_sha256", "a string"), ("model_config", "an object"),
                           ("vocab", "an object")):  # fmt: skip
        if name not in metadata:
            raise CheckpointError(f"{where} lacks the field {name!r}; {repair}")
        value = metadata[name]
        if not {"an integer": _is_int(value), "a string": isinstance(value, str),
                "an object": isinstance(value, dict)}[expected]:  # fmt: skip
            raise wrong(name, value, expected)
    for name in STRING_FIELDS:
        if name in metadata and not isinstance(metadata[name], str):
            raise wrong(name, metadata[name], "a string")
    if metadata.get("preset") is not None and not isinstance(metadata["preset"], str):
        raise wrong("preset", metadata["preset"], "a string or null")
    for name in OBJECT_FIELDS:
        if name in metadata and not isinstance(metadata[name], dict):
            raise wrong(name, metadata[name], "an object")
    for parent, names in NESTED_OBJECT_FIELDS.items():
        for name in names:
            value = metadata.get(parent, {}).get(name, {})
            if not isinstance(value, dict):
                raise wrong(f"{parent}.{name}", value, "an object")
    for parent, names in NESTED_STRING_FIELDS.items():
        for name in names:
            value = metadata.get(parent, {}).get(name, "")
            if not isinstance(value, str):
                raise wrong(f"{parent}.{name}", value, "a string")
    config = metadata["model_config"]
    for name in ("vocab_size", "hidden_size", "num_layers", "embedding_size"):
        value = config.get(name)
        if not (value is None or _is_int(value)):
            raise wrong(f"model_config.{name}", value, "an integer")
    dropout = config.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise wrong("model_config.dropout", dropout, "a number")
    if _nesting(metadata) > MAX_NESTING:
        raise CheckpointError(f"{where} nests values more than {MAX_NESTING} levels deep; "
                              f"{repair}")


def _tensors_path(directory: Path, name: str) -> Path:
    """The weights file ``name`` refers to, refused unless it is a plain name in ``directory``
    (no ``/``, ``..`` or absolute path, no link out of it) and a regular file."""
    where = directory / METADATA_FILE
    if not TENSORS_NAME.fullmatch(name):
        raise CheckpointError(
            f"{where}: 'tensors_file' must name a tensors-<hex>.safetensors file in the "
            f"checkpoint directory, not {_short(name)}; {_REPAIR}"
        )
    path = directory / name
    try:
        real = path.resolve(strict=True)
        inside = real.parent == directory.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a dangling link or a loop of links
        real, inside = None, True
    if not inside:
        raise CheckpointError(
            f"{path} is a symbolic link that leads out of the checkpoint directory; "
            "replace it with a copy of the file it points to"
        )
    if real is None or not real.is_file():
        raise CheckpointError(f"{directory}: the weights file {name} is missing; {_REPAIR}")
    return path


def _check_header(path: Path, config: GRUConfig) -> torch.dtype:
    """Check the safetensors header's ``model.*`` tensors against the config's shapes, without
    reading any tensor data; return the weights' dtype."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {
                name.removeprefix("model."): (
                    tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()
                )
                for name in f.keys()
                if name.startswith("model.")
            }
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file: {_one_line(error)}"
        ) from error
    fix = f"the config in {METADATA_FILE} was edited or belongs to other weights; {_REPAIR}"
    if config.num_layers > len(header):  # every layer has tensors: no need to list them
        raise CheckpointError(
            f"{path}: the model config has {config.num_layers} layers but the file holds only "
            f"{len(header)} weight tensors; {fix}"
        )
    expected = parameter_shapes(config)
    problems = [f"missing {k}" for k in expected if k not in header]
    problems += [f"unexpected {k}" for k in header if k not in expected]
    problems += [
        f"{k} has shape {header[k][0]}, the config needs {shape}"
        for k, shape in expected.items()
        if k in header and header[k][0] != shape
    ]
    if problems:
        more = f"; … ({len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckpointError(
            f"{path}: the weights do not match the model config: "
            + "; ".join(problems[:4]) + more + f" — {fix}"
        )
    dtypes = sorted({dtype for _, dtype in header.values()})
    if len(dtypes) != 1 or dtypes[0] not in FLOAT_DTYPES:
        raise CheckpointError(
            f"{path}: the weights must share one floating-point dtype, found "
            f"{', '.join(dtypes)}; the weights file is damaged — {_REPAIR}"
        )
    return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
            "F64": torch.float64}[dtypes[0]]


# --------------------------------------------------------------------------------- messages
def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, safe for any JSON value."""
    if isinstance(value, (list, dict)):
        text = f"[…{len(value)} items]" if isinstance(value, list) else f"{{…{len(value)} keys}}"
    elif isinstance(value, str) and len(value) > limit:
        text = repr(value[:limit]) + "…"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**limit:
        text = f"an integer of more than {limit} digits"
    else:
        text = repr(value)
    return text if len(text) <= limit + 5 else text[:limit] + "…"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nesting(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if depth <= MAX_NESTING:
                stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict)
                                                      else value))
    return deepest
