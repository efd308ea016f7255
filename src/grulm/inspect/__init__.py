"""What a trained model does on a text, as numbers: its gates step by step, how often they
saturate, and how far back a prediction reaches.

Pure functions, no printing and no files (a page or a figure is drawn from their results):

- :func:`trace` runs a model over token ids once with the reference equations and returns
  :class:`Traces`: per step, layer and unit every gate and state of its cell (a GRU's Z, R,
  H_tilde, H; an LSTM's I, F, O, C_tilde, C, H; a minGRU's Z, H_tilde, H; an RNN's H), each
  (T, L, H), and the next-token probabilities (T, V); :class:`TraceSpec` says in one line what
  each quantity means.
- :func:`saturation` / :func:`saturation_fractions`: per layer, gate and unit, the fraction
  of steps the gate is below 0.1 and above 0.9 (Karpathy, Johnson & Fei-Fei 2015).
- :func:`connectivity`: for a position t, the gradient norm of log p(x_{t+1}) with respect to
  each earlier input (Madsen, Distill 2019).
- :func:`rank_units`: a layer's units, most varying first.
"""

from grulm.inspect.connectivity import connectivity
from grulm.inspect.ranking import rank_units
from grulm.inspect.saturation import HIGH, LOW, Saturation, saturation, saturation_fractions
from grulm.inspect.traces import Traces, TraceSpec, check_ids, trace, trace_specs

__all__ = [
    "HIGH",
    "LOW",
    "Saturation",
    "TraceSpec",
    "Traces",
    "check_ids",
    "connectivity",
    "rank_units",
    "saturation",
    "saturation_fractions",
    "trace",
    "trace_specs",
]
