"""Held-out evaluation equals a manual computation; nats, bits and perplexity agree."""

import math

import pytest
import torch
from torch.nn import functional as F

from grulm.errors import DataError
from grulm.evaluate import EvalResult, evaluate
from grulm.model import GRULM, GRUConfig

pytestmark = pytest.mark.usefixtures("one_thread")


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
