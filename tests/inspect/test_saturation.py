"""Saturation fractions and unit ranking on hand-built traces, thresholds exclusive."""

import pytest
import torch

from grulm.errors import ConfigError
from grulm.inspect import Traces, TraceSpec, rank_units, saturation, saturation_fractions


def _gate():
    return torch.tensor([[0.05, 0.5, 0.95],
                         [0.05, 0.95, 0.95],
                         [0.5, 0.95, 0.99],
                         [0.09, 0.1, 0.9]]).unsqueeze(1)  # (T=4, L=1, H=3)


def test_saturation_fractions_of_a_hand_built_gate():
    result = saturation_fractions(_gate())
    assert result.low.tolist() == [[0.75, 0.0, 0.0]]
    assert result.high.tolist() == [[0.0, 0.5, 0.75]]


def test_saturation_covers_the_learned_gates_per_layer():
    gate = torch.cat([_gate(), 1 - _gate()], dim=1)  # (4, 2, 3)
    traces = Traces("test", (TraceSpec("Z", "z", gate=True), TraceSpec("R", "r", gate=True,
                                                                       constant=1.0),
                             TraceSpec("H", "h")),
                    {"Z": gate, "R": torch.ones_like(gate), "H": gate}, torch.ones(4, 1),
                    torch.zeros(4, dtype=torch.int64))
    result = saturation(traces)
    assert list(result) == ["Z"]
    assert result["Z"].low.tolist() == [[0.75, 0.0, 0.0], [0.0, 0.5, 0.75]]


@pytest.mark.parametrize("gate, low, high", [(torch.zeros(0, 1, 2), 0.1, 0.9),
                                             (torch.zeros(3, 2), 0.1, 0.9),
                                             (torch.zeros(3, 1, 2), 0.9, 0.1)])
def test_bad_saturation_input_is_a_config_error(gate, low, high):
    with pytest.raises(ConfigError):
        saturation_fractions(gate, low, high)


def test_units_ranked_by_their_spread_over_the_steps():
    H = torch.tensor([[0.0, 1.0, 0.5, 0.0], [0.0, -1.0, 0.5, 0.2]]).unsqueeze(1)  # (2, 1, 4)
    traces = Traces("test", (TraceSpec("H", "h"),), {"H": H}, torch.ones(2, 1),
                    torch.zeros(2, dtype=torch.int64))
    units, std = rank_units(traces, 0)
    assert units.tolist() == [1, 3, 0, 2]
    torch.testing.assert_close(std, torch.tensor([1.0, 0.1, 0.0, 0.0]))
    with pytest.raises(ConfigError, match="layer must be from 0 to 0"):
        rank_units(traces, 1)
    with pytest.raises(ConfigError, match="no trace 'Z'"):
        rank_units(traces, 0, "Z")
