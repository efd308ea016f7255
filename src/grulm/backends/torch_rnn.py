"""PyTorch's plain RNN and LSTM kernels (``torch.nn.RNN`` / ``torch.nn.LSTM``; cuDNN on a
GPU) as grulm layers.

Same contracts as :func:`grulm.backends.reference.rnn_layer` and
:func:`~grulm.backends.reference.lstm_layer`, over the same parameters: the layout of
:mod:`grulm.cells` is PyTorch's, so the tensors are handed over as they are (the zero
``bias_hh`` buffer included). One-hot input becomes float one-hot vectors
(:func:`~grulm.backends.projection.as_features`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from grulm.backends.projection import as_features

# torch.rnn_tanh / torch.lstm after the weights: has_biases, num_layers, dropout, train
# (dropout only), bidirectional, batch_first.
ONE_LAYER = (True, 1, 0.0, False, False, True)


def rnn_layer(
    x: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
    bias_hh: Tensor,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``nn.RNN``'s tanh kernel: outputs (B, T, H) and h_T (B, H)."""
    weights = [weight_ih, weight_hh, bias_ih, bias_hh]
    outputs, h_n = torch.rnn_tanh(as_features(x, weight_ih), h0[None].contiguous(), weights,
                                  *ONE_LAYER)
    return outputs, h_n[0]


def lstm_layer(
    x: Tensor, state0: tuple[Tensor, Tensor], weight_ih: Tensor, weight_hh: Tensor,
    bias_ih: Tensor, bias_hh: Tensor,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # fmt: skip
    """``nn.LSTM``'s kernel: outputs (B, T, H) and ``(h_T, c_T)``, each (B, H)."""
    h0, c0 = (s[None].contiguous() for s in state0)  # (1, B, H)
    weights = [weight_ih, weight_hh, bias_ih, bias_hh]
    outputs, h_n, c_n = torch.lstm(as_features(x, weight_ih), (h0, c0), weights, *ONE_LAYER)
    return outputs, (h_n[0], c_n[0])
