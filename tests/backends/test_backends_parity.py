"""One parity harness over the backend registry: every registered backend against ``reference``.

A backend added to :data:`grulm.backends.BACKENDS` is enrolled here by registering it: its
layer (outputs, final state, every gradient) for each variant, input kind and depth, in
float64 and float32, on the CPU and on a GPU where there is one; its gradcheck in float64;
and, if it provides
``decode_step`` (and ``decode_greedy``), its single-step decoding against the reference step.
What a backend does not support (a variant, a device, a dtype) or cannot run here skips with
the reason it gives.
"""

import pytest
import torch

from grulm import backends
from grulm.backends import reference
from grulm.backends.decode import DecodeParams
from grulm.model import GRULM, GRUConfig

V, H, B, T = 11, 16, 3, 5
LAYER_BACKENDS = [name for name in backends.BACKENDS if name != "reference"]
DECODE_BACKENDS = [name for name, b in backends.BACKENDS.items() if b.decode_step is not None]
DEVICES = ["cpu", "cuda"]
DTYPES = [torch.float64, torch.float32]
TOLERANCE = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5)}  # rtol, atol


def _backend(name: str, variant: str, device: str, dtype, capability: str = "gru_layer"):
    """The backend, or a skip saying why it cannot run this case here."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    backend = backends.BACKENDS[name]
    reason = backend.unsupported(variant, device, dtype, capability)
    if reason is not None:
        pytest.skip(reason)
    return backend


def _model(backend: str, variant: str, input_kind: str, num_layers: int, dtype, device):
    torch.manual_seed(0)
    config = GRUConfig(V, H, num_layers=num_layers, variant=variant, input_kind=input_kind,
                       embedding_size=5, init="torch", backend=backend)
    model = GRULM(config).to(device=device, dtype=dtype)
    with torch.no_grad():  # random biases everywhere, b_hh of reset-before included
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _twins(name, variant, input_kind, num_layers, dtype, device):
    ref = _model("reference", variant, input_kind, num_layers, dtype, device)
    fast = _model(name, variant, input_kind, num_layers, dtype, device)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _forward_and_grads(model, X, h0):
    """Logits, final state, every parameter's gradient and h0's, under a loss that mixes all."""
    h0 = h0.clone().requires_grad_(True)
    logits, state = model(X, h0)
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype, device=logits.device)
    (logits * weights.view(logits.shape)).sum().add(state.square().sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return {"logits": logits, "final state": state, **grads, "h0": h0.grad}


def _assert_close(actual, expected, dtype):
    """Equal within tolerance; ``atol`` scales with each tensor's largest magnitude, since
    gradients summed over many rows carry rounding of that size."""
    rtol, atol = TOLERANCE[dtype]
    assert actual.keys() == expected.keys()
    for what, e in expected.items():
        scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
        torch.testing.assert_close(actual[what], e, rtol=rtol, atol=atol * scale, msg=what)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
@pytest.mark.parametrize("name", LAYER_BACKENDS)
def test_layer_matches_reference(name, variant, input_kind, num_layers, dtype, device):
    _backend(name, variant, device, dtype)
    ref, fast = _twins(name, variant, input_kind, num_layers, dtype, device)
    generator = torch.Generator().manual_seed(1)
    X = torch.randint(0, V, (B, T), generator=generator).to(device)
    h0 = torch.randn(num_layers, B, H, generator=generator, dtype=dtype).to(device)
    _assert_close(_forward_and_grads(fast, X, h0), _forward_and_grads(ref, X, h0), dtype)


@pytest.mark.parametrize("token_input", [False, True], ids=["token-ids", "features"])
@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
@pytest.mark.parametrize("name", list(backends.BACKENDS))
def test_layer_gradcheck(name, variant, token_input):
    """Every backend's layer (the reference too) against finite differences, in float64."""
    backend = _backend(name, variant, "cpu", torch.float64)
    torch.manual_seed(0)
    I = V if token_input else 4  # noqa: E741
    x = torch.randint(0, V, (2, 3)) if token_input else torch.randn(2, 3, I, dtype=torch.float64)
    shapes = [(2, 5), (15, I), (15, 5), (15,), (15,)]  # h0, W_ih, W_hh, b_ih, b_hh; H = 5
    inputs = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    if not token_input:
        inputs.insert(0, x.requires_grad_(True))

    def layer(*args):
        args = (x, *args) if token_input else args
        return backend.gru_layer(*args, reset_after=variant == "reset_after")

    assert torch.autograd.gradcheck(layer, inputs)


def test_reference_decode_step_is_the_models_forward():
    """The reference step (the oracle for every other one) equals GRULM.forward, token by
    token and over a prefix in one call."""
    for variant in ("reset_before", "reset_after"):
        model = _model("reference", variant, "embedding", 2, torch.float64, "cpu")
        params = DecodeParams.of(model)
        X = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
        h0 = torch.randn(2, B, H, dtype=torch.float64)
        with torch.no_grad():
            expected, expected_state = model(X, h0)
        h = h0
        for t in range(T):
            logits, h = reference.decode_step(params, X[:, t], h)
            torch.testing.assert_close(logits, expected[:, t], rtol=0, atol=1e-12)
        torch.testing.assert_close(h, expected_state, rtol=0, atol=1e-12)
        logits, h = reference.decode_step(params, X, h0)
        torch.testing.assert_close(logits, expected[:, -1], rtol=0, atol=1e-12)
        torch.testing.assert_close(h, expected_state, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
@pytest.mark.parametrize("name", DECODE_BACKENDS)
def test_decode_step_matches_the_reference_step(
    name, variant, input_kind, num_layers, dtype, device
):
    """One token per sequence, then a few per sequence in one call, then after the model has
    changed in place (as an optimiser step changes it): the reference step's logits and state,
    with no autograd history."""
    backend = _backend(name, variant, device, dtype, "decode_step")
    model = _model("reference", variant, input_kind, num_layers, dtype, device)
    params = DecodeParams.of(model)
    rtol, atol = TOLERANCE[dtype]
    generator = torch.Generator().manual_seed(3)
    h = torch.randn(num_layers, 4, H, generator=generator, dtype=dtype).to(device)
    for ids in ([1, 0, 10, 3], [[2, 5, 7], [0, 0, 1], [10, 9, 8], [4, 4, 4]]):
        x_ids = torch.tensor(ids, device=device)
        logits, state = backend.decode_step(params, x_ids, h)
        expected, expected_state = reference.decode_step(params, x_ids, h)
        torch.testing.assert_close(logits, expected, rtol=rtol, atol=atol)
        torch.testing.assert_close(state, expected_state, rtol=rtol, atol=atol)
        assert logits.grad_fn is None and state.grad_fn is None
        assert not logits.requires_grad and not state.requires_grad
        assert state.shape == h.shape and logits.shape == (4, V)
        h = state
        with torch.no_grad():
            model.head.bias.add_(0.5)
            model.gru.weight_hh_l0.mul_(1.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
@pytest.mark.parametrize(
    "name", [n for n in DECODE_BACKENDS if backends.BACKENDS[n].decode_greedy is not None]
)
def test_decode_greedy_matches_the_reference_steps(name, variant, dtype):
    """A whole greedy run equals the reference step and its argmax, looped: the same tokens and
    the state after the last token fed."""
    backend = _backend(name, variant, "cpu", dtype, "decode_step")
    model = _model("reference", variant, "onehot", 2, dtype, "cpu")
    params = DecodeParams.of(model)
    h = torch.randn(2, 4, H, generator=torch.Generator().manual_seed(4), dtype=dtype)
    chosen, state = backend.decode_greedy(params, torch.tensor([0, 1, 2, 3]), h, 8)
    expected, expected_state, tokens = [], h, torch.tensor([0, 1, 2, 3])
    for _ in range(8):  # the last choice is not fed back
        logits, expected_state = reference.decode_step(params, tokens, expected_state)
        tokens = logits.argmax(-1)
        expected.append(tokens)
    assert chosen.tolist() == torch.stack(expected, 1).tolist()
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(state, expected_state, rtol=rtol, atol=atol)
