"""Checkpoints that describe themselves: safetensors weights beside one JSON file, no pickle.

A checkpoint is a directory::

    checkpoint.json                 format version, grulm version, model config, vocabulary,
                                    data and training configs, metrics, the weights file's
                                    name and SHA-256, and any JSON training state
    tensors-<sha256 prefix>.safetensors
                                    ``model.<name>`` for every parameter of the unwrapped
                                    GRULM, ``state.<name>`` for training-state tensors

Writes are atomic: the tensors go to a new content-named file first, then ``checkpoint.json``
is replaced in one rename, then the old tensors file is deleted. Until that rename the
previous checkpoint stays whole and loadable, even if the disk fills up or the process is
killed in between.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from grulm import __version__
from grulm.data.vocab import Vocab
from grulm.errors import CheckpointError, ConfigError
from grulm.model import GRULM, GRUConfig

FORMAT = "grulm-checkpoint"
FORMAT_VERSION = 1
METADATA_FILE = "checkpoint.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model: the GRULM, in eval mode, on the CPU unless ``map_location`` said otherwise.
        vocab: its vocabulary.
        meta: everything else from ``checkpoint.json`` (``data``, ``train``, ``metrics``,
            ``training_state`` …).
        state_tensors: training-state tensors saved beside the weights (empty if none).
        directory: where it was loaded from.
    """

    model: GRULM
    vocab: Vocab
    meta: dict[str, Any]
    state_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    directory: Path | None = None


def save_checkpoint(
    directory: str | os.PathLike,
    model: GRULM,
    vocab: Vocab,
    meta: Mapping[str, Any],
    state_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write (or atomically replace) a checkpoint in ``directory``.

    Args:
        directory: created if missing.
        model: the unwrapped GRULM (its config and parameters are saved).
        vocab: the vocabulary the model's ids refer to.
        meta: JSON-serialisable extras: ``data`` (source, cleaning, token…), ``train``
            (the training config), ``metrics``, ``training_state``.
        state_tensors: extra tensors needed to resume (optimiser moments, hidden state…).

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: the directory cannot be created or written (disk full, read-only…);
            any previous checkpoint there is left as it was.
    """
    directory = Path(directory)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"state.{k}": v for k, v in (state_tensors or {}).items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        old = _read_metadata(directory) if (directory / METADATA_FILE).is_file() else None
    except OSError as error:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {error}") from error
    except CheckpointError:
        old = None  # a corrupt previous checkpoint is simply replaced
    try:
        tmp = _write_temp(directory, lambda path: save_file(tensors, str(path)))
        digest = _sha256(tmp)
        tensors_name = f"tensors-{digest[:16]}.safetensors"
        os.replace(tmp, directory / tensors_name)
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "grulm_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tensors_file": tensors_name,
            "tensors_sha256": digest,
            "model_config": model.config.to_dict(),
            "vocab": vocab.to_dict(),
            **meta,
        }
        text = json.dumps(metadata, indent=2, sort_keys=False) + "\n"
        tmp = _write_temp(directory, lambda path: path.write_text(text, encoding="utf-8"))
        os.replace(tmp, directory / METADATA_FILE)
    except OSError as error:
        raise CheckpointError(
            f"could not write the checkpoint in {directory}: {error}; "
            "the previous checkpoint there (if any) is unchanged — free some space or choose "
            "another --out directory"
        ) from error
    if old is not None and old.get("tensors_file") not in (None, tensors_name):
        (directory / old["tensors_file"]).unlink(missing_ok=True)
    return directory


def _write_temp(directory: Path, write) -> Path:
    """Write through ``write(path)`` into a fresh temporary file in ``directory``, fsynced."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    os.close(fd)
    path = Path(name)
    try:
        write(path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path} is not readable JSON ({error}); the checkpoint is corrupt"
        ) from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a grulm checkpoint (no 'format': {FORMAT!r})")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this grulm reads version "
            f"{FORMAT_VERSION} — use the grulm version that wrote it "
            f"({metadata.get('grulm_version', 'unknown')})"
        )
    return metadata


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory ``path`` names: the directory itself or a run directory's.

    Raises:
        CheckpointError: nothing there is a checkpoint.
    """
    path = Path(path)
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
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Load and validate a checkpoint.

    Checks the format version, the tensors file's SHA-256, that the model config and vocabulary
    parse and agree, and that every weight is present with the shape the config implies.

    Raises:
        CheckpointError: anything missing, corrupt or inconsistent, named in the message.
    """
    directory = find_checkpoint(path)
    metadata = _read_metadata(directory)
    try:
        config = GRUConfig.from_dict(metadata["model_config"])
        vocab = Vocab.from_dict(metadata["vocab"])
        tensors_name = metadata["tensors_file"]
    except KeyError as error:
        raise CheckpointError(f"{directory / METADATA_FILE} lacks the field {error}") from error
    except (ConfigError, TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / METADATA_FILE}: invalid config: {error}") from error
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"{directory}: the vocabulary has {len(vocab)} tokens but the model expects "
            f"{config.vocab_size}"
        )
    tensors_path = directory / tensors_name
    if not tensors_path.is_file():
        raise CheckpointError(f"{directory}: the weights file {tensors_name} is missing")
    if _sha256(tensors_path) != metadata.get("tensors_sha256"):
        raise CheckpointError(f"{tensors_path} does not match its recorded SHA-256; the "
                              "weights are corrupt")
    try:
        tensors = load_file(str(tensors_path), device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{tensors_path} is not a readable safetensors file: {error}"
        ) from error
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    model = GRULM(config)
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [
        f"{k} has shape {tuple(weights[k].shape)}, the config needs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if problems:
        raise CheckpointError(
            f"{tensors_path}: the weights do not match the model config: " + "; ".join(problems)
        )
    dtype = next(iter(weights.values())).dtype
    model = model.to(device=map_location, dtype=dtype)
    model.load_state_dict(weights)
    model.eval()
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    meta = {
        k: v
        for k, v in metadata.items()
        if k not in ("model_config", "vocab", "tensors_file", "tensors_sha256")
    }
    return Checkpoint(model, vocab, meta, state, directory)
