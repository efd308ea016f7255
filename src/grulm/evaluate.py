"""Held-out evaluation: perplexity, nats and bits per token, recall accuracy, state carried.

The split is cut into B parallel streams (:func:`grulm.data.batches.eval_batches`) read in
windows of T tokens; each window starts from the state the previous one ended in, so every
token after the first of its stream is predicted with its whole left context in that stream,
as in training with the sequential partition. Every prediction is scored exactly once.

Since the state is carried, the window length changes nothing but the float rounding of the
per-window means: windows are lengthened from T up to :data:`WINDOW_ELEMENTS` activations
(:func:`window_steps`), so that a split is read in a few calls, each paying its Python-level
dispatch and thread-team start once for many steps. The pass runs under
``torch.inference_mode``: no autograd graph, and the fused kernels run forward only.

In a data-parallel run each rank scores its contiguous share of the B streams and the sums are
added up across the ranks, so the split is read once, in parallel, and every rank gets the
same result (the one process's, up to the order of the float64 sum).

On a ``recall:K`` stream (:mod:`grulm.data.recall`) :func:`recall_accuracy` reads the split
the same way and counts how often the greedy prediction after a cue is the remembered letter.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from grulm.data.batches import eval_batches
from grulm.data.recall import CUE, recall_task
from grulm.data.vocab import Vocab
from grulm.distributed import World
from grulm.model import GRULM

# The most elements of the widest activation, (B, t, max(H, V)), an evaluation window may hold:
# 32 MiB of float32, a few such tensors at once.
WINDOW_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class EvalResult:
    """What one pass over a split measured.

    Attributes:
        loss: mean cross-entropy per token, in nats (nats/char for character tokens).
        tokens: predictions scored.
    """

    loss: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    def to_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "perplexity": self.perplexity,
                "bits_per_token": self.bits_per_token, "tokens": self.tokens}


@dataclass(frozen=True)
class RecallResult:
    """Recall accuracy on a ``recall:K`` split (:mod:`grulm.data.recall`).

    Attributes:
        correct: recall positions where the greedy prediction was the remembered letter.
        total: recall positions scored: every cue whose letter lies inside its stream.
    """

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else math.nan

    def to_dict(self) -> dict[str, float | None]:
        return {"recall_accuracy": self.accuracy if self.total else None,
                "recall_positions": self.total}


def evaluate(model: GRULM, ids: Tensor, batch_size: int = 32, num_steps: int = 35,
             world: World | None = None) -> EvalResult:  # fmt: skip
    """Score every next-token prediction of ``ids`` (N,) with the state carried.

    The model is put in eval mode (no dropout) and back in the mode it was in. One host sync,
    at the end.

    Args:
        num_steps: the shortest window; :func:`window_steps` lengthens it.
        world: the ranks that share the streams (``batch_size`` must split evenly across
            them); None: this process scores them all.

    Raises:
        DataError: ``ids`` has fewer than ``batch_size + 1`` tokens.
    """

    def score(X: Tensor, Y: Tensor, state, start: int):
        loss, state = model.loss(X, Y, state)  # mean over the batch's B·t tokens, (L, B, H)
        tokens = loss.new_full((), Y.numel(), dtype=torch.float64)
        return torch.stack([loss.double() * Y.numel(), tokens]), state

    total, tokens = _carried_pass(model, ids, batch_size, num_steps, world, score)
    return EvalResult(total / tokens, int(tokens))


def recall_accuracy(model: GRULM, ids: Tensor, cue: int, distance: int, batch_size: int = 32,
                    num_steps: int = 35, world: World | None = None) -> RecallResult:  # fmt: skip
    """How often the greedy prediction after a cue is the letter seen ``distance + 1`` earlier.

    ``ids`` (N,) is read like :func:`evaluate` reads it (B streams, state carried). A position
    counts when its input is ``cue`` and the letter it recalls, ``distance + 1`` inputs
    earlier, lies inside the same stream (a stream cut mid-record starts with a cue whose
    letter it never saw); its label is that letter by construction of the stream.

    Args:
        cue: the cue's token id.
        distance: K, the fillers between a letter and its cue.
        world: as for :func:`evaluate`; the counts are summed across ranks.

    Returns:
        The counts of correct and scored positions (accuracy NaN when there are none).
    """

    def score(X: Tensor, Y: Tensor, state, start: int):
        logits, state = model(X, state)  # (B, t, V)
        position = torch.arange(start, start + X.shape[1], device=X.device)  # in the stream
        counted = (X == cue) & (position >= distance + 1)  # (B, t)
        correct = counted & (logits.argmax(dim=-1) == Y)
        return torch.stack([correct.sum(), counted.sum()]).double(), state

    correct, total = _carried_pass(model, ids, batch_size, num_steps, world, score)
    return RecallResult(int(correct), int(total))


def evaluate_recall(model: GRULM, vocab: Vocab, source: str | None, ids: Tensor,
                    batch_size: int = 32, num_steps: int = 35,
                    world: World | None = None) -> RecallResult | None:  # fmt: skip
    """:func:`recall_accuracy` on ``ids`` when ``source`` is a ``recall:K`` stream; else None."""
    task = recall_task(source)
    if task is None:
        return None
    return recall_accuracy(model, ids, vocab[CUE], task.distance, batch_size, num_steps, world)


def window_steps(model: GRULM, batch_size: int, num_steps: int) -> int:
    """The window length an evaluation reads: ``num_steps``, or more where a window of
    ``batch_size`` streams stays within :data:`WINDOW_ELEMENTS` elements of the model's
    widest activation: the hidden state (B, t, H) or the logits (B, t, V)."""
    return max(num_steps, WINDOW_ELEMENTS // (batch_size * max(model.head.weight.shape)))


def _carried_pass(model: GRULM, ids: Tensor, batch_size: int, num_steps: int,
                  world: World | None, score: Callable) -> list[float]:  # fmt: skip
    """Sums of ``score(X, Y, state, start) -> (sums (k,), state)`` over every window of
    ``ids`` read in ``batch_size`` streams with the state carried (``start``: the window's
    first column in its stream; windows of :func:`window_steps`), this rank's rows, added up
    across ranks; one host sync."""
    world = world if world is not None else World()
    device = model.head.weight.device
    steps = window_steps(model, batch_size, num_steps)
    batches = eval_batches(ids.to(device), batch_size, steps)
    first = next(batches)  # checks the sizes before the state is allocated
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            state = model.begin_state(batch_size // world.size)
            sums = None
            start = 0
            for X, Y in itertools.chain([first], batches):
                X, Y = world.rows(X), world.rows(Y)  # this rank's streams
                found, state = score(X, Y, state, start)
                sums = found if sums is None else sums + found
                start += X.shape[1]
            local = sums.cpu().tolist()
    finally:
        model.train(was_training)
    return world.sum(local)  # outside inference mode: the collective gets an ordinary tensor
