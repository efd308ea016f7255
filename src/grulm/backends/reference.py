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
"""

from __future__ import annotations

import torch
from torch import Tensor

from grulm.backends.projection import project_inputs


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
    W_hr, W_hz, W_hn = weight_hh.chunk(3)  # each (H, H)
    b_hr, b_hz, b_hn = bias_hh.chunk(3)  # each (H,)
    H = h0
    outputs = []
    for X in inputs.unbind(1):
        X_r, X_z, X_n = X.chunk(3, dim=-1)  # each (B, H)
        R = torch.sigmoid(X_r + H @ W_hr.T + b_hr)  # (B, H) reset gate
        Z = torch.sigmoid(X_z + H @ W_hz.T + b_hz)  # (B, H) update gate
        if reset_after:
            H_tilde = torch.tanh(X_n + R * (H @ W_hn.T + b_hn))  # (B, H)
        else:
            H_tilde = torch.tanh(X_n + (R * H) @ W_hn.T + b_hn)  # (B, H)
        H = Z * H + (1 - Z) * H_tilde  # (B, H)
        outputs.append(H)
    return torch.stack(outputs, dim=1), H
