"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): a GRU whose gates read only the input.

One layer, blocks z, h of ``weight_ih`` (2H × I) and ``bias_ih`` (2H,), no ``weight_hh``::

    Z  = σ(x W_iz + b_iz)          update gate, from the input alone      (B, T, H)
    H~ = g(x W_ih + b_ih)          candidate; g(a) = a + ½ for a ≥ 0, σ(a) below: always > 0
    h_t = (1 − Z_t) ⊙ h_{t−1} + Z_t ⊙ H~_t

(the paper's convention: Z weighs the candidate, where d2l's GRU has it weigh the old state;
g is the paper's positive activation, which its log-space form needs). Since no gate reads h,
the recurrence is linear in h: with ``A_t = ∏_{s≤t} (1 − Z_s)``,

    h_t = A_t ⊙ h_0 + A_t ⊙ Σ_{s≤t} Z_s ⊙ H~_s / A_s

which :func:`mingru_scan` computes for all t at once, in log space as the paper does (a
cumulative sum of ``log(1 − Z)`` and a ``logcumsumexp``: no product of many small factors
underflows, no division blows up). The h_0 term stays out of the logarithms, so h_0 may be
zero (the start of a sequence) or of any sign. :func:`mingru_sequential` is the step-by-step
form: the readable reference, and what generation runs one token at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from grulm.backends import precision as precisions
from grulm.backends.projection import project_inputs


def g(a: Tensor) -> Tensor:
    """The paper's positive activation: ``a + ½`` for a ≥ 0, ``σ(a)`` below (continuous)."""
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def log_g(a: Tensor) -> Tensor:
    """``log g(a)``, computed without forming ``g(a)`` where it is small."""
    return torch.where(a >= 0, torch.log(F.relu(a) + 0.5), -F.softplus(-a))


def mingru_gates(X: Tensor) -> tuple[Tensor, Tensor]:
    """The update gate and candidate of one step, from its input projection alone.

    Args:
        X: (B, 2H) the step's ``x W_ih^T + b_ih``, blocks z, h.

    Returns:
        ``(Z, H_tilde)``, each (B, H): Z in (0, 1), H~ > 0.
    """
    X_z, X_h = X.chunk(2, dim=-1)  # each (B, H)
    return torch.sigmoid(X_z), g(X_h)


def mingru_sequential(
    x: Tensor, h0: Tensor, weight_ih: Tensor, bias_ih: Tensor, *, precision: str = "float32"
) -> tuple[Tensor, Tensor]:
    """One minGRU layer, one time step per loop iteration (the reference).

    Args:
        x: (B, T) int64 token ids (one-hot input) or (B, T, I) features.
        h0: (B, H); weight_ih: (2H, V) or (2H, I), blocks z, h; bias_ih: (2H,).
        precision: of the input projection, its one product
            (:func:`grulm.backends.precision.project_inputs`).

    Returns:
        outputs (B, T, H), the state after every step; h_T (B, H).
    """
    inputs = precisions.project_inputs(x, weight_ih, bias_ih, precision)  # (B, T, 2H)
    H = h0
    outputs = []
    for X in inputs.unbind(1):
        Z, H_tilde = mingru_gates(X)  # each (B, H): update gate, candidate
        H = (1 - Z) * H + Z * H_tilde  # (B, H)
        outputs.append(H)
    return torch.stack(outputs, dim=1), H


def mingru_scan(
    x: Tensor, h0: Tensor, weight_ih: Tensor, bias_ih: Tensor
) -> tuple[Tensor, Tensor]:
    """One minGRU layer over the whole sequence at once: the parallel scan in log space.

    Same contract as :func:`mingru_sequential`; equal to it up to rounding (tested in float64).
    """
    X_z, X_h = project_inputs(x, weight_ih, bias_ih).chunk(2, dim=-1)  # each (B, T, H)
    log_Z = -F.softplus(-X_z)  # (B, T, H) log σ(X_z)
    log_keep = -F.softplus(X_z)  # (B, T, H) log(1 − σ(X_z))
    log_A = log_keep.cumsum(dim=1)  # (B, T, H) log A_t
    log_terms = log_Z + log_g(X_h) - log_A  # (B, T, H) log(Z_s H~_s / A_s)
    A = torch.exp(log_A)  # (B, T, H)
    outputs = A * h0[:, None] + torch.exp(log_A + torch.logcumsumexp(log_terms, dim=1))
    return outputs, outputs[:, -1]  # (B, T, H), (B, H)
