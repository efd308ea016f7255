"""Checkpoints that describe themselves (see :mod:`grulm.checkpoint.files`)."""

from grulm.checkpoint.files import (
    FORMAT,
    FORMAT_VERSION,
    METADATA_FILE,
    Checkpoint,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    sweep_checkpoint_dir,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "Checkpoint",
    "find_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "sweep_checkpoint_dir",
]
