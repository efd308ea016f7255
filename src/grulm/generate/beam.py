"""Beam search with length normalisation, all hypotheses in one batch."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from grulm.generate.sampling import without_unk
from grulm.generate.text_format import StopWatch


def beam_search(
    decoder,
    logits: Tensor,
    pieces: list[str],
    *,
    max_new: int,
    beam_width: int,
    length_penalty: float,
    num_return: int,
    stops: tuple[str, ...],
    allow_unk: bool = True,
) -> list[str]:
    """Beam search over continuations; returns the ``num_return`` best texts, best first.

    Args:
        decoder: holds the state after the prefix, batch 1.
        logits: (1, V) the next-token logits after the prefix.
        allow_unk: False: no hypothesis contains ``<unk>``; each step's log-probabilities
            are those of the model's distribution given that the token is not ``<unk>``.
    """
    vocab_size = logits.shape[-1]
    scores = torch.zeros(1, dtype=torch.float64)  # (n,) sum of log p
    beams: list[tuple[str, StopWatch]] = [("", StopWatch(stops))]
    finished: list[tuple[float, str]] = []  # (normalised score, text)
    for t in range(max_new):
        logits = torch.as_tensor(logits).double().cpu()  # (n, V)
        logp = torch.log_softmax(logits if allow_unk else without_unk(logits), dim=-1)
        candidates = (scores[:, None] + logp).flatten()  # (n·V,)
        k = min(2 * beam_width, candidates.numel())
        top_scores, flat = candidates.topk(k)  # sorted, best first
        kept_rows, kept_scores, kept_beams, kept_tokens = [], [], [], []
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), flat.tolist(), strict=True)):
            if score == -math.inf:  # a masked <unk>: so is every candidate after it
                break
            row, token = divmod(index, vocab_size)
            text, watch = beams[row]
            piece = pieces[token]
            end = None
            if stops:
                watch = watch.copy()
                end = watch.feed(piece)
            if end is not None:
                if rank < beam_width:  # a finished hypothesis must rank among the best
                    finished.append((score / (t + 1) ** length_penalty, text + piece[:end]))
                continue
            kept_rows.append(row)
            kept_scores.append(score)
            kept_beams.append((text + piece, watch))
            kept_tokens.append(token)
            if len(kept_rows) == beam_width:
                break
        beams = kept_beams
        if not beams or len(finished) >= beam_width or t + 1 == max_new:
            break
        scores = torch.tensor(kept_scores, dtype=torch.float64)
        decoder.reorder(decoder.array(kept_rows))
        logits = decoder.step(decoder.array(kept_tokens))
    length = t + 1
    hypotheses = finished + [
        (score / length**length_penalty, text)
        for score, (text, _) in zip(kept_scores, beams, strict=True)
    ]
    hypotheses.sort(key=lambda h: h[0], reverse=True)
    return [text for _, text in hypotheses[:num_return]]
