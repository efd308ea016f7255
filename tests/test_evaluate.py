"""Held-out evaluation equals a manual computation; nats, bits and perplexity agree; the
lengthened windows and the forward-only kernels change nothing but float rounding."""

import math

import pytest
import torch
from torch.nn import functional as F

from grulm import evaluate as evaluate_module
from grulm.backends import cpu
from grulm.data.batches import eval_batches
from grulm.errors import DataError
from grulm.evaluate import EvalResult, evaluate, window_steps
from grulm.model import GRULM, GRUConfig

pytestmark = pytest.mark.usefixtures("one_thread")
needs_cpu_backend = pytest.mark.skipif(cpu.unavailable() is not None,
                                       reason=f"cpu backend unavailable: {cpu.unavailable()}")


@pytest.fixture
def windows_of_num_steps(monkeypatch):
    """Evaluation reads windows of exactly ``num_steps`` (no lengthening)."""
    monkeypatch.setattr(evaluate_module, "WINDOW_ELEMENTS", 0)


@pytest.mark.usefixtures("windows_of_num_steps")
@pytest.mark.parametrize("num_steps", [5, 7, 1000])  # 7 does not divide the stream length
def test_evaluation_equals_one_pass_over_each_stream(num_steps):
    """Windows with the state carried score exactly what one long forward pass over the B
    parallel streams scores: the mean cross-entropy of every next token."""
    torch.manual_seed(0)
    model = GRULM(GRUConfig(11, 16, num_layers=2, dropout=0.5, backend="reference"))
    model.train()  # evaluate must switch dropout off, then restore the mode
    ids = torch.randint(0, 11, (203,), dtype=torch.int64)
    B = 4
    length = (len(ids) - 1) // B  # 50 columns per stream
    X = ids[: B * length].reshape(B, length)
    Y = ids[1 : 1 + B * length].reshape(B, length)
    model.eval()
    with torch.no_grad():
        logits, _ = model(X)  # (B, L, V) from the zero state
        expected = F.cross_entropy(logits.reshape(-1, 11), Y.reshape(-1)).item()
    model.train()

    result = evaluate(model, ids, batch_size=B, num_steps=num_steps)

    assert model.training
    assert result.tokens == B * length
    assert result.loss == pytest.approx(expected, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-6)
    assert result.bits_per_token == pytest.approx(expected / math.log(2), rel=1e-6)


def test_an_untrained_uniform_model_scores_log_vocab():
    model = GRULM(GRUConfig(8, 4, backend="reference"))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    result = evaluate(model, torch.arange(40) % 8, batch_size=2, num_steps=3)
    assert result.loss == pytest.approx(math.log(8))
    assert result.bits_per_token == pytest.approx(3.0)
    assert EvalResult(result.loss, 10).to_dict()["perplexity"] == pytest.approx(8.0)


def test_a_split_shorter_than_the_batch_is_a_clear_error():
    model = GRULM(GRUConfig(8, 4, backend="reference"))
    with pytest.raises(DataError, match="batch size"):
        evaluate(model, torch.arange(5), batch_size=8)


def test_windows_grow_to_the_activation_budget_never_below_num_steps():
    model = GRULM(GRUConfig(28, 256, backend="reference"))  # widest activation: H = 256
    assert window_steps(model, 32, 35) == evaluate_module.WINDOW_ELEMENTS // (32 * 256)
    assert window_steps(model, 32, 5000) == 5000
    wide = GRULM(GRUConfig(10_000, 16, backend="reference"))  # the logits, V = 10,000
    assert window_steps(wide, 64, 3) == evaluate_module.WINDOW_ELEMENTS // (64 * 10_000)


@needs_cpu_backend
@pytest.mark.parametrize("config", [
    dict(vocab_size=28, hidden_size=64),  # the seed's shape, smaller
    dict(vocab_size=65, hidden_size=48, input_kind="embedding", embedding_size=16,
         variant="reset_after", num_layers=2, init="torch"),
], ids=["onehot", "embedding-2-layers"])  # fmt: skip
def test_long_windows_and_forward_only_kernels_give_the_same_result(layer_saves, config):
    """Against windows of num_steps through the training path's saving kernels: the same tokens,
    the same loss to float32 rounding of the per-window means (the states are bit-identical;
    a window's mean is rounded to float32 once, then summed in float64)."""
    torch.manual_seed(0)
    model = GRULM(GRUConfig(backend="cpu", **config))
    ids = torch.randint(0, config["vocab_size"], (4_001,))
    saves = layer_saves
    saves.clear()  # only the calls below
    fast = evaluate(model, ids, batch_size=8, num_steps=35)
    assert saves and not any(saves)  # forward only
    assert len(saves) == config.get("num_layers", 1)  # 500 columns: one window

    # Before: windows of num_steps through the training path's saving kernels, by hand.
    saves.clear()
    model.eval()
    total, tokens, state = 0.0, 0, None
    for X, Y in eval_batches(ids, 8, 35):
        loss, state = model.loss(X, Y, state)
        total, tokens = total + loss.item() * Y.numel(), tokens + Y.numel()
    assert saves and all(saves)
    assert fast.tokens == tokens == 4_000
    slow = EvalResult(total / tokens, tokens)
    assert fast.loss == pytest.approx(slow.loss, rel=1e-6, abs=0)


