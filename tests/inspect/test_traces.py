"""Traces equal the textbook's gates computed from the weights, the model's own final state and
the softmax of its logits, for every cell, variant and gate ablation."""

import pytest
import torch
from torch.nn import functional as F

from grulm.errors import DataError
from grulm.inspect import saturation, trace

GRU_CASES = [(variant, gates) for variant in ("reset_before", "reset_after")
             for gates in ("both", "update", "reset", "none")]


@pytest.mark.parametrize("variant, gates", GRU_CASES)
def test_gru_traces_equal_the_textbook_gates(make_model, ids, oracle, variant, gates):
    model = make_model(variant=variant, gates=gates)
    traces = trace(model, ids)
    expected, logits = oracle(model, F.one_hot(ids, model.config.vocab_size).double())
    assert traces.names == ("Z", "R", "H_tilde", "H")
    for name in traces.names:
        assert traces[name].shape == (len(ids), 2, 6)
        torch.testing.assert_close(traces[name], expected[name], rtol=0, atol=1e-12)
    torch.testing.assert_close(traces.probs, F.softmax(logits, dim=-1), rtol=0, atol=1e-12)


def test_ablated_gates_are_their_constants(make_model, ids):
    update_only = trace(make_model(gates="update"), ids)
    assert torch.equal(update_only["R"], torch.ones_like(update_only["R"]))
    assert update_only.learned_gates == ("Z",) and list(saturation(update_only)) == ["Z"]
    reset_only = trace(make_model(gates="reset"), ids)
    assert torch.equal(reset_only["Z"], torch.zeros_like(reset_only["Z"]))
    assert reset_only.learned_gates == ("R",)


def test_embedding_input_traces_equal_the_textbook(make_model, ids, oracle):
    model = make_model(input_kind="embedding", variant="reset_after")
    expected, _ = oracle(model, model.embedding(ids))
    traces = trace(model, ids)
    for name in traces.names:
        torch.testing.assert_close(traces[name], expected[name], rtol=0, atol=1e-12)


CELLS = [("gru", ("Z", "R", "H_tilde", "H")), ("lstm", ("I", "F", "O", "C_tilde", "C", "H")),
         ("rnn", ("H",)), ("mingru", ("Z", "H_tilde", "H"))]


@pytest.mark.parametrize("cell, names", CELLS)
def test_each_cell_has_its_own_traces_and_the_models_final_state(make_model, ids, cell, names):
    model = make_model(cell=cell)
    traces = trace(model, ids)
    assert traces.names == names
    assert all(spec.meaning and "\n" not in spec.meaning for spec in traces.specs)
    logits, state = model(ids[None])
    h, c = state if cell == "lstm" else (state, None)
    torch.testing.assert_close(traces["H"][-1], h[:, 0], rtol=0, atol=1e-12)
    if c is not None:
        torch.testing.assert_close(traces["C"][-1], c[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(traces.probs, F.softmax(logits[0], dim=-1), rtol=0, atol=1e-12)
    for name in traces.learned_gates:
        assert ((traces[name] > 0) & (traces[name] < 1)).all()


def test_rnn_has_no_gates(make_model, ids):
    traces = trace(make_model(cell="rnn"), ids)
    assert traces.learned_gates == () and saturation(traces) == {}


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([], dtype=torch.int64), "empty"),
    (torch.tensor([0, 9]), r"\[0, 9\)"),
    (torch.tensor([[1, 2]]), "1-D"),
    (torch.tensor([0.5]), "1-D"),
])
def test_bad_text_is_one_clear_data_error(make_model, bad, message):
    with pytest.raises(DataError, match=message):
        trace(make_model(), bad)
