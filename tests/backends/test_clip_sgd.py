"""Clipping plus an SGD step, fused (``cpu.clip_sgd_``) against clip_gradients + SGD.step."""

import math

import pytest
import torch

from grulm.backends import cpu
from grulm.model import GRULM, GRUConfig
from grulm.optim import clip_and_step, clip_gradients, make_optimizer
from grulm.train import TrainConfig, build_step, train_step

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)

SHAPES = [(768, 28), (768, 256), (768,), (28, 256), (28,), (70_001,)]  # one spans tasks


def _params(scale, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=generator, dtype=dtype).requires_grad_() for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=dtype) * scale
    return params


def _twin(params):
    twins = [p.detach().clone().requires_grad_() for p in params]
    for p, twin in zip(params, twins, strict=True):
        twin.grad = p.grad.clone()
    return twins


def _unfused(params, lrs, clip):
    """The reference: clip_gradients, then torch.optim.SGD, one group per learning rate."""
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs, strict=True)]
    norm = clip_gradients(params, clip)
    torch.optim.SGD(groups, lr=1.0, foreach=True).step()
    return norm


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("scale", [1e-4, 0.05])  # global norm below θ = 1 and above it
def test_fused_equals_clipping_then_sgd(threads, dtype, tolerance, scale):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params = _params(scale, dtype)
        twins = _twin(params)
        lrs = [0.5 + 0.1 * i for i in range(len(params))]
        norm = cpu.clip_sgd_(params, [p.grad for p in params], lrs, 1.0)
        expected = _unfused(twins, lrs, 1.0)
    finally:
        torch.set_num_threads(previous)
    assert (float(expected) > 1.0) == (scale > 1e-3)  # the two cases are what they say
    assert norm.dtype == dtype and norm.dim() == 0
    torch.testing.assert_close(norm, expected, rtol=tolerance, atol=0)
    for p, twin in zip(params, twins, strict=True):
        torch.testing.assert_close(p.grad, twin.grad, rtol=tolerance, atol=tolerance * 1e-2)
        torch.testing.assert_close(p.detach(), twin.detach(), rtol=tolerance, atol=tolerance)


def test_clip_and_step_takes_the_fused_path_for_plain_sgd(monkeypatch):
    model = torch.nn.Linear(256, 28)
    parameters = list(model.parameters())
    for p in parameters:
        p.grad = torch.full_like(p, 0.1)
    twins = _twin(parameters)
    optimizer = make_optimizer(model, "sgd", lr=0.7)

    def step_must_not_run(*args, **kwargs):
        raise AssertionError("the fused path must not call SGD.step")

    monkeypatch.setattr(torch.optim.SGD, "step", step_must_not_run)
    norm = clip_and_step(optimizer, parameters, 1.0, cpu.clip_sgd_)
    monkeypatch.undo()
    expected = _unfused(twins, [0.7, 0.7], 1.0)
    # ATen sums the 7,196 equal squares in float32 (6e-6 off the exact 0.1·√7196); the fused
    # kernel sums in double.
    assert float(norm) == pytest.approx(0.1 * math.sqrt(7196), rel=1e-7)
    torch.testing.assert_close(norm, expected, rtol=1e-5, atol=0)
    for p, twin in zip(parameters, twins, strict=True):
        torch.testing.assert_close(p.detach(), twin.detach())
    assert optimizer.state_dict()["state"] == {}  # as SGD without momentum leaves it


@pytest.mark.parametrize(
    "name, options",
    [("sgd", {"weight_decay": 0.1}), ("adam", {}), ("adamw", {"weight_decay": 0.1})],
)
def test_clip_and_step_falls_back_for_other_optimisers(name, options):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    twin_model = torch.nn.Linear(8, 3)
    twin_model.load_state_dict(model.state_dict())
    optimizers = [make_optimizer(m, name, lr=0.1, **options) for m in (model, twin_model)]
    for m in (model, twin_model):
        for p in m.parameters():
            p.grad = torch.ones_like(p)
    norm = clip_and_step(optimizers[0], list(model.parameters()), 1.0, cpu.clip_sgd_)
    expected = clip_gradients(list(twin_model.parameters()), 1.0)
    optimizers[1].step()
    torch.testing.assert_close(norm, expected)
    for p, twin in zip(model.parameters(), twin_model.parameters(), strict=True):
        torch.testing.assert_close(p, twin, rtol=0, atol=0)


@pytest.mark.parametrize(
    "case", ["momentum", "differentiable", "subset", "missing grad", "float16"]
)
def test_clip_and_step_falls_back_where_plain_sgd_does_not_apply(case):
    model = torch.nn.Linear(8, 3).to(torch.float16 if case == "float16" else torch.float32)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    parameters = list(model.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9 if case == "momentum" else 0,
                                differentiable=case == "differentiable")
    if case == "subset":
        parameters = parameters[:1]
    if case == "missing grad":
        model.bias.grad = None
    calls = []
    if case == "differentiable":  # SGD's own step ran: it refuses leaf tensors that way
        with pytest.raises(RuntimeError, match="leaf Variable"):
            clip_and_step(optimizer, parameters, 1.0, lambda *args: calls.append(args))
    else:
        clip_and_step(optimizer, parameters, 1.0, lambda *args: calls.append(args))
    assert calls == []
    if case == "momentum":
        assert all("momentum_buffer" in s for s in optimizer.state.values())


@pytest.mark.parametrize("backend, fused", [("cpu", True), ("reference", False)])
def test_training_takes_the_backends_fused_step(monkeypatch, backend, fused):
    model = GRULM(GRUConfig(12, 16, backend=backend))
    update = build_step(model, TrainConfig(optimizer="sgd", lr=1.0, clip=1.0))
    steps = []
    real_step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda *a, **k: steps.append(real_step(*a, **k)))
    X = torch.randint(0, 12, (2, 5))
    state = model.begin_state(2)
    for _ in range(3):
        _, state, _ = train_step(model, X, X, state.detach(), update)
    assert (update.fused is not None) == fused
    assert len(steps) == (0 if fused else 3)


def test_a_nan_gradient_poisons_every_parameter_as_unfused():
    params = _params(0.01)
    params[2].grad[5] = math.nan
    twins = _twin(params)
    norm = cpu.clip_sgd_(params, [p.grad for p in params], [1.0] * len(params), 1.0)
    expected = _unfused(twins, [1.0] * len(params), 1.0)
    assert math.isnan(float(norm)) and math.isnan(float(expected))
    for p, twin in zip(params, twins, strict=True):
        assert torch.isnan(p).all() and torch.isnan(twin).all()


def test_mismatched_lists_are_refused():
    params = _params(0.01)
    with pytest.raises(RuntimeError, match="same length"):
        cpu.clip_sgd_(params, [p.grad for p in params], [1.0], 1.0)
    with pytest.raises(RuntimeError, match="shape and dtype"):
        cpu.clip_sgd_(params[:2], [params[1].grad, params[0].grad], [1.0, 1.0], 1.0)
