"""The ``cpu`` backend: a fused GRU layer in C++ with a hand-written backward through time.

Same contract as :func:`grulm.backends.reference.gru_layer`, both variants. What makes it fast
on a CPU (see ``csrc/gru_cpu.cpp``):

- the input projection is hoisted out of the time loop: one matrix product for features; for
  one-hot input the kernel reads the row of ``W_ih^T`` each token id selects, and scatters the
  gradient back into those rows;
- per step, the recurrent products of all gates are one matrix product (reset-after) or two
  (reset-before: ``h W_hrz^T``, then ``(R ⊙ h) W_hn^T``), each followed by ONE fused
  elementwise pass that writes the gates, the saved activations and the next state. The
  products run on a small kernel of our own (``csrc/packed_matmul.h``): ``W_hh`` is packed once
  per call into 16-column panels and a 4×16 AVX2/FMA register tile multiplies against it,
  because a BLAS call repacks the weights and pays a dispatch on every one of these few-row
  products;
- backward is a custom :class:`torch.autograd.Function` that walks the steps in reverse with
  one product per step for ``dh`` (two for reset-before) and forms ``dW_hh`` and the bias
  gradients once, over all T·B rows, after the loop;
- the time loop runs inside one OpenMP team in which each thread owns a block of the batch's
  sequences and walks all T steps for them: sequences do not interact, so the threads never
  wait for each other inside the loop. Calls too small to pay for a team run on one thread.

The same extension has the output head and the loss fused (``csrc/head_loss.cpp``,
:func:`head_loss`, used by :meth:`grulm.model.GRULM.loss`): logits, softmax, mean
cross-entropy and their gradients without ATen's three awkwardly shaped products; gradient
clipping fused with a plain SGD step (``csrc/clip_sgd.cpp``, :func:`clip_sgd_`, which
:func:`grulm.train.build_step` picks once for this backend's models); and single-step decoding
for generation (``csrc/decode_step.cpp``, :func:`decode_step`, :func:`decode_greedy`): a
step, a whole prefix or a whole greedy run in one call, from tensors derived once from the
model's parameters.

The extension is built and loaded by :mod:`grulm.backends.build` (one toolchain, one cache,
one fallback policy): where it cannot be built, :func:`unavailable` says why and what to
install, and ``backend='auto'`` falls back with one warning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grulm.backends import build
from grulm.backends.decode import DecodeParams

unavailable = build.unavailable
load = build.load


class FusedGRULayer(torch.autograd.Function):
    """One GRU layer over T steps, time-major, with the backward written out by hand.

    Inputs: ``x`` — (T, B, 3H) projected features ``x W_ih^T`` (no bias), or (T, B) int64
    token ids with ``table`` = ``W_ih^T`` (V, 3H) (else None); ``h0`` (B, H); ``weight_hh``
    (3H, H); ``bias_ih``, ``bias_hh`` (3H,); ``reset_after`` (bool).
    Outputs: the state after every step (T, B, H) and the final state (B, H).
    """

    @staticmethod
    def forward(ctx, x, table, h0, weight_hh, bias_ih, bias_hh, reset_after):
        out, h_T, gates, extra = torch.ops.grulm_cpu.forward(
            x, table, h0, weight_hh, bias_ih, bias_hh, reset_after, True
        )
        ctx.save_for_backward(x, table, h0, out, gates, extra, weight_hh)
        ctx.reset_after = reset_after
        return out, h_T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_h_T):
        x, table, h0, out, gates, extra, weight_hh = ctx.saved_tensors
        d_x, d_h0, d_weight_hh, d_bias_ih, d_bias_hh = torch.ops.grulm_cpu.backward(
            grad_out, grad_h_T, x, table, h0, out, gates, extra, weight_hh, ctx.reset_after
        )
        if table is None:
            return d_x, None, d_h0, d_weight_hh, d_bias_ih, d_bias_hh, None
        return None, d_x, d_h0, d_weight_hh, d_bias_ih, d_bias_hh, None


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
    """Same contract as :func:`grulm.backends.reference.gru_layer`.

    Args:
        x: (B, T) int64 token ids (one-hot input) or (B, T, I) features.
        h0: (B, H); weight_ih: (3H, V) or (3H, I); weight_hh: (3H, H); biases: (3H,).
        reset_after: the cuDNN variant if True, the textbook (reset-before) one if False.

    Returns:
        outputs (B, T, H) (a batch-first view of time-major storage) and h_T (B, H).
        Where no gradient can flow (grad mode off, or no input requiring one) the kernel runs
        forward only: it saves nothing for a backward and builds no autograd node.

    Raises:
        RuntimeError: the extension cannot be built or loaded here.
    """
    load()
    if x.dtype == torch.int64:
        # One-hot input: the kernel gathers rows of W_ih^T by token id, step by step.
        x, table = x.T, weight_ih.T.contiguous()  # (T, B), (V, 3H)
    else:
        x, table = torch.nn.functional.linear(x.transpose(0, 1), weight_ih), None  # (T, B, 3H)
    inputs = (x, table, h0, weight_hh, bias_ih, bias_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        out, h_T = FusedGRULayer.apply(*inputs, reset_after)
    else:
        out, h_T, _, _ = torch.ops.grulm_cpu.forward(*inputs, reset_after, False)
    return out.transpose(0, 1), h_T


class FusedHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of ``softmax(x W^T + b)`` against ``targets``, with its backward.

    Inputs: ``x`` (M, H), ``weight`` (V, H), ``bias`` (V,), ``targets`` (M,) int64.
    Output: the mean loss, 0-dim.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, targets):
        loss, probs = torch.ops.grulm_cpu.head_loss_forward(x, weight, bias, targets)
        ctx.save_for_backward(x, weight, probs, targets)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        x, weight, probs, targets = ctx.saved_tensors
        d_x, d_weight, d_bias = torch.ops.grulm_cpu.head_loss_backward(
            grad_loss, x, weight, probs, targets
        )
        return d_x, d_weight, d_bias, None


def head_loss(hidden: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias) over all positions, targets)``, fused.

    The logits are never returned: for training and evaluation, which need only the loss.

    Args:
        hidden: (B, T, H) the last layer's outputs (a batch-first view of time-major storage
            from :func:`gru_layer` is read without a copy).
        weight: (V, H); bias: (V,): the head.
        targets: (B, T) int64 token ids.

    Returns:
        The mean loss over all B·T positions, 0-dim.

    Raises:
        RuntimeError: a target outside [0, V), or the extension cannot be built or loaded.
    """
    load()
    x = hidden.transpose(0, 1).reshape(-1, hidden.shape[-1])  # (T·B, H): time-major rows
    return FusedHeadLoss.apply(x, weight, bias, targets.T.reshape(-1))


def clip_sgd_(
    params: list[Tensor], grads: list[Tensor], lrs: list[float], max_norm: float
) -> Tensor:
    """Clip ``grads`` to global L2 norm ``max_norm``, then ``params[i] -= lrs[i] * grads[i]``.

    In place, in two passes over memory; the same as clipping by the global norm followed by
    ``torch.optim.SGD`` without momentum or weight decay.

    Args:
        params, grads: non-empty lists of dense, contiguous CPU float32/float64 tensors,
            ``grads[i]`` of ``params[i]``'s shape and dtype.
        lrs: the learning rate of each parameter.

    Returns:
        The gradients' norm before clipping, 0-dim (NaN if a gradient is NaN, and then every
        parameter becomes NaN too, as unfused).

    Raises:
        RuntimeError: the lists do not fit together, or the extension cannot be loaded.
    """
    load()
    with torch.no_grad():
        return torch.ops.grulm_cpu.clip_sgd_(params, grads, lrs, max_norm)


def decode_step(params: DecodeParams, x_ids: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`grulm.backends.reference.decode_step`, in one call into C++.

    Float32 or float64 on the CPU; the parameters are read as they are, nothing is derived.

    Raises:
        RuntimeError: a token id outside [0, V), or the extension cannot be built or loaded.
    """
    load()
    return torch.ops.grulm_cpu.decode_step(params.tensors(), x_ids, h, params.reset_after)


def decode_greedy(
    params: DecodeParams, x_ids: Tensor, h: Tensor, steps: int
) -> tuple[Tensor, Tensor]:
    """Feed ``x_ids`` (N,), then ``steps`` times take each sequence's argmax (the first
    maximum, as ``torch.argmax``) and feed it back, except the last: a whole greedy run in one
    call into C++.

    Args:
        params, h: as :func:`decode_step`; ``steps`` ≥ 1.

    Returns:
        The chosen tokens (N, steps) int64, and the state after the last token fed (L, N, H).
    """
    load()
    return torch.ops.grulm_cpu.decode_greedy(
        params.tensors(), x_ids, h, params.reset_after, steps
    )
