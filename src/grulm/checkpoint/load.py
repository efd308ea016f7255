"""Finding and loading a checkpoint: every check before any tensor is read or model built."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from grulm.checkpoint.files import file_sha256
from grulm.checkpoint.meta import CheckpointMeta
from grulm.checkpoint.validate import (
    METADATA_FILE,
    REPAIR,
    check_header,
    one_line,
    read_metadata,
    tensors_path,
)
from grulm.data.vocab import Vocab
from grulm.errors import CheckpointError, GrulmError
from grulm.model import GRULM, GRUConfig


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model: the GRULM, in eval mode, on the CPU unless ``map_location`` said otherwise.
        vocab: its vocabulary.
        meta: everything else from ``checkpoint.json``, typed and validated.
        state_tensors: training-state tensors saved beside the weights (empty if none).
        directory: where it was loaded from.
    """

    model: GRULM
    vocab: Vocab
    meta: CheckpointMeta
    state_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    directory: Path | None = None


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
        raise CheckpointError(f"cannot read checkpoint {path}: {one_line(error)}; pass the "
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
    metadata = read_metadata(directory)
    where = directory / METADATA_FILE
    try:
        config = GRUConfig.from_dict(metadata["model_config"])
    except (GrulmError, TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: invalid model_config: {one_line(error)}; "
                              f"{REPAIR}") from error
    try:
        vocab = Vocab.from_dict(metadata["vocab"])
    except GrulmError as error:
        raise CheckpointError(f"{where}: invalid vocab: {one_line(error)}") from error
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"{directory}: the vocabulary has {len(vocab)} tokens but the model expects "
            f"{config.vocab_size}; {REPAIR}"
        )
    weights_path = tensors_path(directory, metadata["tensors_file"])
    if file_sha256(weights_path) != metadata["tensors_sha256"]:
        raise CheckpointError(f"{weights_path} does not match its recorded SHA-256; the "
                              "weights are corrupt")
    dtype = check_header(weights_path, config)
    try:
        tensors = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{weights_path} is not a readable safetensors file: {one_line(error)}"
        ) from error
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    model = GRULM(config).to(device=map_location, dtype=dtype)
    model.load_state_dict(weights)
    model.eval()
    # Copies: the tensors load_file returns map the file, and a mapping of a file that a later
    # save replaces would hold its disk space for as long as they live (a resumed run's).
    state = {k.removeprefix("state."): v.clone() for k, v in tensors.items()
             if k.startswith("state.")}
    return Checkpoint(model, vocab, CheckpointMeta.from_json(metadata, str(where)), state,
                      directory)
