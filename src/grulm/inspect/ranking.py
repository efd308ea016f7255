"""Units ranked by how much they vary over a text: the ones worth looking at first.

Most units of a trained char-RNN move little on a given text; the few that swing (Karpathy
et al. 2015 found quote, line-length and bracket detectors among them) are easiest to read
when a page offers them first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grulm.errors import ConfigError
from grulm.inspect.traces import Traces


def rank_units(traces: Traces, layer: int, name: str = "H") -> tuple[Tensor, Tensor]:
    """The units of ``layer`` ordered by the standard deviation of ``name`` over the steps.

    Args:
        traces: from :func:`grulm.inspect.trace`.
        layer: 0 ≤ layer < L.
        name: the quantity to rank by (default the hidden state).

    Returns:
        ``(units, std)``: units (H,) int64 most varying first (ties by unit index), and their
        population standard deviations (H,) over the T steps (0 for a single step).

    Raises:
        ConfigError: a layer out of range or a name the traces do not hold.
    """
    if name not in traces.values:
        raise ConfigError(f"no trace {name!r}; this {traces.cell} has "
                          f"{', '.join(traces.names)}")
    values = traces[name]  # (T, L, H)
    if not isinstance(layer, int) or not 0 <= layer < values.shape[1]:
        raise ConfigError(f"layer must be from 0 to {values.shape[1] - 1}; got {layer!r}")
    std = values[:, layer].std(dim=0, correction=0)  # (H,)
    units = torch.sort(std, descending=True, stable=True).indices  # (H,)
    return units, std[units]
