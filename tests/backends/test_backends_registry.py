"""The reference backend against PyTorch's GRU kernel, gradcheck, and backend selection."""

import pytest
import torch

from grulm import backends
from grulm.backends import reference
from grulm.errors import ConfigError
from grulm.model import GRULM, GRUConfig

V, H, B, T = 9, 6, 3, 5


def _forward_and_grads(model, X, h0):
    h0 = h0.clone().requires_grad_(True)
    logits, state = model(X, h0)
    (logits.square().mean() + state.sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return logits, state, grads, h0.grad


@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_reference_reset_after_equals_torch_backend(input_kind, num_layers):
    torch.manual_seed(0)
    config = GRUConfig(
        V, H, num_layers=num_layers, variant="reset_after", input_kind=input_kind,
        init="torch", backend="reference",
    )
    ref = GRULM(config).double()
    fast = GRULM(GRUConfig(**{**config.to_dict(), "backend": "torch"})).double()
    fast.load_state_dict(ref.state_dict())
    X = torch.randint(0, V, (B, T))
    h0 = torch.randn(num_layers, B, H, dtype=torch.float64)
    expected, actual = _forward_and_grads(ref, X, h0), _forward_and_grads(fast, X, h0)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-12, atol=1e-12)
    for name in expected[2]:
        torch.testing.assert_close(actual[2][name], expected[2][name], rtol=1e-10, atol=1e-12,
                                   msg=name)
    torch.testing.assert_close(actual[3], expected[3], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reset_after", [False, True])
@pytest.mark.parametrize("token_input", [False, True])
def test_reference_gradcheck(reset_after, token_input):
    torch.manual_seed(0)
    I = V if token_input else 4  # noqa: E741
    x = torch.randint(0, V, (2, 3)) if token_input else torch.randn(2, 3, I, dtype=torch.float64)
    weights = [
        torch.randn(3 * H, I, dtype=torch.float64),
        torch.randn(3 * H, H, dtype=torch.float64),
        torch.randn(3 * H, dtype=torch.float64),
        torch.randn(3 * H, dtype=torch.float64),
    ]
    h0 = torch.randn(2, H, dtype=torch.float64)
    inputs = [h0, *weights] if token_input else [x, h0, *weights]
    for t in inputs:
        t.requires_grad_(True)

    def layer(*args):
        if token_input:
            return reference.gru_layer(x, *args, reset_after=reset_after)
        return reference.gru_layer(*args, reset_after=reset_after)

    assert torch.autograd.gradcheck(layer, inputs)


def test_reset_after_and_reset_before_differ():
    """The variant switch reaches the recurrence (a check that could fail if it were ignored)."""
    torch.manual_seed(0)
    before = GRULM(GRUConfig(V, H, init="torch", backend="reference"))
    after = GRULM(GRUConfig(V, H, init="torch", variant="reset_after", backend="reference"))
    after.load_state_dict(before.state_dict())
    X = torch.randint(0, V, (B, T))
    assert not torch.allclose(before(X)[0], after(X)[0])


def test_torch_backend_refuses_reset_before():
    model = GRULM(GRUConfig(V, H, backend="torch"))
    with pytest.raises(ConfigError, match="reset_after"):
        model(torch.zeros(1, 2, dtype=torch.long))


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of|must be one of"):
        GRUConfig(V, backend="nope")
    with pytest.raises(ConfigError, match="unknown backend"):
        backends.resolve("nope", "reset_before", "cpu")


def test_auto_picks_a_backend_that_supports_the_variant():
    assert "reset_before" in backends.resolve("auto", "reset_before", "cpu").variants
    assert "reset_after" in backends.resolve("auto", "reset_after", "cpu").variants


@pytest.mark.parametrize(
    "field, value",
    [("vocab_size", 0), ("hidden_size", -1), ("num_layers", 0), ("dropout", 1.0),
     ("dropout", -0.1), ("embedding_size", 0), ("variant", "lstm"), ("input_kind", "bytes")],
)
def test_bad_model_config_is_refused(field, value):
    kwargs = {"vocab_size": V, field: value}
    with pytest.raises(ConfigError, match=field):
        GRUConfig(**kwargs)
