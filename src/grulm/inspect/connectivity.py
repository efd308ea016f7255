"""Connectivity: how strongly each earlier input moves one prediction (Madsen, "Visualizing
memorization in RNNs", Distill 2019).

For a position t the model predicts token t+1 from tokens 0..t; the connectivity of step s ≤ t
is ``‖∂ log p(x_{t+1} | x_0..t) / ∂ e_s‖₂``, where e_s is what layer 0 reads at step s: the
one-hot vector of token s, or its embedding row. Gradients flow through the reference backend
(:mod:`grulm.backends.reference`), a plain time loop under autograd, so every cell and gate
ablation is covered, and no fused kernel's backward is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from grulm.backends.reference import LAYERS
from grulm.backends.stack import run_layers
from grulm.cells import layer_options
from grulm.errors import ConfigError
from grulm.inspect.traces import check_ids
from grulm.model import GRULM


def connectivity(model: GRULM, ids: Tensor, t: int) -> Tensor:
    """The gradient norm of the log-probability of token t+1 with respect to each input s ≤ t.

    Args:
        model: any :class:`~grulm.model.GRULM`, run from the zero state without dropout.
        ids: (T,) int64 token ids.
        t: the predicting position, 0 ≤ t ≤ T − 2 (the text must hold the token it predicts).

    Returns:
        (t + 1,) in the model's dtype: entry s is ``‖∂ log p(ids[t+1]) / ∂ e_s‖₂``, e_s the
        one-hot vector (V,) or embedding (E,) layer 0 reads at step s.

    Raises:
        DataError: empty or invalid ``ids``; ConfigError: ``t`` out of range.
    """
    config = model.config
    ids = check_ids(ids, config.vocab_size).to(model.head.weight.device)
    if not isinstance(t, int) or not 0 <= t <= len(ids) - 2:
        raise ConfigError(f"the position must be an integer from 0 to {len(ids) - 2} (the "
                          f"last one that has a next token in a text of {len(ids)}); got {t!r}")
    prefix = ids[: t + 1]  # (t+1,)
    with torch.enable_grad():
        if model.embedding is None:
            e = F.one_hot(prefix, config.vocab_size).to(model.head.weight.dtype)  # (t+1, V)
        else:
            e = model.embedding(prefix).detach()  # (t+1, E)
        e.requires_grad_(True)
        layers = [model.recurrent.layer(k) for k in range(config.num_layers)]
        options = layer_options(config.cell, config.gates, config.variant)
        outputs, _ = run_layers(LAYERS[config.cell], e[None], model.begin_state(1), layers,
                                options)  # (1, t+1, H)
        log_p = F.log_softmax(model.head(outputs[0, -1]), dim=-1)[ids[t + 1]]  # 0-dim
        (grad,) = torch.autograd.grad(log_p, e)  # (t+1, V or E)
    return grad.norm(dim=-1)  # (t+1,)
