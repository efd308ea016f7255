"""The fused ``cpu`` backend against the reference backend: outputs, states, every gradient."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from grulm import backends
from grulm.backends import cpu, reference
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
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
def test_float32_parity_with_reference(variant, input_kind, num_layers, B, T):
    ref, fast = _models(
        torch.float32, variant=variant, input_kind=input_kind, num_layers=num_layers,
        embedding_size=5,
    )
    generator = torch.Generator().manual_seed(B * 100 + T)
    X = torch.randint(0, V, (B, T), generator=generator)
    h0 = torch.randn(num_layers, B, H, generator=generator)
    _assert_same(_forward_and_grads(fast, X, h0), _forward_and_grads(ref, X, h0),
                 rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
def test_float64_parity_with_reference(variant, input_kind):
    ref, fast = _models(torch.float64, variant=variant, input_kind=input_kind, num_layers=2)
    generator = torch.Generator().manual_seed(1)
    X = torch.randint(0, V, (3, 9), generator=generator)
    h0 = torch.randn(2, 3, H, generator=generator, dtype=torch.float64)
    _assert_same(_forward_and_grads(fast, X, h0), _forward_and_grads(ref, X, h0),
                 rtol=1e-12, atol=1e-13)


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


@pytest.mark.parametrize("token_input", [False, True])
@pytest.mark.parametrize("reset_after", [False, True])
def test_gradcheck(reset_after, token_input):
    torch.manual_seed(0)
    I = V if token_input else 4  # noqa: E741
    x = torch.randint(0, V, (2, 3)) if token_input else torch.randn(2, 3, I, dtype=torch.float64)
    weights = [
        torch.randn(3 * 5, I, dtype=torch.float64),
        torch.randn(3 * 5, 5, dtype=torch.float64),
        torch.randn(3 * 5, dtype=torch.float64),
        torch.randn(3 * 5, dtype=torch.float64),
    ]
    h0 = torch.randn(2, 5, dtype=torch.float64)
    inputs = [h0, *weights] if token_input else [x, h0, *weights]
    for t in inputs:
        t.requires_grad_(True)

    def layer(*args):
        if token_input:
            return cpu.gru_layer(x, *args, reset_after=reset_after)
        return cpu.gru_layer(*args, reset_after=reset_after)

    assert torch.autograd.gradcheck(layer, inputs)


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


def test_failed_build_falls_back_to_reference_with_one_warning(tmp_path):
    """No working compiler and nothing cached: auto warns once and runs the reference."""
    script = textwrap.dedent(
        """
        import warnings
        import torch
        from grulm.backends import cpu
        from grulm.model import GRULM, GRUConfig

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = GRULM(GRUConfig(11, 8))
            names = [model.backend().name for _ in range(3)]
            logits, _ = model(torch.randint(0, 11, (2, 4)))
        messages = [str(w.message) for w in caught if "unavailable" in str(w.message)]
        print(names, logits.shape, len(messages))
        print(messages[0])
        print(cpu.unavailable())
        """
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": "/nonexistent/c++"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "['reference', 'reference', 'reference'] torch.Size([2, 4, 11]) 1"
    assert "backend 'cpu' is unavailable (could not build the C++ extension" in lines[1]
    assert lines[2].startswith("could not build the C++ extension")
    assert not list((tmp_path / "ext").glob("*/grulm_cpu.so"))


def test_named_cpu_backend_that_cannot_build_is_a_clear_error(tmp_path):
    script = textwrap.dedent(
        """
        from grulm.errors import ConfigError
        from grulm.model import GRULM, GRUConfig
        try:
            GRULM(GRUConfig(11, 8, backend="cpu")).backend()
        except ConfigError as error:
            print(error)
        """
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": "/nonexistent/c++"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "could not build the C++ extension" in result.stdout


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
