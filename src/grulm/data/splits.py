"""Train / validation / test splits of one token stream: contiguous and non-overlapping.

A split is a contiguous slice of the stream, and the slices are disjoint, so no training
window (inputs or labels) contains a held-out token: batch iterators only ever look inside the
slice they are given.

- :func:`split_ids` cuts by fractions, in order: train first, then validation, then test.
- :func:`seed_splits` keeps the seed experiment's training data (the first ``max_tokens``
  tokens) and holds out the **last** ``val_fraction`` of the stream for validation (for The
  Time Machine with d2l characters: train = tokens [0, 10 000), validation = the last 10 %
  of the book, about 17 000 characters of its final chapters), never overlapping training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from grulm.data.batches import check_batchable
from grulm.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    """Views of one stream (N,); ``ranges`` gives each split's ``[start, stop)`` in it.

    ``val``/``test`` are ``None`` when not asked for.
    """

    train: Tensor
    val: Tensor | None
    test: Tensor | None
    ranges: dict[str, tuple[int, int]]

    def get(self, name: str) -> Tensor:
        """The split called ``train``, ``val`` or ``test``; ``DataError`` if there is none."""
        if name not in SPLIT_NAMES:
            raise ConfigError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {name!r}")
        split = getattr(self, name)
        if split is None:
            raise DataError(
                f"there is no {name} split; ask for it when splitting (e.g. "
                "--split-fractions 0.8,0.1,0.1 for train, val and test)"
            )
        return split

    def check_batchable(
        self, batch_size: int, num_steps: int, partition: str = "sequential"
    ) -> None:
        """``DataError`` naming the first split too short for one batch (train uses
        ``partition``; held-out splits are read sequentially)."""
        for name in SPLIT_NAMES:
            split = getattr(self, name)
            if split is not None:
                part = partition if name == "train" else "sequential"
                check_batchable(split, batch_size, num_steps, part, f"the {name} split")


def split_ids(ids: Tensor, fractions: Sequence[float] = (0.9, 0.1)) -> Splits:
    """Cut ``ids`` (N,) into 1–3 contiguous splits: train, then val, then test.

    Split k gets ``floor(f_k · N)`` tokens, except that when the fractions sum to 1 the last
    split takes the remainder (so 0.9/0.1 uses every token); when they sum to less, the tail
    is unused.

    Raises:
        ConfigError: not 1–3 fractions, a fraction ≤ 0, or a sum above 1.
        DataError: a split with no tokens.
    """
    fractions = [float(f) for f in fractions]
    if not 1 <= len(fractions) <= 3:
        raise ConfigError(f"give 1 to 3 split fractions (train, val, test), got {len(fractions)}")
    if any(not f > 0 for f in fractions):
        raise ConfigError(f"split fractions must be > 0, got {fractions}")
    total = sum(fractions)
    if total > 1 + 1e-9:
        raise ConfigError(f"split fractions must sum to at most 1, got {fractions} (sum {total})")
    n = len(ids)
    bounds = [0]
    for k, fraction in enumerate(fractions):
        last = k == len(fractions) - 1
        stop = n if (last and math.isclose(total, 1.0)) else bounds[-1] + math.floor(fraction * n)
        bounds.append(min(stop, n))
    ranges = {}
    for k, name in enumerate(SPLIT_NAMES[: len(fractions)]):
        start, stop = bounds[k], bounds[k + 1]
        if stop <= start:
            raise DataError(
                f"the {name} split (fraction {fractions[k]} of {n} tokens) is empty; use a "
                "larger fraction for it or a longer text"
            )
        ranges[name] = (start, stop)
    return _splits(ids, ranges)


def seed_splits(ids: Tensor, max_tokens: int = 10_000, val_fraction: float = 0.1) -> Splits:
    """The seed experiment's data: train = the first ``max_tokens`` tokens (d2l's
    ``corpus[:max_tokens]``; all but the validation part if ``max_tokens ≤ 0``); val = the last
    ``val_fraction`` of the stream, starting no earlier than the end of train.

    Raises:
        ConfigError: ``val_fraction`` not in (0, 1).
        DataError: nothing left for validation after the training tokens.
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(ids)
    val_start = n - math.ceil(val_fraction * n)
    train_stop = val_start if max_tokens <= 0 else min(max_tokens, n)
    val_start = max(val_start, train_stop)
    if train_stop <= 0:
        raise DataError(
            f"the text has only {n} tokens, too few for a training split; use a longer text"
        )
    if val_start >= n:
        raise DataError(
            f"nothing is left for validation: the text has {n} tokens and training uses the "
            f"first {train_stop}; use a smaller --max-tokens or a longer text"
        )
    return _splits(ids, {"train": (0, train_stop), "val": (val_start, n)})


def _splits(ids: Tensor, ranges: dict[str, tuple[int, int]]) -> Splits:
    views = {name: ids[start:stop] for name, (start, stop) in ranges.items()}
    return Splits(views["train"], views.get("val"), views.get("test"), ranges)
