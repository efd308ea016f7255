"""The reference backend: one GRU layer as a plain Python time loop under autograd.

It is the readable oracle for every fast backend: same parameters (``torch.nn.GRU``'s layout,
gates ordered r, z, n), same signature (see :mod:`grulm.backends`), both variants:

- reset-before (d2l §9.1, Cho et al. v3)::

      R = σ(x W_ir + b_ir + h W_hr + b_hr)
      Z = σ(x W_iz + b_iz + h W_hz + b_hz)
      H~ = tanh(x W_in + b_in + (R ⊙ h) W_hn + b_hn)
      h' = Z ⊙ h + (1 − Z) ⊙ H~

- reset-after (cuDNN, ``torch.nn.GRU``)::

      H~ = tanh(x W_in + b_in + R ⊙ (h W_hn + b_hn))

:func:`gru_cell` is one step of it, :func:`gru_layer` a sequence, and :func:`decode_step`
one token per sequence through a whole language model (single-step decoding for generation).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from grulm.backends.decode import DecodeParams
from grulm.backends.projection import project_inputs


def gru_cell(
    X: Tensor,
    H: Tensor,
    W_h: tuple[Tensor, Tensor, Tensor],
    b_h: tuple[Tensor, Tensor, Tensor],
    *,
    reset_after: bool,
) -> Tensor:
    """One step of one GRU layer.

    Args:
        X: (B, 3H) the step's input projection ``x W_ih^T + b_ih``, gates r, z, n.
        H: (B, H) the state before the step.
        W_h: ``(W_hr, W_hz, W_hn)``, each (H, H): ``weight_hh`` in three.
        b_h: ``(b_hr, b_hz, b_hn)``, each (H,): ``bias_hh`` in three.
        reset_after: the cuDNN variant if True, the textbook (reset-before) one if False.

    Returns:
        (B, H) the state after the step.
    """
    W_hr, W_hz, W_hn = W_h
    b_hr, b_hz, b_hn = b_h
    X_r, X_z, X_n = X.chunk(3, dim=-1)  # each (B, H)
    R = torch.sigmoid(X_r + H @ W_hr.T + b_hr)  # (B, H) reset gate
    Z = torch.sigmoid(X_z + H @ W_hz.T + b_hz)  # (B, H) update gate
    if reset_after:
        H_tilde = torch.tanh(X_n + R * (H @ W_hn.T + b_hn))  # (B, H)
    else:
        H_tilde = torch.tanh(X_n + (R * H) @ W_hn.T + b_hn)  # (B, H)
    return Z * H + (1 - Z) * H_tilde  # (B, H)


def gru_layer(
    x: Tensor,
    h0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    *,
    reset_after: bool,
) -> tuple[Tensor, Tensor]:
    """Run one GRU layer over a whole sequence, one time step per loop iteration.

    Args:
        x: (B, T) int64 token ids (one-hot input) or (B, T, I) features.
        h0: (B, H) initial state.
        weight_ih: (3H, V) or (3H, I); weight_hh: (3H, H); bias_ih, bias_hh: (3H,).
        reset_after: the cuDNN variant if True, the textbook (reset-before) one if False.

    Returns:
        outputs (B, T, H), the state after every step; h_T (B, H), the final state.
    """
    inputs = project_inputs(x, weight_ih, bias_ih)  # (B, T, 3H): x W_i + b_i for all steps at once
    W_h = weight_hh.chunk(3)  # (W_hr, W_hz, W_hn), each (H, H)
    b_h = bias_hh.chunk(3)  # (b_hr, b_hz, b_hn), each (H,)
    H = h0
    outputs = []
    for X in inputs.unbind(1):
        H = gru_cell(X, H, W_h, b_h, reset_after=reset_after)  # (B, H)
        outputs.append(H)
    return torch.stack(outputs, dim=1), H


def decode_step(params: DecodeParams, x_ids: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """Feed one token per sequence (or a few, in order) through every layer and the head.

    Single-step decoding as the model computes it: the input (a one-hot row of ``W_ih``, or
    an embedding), :func:`gru_cell` per layer, the linear head. Dropout is not applied
    (generation runs the model as in eval mode).

    Args:
        params: the model's parameters (see :class:`grulm.backends.decode.DecodeParams`).
        x_ids: (N,) int64, one token per sequence; or (N, T), T tokens fed in order (a prefix
            in one call).
        h: (L, N, H) the state before them.

    Returns:
        logits (N, V) for the token after the last one fed, and the state then, (L, N, H).
    """
    x = x_ids if x_ids.dim() == 2 else x_ids[:, None]  # (N, T) ids
    if params.embedding is not None:
        x = F.embedding(x, params.embedding)  # (N, T, E)
    states = []
    for (W_ih, W_hh, b_ih, b_hh), h_k in zip(params.layers, h, strict=True):
        x, h_k = gru_layer(x, h_k, W_ih, W_hh, b_ih, b_hh, reset_after=params.reset_after)
        states.append(h_k)  # x: (N, T, H), h_k: (N, H)
    logits = F.linear(x[:, -1], params.head_weight, params.head_bias)  # (N, V)
    return logits, torch.stack(states)
