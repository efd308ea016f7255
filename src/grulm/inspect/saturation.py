"""Gate saturation: how often each unit's gate is nearly shut or nearly open.

Karpathy, Johnson & Fei-Fei (2015, "Visualizing and Understanding Recurrent Networks", §4.2)
call a gate left-saturated when its activation is below 0.1 and right-saturated above 0.9,
and plot, per unit, the fraction of steps spent in each: a unit right-saturated on its GRU
update gate most of the time is an integrator that keeps its state for long spans; one never
saturated behaves as a fine-grained, input-driven mixer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from grulm.errors import ConfigError
from grulm.inspect.traces import Traces

LOW = 0.1
HIGH = 0.9


@dataclass(frozen=True)
class Saturation:
    """The saturation of one gate.

    Attributes:
        low: (L, H) fraction of steps at which the gate of layer l, unit h is < ``LOW``.
        high: (L, H) fraction of steps at which it is > ``HIGH``.
    """

    low: Tensor
    high: Tensor


def saturation_fractions(gate: Tensor, low: float = LOW, high: float = HIGH) -> Saturation:
    """The fractions of steps each unit's gate spends below ``low`` and above ``high``.

    Args:
        gate: (T, L, H) a gate's values over T ≥ 1 steps.
        low, high: the thresholds, 0 ≤ low ≤ high ≤ 1 (Karpathy et al.'s 0.1 and 0.9).

    Returns:
        A :class:`Saturation` of (L, H) fractions in [0, 1].
    """
    if gate.dim() != 3 or gate.shape[0] == 0:
        raise ConfigError(f"a gate trace must be (T, L, H) with T ≥ 1; got {tuple(gate.shape)}")
    if not 0.0 <= low <= high <= 1.0:
        raise ConfigError(f"need 0 ≤ low ≤ high ≤ 1; got low {low}, high {high}")
    return Saturation(low=(gate < low).double().mean(dim=0),
                      high=(gate > high).double().mean(dim=0))


def saturation(traces: Traces, low: float = LOW, high: float = HIGH) -> dict[str, Saturation]:
    """:func:`saturation_fractions` of every gate the model computes.

    An ablated GRU gate (a constant R ≡ 1 or Z ≡ 0) is left out: it is saturated by
    construction and says nothing about the model. A plain RNN has no gates: ``{}``.

    Returns:
        ``{gate name: Saturation}`` in :attr:`Traces.specs` order.
    """
    return {name: saturation_fractions(traces[name], low, high) for name in traces.learned_gates}
