"""Training recipes: complete settings for `grulm train --preset NAME`.

A preset fixes the data, model and training settings; any flag given explicitly overrides
the preset's value. ``d2l`` is the seed experiment exactly (the default). ``shakespeare`` is
a character model of tinyshakespeare chosen by measurement on a 2-core CPU for a budget of
three minutes (``benchmarks/quality.py``).

``shakespeare`` is bound by generalisation more than by throughput: the training text is only
about a million characters, and a 256-wide GRU run for many passes over it keeps lowering its
training loss while its validation loss stalls, so spending the budget on more passes of the
small model scores worse. A wider state learns more per step: a 512-wide GRU takes far fewer
steps in three minutes of two CPU cores, yet ends lower than the 256- or 384-wide model does in
as many seconds; decoupled weight decay holds it back from memorising. The run ends at
whichever budget comes first, ``max_time`` or ten epochs (a guard against overfitting on a
faster machine), and the cosine decay follows that budget, so the last steps fine-tune. The
measurements behind the choice are in ``benchmarks/README.md``.

``recall`` is the long-range recall task (:mod:`grulm.data.recall`, K = 40 unless ``--data
recall:K`` says otherwise) as ``grulm compare`` runs it by default: a model small enough to
train hundreds of steps a minute on two CPU cores, Adam at 1e-2 (calibrated on this machine:
a plain ``nn.GRU`` of this size reaches recall accuracy 0.999 at K = 40 in 90 s, and only 0.38
at lr 3e-3), windows of 100 steps (≥ K + 3, so gradients span the distance), 90 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One recipe.

    Attributes:
        name: what ``--preset`` takes.
        description: one line for ``--help``.
        data: ``data``, ``cleaning``, ``token``, ``min_freq``, ``max_tokens``,
            ``split_fractions`` (None: train on the first ``max_tokens``, validate on the
            last 10 %, the seed's split).
        model: :class:`grulm.model.GRUConfig` fields (all but ``vocab_size``).
        train: :class:`grulm.train.TrainConfig` fields.
        run: output settings (``checkpoint_every_epochs``, ``log_every_steps``,
            ``sample_prefixes``).
    """

    name: str
    description: str
    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """All of the preset's values in one flat mapping (keys are the CLI's dest names)."""
        return {**self.data, **self.model, **self.train, **self.run}


PRESETS: dict[str, Preset] = {
    "d2l": Preset(
        name="d2l",
        description="the seed experiment of d2l §9.1: The Time Machine, first 10,000 "
        "characters, 1×256 reset-before GRU, one-hot input, SGD lr 1, 500 epochs",
        data={"data": "timemachine", "cleaning": "d2l", "token": "char", "min_freq": 0,
              "max_tokens": 10_000, "split_fractions": None},
        model={"hidden_size": 256, "num_layers": 1, "variant": "reset_before",
               "input_kind": "onehot", "embedding_size": None, "dropout": 0.0, "init": "d2l"},
        train={"epochs": 500, "batch_size": 32, "num_steps": 35, "lr": 1.0, "clip": 1.0,
               "partition": "sequential", "optimizer": "sgd", "schedule": "constant",
               # Validating the 17k held-out characters costs most of a seed epoch; every 10th
               # epoch (and the last) keeps the curve at a tenth of that.
               "eval_every": 10},
        run={"checkpoint_every_epochs": 50, "log_every_steps": 0,
             "sample_prefixes": ["time traveller", "traveller"]},
    ),
    "shakespeare": Preset(
        name="shakespeare",
        description="tinyshakespeare (raw characters, 90/10 split): 64-wide embedding, "
        "1×512 reset-before GRU on the fused cpu backend, AdamW 5e-3 (weight decay 0.1) "
        "with warm-up and cosine decay to the end of the budget, batch 32 × 128, 180 s or "
        "10 epochs",
        data={"data": "tinyshakespeare", "cleaning": "raw", "token": "char", "min_freq": 0,
              "max_tokens": 0, "split_fractions": [0.9, 0.1]},
        model={"hidden_size": 512, "num_layers": 1, "variant": "reset_before",
               "input_kind": "embedding", "embedding_size": 64, "dropout": 0.0,
               "init": "torch"},
        train={"epochs": 10, "batch_size": 32, "num_steps": 128, "lr": 5e-3, "clip": 1.0,
               "partition": "sequential", "optimizer": "adamw", "weight_decay": 0.1,
               "beta2": 0.99, "schedule": "cosine", "warmup_steps": 100,
               "min_lr_ratio": 0.02, "max_time": 180.0},
        run={"checkpoint_every_epochs": 1, "log_every_steps": 50,
             "sample_prefixes": ["ROMEO:", "KING HENRY"]},
    ),
    "recall": Preset(
        name="recall",
        description="the long-range recall task recall:40 (90/10 split): 32-wide embedding, "
        "1×128 reset-before GRU, Adam 1e-2, clip 1, batch 32 × 100, 90 s",
        data={"data": "recall:40", "cleaning": "raw", "token": "char", "min_freq": 0,
              "max_tokens": 0, "split_fractions": [0.9, 0.1]},
        model={"hidden_size": 128, "num_layers": 1, "variant": "reset_before",
               "input_kind": "embedding", "embedding_size": 32, "dropout": 0.0,
               "init": "torch"},
        train={"epochs": 1000, "batch_size": 32, "num_steps": 100, "lr": 1e-2, "clip": 1.0,
               "partition": "sequential", "optimizer": "adam", "schedule": "constant",
               "max_time": 90.0},
        run={"checkpoint_every_epochs": 10, "log_every_steps": 50},
    ),
}
