"""A checkpoint's metadata as typed classes: everything in ``checkpoint.json`` but the model
config, the vocabulary and the weights file, which :class:`~grulm.checkpoint.Checkpoint` holds
as a model and a :class:`~grulm.data.vocab.Vocab`.

``eval``, ``generate``, ``info`` and ``resume`` read these attributes; ``save_checkpoint``
writes :meth:`CheckpointMeta.to_json`. A round trip loses nothing: fields this grulm does not
know stay in ``extra``, and a class read from JSON remembers the fields it held, in their order,
so that an absent field stays absent and a null one null (``grulm info --json`` prints the
file's metadata as it is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from grulm.checkpoint.validate import (
    FORMAT,
    FORMAT_VERSION,
    REPAIR,
    check_meta_fields,
    check_nesting,
    check_required,
)

FILE_KEYS = ("format", "model_config", "vocab", "tensors_file", "tensors_sha256")
"""``checkpoint.json`` fields that are not metadata: the format's name, and what the model,
the vocabulary and the weights are read from."""


@dataclass(frozen=True)
class DataInfo:
    """What the model was trained on: ``checkpoint.json``'s ``data``.

    ``grulm train`` writes every field. A checkpoint written through :func:`save_checkpoint`
    may hold only some; an absent one takes the default below, which is what every reader
    assumes. On load ``source``, ``cleaning`` and ``token`` are checked to be strings; the
    other fields are kept as written, and the readers that use them check them (a corpus
    load, :func:`grulm.train.training_splits`, a resumed :class:`~grulm.run.RunSpec`).

    Attributes:
        source: the built-in corpus name or text file the model was trained on.
        sha256: that text's SHA-256 (``eval`` warns when the file has changed since).
        cleaning: ``d2l``, ``raw`` or ``none`` (see :mod:`grulm.data.text`).
        token: ``char`` or ``word``.
        min_freq: tokens seen fewer times became ``<unk>``.
        num_tokens: tokens in the whole text.
        vocab_size: tokens in the vocabulary.
        max_tokens: training used the first N tokens of the training split; 0 = all.
        split_fractions: contiguous train/val[/test] fractions; None = the seed's split.
        ranges: each split's ``[start, stop)`` token range, e.g. ``{"train": [0, 600]}``.
        extra: fields this grulm does not know, kept as they were.
        keys: the fields the JSON held, in its order; None when built in code (every field).
    """

    source: str | None = None
    sha256: str | None = None
    cleaning: str = "raw"
    token: str = "char"
    min_freq: int = 0
    num_tokens: int | None = None
    vocab_size: int | None = None
    max_tokens: int | None = None
    split_fractions: list[float] | None = None
    ranges: dict[str, list[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DataInfo:
        """From ``checkpoint.json``'s ``data`` object (already checked by
        :meth:`CheckpointMeta.from_json`)."""
        known = _known_names(cls)
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known}, keys=tuple(data))

    def to_json(self) -> dict[str, Any]:
        """The ``data`` object to write: the fields read (or every field), then ``extra``."""
        return _to_json(self, {name: getattr(self, name) for name in _known_names(self)},
                        keep_none=True)


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything a checkpoint says about itself besides its model, vocabulary and weights.

    Attributes:
        format_version: the checkpoint format (this grulm reads and writes
            :data:`~grulm.checkpoint.FORMAT_VERSION`).
        grulm_version: the grulm that wrote it; None if unknown.
        created: when it was written, ISO 8601 with the UTC offset; None if unknown.
        data: what the model was trained on; None if not said.
        train: the :class:`~grulm.train.TrainConfig` fields as saved (``{"epochs": 500, …}``).
        run: the run's output settings (checkpoint cadence, sample prefixes…).
        preset: the preset the run was built from (``d2l``…).
        metrics: where training got and how it went (``epochs``, ``step``, ``perplexity``,
            ``best_val_loss``, ``perplexity_history``…); empty if none were saved.
        training_state: what resumes the run: ``progress``, ``optimizer`` and ``schedule``
            objects (see :mod:`grulm.run.resume`); None in a ``best/`` copy.
        extra: top-level fields this grulm does not know, kept as they were.
        keys: the fields the JSON held, in its order; None when built in code.
    """

    format_version: int = FORMAT_VERSION
    grulm_version: str | None = None
    created: str | None = None
    data: DataInfo | None = None
    train: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    preset: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, metadata: Mapping[str, Any], where: str) -> CheckpointMeta:
        """From the object in ``checkpoint.json`` (its model config, vocabulary and weights
        file's fields are left out); the format version is the caller's to check.

        Args:
            metadata: the whole object, or its metadata fields only.
            where: what to name in errors (the file's path).

        Raises:
            CheckpointError: ``format_version`` is missing or not an integer, or a field has a
                JSON type its readers cannot use, named with ``where``.
        """
        metadata = dict(metadata)
        check_required(metadata, (("format_version", "an integer"),), where, REPAIR)
        check_meta_fields(metadata, where, REPAIR)
        check_nesting(metadata, where, REPAIR)
        known = _known_names(cls)
        values = {k: v for k, v in metadata.items() if k in known}
        if "data" in values:
            values["data"] = DataInfo.from_json(values["data"])
        return cls(**values, extra={k: v for k, v in metadata.items()
                                    if k not in known and k not in FILE_KEYS},
                   keys=tuple(k for k in metadata if k not in FILE_KEYS))

    def to_json(self) -> dict[str, Any]:
        """The metadata fields of ``checkpoint.json``: ``format`` and ``format_version``, the
        other fields read (or, built in code, those that are set), then ``extra``."""
        values = {name: getattr(self, name) for name in _known_names(self)}
        if self.data is not None:
            values["data"] = self.data.to_json()
        return {"format": FORMAT, "format_version": self.format_version,
                **_to_json(self, values, keep_none=False)}


def _known_names(cls_or_instance) -> list[str]:
    return [f.name for f in fields(cls_or_instance) if f.name not in ("extra", "keys")]


def _to_json(meta: DataInfo | CheckpointMeta, values: dict[str, Any],
             keep_none: bool) -> dict[str, Any]:  # fmt: skip
    """``values`` (the fields as JSON) and ``meta.extra`` in the order ``meta.keys`` gives, then
    the fields set since it was read; without ``keys`` every field (``keep_none``) or the
    fields that are not None, then ``extra``."""
    defaults = {f.name: f.default_factory() if f.default is MISSING else f.default
                for f in fields(meta) if f.name in values}
    if meta.keys is None:
        order = [k for k, v in values.items() if keep_none or v is not None]
    else:
        order = [k for k in meta.keys if k in values or k in meta.extra]
        order += [k for k, v in values.items()
                  if k not in meta.keys and k in defaults and v != defaults[k]]
    described = {k: values[k] if k in values else meta.extra[k] for k in order}
    return {**described, **{k: v for k, v in meta.extra.items() if k not in described}}
