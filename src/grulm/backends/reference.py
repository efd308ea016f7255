"""The reference backend: each cell's layer as a plain Python time loop under autograd.

It is the readable oracle for every fast backend: same parameters (the layout of
:mod:`grulm.cells`), same signatures (see :mod:`grulm.backends`), one line per equation.

- GRU, reset-before (d2l §9.1, Cho et al. v3), gates ordered r, z, n::

      R = σ(x W_ir + b_ir + h W_hr + b_hr)
      Z = σ(x W_iz + b_iz + h W_hz + b_hz)
      H~ = tanh(x W_in + b_in + (R ⊙ h) W_hn + b_hn)
      h' = Z ⊙ h + (1 − Z) ⊙ H~

- GRU, reset-after (cuDNN, ``torch.nn.GRU``)::

      H~ = tanh(x W_in + b_in + R ⊙ (h W_hn + b_hn))

  and its gate ablations: ``update`` (R ≡ 1), ``reset`` (Z ≡ 0), ``none`` (both: a plain RNN).
- RNN (d2l §8.5): ``h' = tanh(x W_ih + b_ih + h W_hh + b_hh)``.
- LSTM (d2l §9.2), gates ordered i, f, g, o (``torch.nn.LSTM``'s)::

      I = σ(x W_ii + b_ii + h W_hi + b_hi)      input gate
      F = σ(x W_if + b_if + h W_hf + b_hf)      forget gate
      C~ = tanh(x W_ig + b_ig + h W_hg + b_hg)  candidate memory
      O = σ(x W_io + b_io + h W_ho + b_ho)      output gate
      c' = F ⊙ c + I ⊙ C~;  h' = O ⊙ tanh(c')

- minGRU: :mod:`grulm.backends.mingru` (its sequential form is the reference).

Every layer takes ``precision``: ``float32`` (the default, plain float32 arithmetic) or
``bf16``, where each matrix product — the input projection of features and each step's
recurrent products, and their gradients — reads bfloat16-rounded operands and accumulates in
float32 (:mod:`grulm.backends.precision`): the oracle for the fast bf16 kernels.

:func:`decode_step` feeds one token per sequence through a whole language model of any cell
(single-step decoding for generation).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from grulm.backends.decode import DecodeParams
from grulm.backends.mingru import mingru_sequential
from grulm.backends.precision import linear, project_inputs
from grulm.backends.stack import run_layers
from grulm.cells import GRU_BLOCKS, layer_options


def gru_gates(
    X: Tensor,
    H: Tensor,
    W_h: tuple[Tensor, ...],
    b_h: tuple[Tensor, ...],
    *,
    reset_after: bool,
    gates: str = "both",
    precision: str = "float32",
) -> tuple[Tensor | int, Tensor | int, Tensor]:
    """The reset gate, update gate and candidate of one GRU step (what :func:`gru_cell` mixes;
    :mod:`grulm.inspect` records them).

    Args:
        X: (B, G·H) the step's input projection ``x W_ih^T + b_ih``, the kept gates' blocks in
            the order r, z, n (G = 3, or fewer with ``gates`` ablated).
        H: (B, H) the state before the step.
        W_h: ``(W_hr, W_hz, W_hn)`` (the kept ones), each (H, H): ``weight_hh`` in G.
        b_h: ``(b_hr, b_hz, b_hn)`` (the kept ones), each (H,): ``bias_hh`` in G.
        reset_after: the cuDNN variant if True, the textbook (reset-before) one if False.
        gates: ``both``; ``update``: no reset gate, R ≡ 1; ``reset``: no update gate, Z ≡ 0;
            ``none``: neither, ``H~ = tanh(X_n + H W_hn + b_hn)``, the plain RNN.
        precision: of the products ``H W_h`` (:func:`grulm.backends.precision.linear`).

    Returns:
        ``(R, Z, H_tilde)``, each (B, H); an ablated gate is the int constant it stands for.
    """
    blocks = GRU_BLOCKS[gates]
    X_g = dict(zip(blocks, X.chunk(len(blocks), dim=-1), strict=True))  # each (B, H)
    W_g = dict(zip(blocks, W_h, strict=True))  # each (H, H)
    b_g = dict(zip(blocks, b_h, strict=True))  # each (H,)
    def HW(H: Tensor, gate: str) -> Tensor:  # H W_h{gate}, (B, H)
        return linear(H, W_g[gate], precision)

    R = torch.sigmoid(X_g["r"] + HW(H, "r") + b_g["r"]) if "r" in blocks else 1  # (B, H)
    Z = torch.sigmoid(X_g["z"] + HW(H, "z") + b_g["z"]) if "z" in blocks else 0  # (B, H)
    if reset_after:
        H_tilde = torch.tanh(X_g["n"] + R * (HW(H, "n") + b_g["n"]))  # (B, H)
    else:
        H_tilde = torch.tanh(X_g["n"] + HW(R * H, "n") + b_g["n"])  # (B, H)
    return R, Z, H_tilde


def gru_cell(
    X: Tensor,
    H: Tensor,
    W_h: tuple[Tensor, ...],
    b_h: tuple[Tensor, ...],
    *,
    reset_after: bool,
    gates: str = "both",
    precision: str = "float32",
) -> Tensor:
    """One step of one GRU layer: ``h' = Z ⊙ h + (1 − Z) ⊙ H~``.

    Args: as :func:`gru_gates`.

    Returns:
        (B, H) the state after the step.
    """
    _, Z, H_tilde = gru_gates(X, H, W_h, b_h, reset_after=reset_after, gates=gates,
                              precision=precision)
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
    gates: str = "both",
    precision: str = "float32",
) -> tuple[Tensor, Tensor]:
    """Run one GRU layer over a whole sequence, one time step per loop iteration.

    Args:
        x: (B, T) int64 token ids (one-hot input) or (B, T, I) features.
        h0: (B, H) initial state.
        weight_ih: (G·H, V) or (G·H, I); weight_hh: (G·H, H); bias_ih, bias_hh: (G·H,);
            G = 3, or the blocks ``gates`` keeps (see :func:`gru_cell`).
        reset_after: the cuDNN variant if True, the textbook (reset-before) one if False.
        precision: ``float32`` or ``bf16``, of every product (see the module docstring).

    Returns:
        outputs (B, T, H), the state after every step; h_T (B, H), the final state.
    """
    rows = len(GRU_BLOCKS[gates])
    inputs = project_inputs(x, weight_ih, bias_ih, precision)  # (B, T, G·H): x W_i + b_i
    W_h = weight_hh.chunk(rows)  # (W_hr, W_hz, W_hn), each (H, H)
    b_h = bias_hh.chunk(rows)  # (b_hr, b_hz, b_hn), each (H,)
    H = h0
    outputs = []
    for X in inputs.unbind(1):
        H = gru_cell(X, H, W_h, b_h, reset_after=reset_after, gates=gates,
                     precision=precision)  # (B, H)
        outputs.append(H)
    return torch.stack(outputs, dim=1), H


def rnn_layer(
    x: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
    bias_hh: Tensor, *, precision: str = "float32",
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One plain tanh RNN layer over a sequence (d2l §8.5).

    Args:
        x: (B, T) int64 token ids or (B, T, I) features; h0: (B, H).
        weight_ih: (H, V) or (H, I); weight_hh: (H, H); bias_ih, bias_hh: (H,).
        precision: ``float32`` or ``bf16``, of every product (see the module docstring).

    Returns:
        outputs (B, T, H) and h_T (B, H).
    """
    inputs = project_inputs(x, weight_ih, bias_ih, precision)  # (B, T, H): x W_xh + b
    H = h0
    outputs = []
    for X in inputs.unbind(1):
        H = torch.tanh(X + linear(H, weight_hh, precision) + bias_hh)  # (B, H)
        outputs.append(H)
    return torch.stack(outputs, dim=1), H


def lstm_gates(
    X: Tensor, H: Tensor, W_h: tuple[Tensor, ...], b_h: tuple[Tensor, ...],
    precision: str = "float32",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """The gates and candidate memory of one LSTM step (what :func:`lstm_cell` combines;
    :mod:`grulm.inspect` records them).

    Args:
        X: (B, 4H) the step's input projection ``x W_ih^T + b_ih``, gates i, f, g, o.
        H: (B, H) the hidden state before the step.
        W_h: ``(W_hi, W_hf, W_hg, W_ho)``, each (H, H); b_h: ``(b_hi, b_hf, b_hg, b_ho)``.
        precision: of the products ``H W_h`` (:func:`grulm.backends.precision.linear`).

    Returns:
        ``(I, F, C_tilde, O)``, each (B, H): input, forget gates, candidate memory, output gate.
    """
    W_hi, W_hf, W_hg, W_ho = W_h
    b_hi, b_hf, b_hg, b_ho = b_h
    X_i, X_f, X_g, X_o = X.chunk(4, dim=-1)  # each (B, H)
    I = torch.sigmoid(X_i + linear(H, W_hi, precision) + b_hi)  # noqa: E741  (B, H) input gate
    F_ = torch.sigmoid(X_f + linear(H, W_hf, precision) + b_hf)  # (B, H) forget gate
    C_tilde = torch.tanh(X_g + linear(H, W_hg, precision) + b_hg)  # (B, H) candidate memory
    O = torch.sigmoid(X_o + linear(H, W_ho, precision) + b_ho)  # noqa: E741  (B, H) output
    return I, F_, C_tilde, O


def lstm_cell(
    X: Tensor, state: tuple[Tensor, Tensor], W_h: tuple[Tensor, ...], b_h: tuple[Tensor, ...],
    precision: str = "float32",
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One step of one LSTM layer: ``c' = F ⊙ c + I ⊙ C~``, ``h' = O ⊙ tanh(c')``.

    Args:
        X: (B, 4H) the step's input projection, as :func:`lstm_gates` takes it.
        state: ``(H, C)``, each (B, H): the hidden state and the memory cell.
        W_h, b_h, precision: as :func:`lstm_gates` takes them.

    Returns:
        ``(H, C)`` after the step, each (B, H).
    """
    H, C = state
    I, F_, C_tilde, O = lstm_gates(X, H, W_h, b_h, precision)  # noqa: E741  each (B, H)
    C = F_ * C + I * C_tilde  # (B, H)
    return O * torch.tanh(C), C  # (B, H), (B, H)


def lstm_layer(
    x: Tensor, state0: tuple[Tensor, Tensor], weight_ih: Tensor, weight_hh: Tensor,
    bias_ih: Tensor, bias_hh: Tensor, *, precision: str = "float32",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # fmt: skip
    """One LSTM layer over a sequence (d2l §9.2).

    Args:
        x: (B, T) int64 token ids or (B, T, I) features.
        state0: ``(h0, c0)``, each (B, H).
        weight_ih: (4H, V) or (4H, I); weight_hh: (4H, H); bias_ih, bias_hh: (4H,).
        precision: ``float32`` or ``bf16``, of every product (see the module docstring).

    Returns:
        outputs (B, T, H) (the hidden states) and ``(h_T, c_T)``, each (B, H).
    """
    inputs = project_inputs(x, weight_ih, bias_ih, precision)  # (B, T, 4H)
    W_h, b_h = weight_hh.chunk(4), bias_hh.chunk(4)
    state = state0
    outputs = []
    for X in inputs.unbind(1):
        state = lstm_cell(X, state, W_h, b_h, precision)  # (H, C), each (B, H)
        outputs.append(state[0])
    return torch.stack(outputs, dim=1), state


LAYERS = {"gru": gru_layer, "rnn": rnn_layer, "lstm": lstm_layer, "mingru": mingru_sequential}


def decode_step(params: DecodeParams, x_ids: Tensor, h):
    """Feed one token per sequence (or a few, in order) through every layer and the head.

    Single-step decoding as the model computes it: the input (a one-hot row of ``W_ih``, or
    an embedding), this module's layer of the model's cell per layer, the linear head.
    Dropout is not applied (generation runs the model as in eval mode).

    Args:
        params: the model's parameters (see :class:`grulm.backends.decode.DecodeParams`).
        x_ids: (N,) int64, one token per sequence; or (N, T), T tokens fed in order (a prefix
            in one call).
        h: (L, N, H) the state before them (an LSTM's: the pair (h, c)).

    Returns:
        logits (N, V) for the token after the last one fed, and the state then.
    """
    x = x_ids if x_ids.dim() == 2 else x_ids[:, None]  # (N, T) ids
    if params.embedding is not None:
        x = F.embedding(x, params.embedding)  # (N, T, E)
    options = layer_options(params.cell, params.gates, params.variant)
    x, state = run_layers(LAYERS[params.cell], x, h, params.layers, options)  # (N, T, H)
    logits = F.linear(x[:, -1], params.head_weight, params.head_bias)  # (N, V)
    return logits, state
