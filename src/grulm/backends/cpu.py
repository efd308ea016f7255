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
  per call into panels of 16 or 32 columns and a 4×16 AVX2/FMA or 8×32 AVX-512 register tile
  multiplies against it,
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

Instruction sets. The library is built for AVX2/FMA; its AVX-512 tiles are compiled per
function, so that it loads on any x86-64 CPU. When it is first used in a process, it takes the
best path this CPU runs (:func:`isa`): ``avx512-bf16`` (AVX-512 tiles, and ``vdpbf16ps`` for
the bf16 precision's products), ``avx512``, ``avx2``, or ``generic`` (ATen products). The
environment variable ``GRULM_CPU_ISA`` forces one (to compare them, or to test the paths of
other machines); a path this CPU cannot run falls back to the best it can, with a warning.

Precision. ``gru_layer(..., precision="bf16")`` rounds both operands of every matrix product of
the layer to bfloat16 and accumulates in float32 (the input projection of features, the step
products, and in the backward the gradients of both, weight gradients included), as the
``reference`` backend emulates it; gathered rows of one-hot input stay exact. It is fast where
the CPU has AVX512-BF16 and emulated at float32 speed elsewhere.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
from torch import Tensor

from grulm.backends import build
from grulm.backends.decode import DecodeParams
from grulm.backends.precision import PRECISIONS
from grulm.errors import ConfigError

unavailable = build.unavailable

ISA_VARIABLE = "GRULM_CPU_ISA"
ISAS = ("avx512-bf16", "avx512", "avx2", "generic")  # best first


def choose_isa(requested: str | None, best: str) -> tuple[str, str | None]:
    """The instruction set to use, from ``GRULM_CPU_ISA``'s value and the best this CPU runs.

    Returns:
        The path, and a warning to give (None if there is nothing to say): a path above what
        the CPU runs falls back to the best it can.

    Raises:
        ConfigError: ``requested`` is not one of :data:`ISAS`.
    """
    if not requested:
        return best, None
    if requested not in ISAS:
        raise ConfigError(
            f"{ISA_VARIABLE}={requested!r} is not an instruction set of grulm's cpu kernels: "
            f"use one of {', '.join(ISAS)}, or unset it for the best this CPU runs"
        )
    if ISAS.index(requested) < ISAS.index(best):
        return best, (
            f"{ISA_VARIABLE}={requested}: this CPU cannot run grulm's {requested} kernels; "
            f"using {best}, the best it runs"
        )
    return requested, None


@functools.cache
def _choose_once() -> None:
    """Sets the kernels' instruction set for this process (a cache hit after the first call
    that succeeds, so that the fallback warning comes once)."""
    chosen, warning = choose_isa(os.environ.get(ISA_VARIABLE), torch.ops.grulm_cpu.isa_best())
    if warning is not None:
        warnings.warn(warning, stacklevel=4)
    torch.ops.grulm_cpu.set_isa(chosen)


def load() -> None:
    """Build (if needed) and load the extension, and choose its instruction set, now.

    Raises:
        RuntimeError: it cannot be built or loaded here; the message says why.
        ConfigError: ``GRULM_CPU_ISA`` names no instruction set.
    """
    build.load()
    _choose_once()


def isa() -> str:
    """The instruction set the cpu kernels use in this process: one of :data:`ISAS`.

    Raises:
        RuntimeError, ConfigError: as :func:`load`.
    """
    load()
    return torch.ops.grulm_cpu.isa_active()


@functools.cache
def _warn_bf16_emulated(path: str) -> None:
    warnings.warn(
        f"grulm cpu backend: bf16 precision on the {path} kernels is emulated (operands rounded "
        "to bfloat16, float32 products), as slow as float32: the fast path needs a CPU with "
        "AVX512-BF16",
        stacklevel=4,
    )


class FusedGRULayer(torch.autograd.Function):
    """One GRU layer over T steps, time-major, with the backward written out by hand.

    Inputs: ``x`` — (T, B, 3H) projected features ``x W_ih^T`` (no bias), or (T, B) int64
    token ids with ``table`` = ``W_ih^T`` (V, 3H) (else None); ``h0`` (B, H); ``weight_hh``
    (3H, H); ``bias_ih``, ``bias_hh`` (3H,); ``reset_after`` (bool); ``bf16`` (bool): the
    step products and ``dW_hh`` from bfloat16-rounded operands.
    Outputs: the state after every step (T, B, H) and the final state (B, H).
    """

    @staticmethod
    def forward(ctx, x, table, h0, weight_hh, bias_ih, bias_hh, reset_after, bf16):
        out, h_T, gates, extra = torch.ops.grulm_cpu.forward(
            x, table, h0, weight_hh, bias_ih, bias_hh, reset_after, True, bf16=bf16
        )
        ctx.save_for_backward(x, table, h0, out, gates, extra, weight_hh)
        ctx.reset_after, ctx.bf16 = reset_after, bf16
        return out, h_T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_h_T):
        x, table, h0, out, gates, extra, weight_hh = ctx.saved_tensors
        d_x, d_h0, d_weight_hh, d_bias_ih, d_bias_hh = torch.ops.grulm_cpu.backward(
            grad_out, grad_h_T, x, table, h0, out, gates, extra, weight_hh, ctx.reset_after,
            bf16=ctx.bf16,
        )
        if table is None:
            return d_x, None, d_h0, d_weight_hh, d_bias_ih, d_bias_hh, None, None
        return None, d_x, d_h0, d_weight_hh, d_bias_ih, d_bias_hh, None, None


class TiledLinear(torch.autograd.Function):
    """``x W^T`` on grulm's tiles (``csrc/gemm_f32.h``, ``csrc/gemm_bf16.h``), and its
    gradients the same way (``dx = dy W``, ``dW = dy^T x``): in float32, or with ``bf16`` from
    bfloat16-rounded operands with float32 accumulation and output.

    Inputs: ``x`` (..., I), ``weight`` (O, I), float32 (or float64: ATen's products);
    ``bf16`` (bool). Output: (..., O).
    """

    @staticmethod
    def forward(ctx, x, weight, bf16):
        ctx.save_for_backward(x, weight)
        ctx.bf16 = bf16
        flat = x.reshape(-1, x.shape[-1])
        return torch.ops.grulm_cpu.mm(flat, weight.t(), bf16=bf16).view(*x.shape[:-1], -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        d_x = d_weight = None
        if ctx.needs_input_grad[0]:
            d_x = torch.ops.grulm_cpu.mm(grad, weight, bf16=ctx.bf16).view(x.shape)
        if ctx.needs_input_grad[1]:
            flat = x.reshape(-1, x.shape[-1])
            if ctx.bf16:
                # dW^T = x^T dy: the bf16 product does better with the wide gradient packed.
                d_weight = torch.ops.grulm_cpu.mm(flat.t(), grad, bf16=True).t().contiguous()
            else:
                # dW = dy^T x, written in place: the float32 product's faster orientation.
                d_weight = torch.ops.grulm_cpu.mm(grad.t(), flat)
        return d_x, d_weight, None


def gru_layer(
    x: Tensor,
    h0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    *,
    reset_after: bool,
    precision: str = "float32",
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`grulm.backends.reference.gru_layer`.

    Args:
        x: (B, T) int64 token ids (one-hot input) or (B, T, I) features.
        h0: (B, H); weight_ih: (3H, V) or (3H, I); weight_hh: (3H, H); biases: (3H,).
        reset_after: the cuDNN variant if True, the textbook (reset-before) one if False.
        precision: ``float32``, or ``bf16`` (float32 tensors only): every matrix product from
            bfloat16-rounded operands, accumulated in float32 (see the module docstring).

    Returns:
        outputs (B, T, H) (a batch-first view of time-major storage) and h_T (B, H).
        Where no gradient can flow (grad mode off, or no input requiring one) the kernel runs
        forward only: it saves nothing for a backward and builds no autograd node.

    Raises:
        ValueError: an unknown precision, or bf16 asked for float64 tensors.
        RuntimeError: the extension cannot be built or loaded here.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    bf16 = precision == "bf16"
    if bf16 and h0.dtype != torch.float32:
        raise ValueError(
            f"precision 'bf16' rounds float32 operands; this layer's tensors are {h0.dtype} "
            "(use precision='float32', or a float32 model)"
        )
    load()
    if bf16 and torch.ops.grulm_cpu.isa_active() != "avx512-bf16":
        _warn_bf16_emulated(torch.ops.grulm_cpu.isa_active())
    if x.dtype == torch.int64:
        # One-hot input: the kernel gathers rows of W_ih^T by token id, step by step (exact,
        # in either precision: a gather is not a product).
        x, table = x.T, weight_ih.T.contiguous()  # (T, B), (V, 3H)
    else:
        x, table = TiledLinear.apply(x.transpose(0, 1), weight_ih, bf16), None  # (T, B, 3H)
    inputs = (x, table, h0, weight_hh, bias_ih, bias_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        out, h_T = FusedGRULayer.apply(*inputs, reset_after, bf16)
    else:
        out, h_T, _, _ = torch.ops.grulm_cpu.forward(*inputs, reset_after, False, bf16=bf16)
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
