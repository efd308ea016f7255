"""The ``torch`` backend: the kernel behind ``torch.nn.GRU`` (cuDNN on a GPU).

PyTorch implements the reset-after variant only, so this backend supports nothing else.
One-hot input is handed to the kernel as float one-hot vectors, as the seed's concise model
does; for a large vocabulary prefer ``input_kind='embedding'``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grulm.backends.projection import as_features
from grulm.errors import ConfigError


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
    """Same contract as :func:`grulm.backends.reference.gru_layer`, reset-after only."""
    if not reset_after:
        raise ConfigError(
            "the 'torch' backend (torch.nn.GRU / cuDNN) implements only variant='reset_after'; "
            "use backend='reference' (or 'auto') for the textbook's reset_before GRU"
        )
    outputs, h_n = torch.gru(
        as_features(x, weight_ih),  # (B, T, V) float one-hot, or (B, T, I)
        h0.unsqueeze(0).contiguous(),
        [weight_ih, weight_hh, bias_ih, bias_hh],
        True,  # has_biases
        1,  # num_layers
        0.0,  # dropout
        False,  # train (dropout only)
        False,  # bidirectional
        True,  # batch_first
    )
    return outputs, h_n.squeeze(0)

