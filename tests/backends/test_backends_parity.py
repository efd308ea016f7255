"""One parity harness over the backend registry: every registered backend against ``reference``.

A backend added to :data:`grulm.backends.BACKENDS` is enrolled here by registering it: its
layer (outputs, final state, every gradient) for each cell (the GRU's variants and gate
ablations, the RNN, the LSTM, the minGRU), input kind and depth, in float64 and float32, on
the CPU and on a GPU where there is one; its gradcheck in float64; and, if it provides
``decode_step`` (and ``decode_greedy``), its single-step decoding against the reference step.
What a backend does not support (a cell, a variant, a device, a dtype) or cannot run here
skips with the reason it gives.
"""

import pytest
import torch

from grulm import backends
from grulm.backends import reference
from grulm.backends.decode import DecodeParams
from grulm.cells import cell_layout, layer_options, map_state, state_tensors
from grulm.model import GRULM, GRUConfig

V, H, B, T = 11, 16, 3, 5
LAYER_BACKENDS = [name for name in backends.BACKENDS if name != "reference"]
DECODE_BACKENDS = [name for name, b in backends.BACKENDS.items() if b.decode_step is not None]
DEVICES = ["cpu", "cuda"]
DTYPES = [torch.float64, torch.float32]
TOLERANCE = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5)}  # rtol, atol
# (cell, variant, gates): both GRU variants, the gate ablations, every other cell.
CASES = [("gru", "reset_before", "both"), ("gru", "reset_after", "both"),
         ("gru", "reset_before", "update"), ("gru", "reset_after", "reset"),
         ("gru", "reset_before", "none"), ("rnn", "reset_before", "both"),
         ("lstm", "reset_before", "both"), ("mingru", "reset_before", "both")]
CASE_IDS = ["gru-reset_before", "gru-reset_after", "gru-update", "gru-reset", "gru-none", "rnn",
            "lstm", "mingru"]


def _backend(name: str, case, device: str, dtype, capability: str = "layer"):
    """The backend, or a skip saying why it cannot run this case here."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    backend = backends.BACKENDS[name]
    cell, variant, gates = case
    reason = backend.unsupported(variant, device, dtype, capability, cell=cell, gates=gates)
    if reason is not None:
        pytest.skip(reason)
    return backend


def _model(backend: str, case, input_kind: str, num_layers: int, dtype, device):
    torch.manual_seed(0)
    cell, variant, gates = case
    config = GRUConfig(V, H, num_layers=num_layers, variant=variant, input_kind=input_kind,
                       embedding_size=5, init="torch", backend=backend, cell=cell, gates=gates)
    model = GRULM(config).to(device=device, dtype=dtype)
    with torch.no_grad():  # random biases everywhere, b_hh of reset-before included
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _twins(name, case, input_kind, num_layers, dtype, device):
    ref = _model("reference", case, input_kind, num_layers, dtype, device)
    fast = _model(name, case, input_kind, num_layers, dtype, device)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _forward_and_grads(model, X, h0):
    """Logits, final state, every parameter's gradient and h0's (an LSTM's (h0, c0)), under
    a loss that mixes all."""
    h0 = map_state(lambda h: h.clone().requires_grad_(True), h0)
    logits, state = model(X, h0)
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype, device=logits.device)
    loss = (logits * weights.view(logits.shape)).sum()
    for tensor in state_tensors(state):
        loss = loss + tensor.square().sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    states = {f"final state {i}": s for i, s in enumerate(state_tensors(state))}
    h0_grads = {f"h0 {i}": h.grad for i, h in enumerate(state_tensors(h0))}
    return {"logits": logits, **states, **grads, **h0_grads}


def _state(case, num_layers, batch, dtype, device, generator):
    """A random state of the case's cell: (L, B, H), or an LSTM's pair."""
    tensors = [torch.randn(num_layers, batch, H, generator=generator, dtype=dtype).to(device)
               for _ in range(2 if case[0] == "lstm" else 1)]
    return tuple(tensors) if len(tensors) == 2 else tensors[0]


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
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("name", LAYER_BACKENDS)
def test_layer_matches_reference(name, case, input_kind, num_layers, dtype, device):
    _backend(name, case, device, dtype)
    ref, fast = _twins(name, case, input_kind, num_layers, dtype, device)
    generator = torch.Generator().manual_seed(1)
    X = torch.randint(0, V, (B, T), generator=generator).to(device)
    h0 = _state(case, num_layers, B, dtype, device, generator)
    _assert_close(_forward_and_grads(fast, X, h0), _forward_and_grads(ref, X, h0), dtype)


@pytest.mark.parametrize("token_input", [False, True], ids=["token-ids", "features"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("name", list(backends.BACKENDS))
def test_layer_gradcheck(name, case, token_input):
    """Every backend's layer (the reference too) against finite differences, in float64."""
    backend = _backend(name, case, "cpu", torch.float64)
    torch.manual_seed(0)
    cell, variant, gates = case
    layout = cell_layout(cell, gates, variant)
    I, G = (V if token_input else 4), layout.rows * 5  # noqa: E741  (H = 5)
    x = torch.randint(0, V, (2, 3)) if token_input else torch.randn(2, 3, I, dtype=torch.float64)
    shapes = [(G, I), (G, 5), (G,), (G,)] if layout.recurrent else [(G, I), (G,)]
    states = 2 if layout.paired_state else 1  # h0 (and c0), each (2, 5)
    inputs = [torch.randn(s, dtype=torch.float64, requires_grad=True)
              for s in [(2, 5)] * states + shapes]
    if not token_input:
        inputs.insert(0, x.requires_grad_(True))

    def layer(*args):
        args = (x, *args) if token_input else args
        state = tuple(args[1:1 + states]) if states == 2 else args[1]
        outputs, final = backend.layer(cell)(args[0], state, *args[1 + states:],
                                             **layer_options(cell, gates, variant))
        return outputs, *state_tensors(final)

    assert torch.autograd.gradcheck(layer, inputs)


def test_reference_decode_step_is_the_models_forward():
    """The reference step (the oracle for every other one) equals GRULM.forward, token by
    token and over a prefix in one call, for every cell; the model's forward runs its fastest
    backend (minGRU's parallel scan, nn.LSTM …), so the step also matches what trains."""
    for case in CASES:
        model = _model("auto", case, "embedding", 2, torch.float64, "cpu")
        params = DecodeParams.of(model)
        X = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
        h0 = _state(case, 2, B, torch.float64, "cpu", torch.Generator().manual_seed(5))
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
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("name", DECODE_BACKENDS)
def test_decode_step_matches_the_reference_step(
    name, case, input_kind, num_layers, dtype, device
):
    """One token per sequence, then a few per sequence in one call, then after the model has
    changed in place (as an optimiser step changes it): the reference step's logits and state,
    with no autograd history."""
    backend = _backend(name, case, device, dtype, "decode_step")
    model = _model("reference", case, input_kind, num_layers, dtype, device)
    params = DecodeParams.of(model)
    rtol, atol = TOLERANCE[dtype]
    generator = torch.Generator().manual_seed(3)
    h = _state(case, num_layers, 4, dtype, device, generator)
    for ids in ([1, 0, 10, 3], [[2, 5, 7], [0, 0, 1], [10, 9, 8], [4, 4, 4]]):
        x_ids = torch.tensor(ids, device=device)
        logits, state = backend.decode_step(params, x_ids, h)
        expected, expected_state = reference.decode_step(params, x_ids, h)
        torch.testing.assert_close(logits, expected, rtol=rtol, atol=atol)
        torch.testing.assert_close(state, expected_state, rtol=rtol, atol=atol)
        for tensor, before in zip(state_tensors(state), state_tensors(h), strict=True):
            assert tensor.grad_fn is None and not tensor.requires_grad
            assert tensor.shape == before.shape
        assert logits.grad_fn is None and not logits.requires_grad and logits.shape == (4, V)
        h = state
        with torch.no_grad():
            model.head.bias.add_(0.5)
            model.recurrent.weight_ih_l0.mul_(1.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES[:2], ids=CASE_IDS[:2])
@pytest.mark.parametrize(
    "name", [n for n in DECODE_BACKENDS if backends.BACKENDS[n].decode_greedy is not None]
)
def test_decode_greedy_matches_the_reference_steps(name, case, dtype):
    """A whole greedy run equals the reference step and its argmax, looped: the same tokens and
    the state after the last token fed."""
    backend = _backend(name, case, "cpu", dtype, "decode_step")
    model = _model("reference", case, "onehot", 2, dtype, "cpu")
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
