"""Exact converters between a :class:`~grulm.model.GRULM`'s recurrent layers and PyTorch's
``nn.GRU`` / ``nn.RNN`` / ``nn.LSTM`` modules, and from a gateless GRU to a plain RNN.

The layouts are the same (:mod:`grulm.cells`), so converting copies tensors: to PyTorch, the
zero ``bias_hh`` buffer becomes a zero ``bias_hh`` parameter and the module computes the same
function; from PyTorch, ``bias_hh`` is added into ``bias_ih`` where grulm keeps one trained
bias per gate (everywhere but the reset-after GRU, where ``b_hn`` sits inside the reset gate).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from grulm.errors import ConfigError
from grulm.model import GRULM

MODULES = {"gru": nn.GRU, "rnn": nn.RNN, "lstm": nn.LSTM}


def to_torch_module(model: GRULM) -> nn.RNNBase:
    """The model's recurrent layers as a batch-first ``nn.GRU``, ``nn.RNN`` or ``nn.LSTM``
    (in the model's dtype and device) computing the same outputs and states.

    Raises:
        ConfigError: the cell has no PyTorch module (minGRU; a reset-before or gate-ablated GRU).
    """
    config = model.config
    if config.cell not in MODULES or (config.cell == "gru" and (
            config.variant != "reset_after" or config.gates != "both")):
        raise ConfigError(f"the {config.cell_label} has no torch.nn module: only nn.GRU "
                          "(reset_after, both gates), nn.RNN and nn.LSTM exist")
    weight = model.head.weight
    module = MODULES[config.cell](config.input_size, config.hidden_size, config.num_layers,
                                  batch_first=True).to(dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        for name, tensor in model.recurrent.state_dict().items():
            getattr(module, name).copy_(tensor)
    return module


@torch.no_grad()
def load_torch_module(model: GRULM, module: nn.RNNBase) -> None:
    """Copy a PyTorch module's parameters into ``model`` (same cell and sizes), each
    ``bias_hh`` added into ``bias_ih`` where the model keeps it as a zero buffer.

    Raises:
        ConfigError: the module's kind or sizes do not fit the model.
    """
    config = model.config
    kind = MODULES.get(config.cell)
    if kind is None or type(module) is not kind or module.num_layers != config.num_layers \
            or module.hidden_size != config.hidden_size or not module.bias:
        raise ConfigError(f"a {type(module).__name__} does not fit the model's "
                          f"{config.num_layers}×{config.hidden_size} {config.cell_label}")
    stack = model.recurrent
    trained_bias_hh = {name for name, _ in stack.named_parameters()}
    for k in range(config.num_layers):
        for name in ("weight_ih", "weight_hh", "bias_ih"):
            getattr(stack, f"{name}_l{k}").copy_(getattr(module, f"{name}_l{k}"))
        bias_hh = getattr(module, f"bias_hh_l{k}")
        if f"bias_hh_l{k}" in trained_bias_hh:
            getattr(stack, f"bias_hh_l{k}").copy_(bias_hh)
        else:
            getattr(stack, f"bias_ih_l{k}").add_(bias_hh)


@torch.no_grad()
def ungated_gru_as_rnn(model: GRULM) -> GRULM:
    """A ``gates='none'`` GRU as the ``cell='rnn'`` model it is: ``H = tanh(X W_in + b_in +
    H W_hn + b_hn)`` with R ≡ 1 and Z ≡ 0. Its one block, n, is the RNN's layout; a reset-after
    GRU's ``b_hn`` is added into ``b_in``. The RNN runs on ``backend='auto'`` (the GRU's
    ablations run on the reference backend only).

    Raises:
        ConfigError: the model is not a GRU with ``gates='none'``.
    """
    config = model.config
    if (config.cell, config.gates) != ("gru", "none"):
        raise ConfigError(f"only a GRU with gates 'none' is a plain RNN, not a {config.cell_label}")
    weight = model.head.weight
    rnn = GRULM(replace(config, cell="rnn", gates="both", variant="reset_before", backend="auto"))
    rnn = rnn.to(dtype=weight.dtype, device=weight.device)
    state = {name.replace("gru.", "rnn.", 1): tensor.clone()
             for name, tensor in model.state_dict().items()}
    for k in range(config.num_layers):
        state[f"rnn.bias_ih_l{k}"] += state.pop(f"rnn.bias_hh_l{k}")
        state[f"rnn.bias_hh_l{k}"] = torch.zeros_like(state[f"rnn.bias_ih_l{k}"])
    rnn.load_state_dict(state)
    return rnn
