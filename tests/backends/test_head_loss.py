"""The cpu backend's fused head and loss against ``F.cross_entropy(F.linear(...))``."""

import pytest
import torch
from torch.nn import functional as F

from grulm.backends import cpu
from grulm.model import GRULM, GRUConfig

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)


def _unfused(hidden, weight, bias, targets):
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _loss_and_grads(fn, hidden, weight, bias, targets):
    leaves = [t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias)]
    loss = fn(*leaves, targets)
    (loss * 3.0).backward()  # a non-unit upstream gradient
    return [loss.detach(), *(t.grad for t in leaves)]


def _inputs(B, T, H, V, dtype, seed=0, time_major=False):
    generator = torch.Generator().manual_seed(seed)
    if time_major:  # as the cpu backend returns its outputs: a (B, T, H) view of (T, B, H)
        hidden = torch.randn(T, B, H, generator=generator, dtype=dtype).transpose(0, 1)
    else:
        hidden = torch.randn(B, T, H, generator=generator, dtype=dtype)
    weight = torch.randn(V, H, generator=generator, dtype=dtype) * 0.3
    bias = torch.randn(V, generator=generator, dtype=dtype)
    targets = torch.randint(0, V, (B, T), generator=generator)
    return hidden, weight, bias, targets


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize(("B", "T", "H", "V"), [(32, 35, 256, 28), (3, 7, 20, 11), (1, 1, 5, 3)])
def test_float32_matches_cross_entropy_of_the_head(B, T, H, V, time_major, threads):
    inputs = _inputs(B, T, H, V, torch.float32, time_major=time_major)
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        actual = _loss_and_grads(cpu.head_loss, *inputs)
    finally:
        torch.set_num_threads(default)
    expected = _loss_and_grads(_unfused, *inputs)
    names = ["loss", "d_hidden", "d_weight", "d_bias"]
    for name, a, e in zip(names, actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6, msg=name)


def test_float64_matches_and_passes_gradcheck():
    hidden, weight, bias, targets = _inputs(4, 6, 9, 7, torch.float64, seed=1, time_major=True)
    actual = _loss_and_grads(cpu.head_loss, hidden, weight, bias, targets)
    expected = _loss_and_grads(_unfused, hidden, weight, bias, targets)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)
    leaves = [t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(lambda h, w, b: cpu.head_loss(h, w, b, targets), leaves)


def test_large_logits_stay_finite():
    """The softmax subtracts each row's maximum: logits of ±1e4 give the exact loss."""
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2)
    weight = torch.tensor([[1e4, 0.0], [0.0, 1e4], [-1e4, -1e4]])
    bias = torch.zeros(3)
    targets = torch.tensor([[1, 1]])
    loss = cpu.head_loss(hidden, weight, bias, targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, _unfused(hidden, weight, bias, targets))
    torch.testing.assert_close(loss, torch.tensor(5e3))  # (1e4 + 0) / 2


@pytest.mark.parametrize("bad", [-1, 7])
def test_target_out_of_range_is_a_clear_error(bad):
    hidden, weight, bias, targets = _inputs(2, 3, 4, 7, torch.float32)
    targets[1, 2] = bad
    with pytest.raises(RuntimeError, match=r"target out of range \[0, 7\)"):
        cpu.head_loss(hidden, weight, bias, targets)


def test_model_loss_equals_cross_entropy_of_its_logits():
    """GRULM.loss takes the fused path on the cpu backend and agrees with forward + loss."""
    torch.manual_seed(0)
    model = GRULM(GRUConfig(28, 64, num_layers=2, backend="cpu"))
    X = torch.randint(0, 28, (8, 12))
    Y = torch.randint(0, 28, (8, 12))
    state = torch.randn(2, 8, 64)
    loss, final = model.loss(X, Y, state)
    logits, expected_final = model(X, state)
    expected = F.cross_entropy(logits.reshape(-1, 28), Y.reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final, expected_final)
    assert loss.grad_fn is not None and "FusedHeadLoss" in type(loss.grad_fn).__name__
