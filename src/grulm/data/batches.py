"""Minibatches of one token stream, exactly d2l §8.3's two partitions.

An epoch's batches are fixed when its :class:`EpochBatches` is made: making it draws from the
``random.Random`` passed in exactly what d2l's generator draws from Python's global ``random``
(an offset; for the random partition also a shuffle), so with ``random.Random(seed)`` the
batches equal d2l's after ``random.seed(seed)``, and the batches are a pure function of
(ids, batch size, num_steps, RNG state). For exact resume, save :func:`rng_state` before
making an epoch's batches, restore it with :func:`rng_from_state`, make the batches again and
continue with :meth:`EpochBatches.iter_from`.

- **sequential** (``seq_data_iter_sequential``): offset ``randint(0, T)`` (inclusive);
  ``n = ((N − offset − 1) // B) · B`` tokens from the offset, reshaped to (B, n/B) for inputs
  and, shifted by one, for labels; batch i is columns ``[i·T, (i+1)·T)``. Consecutive batches
  continue each row, so the hidden state can be carried.
- **random** (``seq_data_iter_random``): offset ``randint(0, T − 1)``; subsequences start every
  T tokens from it (the last one must have its label); their order is shuffled; batch i takes
  the next B starts.

Every batch is ``(X, Y)``, both (B, T) int64, with ``Y[b, t]`` the token after ``X[b, t]``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from grulm.errors import ConfigError, DataError

PARTITIONS = ("sequential", "random")


def check_sizes(batch_size: int, num_steps: int) -> None:
    """Raise ``ConfigError`` unless both are positive integers."""
    for name, value in (("batch_size", batch_size), ("num_steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def min_tokens(batch_size: int, num_steps: int, partition: str = "sequential") -> int:
    """The fewest tokens that give at least one batch whatever offset is drawn.

    sequential: the worst offset is T, and one batch needs B·T inputs plus one label, so
    ``B·T + T + 1``. random: the worst offset is T − 1, and B subsequences need B·T inputs
    plus one label, so ``B·T + T``.
    """
    check_sizes(batch_size, num_steps)
    _check_partition(partition)
    if partition == "sequential":
        return batch_size * num_steps + num_steps + 1
    return (batch_size + 1) * num_steps


def check_batchable(
    ids: Tensor, batch_size: int, num_steps: int, partition: str = "sequential",
    what: str = "the corpus",
) -> None:  # fmt: skip
    """Raise ``DataError`` if ``ids`` may be too short for one batch (names ``what``)."""
    need = min_tokens(batch_size, num_steps, partition)
    if len(ids) < need:
        formula = "B·T + T + 1" if partition == "sequential" else "B·T + T"
        raise DataError(
            f"{what} has {len(ids)} tokens, too few for one batch of {batch_size}×{num_steps} "
            f"with the {partition} partition: it needs at least {need} ({formula}, for the "
            "largest random offset); use more text, or a smaller --batch-size or --num-steps"
        )


class EpochBatches:
    """One epoch's batches: ``len()`` of them, iterable, each ``(X, Y)`` (B, T) int64."""

    batch_size: int
    num_steps: int
    offset: int

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        """Batch ``index`` (0-based) of this epoch: inputs and labels, (B, T) int64."""
        raise NotImplementedError

    def iter_from(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches ``start, start+1, …`` (resuming mid-epoch skips without computing)."""
        if not 0 <= start <= len(self):
            raise ConfigError(f"start must be in [0, {len(self)}], got {start}")
        for index in range(start, len(self)):
            yield self.batch(index)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of an epoch of {len(self)}")


class SequentialBatches(EpochBatches):
    """d2l ``seq_data_iter_sequential`` over ``ids`` (N,), drawing the offset from ``rng``."""

    def __init__(self, ids: Tensor, batch_size: int, num_steps: int, rng: random.Random):
        check_batchable(ids, batch_size, num_steps, "sequential")
        self.batch_size, self.num_steps = batch_size, num_steps
        self.offset = rng.randint(0, num_steps)
        num_tokens = ((len(ids) - self.offset - 1) // batch_size) * batch_size
        start = self.offset
        self._xs = ids[start : start + num_tokens].reshape(batch_size, -1)  # (B, n/B)
        self._ys = ids[start + 1 : start + 1 + num_tokens].reshape(batch_size, -1)  # (B, n/B)
        self._len = self._xs.shape[1] // num_steps

    def __len__(self) -> int:
        return self._len

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        self._check_index(index)
        columns = slice(index * self.num_steps, (index + 1) * self.num_steps)
        return _int64(self._xs[:, columns]), _int64(self._ys[:, columns])


class RandomBatches(EpochBatches):
    """d2l ``seq_data_iter_random`` over ``ids`` (N,), drawing offset and shuffle from ``rng``."""

    def __init__(self, ids: Tensor, batch_size: int, num_steps: int, rng: random.Random):
        check_batchable(ids, batch_size, num_steps, "random")
        self.batch_size, self.num_steps = batch_size, num_steps
        self.offset = rng.randint(0, num_steps - 1)
        self._ids = ids[self.offset :]
        num_subseqs = (len(self._ids) - 1) // num_steps
        starts = list(range(0, num_subseqs * num_steps, num_steps))
        rng.shuffle(starts)
        self._starts = torch.tensor(starts, dtype=torch.int64)
        self._len = num_subseqs // batch_size
        self._steps = torch.arange(num_steps)

    def __len__(self) -> int:
        return self._len

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        self._check_index(index)
        starts = self._starts[index * self.batch_size : (index + 1) * self.batch_size]
        positions = starts[:, None] + self._steps  # (B, T)
        return _int64(self._ids[positions]), _int64(self._ids[positions + 1])


class RowShare(EpochBatches):
    """Rows ``[start, stop)`` of every batch of ``batches``: one data-parallel rank's share.

    With the sequential partition each row is its own stream, so a rank that always takes
    the same rows carries the hidden state of exactly those streams.
    """

    def __init__(self, batches: EpochBatches, start: int, stop: int) -> None:
        if not 0 <= start < stop <= batches.batch_size:
            raise ConfigError(f"rows [{start}, {stop}) of a batch of {batches.batch_size}")
        self.batches, self.start, self.stop = batches, start, stop
        self.batch_size, self.num_steps = stop - start, batches.num_steps
        self.offset = batches.offset

    def __len__(self) -> int:
        return len(self.batches)

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        X, Y = self.batches.batch(index)
        return X[self.start : self.stop], Y[self.start : self.stop]


def epoch_batches(
    ids: Tensor, batch_size: int, num_steps: int, rng: random.Random,
    partition: str = "sequential",
) -> EpochBatches:  # fmt: skip
    """One epoch of batches of ``ids`` (N,) with the named partition (see module docstring)."""
    _check_partition(partition)
    cls = SequentialBatches if partition == "sequential" else RandomBatches
    return cls(ids, batch_size, num_steps, rng)


def eval_batches(ids: Tensor, batch_size: int, num_steps: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Deterministic batches that cover a held-out stream for evaluation with carried state.

    No offset: the first ``L = (N − 1) // B`` · B inputs are reshaped to (B, L), labels
    shifted by one, and cut into windows of T columns, the last one shorter if T does not
    divide L, so every one of the B·L predictions is scored once. Yields ``(X, Y)`` of
    shape (B, t) int64 with t ≤ T. Needs ``N ≥ B + 1``.
    """
    check_sizes(batch_size, num_steps)
    if len(ids) < batch_size + 1:
        raise DataError(
            f"the evaluation split has {len(ids)} tokens, fewer than batch size + 1 = "
            f"{batch_size + 1}; use more text or a larger split, or a smaller --batch-size"
        )
    length = (len(ids) - 1) // batch_size
    xs = ids[: batch_size * length].reshape(batch_size, length)  # (B, L)
    ys = ids[1 : 1 + batch_size * length].reshape(batch_size, length)  # (B, L)
    for start in range(0, length, num_steps):
        yield _int64(xs[:, start : start + num_steps]), _int64(ys[:, start : start + num_steps])


def rng_state(rng: random.Random) -> dict[str, Any]:
    """A JSON-ready copy of a ``random.Random``'s state (for checkpoints)."""
    version, internal, gauss_next = rng.getstate()
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def rng_from_state(state: dict[str, Any]) -> random.Random:
    """A ``random.Random`` in the state :func:`rng_state` saved."""
    rng = random.Random()
    try:
        rng.setstate((state["version"], tuple(state["internal"]), state["gauss_next"]))
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"a saved random-number state is damaged ({error}); start a new run without --resume"
        ) from None
    return rng


def _int64(window: Tensor) -> Tensor:
    return window.to(torch.int64).contiguous()


def _check_partition(partition: str) -> None:
    if partition not in PARTITIONS:
        raise ConfigError(f"partition must be one of {', '.join(PARTITIONS)}, got {partition!r}")
