"""Gate traces: one pass of the readable reference equations over a text, recording every gate.

The model's own backends return only each layer's states; here each layer is run step by step
with the reference backend's gate functions (:func:`grulm.backends.reference.gru_gates`,
:func:`~grulm.backends.reference.lstm_gates`, :func:`grulm.backends.mingru.mingru_gates`) and
every named quantity is kept, per step, per layer, per unit — the raw material of Karpathy,
Johnson & Fei-Fei (2015, "Visualizing and Understanding Recurrent Networks"). The recorded
names follow the textbook: ``Z``, ``R``, ``H_tilde``, ``H`` for a GRU (d2l §9.1);
``I``, ``F``, ``O``, ``C_tilde``, ``C``, ``H`` for an LSTM (d2l §9.2); ``H`` alone for a plain
RNN; ``Z``, ``H_tilde``, ``H`` for a minGRU. The run starts from the zero state, as generation
does, with no dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from grulm.backends.mingru import mingru_gates
from grulm.backends.projection import project_inputs
from grulm.backends.reference import gru_gates, lstm_gates
from grulm.cells import GRU_BLOCKS
from grulm.errors import DataError
from grulm.model import GRULM, GRUConfig


@dataclass(frozen=True)
class TraceSpec:
    """One recorded quantity.

    Attributes:
        name: its textbook name (``Z``, ``H_tilde`` …), the key in :attr:`Traces.values`.
        meaning: one line for a reader: what it is and how to read its values.
        gate: a sigmoid gate in (0, 1), so saturation (:mod:`grulm.inspect.saturation`)
            applies to it.
        constant: the value an ablated gate stands for (a GRU's R ≡ 1 or Z ≡ 0); None when
            the model computes it.
    """

    name: str
    meaning: str
    gate: bool = False
    constant: float | None = None


@dataclass(frozen=True)
class Traces:
    """What one model computed on one text.

    Attributes:
        cell: how messages name the cell (``reset_before GRU``, ``LSTM`` …).
        specs: the quantities recorded, in the order a page lists them.
        values: ``{name: (T, L, H)}`` the value of each quantity after reading token t, in
            layer l, unit h (an ablated gate: its constant everywhere).
        probs: (T, V) the next-token distribution after reading tokens 0..t (the softmax of
            the model's logits).
        ids: (T,) the token ids read.
    """

    cell: str
    specs: tuple[TraceSpec, ...]
    values: dict[str, Tensor]
    probs: Tensor
    ids: Tensor

    @property
    def names(self) -> tuple[str, ...]:
        """The recorded quantities' names, in :attr:`specs` order."""
        return tuple(spec.name for spec in self.specs)

    @property
    def learned_gates(self) -> tuple[str, ...]:
        """The gates the model computes (not an ablated constant): the ones worth plotting."""
        return tuple(spec.name for spec in self.specs if spec.gate and spec.constant is None)

    def __getitem__(self, name: str) -> Tensor:
        return self.values[name]


_H = "hidden state, the layer's output: what the next layer and the head read"
_GRU_R = "reset gate: near 0 the candidate ignores the old state, near 1 it reads all of it"


def trace_specs(config: GRUConfig) -> tuple[TraceSpec, ...]:
    """The quantities :func:`trace` records for a model of ``config``, with their meanings."""
    if config.cell == "rnn":
        return (TraceSpec("H", "hidden state, tanh(x W_xh + h W_hh + b): the RNN has no gates"),)
    if config.cell == "lstm":
        return (
            TraceSpec("I", "input gate: how much of the candidate enters the memory", gate=True),
            TraceSpec("F", "forget gate: near 1 the memory keeps its value, near 0 it is "
                      "wiped", gate=True),
            TraceSpec("O", "output gate: how much of the memory the hidden state shows",
                      gate=True),
            TraceSpec("C_tilde", "candidate memory, in (−1, 1): what the input gate may write"),
            TraceSpec("C", "memory cell: the LSTM's long-term state, unbounded"),
            TraceSpec("H", _H),
        )
    if config.cell == "mingru":
        return (
            TraceSpec("Z", "update gate, from the input alone: near 1 takes the candidate, near "
                      "0 keeps the old state (the minGRU paper's convention)", gate=True),
            TraceSpec("H_tilde", "candidate, g(x W + b) > 0, from the input alone"),
            TraceSpec("H", _H),
        )
    blocks = GRU_BLOCKS[config.gates]
    return (
        TraceSpec("Z", "update gate: near 1 keeps the old state, near 0 takes the candidate",
                  gate=True, constant=None if "z" in blocks else 0.0),
        TraceSpec("R", _GRU_R, gate=True, constant=None if "r" in blocks else 1.0),
        TraceSpec("H_tilde", "candidate state, in (−1, 1): what the unit would become if Z "
                  "let it"),
        TraceSpec("H", _H),
    )


def check_ids(ids: Tensor, vocab_size: int) -> Tensor:
    """``ids`` as a 1-D int64 tensor of at least one token, each in [0, vocab_size).

    Raises:
        DataError: an empty text, a tensor that is not 1-D integer ids, or an id out of range.
    """
    if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.is_floating_point():
        raise DataError("the text must be a 1-D tensor of token ids")
    if ids.numel() == 0:
        raise DataError("the text is empty: inspect needs at least one token")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise DataError(f"token ids must lie in [0, {vocab_size}) (the model's vocabulary); "
                        f"got ids from {int(ids.min())} to {int(ids.max())}")
    return ids.long()


@torch.no_grad()
def trace(model: GRULM, ids: Tensor) -> Traces:
    """Run ``model`` over ``ids`` once with the reference equations, recording every quantity.

    Args:
        model: any :class:`~grulm.model.GRULM` (every cell, variant and gate ablation).
        ids: (T,) int64 token ids, T ≥ 1.

    Returns:
        The :class:`Traces`; ``values["H"][-1]`` is the model's own final state (and an LSTM's
        ``values["C"][-1]`` its memory), ``probs`` the softmax of its logits.

    Raises:
        DataError: empty or invalid ``ids`` (:func:`check_ids`).
    """
    config = model.config
    ids = check_ids(ids, config.vocab_size).to(model.head.weight.device)
    specs = trace_specs(config)
    x = ids if model.embedding is None else model.embedding(ids)  # (T,) ids or (T, E)
    layers = []
    for k in range(config.num_layers):
        weights = model.recurrent.layer(k)
        stack = model.recurrent
        inputs = project_inputs(x, getattr(stack, f"weight_ih_l{k}"),
                                getattr(stack, f"bias_ih_l{k}"))  # (T, G·H)
        recorded = _RECORDERS[config.cell](inputs, weights, config)  # {name: (T, H)}
        layers.append(recorded)
        x = recorded["H"]  # (T, H): the next layer's input
    values = {spec.name: torch.stack([layer[spec.name] for layer in layers], dim=1)
              for spec in specs}  # each (T, L, H)
    probs = F.softmax(model.head(values["H"][:, -1]), dim=-1)  # (T, V)
    return Traces(config.cell_label, specs, values, probs, ids)


def _stacked(steps: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per-step records ``[{name: (H,)}]`` as ``{name: (T, H)}``."""
    return {name: torch.stack([step[name] for step in steps]) for name in steps[0]}


def _gru_record(inputs: Tensor, weights: tuple[Tensor, ...], config: GRUConfig):
    """A GRU layer's Z, R, H_tilde, H, each (T, H), from its input projection (T, G·H)."""
    _, weight_hh, _, bias_hh = weights
    rows = len(GRU_BLOCKS[config.gates])
    W_h, b_h = weight_hh.chunk(rows), bias_hh.chunk(rows)  # each (H, H), (H,)
    H = torch.zeros(weight_hh.shape[1], dtype=inputs.dtype, device=inputs.device)  # (H,)
    steps = []
    for X in inputs:
        R, Z, H_tilde = gru_gates(X, H, W_h, b_h, reset_after=config.variant == "reset_after",
                                  gates=config.gates)  # each (H,) or an ablated constant
        H = Z * H + (1 - Z) * H_tilde  # (H,)
        steps.append({"Z": torch.full_like(H, Z) if isinstance(Z, int) else Z,
                      "R": torch.full_like(H, R) if isinstance(R, int) else R,
                      "H_tilde": H_tilde, "H": H})
    return _stacked(steps)


def _lstm_record(inputs: Tensor, weights: tuple[Tensor, ...], config: GRUConfig):
    """An LSTM layer's I, F, O, C_tilde, C, H, each (T, H), from its projection (T, 4H)."""
    _, weight_hh, _, bias_hh = weights
    W_h, b_h = weight_hh.chunk(4), bias_hh.chunk(4)
    H = torch.zeros(weight_hh.shape[1], dtype=inputs.dtype, device=inputs.device)  # (H,)
    C = torch.zeros_like(H)  # (H,)
    steps = []
    for X in inputs:
        I, F_, C_tilde, O = lstm_gates(X, H, W_h, b_h)  # noqa: E741  each (H,)
        C = F_ * C + I * C_tilde  # (H,)
        H = O * torch.tanh(C)  # (H,)
        steps.append({"I": I, "F": F_, "O": O, "C_tilde": C_tilde, "C": C, "H": H})
    return _stacked(steps)


def _rnn_record(inputs: Tensor, weights: tuple[Tensor, ...], config: GRUConfig):
    """A plain RNN layer's H (T, H) from its input projection (T, H)."""
    _, weight_hh, _, bias_hh = weights
    H = torch.zeros(weight_hh.shape[1], dtype=inputs.dtype, device=inputs.device)  # (H,)
    steps = []
    for X in inputs:
        H = torch.tanh(X + H @ weight_hh.T + bias_hh)  # (H,)
        steps.append({"H": H})
    return _stacked(steps)


def _mingru_record(inputs: Tensor, weights: tuple[Tensor, ...], config: GRUConfig):
    """A minGRU layer's Z, H_tilde, H, each (T, H), from its input projection (T, 2H)."""
    Z, H_tilde = mingru_gates(inputs)  # each (T, H): neither reads the state
    H = torch.zeros_like(Z[0])  # (H,)
    states = []
    for Z_t, H_tilde_t in zip(Z, H_tilde, strict=True):
        H = (1 - Z_t) * H + Z_t * H_tilde_t  # (H,)
        states.append(H)
    return {"Z": Z, "H_tilde": H_tilde, "H": torch.stack(states)}


_RECORDERS = {"gru": _gru_record, "lstm": _lstm_record, "rnn": _rnn_record,
              "mingru": _mingru_record}
