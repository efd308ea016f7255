"""The input projection every backend hoists out of its time loop."""

from __future__ import annotations

import torch
from torch import Tensor


def project_inputs(x: Tensor, weight_ih: Tensor, bias_ih: Tensor) -> Tensor:
    """``x W_ih^T + b_ih`` for every time step at once.

    One-hot input is given as token ids: multiplying a one-hot row by ``W_ih^T`` selects one
    column of ``W_ih``, so the product is an exact row gather of ``W_ih^T``.

    Args:
        x: (B, T) int64 token ids, or (B, T, I) features.
        weight_ih: (3H, V) for token ids, (3H, I) for features.
        bias_ih: (3H,).

    Returns:
        (B, T, 3H).
    """
    if x.dtype == torch.int64:
        return torch.nn.functional.embedding(x, weight_ih.T) + bias_ih
    return torch.nn.functional.linear(x, weight_ih, bias_ih)


def as_features(x: Tensor, weight_ih: Tensor) -> Tensor:
    """Token ids as float one-hot vectors (B, T, V) in ``weight_ih``'s dtype, for PyTorch's
    kernels, which take features only; features (B, T, I) as they are."""
    if x.dtype == torch.int64:
        return torch.nn.functional.one_hot(x, weight_ih.shape[1]).to(weight_ih.dtype)
    return x
