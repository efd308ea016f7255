"""The recurrent cells a language model can stack: their names, parameter layouts and state.

Every cell keeps ``torch.nn.GRU``'s naming and layout of one layer's parameters —
``weight_ih`` (G·H × I), ``weight_hh`` (G·H × H), ``bias_ih`` (G·H,), ``bias_hh`` (G·H,) —
with G blocks of H rows, one per gate or candidate, in the order PyTorch uses:

========  ======  ===========================================================================
cell      blocks  what they are
========  ======  ===========================================================================
gru       r z n   reset gate, update gate, candidate (d2l §9.1; nn.GRU's order)
rnn       h       the new state itself, ``H = tanh(X W_xh + H W_hh + b_h)`` (d2l §8.5; nn.RNN)
lstm      i f g o input, forget gates, candidate memory C~, output gate (d2l §9.2; nn.LSTM)
mingru    z h     update gate and candidate, both from the input alone (no ``weight_hh``)
========  ======  ===========================================================================

The GRU's gate ablations drop the blocks of the gate they switch off: ``--gates update`` keeps
z, n (R ≡ 1), ``reset`` keeps r, n (Z ≡ 0), ``none`` keeps n alone — the plain RNN's layout,
so a ``none`` GRU converts to an ``rnn`` exactly.

As in the textbook, each block has one trained bias: ``bias_hh`` is a zero buffer (kept so
the layout is PyTorch's) except in the reset-after GRU, where ``b_hn`` sits inside the reset
gate and cannot be folded into ``b_in``.

State: one tensor (L, B, H) for every cell but the LSTM, whose state is the pair (h, c), each
(L, B, H). :func:`map_state` applies a tensor function to either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from grulm.errors import ConfigError

CELLS = ("gru", "rnn", "lstm", "mingru")
GATES = ("both", "update", "reset", "none")
GRU_BLOCKS = {"both": "rzn", "update": "zn", "reset": "rn", "none": "n"}
BLOCKS = {"rnn": "h", "lstm": "ifgo", "mingru": "zh"}
NAMES = {"gru": "GRU", "rnn": "RNN", "lstm": "LSTM", "mingru": "minGRU"}
ABLATIONS = {"update": "update gate only", "reset": "reset gate only", "none": "no gates"}

State = Tensor | tuple[Tensor, ...]
"""A model's recurrent state: (L, B, H), or the LSTM's (h, c), each (L, B, H)."""


@dataclass(frozen=True)
class CellLayout:
    """What one layer of a cell holds.

    Attributes:
        blocks: the H-row blocks of ``weight_ih`` (and ``weight_hh``), one letter each.
        recurrent: the layer has ``weight_hh`` and ``bias_hh`` (minGRU's gates read only x).
        hidden_bias: ``bias_hh`` is trained (the reset-after GRU); else a zero buffer.
        paired_state: the state is (h, c) (the LSTM).
    """

    blocks: str
    recurrent: bool = True
    hidden_bias: bool = False
    paired_state: bool = False

    @property
    def rows(self) -> int:
        """G, the number of H-row blocks."""
        return len(self.blocks)


def check_cell(cell: str, gates: str) -> None:
    """Raise ``ConfigError`` (one line) for an unknown cell or gate set, or gates on a cell that
    has none to switch off."""
    if cell not in CELLS:
        raise ConfigError(f"unknown cell {cell!r}; choose one of: {', '.join(CELLS)}")
    if gates not in GATES:
        raise ConfigError(f"unknown gates {gates!r}; choose one of: {', '.join(GATES)}")
    if gates != "both" and cell != "gru":
        raise ConfigError(f"gates {gates!r} applies only to --cell gru (it ablates the GRU's "
                          f"gates); the {NAMES[cell]} cell has none to switch off: drop --gates "
                          "or use --cell gru")


def cell_layout(cell: str, gates: str = "both", variant: str = "reset_before") -> CellLayout:
    """The layout of one layer of ``cell`` (with ``gates`` and ``variant`` for a GRU)."""
    check_cell(cell, gates)
    if cell == "gru":
        return CellLayout(GRU_BLOCKS[gates], hidden_bias=variant == "reset_after")
    return CellLayout(BLOCKS[cell], recurrent=cell != "mingru", paired_state=cell == "lstm")


def cell_label(cell: str, gates: str = "both", variant: str = "reset_before") -> str:
    """How messages name the cell: ``reset_before GRU``, ``reset_after GRU (update gate
    only)``, ``LSTM``, ``minGRU``."""
    if cell != "gru":
        return NAMES[cell]
    ablation = f" ({ABLATIONS[gates]})" if gates in ABLATIONS else ""
    return f"{variant} GRU{ablation}"


def layer_options(cell: str, gates: str, variant: str,
                  precision: str = "float32") -> dict[str, object]:  # fmt: skip
    """The keyword arguments a backend's layer function of ``cell`` takes: a GRU's variant,
    its gates only when ablated (only the backends that implement ablations take it), and
    the precision only when it is not float32 (only the backends that implement bf16 take
    it: :attr:`grulm.backends.Backend.precisions`)."""
    options: dict[str, object] = {}
    if cell == "gru":
        options["reset_after"] = variant == "reset_after"
        if gates != "both":
            options["gates"] = gates
    if precision != "float32":
        options["precision"] = precision
    return options


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """``fn`` applied to the state's tensor, or to each of the LSTM's (h, c)."""
    if isinstance(state, tuple):
        return tuple(fn(part) for part in state)
    return fn(state)


def layer_state(state: State, k: int) -> State:
    """Layer k's state, (B, H) or the pair (h, c) of (B, H), out of (L, B, H) tensors."""
    return map_state(lambda tensor: tensor[k], state)


def state_tensors(state: State) -> tuple[Tensor, ...]:
    """The state's tensors in order: ``(state,)``, or the LSTM's ``(h, c)``."""
    return state if isinstance(state, tuple) else (state,)
