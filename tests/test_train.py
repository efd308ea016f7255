"""The training loop: seed semantics, the textbook's trajectory, repeatability, bad configs."""

import random

import pytest
import torch

from grulm import textbook
from grulm.data.batches import epoch_batches
from grulm.data.prepare import load_prepared
from grulm.data.sources import resolve_source
from grulm.errors import ConfigError
from grulm.model import GRULM, GRUConfig
from grulm.train import TrainConfig, clip_gradients, fit


@pytest.fixture
def seed_ids(shared_data):
    corpus = load_prepared(resolve_source("timemachine").path, cleaning="d2l", token="char")
    return corpus.ids[:10_000], corpus.vocab


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the textbook makes its state with torch.zeros
    yield
    torch.set_default_dtype(previous)


def test_three_epochs_of_grulm_follow_the_textbook_trajectory(seed_ids, float64_default):
    """The seed's model in the seed's loop and GRULM in grulm's loop lose the same losses."""
    ids, vocab = seed_ids
    torch.manual_seed(0)
    net = textbook.gru_model(len(vocab), 32, "cpu")
    model = textbook.to_grulm(net.params, backend="reference")
    config = TrainConfig(epochs=3, batch_size=8, num_steps=35, lr=1.0, seed=3)

    rng = random.Random(config.seed)
    updater = textbook.make_updater(net, config.lr)
    loss = torch.nn.CrossEntropyLoss()
    expected = [
        textbook.train_epoch(net, epoch_batches(ids, 8, 35, rng), loss, updater, "cpu", False)[0]
        for _ in range(config.epochs)
    ]

    history = fit(model, lambda rng: epoch_batches(ids, 8, 35, rng), config)
    actual = [s.perplexity for s in history]
    assert expected[0] > expected[-1]  # it trained
    assert actual == pytest.approx(expected, rel=1e-9)


def test_same_seed_same_run_different_seed_different_run(seed_ids):
    ids, vocab = seed_ids

    def run(seed):
        torch.manual_seed(seed)
        model = GRULM(GRUConfig(len(vocab), 16, backend="reference"))
        config = TrainConfig(epochs=2, batch_size=4, num_steps=10, seed=seed)
        return [s.loss for s in fit(model, lambda rng: epoch_batches(ids[:2000], 4, 10, rng),
                                    config)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_clip_gradients_is_the_seeds_grad_clipping():
    torch.manual_seed(0)
    for scale in (0.01, 100.0):  # a norm below θ = 1 (left alone) and above it (rescaled)
        params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
        for p in params:
            p.grad = torch.randn_like(p) * scale
        norm_before = torch.cat([p.grad.flatten() for p in params]).norm()
        seed_net = textbook.RNNModelScratch.__new__(textbook.RNNModelScratch)
        seed_net.params = [p.detach().clone().requires_grad_(True) for p in params]
        for p, twin in zip(params, seed_net.params, strict=True):
            twin.grad = p.grad.clone()

        textbook.grad_clipping(seed_net, 1.0)
        norm = clip_gradients(params, 1.0)

        torch.testing.assert_close(norm, norm_before)
        for p, twin in zip(params, seed_net.params, strict=True):
            torch.testing.assert_close(p.grad, twin.grad)
        norm_after = torch.cat([p.grad.flatten() for p in params]).norm()
        assert float(norm_after) == pytest.approx(min(float(norm_before), 1.0), rel=1e-6)


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("batch_size", -3), ("num_steps", 0), ("lr", 0.0), ("lr", -1.0),
     ("clip", 0), ("lr", float("nan")), ("partition", "shuffled")],
)
def test_bad_training_config_is_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})
