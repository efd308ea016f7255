"""What a training run is, as data: :class:`RunSpec`, typed, frozen, with a JSON round trip.

A spec has four sections — the data (:class:`DataSpec`), the model (:class:`ModelSpec`), how
to train (:class:`grulm.train.TrainConfig`: optimisation, schedule, budget, evaluation) and
what to write (:class:`OutputSpec`) — and names the preset it started from. Every default a
run uses lives here and in the presets (:mod:`grulm.presets`); the CLI shows these values in
``--help`` and passes only the flags a user gave, as overrides::

    spec = RunSpec.from_preset("d2l", data="timemachine", epochs=4, seed=0)

Override names are the CLI's flag names with underscores (``hidden_size``, ``input``,
``split_fractions``, ``max_time`` …). Two rules keep a preset sensible on other data: when
``data`` names another corpus than the preset's, the preset's corpus-specific choices
(cleaning, max_tokens, split_fractions, sample_prefixes) give way to that corpus's defaults;
and a ``recall:K`` stream is trained on windows of at least K + 3 steps unless ``num_steps``
is given, so that backpropagation spans a letter and its recall.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from grulm.data.recall import recall_task
from grulm.errors import ConfigError
from grulm.model import GRUConfig
from grulm.presets import PRESETS
from grulm.train import TrainConfig

SEED_DATA = "timemachine"
SEED_MAX_TOKENS = 10_000
SEED_PREFIXES = ("time traveller", "traveller")


def corpus_defaults(data: str) -> dict[str, Any]:
    """What a corpus is trained with unless told otherwise: the seed's choices for The Time
    Machine, raw text and all of it for anything else."""
    seed = data == SEED_DATA
    return {"cleaning": "d2l" if seed else "raw", "max_tokens": SEED_MAX_TOKENS if seed else 0,
            "split_fractions": None}


@dataclass(frozen=True)
class DataSpec:
    """The text and how it becomes training and validation tokens.

    Attributes:
        data: a built-in corpus name or a path to a text file.
        cleaning: ``d2l``, ``raw`` or ``none`` (see :mod:`grulm.data.text`).
        token: ``char`` or ``word``.
        min_freq: tokens seen fewer times become ``<unk>``.
        max_tokens: train on the first N tokens of the training split; 0 = all.
        split_fractions: contiguous train/val[/test] fractions; None = the seed's split
            (validation on the last 10 %).
    """

    data: str = SEED_DATA
    cleaning: str = "d2l"
    token: str = "char"
    min_freq: int = 0
    max_tokens: int = SEED_MAX_TOKENS
    split_fractions: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise ConfigError(f"max_tokens must be ≥ 0 (0 = all), got {self.max_tokens!r}")
        recall_task(self.data)  # a malformed recall:K is refused before anything is written
        if self.split_fractions is not None:
            object.__setattr__(self, "split_fractions", tuple(self.split_fractions))


_MODEL_DEFAULTS = {f.name: f.default for f in fields(GRUConfig)}


@dataclass(frozen=True)
class ModelSpec:
    """The architecture (:class:`grulm.model.GRUConfig` less the vocabulary size, which the
    data decides; the defaults are GRUConfig's)."""

    hidden_size: int = _MODEL_DEFAULTS["hidden_size"]
    num_layers: int = _MODEL_DEFAULTS["num_layers"]
    variant: str = _MODEL_DEFAULTS["variant"]
    input_kind: str = _MODEL_DEFAULTS["input_kind"]
    embedding_size: int | None = _MODEL_DEFAULTS["embedding_size"]
    dropout: float = _MODEL_DEFAULTS["dropout"]
    init: str = _MODEL_DEFAULTS["init"]
    backend: str = _MODEL_DEFAULTS["backend"]
    cell: str = _MODEL_DEFAULTS["cell"]
    gates: str = _MODEL_DEFAULTS["gates"]
    precision: str = _MODEL_DEFAULTS["precision"]

    def __post_init__(self) -> None:
        # Refused here, not in GRUConfig: checkpoints written before this check may hold
        # both, and must still load.
        if self.input_kind == "onehot" and self.embedding_size is not None:
            raise ConfigError("embedding_size sets the width of a learned embedding; one-hot "
                              "input has the vocabulary's width: drop --embedding-size or use "
                              "--input embedding")
        self.config(vocab_size=1)  # validates every field now, not after the data is read

    def config(self, vocab_size: int) -> GRUConfig:
        return GRUConfig(vocab_size=vocab_size, **asdict(self))


@dataclass(frozen=True)
class OutputSpec:
    """What a run writes and shows besides its final checkpoint.

    Attributes:
        checkpoint_every_epochs: a resumable checkpoint every N epochs; 0 = only at the end.
        checkpoint_every_steps: also every N optimiser steps; 0 = never.
        log_every_steps: a metrics line every K steps (and every epoch); 0 = epochs only.
        sample_every: a greedy sample every N epochs (for progress hooks); 0 = never.
        sample_prefixes: what samples are primed with; None = the text's opening (the seed:
            "time traveller", "traveller").
        tensorboard: also write TensorBoard events when the package is installed.
    """

    checkpoint_every_epochs: int = 10
    checkpoint_every_steps: int = 0
    log_every_steps: int = 100
    sample_every: int = 10
    sample_prefixes: tuple[str, ...] | None = None
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)
                                    or value < 0):
                raise ConfigError(f"{f.name} must be an integer ≥ 0, got {value!r}")
        if self.sample_prefixes is not None:
            object.__setattr__(self, "sample_prefixes", tuple(self.sample_prefixes))


SECTIONS = {"data": DataSpec, "model": ModelSpec, "train": TrainConfig, "output": OutputSpec}
# Override names that differ from the field they set (the CLI's flag is --input).
RENAMED = {"input": "input_kind"}
FLAG_NAMES = {field: name for name, field in RENAMED.items()}


@dataclass(frozen=True)
class RunSpec:
    """A whole training run: data, model, training (optimisation, schedule, budget,
    evaluation) and output, and the preset it came from."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputSpec = field(default_factory=OutputSpec)
    preset: str = "d2l"

    @classmethod
    def from_preset(cls, name: str = "d2l", **overrides: Any) -> RunSpec:
        """The preset ``name`` with ``overrides`` (flag names with underscores) applied.

        Raises:
            ConfigError: an unknown preset or override name (the message lists the valid
                ones), or an invalid value.
        """
        if name not in PRESETS:
            raise ConfigError(f"there is no preset {name!r}; presets: {', '.join(PRESETS)}")
        changes = _by_field(overrides)
        settings = PRESETS[name].settings()
        if "data" in changes and changes["data"] != settings["data"]:
            settings.update(corpus_defaults(changes["data"]))
            settings.pop("sample_prefixes", None)
        task = recall_task(changes.get("data", settings["data"]))
        if task is not None and "num_steps" not in changes:
            settings["num_steps"] = max(settings["num_steps"], task.min_num_steps)
        elif task is not None and changes["num_steps"] < task.min_num_steps:
            warnings.warn(f"num_steps {changes['num_steps']} is shorter than K + 3 = "
                          f"{task.min_num_steps} steps of {task.name}: no gradient spans a "
                          "letter and its recall, so the model can hardly learn it",
                          stacklevel=2)
        return cls.from_settings({**settings, **changes}, preset=name)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], preset: str) -> RunSpec:
        """A spec from one flat mapping keyed by field name (what :meth:`flat` returns);
        fields it lacks take their defaults."""
        sections = {}
        for section, kind in SECTIONS.items():
            values = {f.name: settings[f.name] for f in fields(kind) if f.name in settings}
            try:
                sections[section] = kind(**values)
            except TypeError as error:  # a value of the wrong type
                raise ConfigError(f"invalid {section} settings: {error}") from None
        return cls(**sections, preset=preset)

    def replace(self, **overrides: Any) -> RunSpec:
        """This spec with some settings changed (override names, as for :meth:`from_preset`)."""
        return self.from_settings({**self.flat(), **_by_field(overrides)}, preset=self.preset)

    def flat(self) -> dict[str, Any]:
        """Every setting in one mapping, keyed by field name."""
        return {k: v for section in SECTIONS for k, v in asdict(getattr(self, section)).items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"data": {...}, "model": {...}, "train": {...}, "output": {...},
        "preset": ...}`` (tuples become lists)."""
        return {**{section: _jsonable(asdict(getattr(self, section))) for section in SECTIONS},
                "preset": self.preset}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """The inverse of :meth:`to_dict`; unknown sections or fields are a ``ConfigError``."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run spec is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {*SECTIONS, "preset"})
        if unknown:
            raise ConfigError(f"unknown run spec section(s) {', '.join(unknown)}")
        settings = {}
        for section, kind in SECTIONS.items():
            values = data.get(section, {})
            names = {f.name for f in fields(kind)}
            if not isinstance(values, dict) or not set(values) <= names:
                raise ConfigError(f"run spec section {section!r} must be an object with "
                                  f"fields from: {', '.join(sorted(names))}")
            settings.update(values)
        return cls.from_settings(settings, preset=str(data.get("preset", "d2l")))


def override_names() -> list[str]:
    """Every name :meth:`RunSpec.from_preset` accepts, sorted."""
    return sorted(FLAG_NAMES.get(f.name, f.name) for kind in SECTIONS.values()
                  for f in fields(kind))


def _by_field(overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides keyed by the field they set; ``ConfigError`` for a name that sets none."""
    unknown = sorted(set(overrides) - set(override_names()))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid names: "
                          f"{', '.join(override_names())}")
    return {RENAMED.get(k, k): v for k, v in overrides.items()}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
