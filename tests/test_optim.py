"""Optimisers and schedules: every schedule's learning rate at known steps, state round-trips,
the clipped update (:class:`ClippedStep`) that chooses its implementation once."""

import math

import pytest
import torch

from grulm import optim
from grulm.errors import ConfigError
from grulm.model import GRULM, GRUConfig
from grulm.optim import (
    ClippedStep,
    Schedule,
    ScheduleConfig,
    clip_gradients,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
    set_lr,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_constant_with_warmup():
    schedule = Schedule(ScheduleConfig("constant", warmup_steps=4), lr=2.0)
    assert [schedule.lr(step) for step in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_cosine_follows_progress_from_peak_to_floor():
    schedule = Schedule(ScheduleConfig("cosine", min_lr_ratio=0.1), lr=1.0)
    assert schedule.lr(0, 0.0) == pytest.approx(1.0)
    assert schedule.lr(10, 0.5) == pytest.approx(0.55)  # 0.1 + 0.9 · (1 + cos(π/2)) / 2
    assert schedule.lr(20, 1.0) == pytest.approx(0.1)
    assert schedule.lr(30, 7.0) == pytest.approx(0.1)  # progress is clamped to 1
    warm = Schedule(ScheduleConfig("cosine", warmup_steps=10), lr=1.0)
    assert warm.lr(4, 0.0) == pytest.approx(0.5)  # warm-up scales the cosine value
    assert warm.lr(40, 0.25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_step_decay():
    schedule = Schedule(ScheduleConfig("step", step_size=3, gamma=0.1), lr=1.0)
    assert [schedule.lr(s) for s in range(7)] == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.01])


def test_reduce_on_plateau_decays_after_patience_bad_evaluations():
    schedule = Schedule(ScheduleConfig("plateau", patience=2, factor=0.5), lr=1.0)
    for val_loss, lr in [(3.0, 1.0), (2.0, 1.0), (2.5, 1.0), (2.1, 0.5), (2.2, 0.5),
                         (1.9, 0.5), (2.0, 0.5), (2.0, 0.25)]:
        schedule.observe(val_loss)
        assert schedule.lr(100) == lr
    restored = Schedule(schedule.config, lr=1.0)
    restored.load_state_dict(schedule.state_dict())
    assert restored.lr(100) == 0.25 and restored.best == 1.9


def test_other_schedules_ignore_validation():
    schedule = Schedule(ScheduleConfig("constant"), lr=1.0)
    for loss in (3, 4, 5, 6):
        schedule.observe(loss)
    assert schedule.lr(0) == 1.0


@pytest.mark.parametrize("field, value", [("kind", "linear"), ("warmup_steps", -1),
                                          ("step_size", 0), ("gamma", 0.0), ("factor", 1.5),
                                          ("min_lr_ratio", 2.0), ("patience", 0)])
def test_bad_schedule_config_is_refused(field, value):
    with pytest.raises(ConfigError, match=field if field != "kind" else "schedule"):
        ScheduleConfig(**{field: value})


def _tiny_model():
    torch.manual_seed(0)
    return GRULM(GRUConfig(7, 8, input_kind="embedding", backend="reference"))


def test_weight_decay_applies_to_matrices_only():
    model = _tiny_model()
    optimizer = make_optimizer(model, "adamw", lr=0.1, weight_decay=0.1)
    decayed, plain = optimizer.param_groups
    assert all(p.dim() == 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in plain["params"]) and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("name, implementation", [("sgd", "foreach"), ("adam", "foreach"),
                                                  ("adamw", "foreach"), ("adamw", "fused")])
def test_optimizer_state_round_trips_through_tensors_and_json(name, implementation):
    """Two optimisers, one restored from the other's saved state, take identical steps."""
    import json

    model = _tiny_model()
    optimizer = make_optimizer(model, name, lr=0.01, weight_decay=0.01,
                               implementation=implementation)
    x = torch.randint(0, 7, (2, 5))

    def step(model, optimizer):
        logits, _ = model(x)
        loss = logits.square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(model, optimizer)
    tensors, saved = optimizer_state(optimizer)
    saved = json.loads(json.dumps(saved))  # it must be plain JSON
    twin = _tiny_model()
    twin.load_state_dict(model.state_dict())
    twin_optimizer = make_optimizer(twin, name, lr=0.01, weight_decay=0.01,
                                    implementation=implementation)
    load_optimizer_state(twin_optimizer, {k: v.clone() for k, v in tensors.items()}, saved)
    step(model, optimizer)
    step(twin, twin_optimizer)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ConfigError, match="optimizer"):
        make_optimizer(_tiny_model(), "lion", lr=0.1)


# --- the clipped update ----------------------------------------------------------------------


class _RecordingKernel:
    """Stands in for a backend's fused clipping + SGD kernel and records what it is given."""

    def __init__(self):
        self.lrs = []

    def __call__(self, params, grads, lrs, max_norm):
        assert all(g is p.grad for p, g in zip(params, grads, strict=True))
        self.lrs.append(lrs)
        return torch.zeros(())


def _linear_with_grads(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)  # global norm √(15·4) > θ = 1: clipping scales
    return model


def test_clipped_step_chooses_the_fused_kernel_once_and_reads_the_lr_every_call(monkeypatch):
    checks = []
    real_check = optim._is_plain_sgd
    monkeypatch.setattr(optim, "_is_plain_sgd", lambda *a: checks.append(a) or real_check(*a))
    model = _linear_with_grads()
    optimizer = make_optimizer(model, "sgd", lr=0.5)
    kernel = _RecordingKernel()
    step = ClippedStep(optimizer, list(model.parameters()), 1.0, kernel)
    assert step.fused is kernel and step.optimizer is optimizer
    for lr in (0.5, 0.25, 0.125):  # a schedule changes the rate between steps
        set_lr(optimizer, lr)
        step()
    assert len(checks) == 1
    assert kernel.lrs == [[0.5, 0.5], [0.25, 0.25], [0.125, 0.125]]


@pytest.mark.parametrize("name, options", [("sgd", {"weight_decay": 0.1}), ("adam", {}),
                                           ("adamw", {"weight_decay": 0.1})])
def test_clipped_step_keeps_the_optimizers_own_step_where_no_kernel_fits(name, options):
    model, twin = _linear_with_grads(), _linear_with_grads()
    kernel = _RecordingKernel()
    step = ClippedStep(make_optimizer(model, name, lr=0.1, **options),
                       list(model.parameters()), 1.0, kernel)
    assert step.fused is None
    norm = step()
    expected = clip_gradients(list(twin.parameters()), 1.0)
    make_optimizer(twin, name, lr=0.1, **options).step()
    assert kernel.lrs == []
    torch.testing.assert_close(norm, expected, rtol=0, atol=0)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_clipped_step_follows_a_state_loaded_after_it_was_built():
    """A resume builds the step, then loads the saved optimiser state (its groups replace the
    optimiser's): the step steps with the loaded learning rate."""
    saved_model = _linear_with_grads()
    saved = make_optimizer(saved_model, "sgd", lr=0.3)
    tensors, groups = optimizer_state(saved)
    model = _linear_with_grads()
    optimizer = make_optimizer(model, "sgd", lr=1.0)
    kernel = _RecordingKernel()
    step = ClippedStep(optimizer, list(model.parameters()), 1.0, kernel)
    load_optimizer_state(optimizer, tensors, groups)
    step()
    assert kernel.lrs == [[0.3, 0.3]]


def test_a_parameter_without_a_gradient_takes_the_unfused_path_for_that_call():
    model, twin = _linear_with_grads(), _linear_with_grads()
    model.bias.grad = twin.bias.grad = None  # e.g. a parameter this loss did not reach
    kernel = _RecordingKernel()
    step = ClippedStep(make_optimizer(model, "sgd", lr=0.5), list(model.parameters()), 1.0,
                       kernel)
    step()
    assert kernel.lrs == []
    clip_gradients(list(twin.parameters()), 1.0)
    make_optimizer(twin, "sgd", lr=0.5).step()
    torch.testing.assert_close(model.weight, twin.weight, rtol=0, atol=0)
    model.bias.grad = torch.ones_like(model.bias)
    step()
    assert kernel.lrs == [[0.5, 0.5]]
