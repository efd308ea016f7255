"""The cells beside the GRU: gate ablations that really switch a gate off, the gateless GRU
that is the plain RNN, exact converters to PyTorch's modules, minGRU's scan over long
sequences, the LSTM's paired state, and the configurations refused in one line."""

import pytest
import torch

from grulm import backends
from grulm.backends import mingru
from grulm.convert import load_torch_module, to_torch_module, ungated_gru_as_rnn
from grulm.errors import ConfigError
from grulm.model import GRULM, GRUConfig, parameter_shapes

V, H, B, T = 11, 6, 3, 7
F64 = torch.float64


def _model(**config) -> GRULM:
    torch.manual_seed(0)
    model = GRULM(GRUConfig(V, H, init="torch", **config)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _ids(seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
def test_a_gateless_gru_is_the_plain_rnn(variant, input_kind):
    """``--gates none`` runs the GRU's code with R ≡ 1 and Z ≡ 0; with its weights converted,
    ``--cell rnn`` gives the same logits, state and gradients (float64, 1e-12)."""
    gru = _model(variant=variant, gates="none", input_kind=input_kind, num_layers=2,
                 backend="reference")
    rnn = ungated_gru_as_rnn(gru)
    assert rnn.config.cell == "rnn" and rnn.backend().name != "reference"  # nn.RNN's kernel
    h0 = torch.randn(2, B, H, dtype=F64)
    results = []
    for model in (gru, rnn):
        logits, state = model(_ids(), h0)
        (logits.sum() + state.square().sum()).backward()
        grads = {name.removeprefix(f"{model.config.cell}."): p.grad
                 for name, p in model.named_parameters()}
        results.append((logits, state, grads))
    (gru_logits, gru_state, gru_grads), (rnn_logits, rnn_state, rnn_grads) = results
    torch.testing.assert_close(rnn_logits, gru_logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(rnn_state, gru_state, rtol=0, atol=1e-12)
    assert len(rnn_grads) == (2 if input_kind == "onehot" else 3) + 3 * 2  # head, embedding
    for name, grad in rnn_grads.items():  # a reset-after GRU's b_hn has b_in's gradient too
        torch.testing.assert_close(grad, gru_grads[name], rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("gates, pinned", [("update", "r"), ("reset", "z"), ("none", "rz")])
def test_an_ablated_gru_is_the_full_gru_with_that_gate_pinned(gates, pinned):
    """``update`` ≡ a full GRU whose reset gate is stuck open (R = σ(+∞) = 1), ``reset`` ≡ one
    whose update gate is shut (Z = σ(−∞) = 0): the ablations switch off exactly that gate."""
    ablated = _model(gates=gates, backend="reference")
    full = _model(backend="reference")
    blocks = {"both": "rzn", "update": "zn", "reset": "rn", "none": "n"}
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            target, source = getattr(full.gru, name), getattr(ablated.gru, name)
            for i, block in enumerate("rzn"):
                part = target[i * H:(i + 1) * H]
                if block in blocks[gates]:
                    j = blocks[gates].index(block)
                    part.copy_(source[j * H:(j + 1) * H])
                else:  # the pinned gate: no weights, a bias of ±∞
                    part.fill_(0.0)
                    if name == "bias_ih_l0":
                        part.fill_(float("inf") if block == "r" else -float("inf"))
        full.head.load_state_dict(ablated.head.state_dict())
    h0 = torch.randn(1, B, H, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(ablated(_ids(), h0), full(_ids(), h0), rtol=0, atol=1e-12)
        assert not torch.allclose(ablated(_ids(), h0)[0], _model(backend="reference")(_ids(),
                                                                                      h0)[0])


@pytest.mark.parametrize("cell, variant", [("rnn", "reset_before"), ("lstm", "reset_before"),
                                           ("gru", "reset_after")])
def test_torch_module_converters_are_exact(cell, variant):
    """To nn.RNN / nn.LSTM / nn.GRU and back: the module computes the model's recurrence, and
    loading a module's two biases per gate keeps the function."""
    model = _model(cell=cell, variant=variant, input_kind="embedding", num_layers=2)
    module = to_torch_module(model)
    x = model.embedding(_ids())
    state = model.begin_state(B)
    outputs, final = module(x, state)
    expected_x, expected_state = model._recur(_ids(), state, model.backend())
    torch.testing.assert_close(outputs, expected_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(final, expected_state, rtol=0, atol=1e-12)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("bias_hh"):
                p.normal_()  # nn.*'s own second bias, which grulm folds where it has one
    twin = _model(cell=cell, variant=variant, input_kind="embedding", num_layers=2)
    load_torch_module(twin, module)
    torch.testing.assert_close(twin._recur(_ids(), state, twin.backend()), module(x, state),
                               rtol=0, atol=1e-12)


def test_converters_refuse_what_has_no_module():
    with pytest.raises(ConfigError, match="minGRU has no torch.nn module"):
        to_torch_module(_model(cell="mingru"))
    with pytest.raises(ConfigError, match="does not fit"):
        load_torch_module(_model(cell="lstm"), torch.nn.RNN(V, H))
    with pytest.raises(ConfigError, match="only a GRU with gates 'none'"):
        ungated_gru_as_rnn(_model())


@pytest.mark.parametrize("h0_scale", [0.0, 1.0])
def test_mingru_scan_is_its_sequential_form_over_long_sequences(h0_scale):
    """The log-space scan stays equal to the step-by-step form over 400 steps, where the
    product of the (1 − Z) factors underflows, from a zero and a signed initial state."""
    torch.manual_seed(0)
    x = 3 * torch.randn(2, 400, 4, dtype=F64)
    h0 = h0_scale * torch.randn(2, H, dtype=F64)
    weight_ih, bias_ih = torch.randn(2 * H, 4, dtype=F64), torch.randn(2 * H, dtype=F64)
    scan = mingru.mingru_scan(x, h0, weight_ih, bias_ih)
    sequential = mingru.mingru_sequential(x, h0, weight_ih, bias_ih)
    torch.testing.assert_close(scan, sequential, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(scan[0]).all()


def test_mingru_trains_by_the_scan_in_float32_without_nan():
    model = GRULM(GRUConfig(V, 32, cell="mingru", input_kind="embedding"))
    assert model.backend().mingru_layer is mingru.mingru_scan
    X = torch.randint(0, V, (4, 300))
    loss, _ = model.loss(X, X)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_lstm_state_is_a_pair():
    model = _model(cell="lstm", num_layers=2)
    h, c = model.begin_state(B)
    assert h.shape == c.shape == (2, B, H) and not h.any() and not c.any()
    _, (h, c) = model(_ids(), (h, c))
    assert not torch.allclose(h, c)  # h = O ⊙ tanh(c): the two differ
    _, carried = model(_ids(2), (h, c))
    _, fresh = model(_ids(2))
    assert not torch.allclose(carried[1], fresh[1])  # the memory cell is carried


@pytest.mark.parametrize("cell, gates, rows", [
    ("gru", "both", 3), ("gru", "update", 2), ("gru", "none", 1), ("rnn", "both", 1),
    ("lstm", "both", 4), ("mingru", "both", 2)])
def test_each_cell_has_its_layout(cell, gates, rows):
    config = GRUConfig(V, H, num_layers=2, cell=cell, gates=gates, input_kind="embedding",
                       embedding_size=5)
    shapes = parameter_shapes(config)
    assert shapes == {n: tuple(t.shape) for n, t in GRULM(config).state_dict().items()}
    assert shapes[f"{cell}.weight_ih_l0"] == (rows * H, 5)
    assert (f"{cell}.weight_hh_l1" in shapes) == (cell != "mingru")


@pytest.mark.parametrize("config, message", [
    ({"cell": "transformer"}, "unknown cell 'transformer'; choose one of: gru, rnn, lstm, mingru"),
    ({"cell": "lstm", "gates": "update"}, "applies only to --cell gru .* the LSTM cell has none"),
    ({"gates": "some"}, "unknown gates 'some'"),
    ({"cell": "lstm", "backend": "cpu"},
     "backend 'cpu' implements only the GRU cell; the LSTM cell runs on: reference, torch, auto"),
    ({"gates": "reset", "backend": "cpu"}, "they run on: reference, auto"),
])
def test_bad_cell_configs_are_one_line(config, message):
    with pytest.raises(ConfigError, match=message) as error:
        GRUConfig(V, **config)
    assert "\n" not in str(error.value)


def test_auto_picks_the_fastest_backend_for_each_cell():
    picks = {cell: backends.resolve("auto", "reset_before", "cpu", cell=cell).name
             for cell in ("rnn", "lstm", "mingru")}
    assert picks == {"rnn": "torch", "lstm": "torch", "mingru": "torch"}
    assert backends.resolve("auto", "reset_before", "cpu", gates="update").name == "reference"
    decoder = backends.resolve("auto", "reset_before", "cpu", capability="decode_step",
                               cell="lstm")
    assert decoder.name == "reference"
