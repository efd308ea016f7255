"""The cpu kernels' pool of large buffers (``csrc/block_pool.h``): a freed block of 1 MiB or
more is kept and handed to the next request of its size, so that a training step does not
fault in fresh pages for the same buffers every time. A reused block holds the last call's
values, so results must not depend on what was there."""

import pytest
import torch

from grulm.backends import cpu

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)


def test_a_freed_block_serves_the_next_request_of_its_size():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(1003, 1100, generator=generator), torch.randn(1100, 263, generator=generator)
    first = torch.ops.grulm_cpu.mm(a, b)  # 1003 × 263 floats: just over 1 MiB
    address, expected = first.data_ptr(), first.clone()
    del first
    second = torch.ops.grulm_cpu.mm(a, b)
    assert second.data_ptr() == address
    assert torch.equal(second, expected)


@pytest.mark.parametrize("reset_after", [False, True], ids=["reset_before", "reset_after"])
def test_layers_do_not_read_what_a_reused_block_held(reset_after):
    """The same layer call before and after another on other values gives the same bits,
    though its outputs, saved gates and gradients now sit in blocks the other call filled."""
    T, B, H = 32, 64, 256  # gates, states and gradients of several MiB each

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        leaves = [torch.randn(B, T, H, generator=generator),
                  0.5 * torch.randn(B, H, generator=generator)]
        leaves += [0.1 * torch.randn(shape, generator=generator)
                   for shape in [(3 * H, H), (3 * H, H), (3 * H,), (3 * H,)]]
        leaves = [t.requires_grad_(True) for t in leaves]
        out, h_T = cpu.gru_layer(*leaves, reset_after=reset_after)
        (out.square().sum() + h_T.sum()).backward()
        return [out.detach().clone(), h_T.detach().clone(), *(t.grad for t in leaves)]

    before = run(1)
    run(2)
    after = run(1)
    for x, y in zip(before, after, strict=True):
        assert torch.equal(x, y)
