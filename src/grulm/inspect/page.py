"""One self-contained HTML page of what a model does on a text.

:func:`page_data` gathers the numbers (gate traces, top predictions, saturation, connectivity)
from :mod:`grulm.inspect` into plain JSON-ready lists; :func:`render_page` inlines them with the
page's script and style (``page.js``, ``page.css`` beside this module) into one HTML string
that loads nothing from the network, so it opens from disk in any browser.

Numbers are rounded to keep the page small: traces to 4 significant digits, connectivity to 3
(a float16's precision), probabilities to 4.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources

import torch
from torch import Tensor

from grulm.errors import ConfigError
from grulm.inspect.connectivity import connectivity
from grulm.inspect.ranking import rank_units
from grulm.inspect.saturation import HIGH, LOW, saturation
from grulm.inspect.traces import trace
from grulm.model import GRULM

TOP_K = 5
TRACE_DIGITS = 4
CONNECTIVITY_DIGITS = 3


def rounded(values: Tensor | Sequence[float], digits: int) -> list[float]:
    """``values`` as a flat list of floats to ``digits`` significant digits (what the page
    holds; tests compare the library's numbers through this)."""
    if isinstance(values, Tensor):
        values = values.detach().double().cpu().reshape(-1).tolist()
    return [float(f"{v:.{digits}g}") for v in values]


def page_data(
    model: GRULM,
    ids: Tensor,
    tokens: Sequence[str],
    token_names: Sequence[str],
    description: Mapping[str, str],
    *,
    layer: int | None = None,
    joiner: str = "",
    notes: Sequence[str] = (),
) -> dict:
    """Everything the page shows, as JSON-ready values.

    Args:
        model: any :class:`~grulm.model.GRULM`.
        ids: (T,) the token ids of the text, T ≥ 1.
        tokens: the T tokens as the page shows them (an unknown character as typed).
        token_names: the vocabulary, id → token (for the top predictions).
        description: the checkpoint's description, label → value, shown in the header.
        layer: the layer whose units are shown (default the last); saturation covers all.
        joiner: what separates tokens when shown (``" "`` for d2l words).
        notes: lines for the reader (a truncated text, unknown characters).

    Returns:
        ``{"tokens", "means": {name: (T,)}, "units": {"order", "std", "values": (H, T)},
        "top": (T, 5, 2), "loss": (T-1,), "connectivity": [(t+1,) for t < T-1],
        "saturation": {gate: {"low": (L, H), "high": (L, H)}}, …}`` as nested lists.

    Raises:
        DataError: empty or invalid ``ids``; ConfigError: a layer out of range or tokens that
        do not match the ids.
    """
    traces = trace(model, ids)
    num_layers, hidden_size = traces["H"].shape[1:]
    layer = num_layers - 1 if layer is None else layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
        raise ConfigError(f"the layer must be from 0 to {num_layers - 1}; got {layer!r}")
    if len(tokens) != len(traces.ids):
        raise ConfigError(f"{len(tokens)} tokens shown for {len(traces.ids)} ids")
    ids = traces.ids.cpu()
    probs = traces.probs.double().cpu()  # (T, V)
    top = torch.topk(probs, min(TOP_K, probs.shape[1]), dim=-1)
    order, std = rank_units(traces, layer)
    next_probs = probs[:-1].gather(1, ids[1:, None])[:, 0]  # (T-1,)
    return {
        "description": [[str(k), str(v)] for k, v in description.items()],
        "notes": list(notes),
        "cell": traces.cell,
        "layer": layer,
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "tokens": list(tokens),
        "joiner": joiner,
        "ids": ids.tolist(),
        "specs": [{"name": s.name, "meaning": s.meaning, "gate": s.gate,
                   "constant": s.constant} for s in traces.specs],
        "means": {name: rounded(traces[name][:, layer].mean(dim=-1), TRACE_DIGITS)
                  for name in traces.names},
        "units": {
            "order": order.tolist(),
            "std": rounded(std, TRACE_DIGITS),
            "values": [rounded(traces["H"][:, layer, h], TRACE_DIGITS)
                       for h in range(hidden_size)],
        },
        "top": [[[token_names[i], p] for i, p in zip(row_ids, rounded(row_p, TRACE_DIGITS),
                                                      strict=True)]
                for row_ids, row_p in zip(top.indices.tolist(), top.values, strict=True)],
        "loss": [rounded([-math.log(p)], TRACE_DIGITS)[0] if p > 0 else None  # None: ∞
                 for p in next_probs.tolist()],
        "connectivity": [rounded(connectivity(model, traces.ids, t), CONNECTIVITY_DIGITS)
                         for t in range(len(ids) - 1)],
        "saturation": {
            "thresholds": [LOW, HIGH],
            "gates": {name: {"low": [rounded(row, 3) for row in s.low],
                             "high": [rounded(row, 3) for row in s.high]}
                      for name, s in saturation(traces).items()},
        },
    }


def render_page(data: Mapping, title: str = "grulm inspect") -> str:
    """The page: ``data`` (from :func:`page_data`) as inline JSON, with the script and style.

    Every ``/`` in the JSON is written ``\\/`` (the same string to a JSON reader), so no text of
    the model or the user can close the script element or read as a URL.
    """
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False)
    payload = payload.replace("/", "\\/").replace("<", "\\u003c")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{_asset('page.css')}</style>\n"
        "</head>\n<body>\n<header id=\"header\"></header>\n<main>\n"
        "<section id=\"controls\"></section>\n<section id=\"text\" tabindex=\"0\"></section>\n"
        "<aside id=\"info\">Hover over a character for the model's predictions; click one to "
        "see how far back its prediction reaches.</aside>\n"
        "<section id=\"meanings\"></section>\n<section id=\"saturation\"></section>\n</main>\n"
        f"<script type=\"application/json\" id=\"data\">{payload}</script>\n"
        f"<script>\n{_asset('page.js')}</script>\n</body>\n</html>\n"
    )


def _asset(name: str) -> str:
    return resources.files("grulm.inspect").joinpath(name).read_text(encoding="utf-8")
