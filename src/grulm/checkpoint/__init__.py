"""Checkpoints that describe themselves: safetensors weights beside one JSON file, no pickle.

A checkpoint is a directory::

    checkpoint.json                 format version, grulm version, model config, vocabulary,
                                    data and training configs, metrics, the weights file's
                                    name and SHA-256, and any JSON training state
    tensors-<sha256 prefix>.safetensors
                                    ``model.<name>`` for every parameter of the unwrapped
                                    GRULM, ``state.<name>`` for training-state tensors

Everything in ``checkpoint.json`` but the model config, the vocabulary and the weights file is
:class:`CheckpointMeta` (:mod:`~grulm.checkpoint.meta`). Writes are atomic
(:mod:`~grulm.checkpoint.files`): until the new ``checkpoint.json`` replaces the old one in a
single rename, the previous checkpoint stays whole and loadable. Loading trusts nothing in
``checkpoint.json`` (:mod:`~grulm.checkpoint.validate`, :mod:`~grulm.checkpoint.load`): every
field has the JSON type its readers expect, the weights file is a plain name inside the
directory, and the model config is checked against the safetensors header before a model is
built.
"""

from grulm.checkpoint.files import save_checkpoint, sweep_checkpoint_dir
from grulm.checkpoint.load import Checkpoint, find_checkpoint, load_checkpoint
from grulm.checkpoint.meta import CheckpointMeta, DataInfo
from grulm.checkpoint.validate import FORMAT, FORMAT_VERSION, METADATA_FILE

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "Checkpoint",
    "CheckpointMeta",
    "DataInfo",
    "find_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "sweep_checkpoint_dir",
]
