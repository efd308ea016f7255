"""The arithmetic precisions of the recurrent layers' matrix products, and the readable bf16 one.

``float32`` (the default) is plain float32 arithmetic. ``bf16`` rounds both operands of every
matrix product of the recurrent layers — the input projection of features, each step's
recurrent products, and in the backward pass the products that form the gradients of the
inputs, the state and the weights — to bfloat16 (round to nearest, ties to even) and
accumulates in float32. Everything else stays float32: the master weights, their gradients,
the optimiser's state, the gates' elementwise math, the output head, the softmax and the loss.
A one-hot input is a gather of rows of ``W_ih^T``, not a product: it stays exact.

bfloat16 keeps float32's 8-bit exponent, so its products need no loss scaling; it keeps 8 bits
of mantissa, so each operand carries a relative rounding error of at most 2^-9.

:func:`linear` is the readable emulation every fast bf16 kernel is checked against: it rounds
with ``t.bfloat16().float()`` and lets PyTorch's float32 kernels accumulate. The backward
pass sees rounded operands too: the rounding of each operand passes the gradient straight
through (:class:`_RoundOperand`), and the gradient arriving at the product's output is itself
rounded before it enters the two gradient products (:class:`_RoundGradient`), so that
``dX = round(dY) round(W)`` and ``dW = round(dY)^T round(X)``, as a fused kernel that keeps
its operands in bfloat16 computes them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grulm.backends import projection
from grulm.errors import ConfigError

PRECISIONS = ("float32", "bf16")

# Spellings people reach for, and what to say about them (one spelling per precision keeps
# checkpoints and benchmark lines comparable, so none is accepted as an alias).
_HINTS = {
    "bfloat16": "write it bf16",
    "bf-16": "write it bf16",
    "fp32": "write it float32",
    "float": "write it float32",
    "fp16": "float16 is not supported: its 5-bit exponent needs loss scaling; bf16 does not",
    "float16": "float16 is not supported: its 5-bit exponent needs loss scaling; bf16 does not",
    "half": "float16 is not supported: its 5-bit exponent needs loss scaling; bf16 does not",
    "float64": "float64 is a parameter dtype, not a product precision; use float32",
}


def check_precision(precision: object) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        ConfigError: anything else, with the accepted names (and a hint for common
            misspellings such as ``bfloat16`` or ``fp16``).
    """
    if isinstance(precision, str) and precision in PRECISIONS:
        return precision
    hint = None
    if isinstance(precision, str):
        name = precision.strip().lower()
        hint = f"write it {name}" if name in PRECISIONS else _HINTS.get(name)
    raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}"
                      + (f" ({hint})" if hint else ""))


def round_bf16(t: Tensor) -> Tensor:
    """``t`` rounded to the nearest bfloat16 (ties to even), back in ``t``'s dtype."""
    return t.bfloat16().to(t.dtype)


class _RoundOperand(torch.autograd.Function):
    """Forward: round to bfloat16. Backward: the gradient passes straight through (the
    rounding's derivative is taken as 1, as for any quantised operand)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        return round_bf16(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class _RoundGradient(torch.autograd.Function):
    """Forward: the identity. Backward: the gradient rounded to bfloat16, so that the
    gradient products behind it read a bfloat16 operand."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return round_bf16(grad)


def linear(x: Tensor, weight: Tensor, precision: str = "float32") -> Tensor:
    """``x W^T`` in ``precision`` (no bias: biases are added in float32 by the caller).

    Args:
        x: (..., I); weight: (O, I).
        precision: ``float32``: ``x @ weight.T``, nothing else; ``bf16``: both
            operands rounded to bfloat16, the products accumulated in float32, and the
            backward's products on rounded operands too (see the module docstring).

    Returns:
        (..., O) in ``x``'s dtype.
    """
    if precision == "float32":
        return x @ weight.T
    product = torch.nn.functional.linear(_RoundOperand.apply(x), _RoundOperand.apply(weight))
    return _RoundGradient.apply(product)


def project_inputs(x: Tensor, weight_ih: Tensor, bias_ih: Tensor,
                   precision: str = "float32") -> Tensor:  # fmt: skip
    """``x W_ih^T + b_ih`` for every time step at once, in ``precision``.

    In float32 exactly :func:`grulm.backends.projection.project_inputs`. In bf16 token ids
    still gather rows of ``W_ih^T`` exactly (a gather is not a product); features are
    multiplied by :func:`linear` in bf16 and the bias added in float32.

    Args:
        x: (B, T) int64 token ids, or (B, T, I) features.
        weight_ih: (G·H, V) for token ids, (G·H, I) for features; bias_ih: (G·H,).

    Returns:
        (B, T, G·H).
    """
    if precision == "float32" or x.dtype == torch.int64:
        return projection.project_inputs(x, weight_ih, bias_ih)
    return linear(x, weight_ih, precision) + bias_ih
