"""Choosing the next token: temperature, top-k and top-p filtering, Gumbel-max sampling, and
keeping ``<unk>`` out of the candidates."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from grulm.data.vocab import Vocab

UNK = Vocab.unk  # <unk>'s id in every grulm vocabulary


def without_unk(logits):
    """A copy of ``logits`` (N, V), torch or NumPy, in which ``<unk>`` can never be chosen.

    Its logit becomes −inf, so a softmax renormalises over the other tokens: sampling draws
    from the model's distribution given that the token is not ``<unk>``, and the argmax is
    the most likely other token.
    """
    masked = logits.copy() if isinstance(logits, np.ndarray) else logits.clone()
    masked[:, UNK] = -math.inf
    return masked


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set the logits of tokens outside the top-k / nucleus sets to −inf.

    Args:
        logits: (N, V), already divided by the temperature.
        top_k: keep the k largest per row (ties at the boundary: the lower ids, as ``sort``).
        top_p: then keep the smallest set of most likely tokens whose probability reaches
            ``top_p``; the most likely token always stays.

    Returns:
        (N, V) a filtered copy.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
        drop = torch.zeros_like(logits, dtype=torch.bool)
        drop.scatter_(-1, order[:, top_k:], True)
        logits = logits.masked_fill(drop, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # (N, V) probability of the better tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def make_selector(
    strategy: str,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    max_new: int,
    *,
    allow_unk: bool = True,
):
    """A function from logits (N, V) to the next tokens (N,) int64, torch or NumPy alike.

    With ``allow_unk=False`` ``<unk>`` is masked out (:func:`without_unk`) before anything
    else, so top-k and top-p choose among the other tokens.
    """
    if strategy == "greedy" or temperature == 0:
        choose = _argmax
    else:
        choose = GumbelSampler(temperature, top_k, top_p, generator, max_new)
    if allow_unk:
        return choose

    def choose_known(logits):
        return choose(without_unk(logits))

    return choose_known


def _argmax(logits):
    return logits.argmax(-1)


class GumbelSampler:
    """Draws tokens from ``softmax(logits / temperature)``, after top-k / top-p filtering.

    By the Gumbel-max trick: ``argmax(logits / T + G)`` with ``G = −log E``, ``E ~ Exp(1)``
    i.i.d., picks token i with probability ``softmax(logits / T)_i`` exactly, and never a
    token whose logit is −inf (filtered out). The noise comes from ``generator`` only, drawn
    in blocks of steps so that a step costs a few array operations rather than a
    ``torch.multinomial`` call; a block holds at most 65,536 numbers (fewer steps for a large
    vocabulary) and never more steps than are left. The draws are the same whichever decoder
    produced the logits.

    Args:
        temperature: > 0.
        top_k, top_p: see :func:`filter_logits` (None: no filter).
        generator: the source of randomness, on the logits' device.
        max_new: how many steps will be drawn at most.
    """

    BLOCK_NUMBERS = 1 << 16

    def __init__(self, temperature, top_k, top_p, generator, max_new: int) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = generator
        self.left = max_new
        self.noise, self.used = None, 0

    def __call__(self, logits):
        if self.noise is None or self.used == len(self.noise):
            self._draw(logits)
        noise = self.noise[self.used]  # (N, V)
        self.used += 1
        scaled = logits / self.temperature
        if self.top_k is not None or self.top_p is not None:
            filtered = filter_logits(torch.as_tensor(scaled), self.top_k, self.top_p)
            scaled = filtered.numpy() if isinstance(logits, np.ndarray) else filtered
        return (scaled + noise).argmax(-1)

    def _draw(self, logits) -> None:
        N, V = logits.shape
        steps = max(1, min(self.left, self.BLOCK_NUMBERS // (N * V)))
        self.left -= steps
        like = torch.as_tensor(logits)
        exponential = torch.empty(steps, N, V, dtype=like.dtype, device=like.device)
        exponential.exponential_(generator=self.generator)
        tiny = torch.finfo(like.dtype).tiny  # E = 0 would give G = +inf, even for −inf logits
        gumbel = exponential.clamp_(min=tiny).log_().neg_()  # (steps, N, V)
        self.noise = gumbel.numpy() if isinstance(logits, np.ndarray) else gumbel
        self.used = 0

