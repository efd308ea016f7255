"""Connectivity equals torch.autograd.grad of the chosen log-probability computed directly."""

import pytest
import torch
from torch.nn import functional as F

from grulm.errors import ConfigError, DataError
from grulm.inspect import connectivity


def _direct(oracle, model, ids, t):
    prefix = ids[: t + 1]
    if model.embedding is None:
        e = F.one_hot(prefix, model.config.vocab_size).double()
    else:
        e = model.embedding(prefix).detach()
    e.requires_grad_(True)
    _, logits = oracle(model, e)
    log_p = F.log_softmax(logits[t], dim=-1)[ids[t + 1]]
    (grad,) = torch.autograd.grad(log_p, e)
    return grad.norm(dim=-1)


@pytest.mark.parametrize("variant, gates, input_kind", [
    ("reset_before", "both", "onehot"), ("reset_after", "both", "onehot"),
    ("reset_before", "update", "embedding"), ("reset_after", "reset", "embedding"),
])
@pytest.mark.parametrize("t", [0, 5, 10])
def test_connectivity_equals_the_gradient_computed_directly(make_model, ids, oracle, variant,
                                                            gates, input_kind, t):
    model = make_model(variant=variant, gates=gates, input_kind=input_kind)
    result = connectivity(model, ids, t)
    assert result.shape == (t + 1,)
    torch.testing.assert_close(result, _direct(oracle, model, ids, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "rnn", "mingru"])
def test_every_cell_has_connectivity(make_model, ids, cell):
    result = connectivity(make_model(cell=cell), ids, 7)
    assert result.shape == (8,) and torch.isfinite(result).all() and (result >= 0).all()


def test_a_position_without_a_next_token_is_a_config_error(make_model, ids):
    model = make_model()
    for t in (-1, len(ids) - 1, 2.0):
        with pytest.raises(ConfigError, match=f"from 0 to {len(ids) - 2}"):
            connectivity(model, ids, t)
    with pytest.raises(DataError, match="empty"):
        connectivity(model, torch.tensor([], dtype=torch.int64), 0)
