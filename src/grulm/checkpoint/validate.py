"""Reading ``checkpoint.json`` without trusting it.

Every field readers use must have the JSON type they expect, the weights file must be a plain
``tensors-<hex>.safetensors`` name inside the checkpoint directory, and the model config is
checked against the tensor shapes in the safetensors header before a model is built, so an
edited ``hidden_size: 100000`` fails at once instead of allocating 120 GB. Each check raises a
:class:`~grulm.errors.CheckpointError` that names the field and how to repair it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from grulm.errors import CheckpointError
from grulm.model import GRUConfig, parameter_shapes

FORMAT = "grulm-checkpoint"
FORMAT_VERSION = 1
METADATA_FILE = "checkpoint.json"

TENSORS_NAME = re.compile(r"tensors-[0-9a-f]{1,64}\.safetensors")
"""The only weights file names a checkpoint may refer to: plain names in its directory."""

FILE_FIELDS = (("format_version", "an integer"), ("tensors_file", "a string"),
               ("tensors_sha256", "a string"), ("model_config", "an object"),
               ("vocab", "an object"))  # fmt: skip
"""Fields every checkpoint has, in the order they are checked."""
OBJECT_FIELDS = ("data", "train", "run", "metrics", "training_state")
"""Top-level fields that must be JSON objects when present (their readers call ``.items()``)."""
NESTED_OBJECT_FIELDS = {"training_state": ("progress", "optimizer", "schedule")}
STRING_FIELDS = ("grulm_version", "created")
NESTED_STRING_FIELDS = {"data": ("source", "token", "cleaning")}
MAX_NESTING = 64
"""Deeper metadata is refused: grulm writes 4 levels, and printing 1000 levels would recurse."""
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

REPAIR = "undo the edit or use an undamaged copy of the checkpoint"


def read_metadata(directory: Path) -> dict[str, Any]:
    """``checkpoint.json`` of ``directory``: a grulm checkpoint of this format version whose
    every field has the type its readers expect (:func:`check_fields`)."""
    path = directory / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(
            f"{path} is not readable JSON ({one_line(error)}); the checkpoint is corrupt — "
            f"{REPAIR}"
        ) from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a grulm checkpoint (no 'format': {FORMAT!r}); "
                              "pass the directory `grulm train --out` wrote")
    version = metadata.get("format_version")
    if is_int(version) and version != FORMAT_VERSION:
        grulm_version = metadata.get("grulm_version")
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this grulm reads version "
            f"{FORMAT_VERSION} — use the grulm version that wrote it "
            f"({short(grulm_version) if isinstance(grulm_version, str) else 'unknown'})"
        )
    check_fields(metadata, str(path), REPAIR)
    return metadata


def check_fields(metadata: dict[str, Any], where: str, repair: str) -> None:
    """Raise ``CheckpointError`` naming the first field whose JSON type readers cannot use:
    the fields every checkpoint has, then the metadata's (:func:`check_meta_fields`), then the
    model config's sizes, then the nesting depth."""
    check_required(metadata, FILE_FIELDS, where, repair)
    check_meta_fields(metadata, where, repair)
    config = metadata["model_config"]
    for name in ("vocab_size", "hidden_size", "num_layers", "embedding_size"):
        value = config.get(name)
        if not (value is None or is_int(value)):
            raise wrong_type(f"model_config.{name}", value, "an integer", where, repair)
    dropout = config.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise wrong_type("model_config.dropout", dropout, "a number", where, repair)
    check_nesting(metadata, where, repair)


def check_required(metadata: dict[str, Any], required: tuple[tuple[str, str], ...], where: str,
                   repair: str) -> None:  # fmt: skip
    """Each ``(name, expected)`` of ``required`` is present with that JSON type."""
    for name, expected in required:
        if name not in metadata:
            raise CheckpointError(f"{where} lacks the field {name!r}; {repair}")
        value = metadata[name]
        if not {"an integer": is_int(value), "a string": isinstance(value, str),
                "an object": isinstance(value, dict)}[expected]:  # fmt: skip
            raise wrong_type(name, value, expected, where, repair)


def check_meta_fields(metadata: dict[str, Any], where: str, repair: str) -> None:
    """The optional fields :class:`~grulm.checkpoint.meta.CheckpointMeta` reads: version and
    date strings, ``preset`` a string or null, the objects and the strings inside them."""
    for name in STRING_FIELDS:
        if name in metadata and not isinstance(metadata[name], str):
            raise wrong_type(name, metadata[name], "a string", where, repair)
    if metadata.get("preset") is not None and not isinstance(metadata["preset"], str):
        raise wrong_type("preset", metadata["preset"], "a string or null", where, repair)
    for name in OBJECT_FIELDS:
        if name in metadata and not isinstance(metadata[name], dict):
            raise wrong_type(name, metadata[name], "an object", where, repair)
    for parent, names in NESTED_OBJECT_FIELDS.items():
        for name in names:
            value = metadata.get(parent, {}).get(name, {})
            if not isinstance(value, dict):
                raise wrong_type(f"{parent}.{name}", value, "an object", where, repair)
    for parent, names in NESTED_STRING_FIELDS.items():
        for name in names:
            value = metadata.get(parent, {}).get(name, "")
            if not isinstance(value, str):
                raise wrong_type(f"{parent}.{name}", value, "a string", where, repair)


def check_nesting(metadata: dict[str, Any], where: str, repair: str) -> None:
    if nesting(metadata) > MAX_NESTING:
        raise CheckpointError(f"{where} nests values more than {MAX_NESTING} levels deep; "
                              f"{repair}")


def wrong_type(name: str, value: Any, expected: str, where: str,
               repair: str) -> CheckpointError:  # fmt: skip
    return CheckpointError(f"{where}: '{name}' must be {expected}, not {json_type(value)} "
                           f"{short(value)}; {repair}")


def tensors_path(directory: Path, name: str) -> Path:
    """The weights file ``name`` refers to, refused unless it is a plain name in ``directory``
    (no ``/``, ``..`` or absolute path, no link out of it) and a regular file."""
    where = directory / METADATA_FILE
    if not TENSORS_NAME.fullmatch(name):
        raise CheckpointError(
            f"{where}: 'tensors_file' must name a tensors-<hex>.safetensors file in the "
            f"checkpoint directory, not {short(name)}; {REPAIR}"
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
        raise CheckpointError(f"{directory}: the weights file {name} is missing; {REPAIR}")
    return path


def check_header(path: Path, config: GRUConfig) -> torch.dtype:
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
            f"{path} is not a readable safetensors file: {one_line(error)}"
        ) from error
    fix = f"the config in {METADATA_FILE} was edited or belongs to other weights; {REPAIR}"
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
            f"{', '.join(dtypes)}; the weights file is damaged — {REPAIR}"
        )
    return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
            "F64": torch.float64}[dtypes[0]]


# --------------------------------------------------------------------------------- messages
def json_type(value: Any) -> str:
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


def short(value: Any, limit: int = 60) -> str:
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


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def nesting(value: Any) -> int:
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
