"""Held-out evaluation: perplexity, nats and bits per token, with the state carried.

The split is cut into B parallel streams (:func:`grulm.data.batches.eval_batches`) read in
windows of T tokens; each window starts from the state the previous one ended in, so every
token after the first of its stream is predicted with its whole left context in that stream,
as in training with the sequential partition. Every prediction is scored exactly once.

In a data-parallel run each rank scores its contiguous share of the B streams and the sums are
added up across the ranks, so the split is read once, in parallel, and every rank gets the
same result (the one process's, up to the order of the float64 sum).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from grulm.data.batches import eval_batches
from grulm.distributed import World
from grulm.model import GRULM


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


@torch.no_grad()
def evaluate(model: GRULM, ids: Tensor, batch_size: int = 32, num_steps: int = 35,
             world: World | None = None) -> EvalResult:  # fmt: skip
    """Score every next-token prediction of ``ids`` (N,) with the state carried.

    The model is put in eval mode (no dropout) and back in the mode it was in. One host sync,
    at the end.

    Args:
        world: the ranks that share the streams (``batch_size`` must split evenly across
            them); None: this process scores them all.

    Raises:
        DataError: ``ids`` has fewer than ``batch_size + 1`` tokens.
    """
    world = world if world is not None else World()
    device = model.head.weight.device
    batches = eval_batches(ids.to(device), batch_size, num_steps)
    first = next(batches)  # checks the sizes before the state is allocated
    was_training = model.training
    model.eval()
    state = model.begin_state(batch_size // world.size)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for X, Y in itertools.chain([first], batches):
        X, Y = world.rows(X), world.rows(Y)  # this rank's streams
        loss, state = model.loss(X, Y, state)  # mean over the batch's B·t tokens, (L, B, H)
        loss_sum += loss.double() * Y.numel()
        tokens += Y.numel()
    model.train(was_training)
    total, tokens = world.sum([loss_sum.item(), float(tokens)])
    return EvalResult(total / tokens, int(tokens))
