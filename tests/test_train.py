"""The training loop: seed semantics, the textbook's trajectory, repeatability, bad configs."""

import math
import random

import pytest
import torch

from grulm import textbook
from grulm.data.batches import epoch_batches
from grulm.data.prepare import load_prepared
from grulm.data.sources import resolve_source
from grulm.errors import ConfigError
from grulm.model import GRULM, GRUConfig
from grulm.optim import clip_gradients
from grulm.train import (
    Hooks,
    Progress,
    TrainConfig,
    TrainingDiverged,
    build_optimizer,
    build_step,
    fit,
    training_splits,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_fit_takes_the_backends_fused_step_chosen_once(monkeypatch, backend):
    """On the cpu backend plain SGD runs as one fused clipping + SGD kernel (SGD.step never
    runs); on the reference backend, clipping then SGD.step. build_step makes the choice."""
    from grulm.backends import cpu

    if backend == "cpu" and cpu.unavailable() is not None:
        pytest.skip(f"cpu backend unavailable: {cpu.unavailable()}")
    torch.manual_seed(0)
    model = GRULM(GRUConfig(12, 16, backend=backend))
    config = TrainConfig(epochs=2, batch_size=2, num_steps=5)
    update = build_step(model, config)
    assert update.fused is (cpu.clip_sgd_ if backend == "cpu" else None)
    steps = []
    real_step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda *a, **k: steps.append(real_step(*a, **k)))
    ids = torch.randint(0, 12, (200,), generator=torch.Generator().manual_seed(0))
    progress = Progress.start(config.seed)
    fit(model, lambda rng: epoch_batches(ids, 2, 5, rng), config, progress=progress,
        optimizer=update)
    assert progress.step > 10 and len(steps) == (0 if backend == "cpu" else progress.step)
    assert update.optimizer.state_dict()["state"] == {}  # plain SGD: nothing to checkpoint


def test_fit_takes_a_bare_optimizer_or_a_built_step_alike(seed_ids):
    """A restored optimiser passed as it is (what a resume does) trains as the step built from
    it: the same losses, bit for bit."""
    ids, _ = seed_ids
    losses = []
    for wrap in (False, True):
        model, config, make_batches = _tiny_run(ids[:1000], optimizer="adamw", lr=0.01)
        optimizer = build_optimizer(model, config)
        update = build_step(model, config, optimizer) if wrap else optimizer
        losses.append([s.loss for s in fit(model, make_batches, config, optimizer=update)])
    assert losses[0] == losses[1]


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


# --- splits, budgets, guard rails, exact resume ---------------------------------------------


def test_seed_split_trains_on_the_first_10000_and_validates_on_the_last_tenth(seed_ids):
    from grulm.data.prepare import load_prepared
    from grulm.data.sources import resolve_source

    ids = load_prepared(resolve_source("timemachine").path, cleaning="d2l", token="char").ids
    splits = training_splits(ids, max_tokens=10_000)
    assert splits.ranges["train"] == (0, 10_000)
    val_start, val_stop = splits.ranges["val"]
    assert val_stop == len(ids) and val_start == len(ids) - math.ceil(0.1 * len(ids))
    assert torch.equal(splits.train, ids[:10_000])  # the seed's training data, unchanged
    assert torch.equal(splits.val, ids[val_start:])


def test_fraction_splits_are_contiguous_and_disjoint():
    ids = torch.arange(1000)
    splits = training_splits(ids, fractions=[0.8, 0.1, 0.1])
    assert splits.ranges == {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}
    # No training window reaches a held-out token: batches only see the train slice.
    rng = random.Random(0)
    for _ in range(5):
        for X, Y in epoch_batches(splits.train, 4, 10, rng):
            assert int(X.max()) < 800 and int(Y.max()) < 800
    truncated = training_splits(ids, max_tokens=300, fractions=[0.8, 0.2])
    assert truncated.ranges == {"train": (0, 300), "val": (800, 1000)}
    assert torch.equal(truncated.train, ids[:300])


def _tiny_run(ids, **overrides):
    config = TrainConfig(**{"epochs": 3, "batch_size": 4, "num_steps": 10, "seed": 5,
                            **overrides})
    torch.manual_seed(config.seed)
    model = GRULM(GRUConfig(28, 16, num_layers=2, input_kind="embedding", dropout=0.3,
                            backend="reference"))
    return model, config, lambda rng: epoch_batches(ids, 4, 10, rng, config.partition)


def test_max_steps_stops_mid_epoch(seed_ids):
    ids, _ = seed_ids
    model, config, make_batches = _tiny_run(ids[:1000], max_steps=30)
    progress = Progress.start(config.seed)
    history = fit(model, make_batches, config, progress=progress)
    assert progress.stop_reason == "max_steps" and progress.step == 30
    assert len(history) == 1 and progress.batch == 30 - len(make_batches(random.Random(0)))


def test_early_stopping_counts_validations_without_improvement(seed_ids):
    ids, _ = seed_ids
    # lr so large that validation gets no better after the first epoch.
    model, config, make_batches = _tiny_run(ids[:1000], epochs=50, lr=50.0, early_stop=2)
    progress = Progress.start(config.seed)
    fit(model, make_batches, config, val_ids=ids[1000:1500], progress=progress)
    assert progress.stop_reason == "early_stop"
    assert progress.epoch == progress.best_epoch + 2 < 50
    best = min(s.val_loss for s in progress.history)
    assert progress.best_val_loss == best


def test_a_nan_loss_stops_training_with_a_clear_message(seed_ids):
    ids, _ = seed_ids
    model, config, make_batches = _tiny_run(ids[:1000])

    class Poison(Hooks):
        def on_step(self, progress, stats):
            if progress.step == 7:
                with torch.no_grad():
                    model.head.bias.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="nan.*epoch 1"):
        fit(model, make_batches, config, hooks=Poison())


@pytest.mark.parametrize("partition, optimizer, schedule", [
    ("sequential", "adamw", "cosine"), ("random", "adam", "step"), ("sequential", "sgd",
                                                                     "plateau")])
def test_stop_save_load_resume_gives_the_same_losses(seed_ids, tmp_path, partition, optimizer,
                                                     schedule):
    """4 epochs straight == stop mid-epoch 2 + checkpoint on disk + resume: every epoch's
    training and validation loss bit for bit (dropout, data order, state, optimiser, schedule)."""
    from grulm.checkpoint import load_checkpoint, save_checkpoint
    from grulm.optim import Schedule
    from grulm.run.resume import restore_training_state, training_state

    ids, vocab = seed_ids
    overrides = dict(epochs=4, partition=partition, optimizer=optimizer, schedule=schedule,
                     lr=0.01 if optimizer != "sgd" else 1.0, warmup_steps=5, step_size=20)
    train, val = ids[:1000], ids[1000:1400]

    model, config, make_batches = _tiny_run(train, **overrides)
    straight = fit(model, make_batches, config, val_ids=val)

    model, config, make_batches = _tiny_run(train, **overrides)

    class StopAt(Hooks):
        def should_stop(self):
            return "test" if progress.step == 37 else None

    progress = Progress.start(config.seed)
    optimizer_ = build_optimizer(model, config)
    schedule_ = Schedule(config.schedule_config(), config.lr)
    fit(model, make_batches, config, val_ids=val, progress=progress, optimizer=optimizer_,
        schedule=schedule_, hooks=StopAt())
    assert progress.stop_reason == "test" and progress.epoch == 1 and progress.batch > 0
    state, tensors = training_state(model, optimizer_, schedule_, progress)
    save_checkpoint(tmp_path, model, vocab, {"training_state": state}, tensors)

    torch.manual_seed(1234)  # whatever the RNGs did since must not matter
    checkpoint = load_checkpoint(tmp_path)
    resumed_model = GRULM(model.config)
    resumed_model.load_state_dict(checkpoint.model.state_dict())
    optimizer_ = build_optimizer(resumed_model, config)
    schedule_ = Schedule(config.schedule_config(), config.lr)
    progress = restore_training_state(checkpoint, optimizer_, schedule_, torch.device("cpu"))
    resumed = fit(resumed_model, make_batches, config, val_ids=val, progress=progress,
                  optimizer=optimizer_, schedule=schedule_)

    assert [s.loss for s in resumed] == [s.loss for s in straight]
    assert [s.val_loss for s in resumed] == [s.val_loss for s in straight]
    assert [s.lr for s in resumed] == [s.lr for s in straight]
