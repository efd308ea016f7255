"""The fused ``cpu`` backend beyond the parity harness (``test_backends_parity.py``): batch and
sequence shapes, thread teams, the folded embedding, the seed's shape, and its single-step
decoding's own edges."""

import dataclasses

import pytest
import torch

from grulm import backends
from grulm.backends import cpu, reference
from grulm.backends.decode import DecodeParams
from grulm.errors import ConfigError
from grulm.model import GRULM, GRUConfig

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)

V, H = 11, 16


def _forward_and_grads(model, X, h0):
    """Logits, final state, every parameter's gradient and h0's, under a loss that mixes all."""
    h0 = h0.clone().requires_grad_(True)
    logits, state = model(X, h0)
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view(logits.shape)
    (logits * weights).sum().add(state.square().sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return logits, state, grads, h0.grad


def _assert_same(actual, expected, rtol, atol):
    """Equal within tolerance; ``atol`` is relative to each tensor's largest magnitude, since
    gradients summed over many rows carry rounding of that size."""

    def close(a, e, what):
        scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol * scale, msg=what)

    close(actual[0], expected[0], "logits")
    close(actual[1], expected[1], "final state")
    assert actual[2].keys() == expected[2].keys()
    for name in expected[2]:
        close(actual[2][name], expected[2][name], f"grad of {name}")
    close(actual[3], expected[3], "grad of h0")


def _models(dtype, **config):
    torch.manual_seed(0)
    ref = GRULM(GRUConfig(V, H, init="torch", backend="reference", **config)).to(dtype)
    fast = GRULM(GRUConfig(V, H, init="torch", backend="cpu", **config)).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("T", [1, 7, 35])
@pytest.mark.parametrize("B", [1, 3, 32])
@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
def test_float32_parity_with_reference_across_shapes(variant, input_kind, B, T):
    """Three layers, batches of 1 to 32 sequences and 1 to 35 steps (the harness runs one
    shape at one and two layers)."""
    ref, fast = _models(
        torch.float32, variant=variant, input_kind=input_kind, num_layers=3, embedding_size=5
    )
    generator = torch.Generator().manual_seed(B * 100 + T)
    X = torch.randint(0, V, (B, T), generator=generator)
    h0 = torch.randn(3, B, H, generator=generator)
    _assert_same(_forward_and_grads(fast, X, h0), _forward_and_grads(ref, X, h0),
                 rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
def test_thread_teams_agree(variant, threads, dtype):
    """A layer big enough for a thread team (B=37, H=136): one, two (rows 18 + 19) or three
    (12 + 12 + 13) threads give the reference's results. H=136 also exercises the packed
    products' edges in float32: a last panel 8 columns wide, row tiles of 1–3 rows, and
    backward depths (2H, 3H) beyond one 256-deep pass."""
    torch.manual_seed(0)
    hidden = 136
    config = GRUConfig(V, hidden, variant=variant, init="torch", backend="reference")
    ref = GRULM(config).to(dtype)
    fast = GRULM(GRUConfig(**{**config.to_dict(), "backend": "cpu"})).to(dtype)
    fast.load_state_dict(ref.state_dict())
    X = torch.randint(0, V, (37, 5), generator=torch.Generator().manual_seed(2))
    h0 = torch.randn(1, 37, hidden, dtype=dtype, generator=torch.Generator().manual_seed(3))
    expected = _forward_and_grads(ref, X, h0)
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        actual = _forward_and_grads(fast, X, h0)
    finally:
        torch.set_num_threads(default)
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {
        "rtol": 1e-12, "atol": 1e-13}
    _assert_same(actual, expected, **tolerance)


@pytest.mark.parametrize("shape", [(4, 5), (1, 3)])
def test_embedding_folds_into_layer0_only_when_the_vocabulary_is_smaller(shape, monkeypatch):
    """With V ≤ B·T tokens the cpu backend gets the ids and W_ih E^T (3H, V) as one-hot input;
    otherwise the embedded features. Either way: the reference's outputs and gradients."""
    calls = []
    fast_backend = backends.BACKENDS["cpu"]

    def spy(x, *args, **kwargs):
        calls.append((x.dtype, args[1].shape))
        return fast_backend.gru_layer(x, *args, **kwargs)

    monkeypatch.setitem(backends.BACKENDS, "cpu", dataclasses.replace(fast_backend, gru_layer=spy))
    ref, fast = _models(torch.float32, input_kind="embedding", num_layers=2, embedding_size=5)
    X = torch.randint(0, V, shape, generator=torch.Generator().manual_seed(4))
    h0 = torch.randn(2, shape[0], H, generator=torch.Generator().manual_seed(5))
    _assert_same(_forward_and_grads(fast, X, h0), _forward_and_grads(ref, X, h0),
                 rtol=1e-4, atol=1e-5)
    folded = V <= X.numel()
    assert calls[0] == ((torch.int64, (3 * H, V)) if folded else (torch.float32, (3 * H, 5)))
    assert calls[1] == (torch.float32, (3 * H, H))


def test_d2l_init_parity_at_the_seed_shape():
    """The seed's shape (B=32, T=35, H=256, one-hot, randn·0.01 weights) in float32."""
    torch.manual_seed(0)
    ref = GRULM(GRUConfig(28, 256, backend="reference"))
    fast = GRULM(GRUConfig(28, 256, backend="cpu"))
    fast.load_state_dict(ref.state_dict())
    X = torch.randint(0, 28, (32, 35))
    h0 = torch.randn(1, 32, 256) * 0.5
    _assert_same(_forward_and_grads(fast, X, h0), _forward_and_grads(ref, X, h0),
                 rtol=1e-4, atol=1e-5)


def test_layer_outputs_match_reference_without_autograd():
    """Under no_grad (generation, evaluation) the fused forward alone runs."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, 3)
    args = [torch.randn(4, H), torch.randn(3 * H, 3), torch.randn(3 * H, H) * 0.3,
            torch.randn(3 * H), torch.randn(3 * H)]
    with torch.no_grad():
        for reset_after in (False, True):
            actual = cpu.gru_layer(x, *args, reset_after=reset_after)
            expected = reference.gru_layer(x, *args, reset_after=reset_after)
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_auto_picks_cpu_on_cpu():
    for variant in ("reset_before", "reset_after"):
        assert GRULM(GRUConfig(V, H, variant=variant)).backend().name == "cpu"


def test_cpu_backend_refuses_other_devices():
    model = GRULM(GRUConfig(V, H, backend="cpu"))
    with pytest.raises(ConfigError, match="runs only on cpu"):
        model.backend("meta")


@pytest.mark.slow
def test_twenty_epoch_trajectory_matches_reference(shared_data):
    """The seed experiment's first 20 epochs: the same perplexities as the reference backend."""
    from grulm.data import epoch_batches, load_corpus
    from grulm.train import TrainConfig, fit

    corpus = load_corpus("timemachine")
    train_ids = corpus.ids[:10_000]
    config = TrainConfig(epochs=20)
    trajectories = {}
    for backend in ("reference", "cpu"):
        torch.manual_seed(config.seed)
        model = GRULM(GRUConfig(len(corpus.vocab), 256, backend=backend))
        history = fit(
            model,
            lambda rng: epoch_batches(train_ids, config.batch_size, config.num_steps, rng,
                                      config.partition),
            config,
        )
        trajectories[backend] = torch.tensor([s.perplexity for s in history],
                                             dtype=torch.float64)
    torch.testing.assert_close(trajectories["cpu"], trajectories["reference"], rtol=1e-3, atol=0)


def test_decode_refuses_token_ids_outside_the_vocabulary():
    params = DecodeParams.of(GRULM(GRUConfig(V, H)))
    h = torch.zeros(1, 2, H)
    for bad in (-1, V):
        with pytest.raises(RuntimeError, match=rf"token id {bad} out of range \[0, {V}\)"):
            cpu.decode_step(params, torch.tensor([0, bad]), h)
    with pytest.raises(RuntimeError, match="ids must be"):
        cpu.decode_step(params, torch.tensor([0, 1, 2]), h)
    with pytest.raises(RuntimeError, match="weights do not make"):
        cpu.decode_step(params, torch.tensor([0, 1]), torch.zeros(2, 2, H))


def test_decode_greedy_breaks_ties_as_torch_argmax():
    """Equal logits: the first maximum, as ``torch.argmax`` (the seed's greedy choice)."""
    model = GRULM(GRUConfig(V, H))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 2, 5, 5, 1, 5, 0, 0, 0, 0, 0]))
    params, h = DecodeParams.of(model), torch.zeros(1, 2, H)
    chosen, _ = cpu.decode_greedy(params, torch.tensor([1, 4]), h, 3)
    assert chosen.tolist() == [[2, 2, 2], [2, 2, 2]]


def test_decode_reads_non_contiguous_parameters():
    """Parameters that are views with other strides (say, tied or sliced weights) are read
    as they are."""
    model = GRULM(GRUConfig(V, H, variant="reset_after", init="torch"))
    params = DecodeParams.of(model)
    transposed = torch.randn(H, 3 * H).T  # (3H, H), not contiguous
    params = dataclasses.replace(
        params, layers=((params.layers[0][0], transposed, *params.layers[0][2:]),)
    )
    h = torch.randn(1, 2, H)
    logits, state = cpu.decode_step(params, torch.tensor([3, 4]), h)
    expected, expected_state = reference.decode_step(params, torch.tensor([3, 4]), h)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, expected_state, rtol=1e-4, atol=1e-5)
