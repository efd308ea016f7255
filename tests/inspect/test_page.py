"""The inspect page: self-contained, and every number in it is the library's."""

import json
import math
import re

import pytest
import torch

from grulm.errors import ConfigError
from grulm.inspect import connectivity, saturation, trace
from grulm.inspect.page import CONNECTIVITY_DIGITS, TRACE_DIGITS, page_data, render_page, rounded

NAMES = ["<unk>", " ", "a", "b", "c", "d", "e", "f", "g"]
DESCRIPTION = {"model": "2×6 GRU", "validation perplexity": "3.142"}


def _page(model, ids, tokens=None, **options):
    tokens = [NAMES[i] for i in ids.tolist()] if tokens is None else tokens
    return render_page(page_data(model, ids, tokens, NAMES, DESCRIPTION, **options))


def _embedded(page):
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn", "mingru"])
def test_the_page_references_nothing_on_the_network(make_model, ids, cell):
    tokens = ["http://example.com/x.js", "</script>", *([" "] * (len(ids) - 2))]
    page = _page(make_model(cell=cell), ids, tokens)
    for reference in ("://", "<link", " src=", " href=", "url(", "@import", "fetch(",
                      "xmlhttprequest", "import(", "websocket"):
        assert reference not in page.lower(), reference
    assert page.count("</script>") == 2
    assert _embedded(page)["tokens"] == tokens  # the text survives the escaping


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("variant, gates", [("reset_before", "both"), ("reset_after", "update")])
def test_the_gate_values_in_the_page_are_the_traces(make_model, ids, layer, variant, gates):
    model = make_model(variant=variant, gates=gates)
    data = _embedded(_page(model, ids, layer=layer))
    traces = trace(model, ids)
    assert data["layer"] == layer and set(data["means"]) == {"Z", "R", "H_tilde", "H"}
    for name in ("Z", "R", "H_tilde", "H"):
        assert data["means"][name] == rounded(traces[name][:, layer].mean(-1), TRACE_DIGITS)
    assert data["units"]["values"] == [rounded(traces["H"][:, layer, h], TRACE_DIGITS)
                                       for h in range(6)]
    expected = saturation(traces)
    assert list(data["saturation"]["gates"]) == (["Z", "R"] if gates == "both" else ["Z"])
    assert data["saturation"]["gates"]["Z"]["high"] == [rounded(row, 3)
                                                        for row in expected["Z"].high]


def test_predictions_and_losses_are_the_models(make_model, ids):
    model = make_model()
    data = _embedded(_page(model, ids))
    probs = trace(model, ids).probs
    for t, top in enumerate(data["top"]):
        order = torch.argsort(probs[t], descending=True)[:5].tolist()
        assert [name for name, _ in top] == [NAMES[i] for i in order]
        assert [p for _, p in top] == rounded(probs[t, order], TRACE_DIGITS)
    losses = [-math.log(probs[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    assert data["loss"] == pytest.approx(losses, rel=1e-3)


@pytest.mark.parametrize("cell, input_kind", [("gru", "onehot"), ("lstm", "embedding")])
def test_connectivity_in_the_page_is_the_librarys(make_model, ids, cell, input_kind):
    model = make_model(cell=cell, input_kind=input_kind)
    rows = _embedded(_page(model, ids))["connectivity"]
    assert len(rows) == len(ids) - 1
    for t, row in enumerate(rows):
        assert row == rounded(connectivity(model, ids, t), CONNECTIVITY_DIGITS)


def test_each_cell_says_what_it_shows(make_model, ids):
    rnn = _embedded(_page(make_model(cell="rnn"), ids))
    assert [s["name"] for s in rnn["specs"]] == ["H"] and rnn["saturation"]["gates"] == {}
    assert "no gates" in rnn["specs"][0]["meaning"]
    lstm = _embedded(_page(make_model(cell="lstm"), ids))
    assert list(lstm["saturation"]["gates"]) == ["I", "F", "O"]
    ablated = _embedded(_page(make_model(gates="none"), ids))
    assert ablated["saturation"]["gates"] == {}
    assert [s["constant"] for s in ablated["specs"][:2]] == [0.0, 1.0]


def test_a_single_token_has_no_connectivity_or_loss(make_model):
    data = _embedded(_page(make_model(), torch.tensor([3])))
    assert data["connectivity"] == [] and data["loss"] == [] and len(data["top"]) == 1


def test_bad_layers_and_tokens_are_refused(make_model, ids):
    with pytest.raises(ConfigError, match="layer must be from 0 to 1"):
        _page(make_model(), ids, layer=2)
    with pytest.raises(ConfigError, match="tokens shown"):
        _page(make_model(), ids, tokens=["a"])
