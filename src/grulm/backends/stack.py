"""Stacked layers: each layer's outputs are the next one's inputs, each layer its own state."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from grulm.cells import State, layer_state


def run_layers(
    layer: Callable[..., tuple[Tensor, State]],
    x: Tensor,
    state: State,
    layers: Sequence[Sequence[Tensor]],
    options: dict[str, object],
    *,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, State]:
    """Run ``layer`` once per layer of the stack.

    Args:
        layer: a backend's layer function of the cell, ``layer(x, state_k, *weights,
            **options) -> (outputs (B, T, H), state_k)``.
        x: (B, T) int64 token ids (one-hot input) or (B, T, I) features for layer 0.
        state: (L, B, H), or an LSTM's pair (h, c) of (L, B, H).
        layers: each layer's tensors, as ``layer`` takes them.
        options: the cell's keyword arguments (:func:`grulm.cells.layer_options`).
        dropout: on the inputs of every layer but the first, when ``training``.

    Returns:
        The last layer's outputs (B, T, H) and the final state, shaped as ``state``.
    """
    finals = []
    for k, weights in enumerate(layers):
        if k > 0 and dropout > 0:
            x = F.dropout(x, dropout, training)
        x, h = layer(x, layer_state(state, k), *weights, **options)
        finals.append(h)  # x: (B, T, H), h: (B, H) or (h, c)
    if isinstance(finals[0], tuple):
        return x, tuple(torch.stack(parts) for parts in zip(*finals, strict=True))
    return x, torch.stack(finals)
