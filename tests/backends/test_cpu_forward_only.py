"""The fused ``cpu`` layer's forward-only mode (``save=False``): outputs and final state bit for
bit the saving forward's, nothing saved, and :func:`grulm.backends.cpu.gru_layer` choosing it
exactly when no gradient can flow."""

import pytest
import torch

from grulm.backends import cpu, reference

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)


@pytest.fixture
def threads(request):
    """``torch.set_num_threads(request.param)`` for the test, then the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def _layer(T, B, H, V, dtype, token_ids, seed=0):
    """(x, table, h0, weight_hh, bias_ih, bias_hh) as the op takes them, time-major."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    if token_ids:
        x, table = torch.randint(0, V, (T, B), generator=g), randn(V, 3 * H)
    else:
        x, table = randn(T, B, 3 * H), None
    bound = H ** -0.5
    return x, table, randn(B, H), randn(3 * H, H, scale=bound), randn(3 * H), randn(3 * H)


# B=37, H=136 at T=29 is enough work for a team of three (rows 12 + 12 + 13) and 136 leaves a
# ragged 16-column panel; the small shapes run on one thread.
SHAPES = [(1, 1, 16), (0, 3, 16), (7, 5, 9), (35, 32, 64), (29, 37, 136)]


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize(("T", "B", "H"), SHAPES)
@pytest.mark.parametrize("token_ids", [True, False], ids=["onehot", "features"])
@pytest.mark.parametrize("reset_after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_only_equals_the_saving_forward_bit_for_bit(threads, T, B, H, token_ids,
                                                            reset_after, dtype):  # fmt: skip
    cpu.load()
    args = _layer(T, B, H, 13, dtype, token_ids)
    out, h_T, gates, extra = torch.ops.grulm_cpu.forward(*args, reset_after, True)
    out_f, h_T_f, gates_f, extra_f = torch.ops.grulm_cpu.forward(*args, reset_after, False)
    assert torch.equal(out_f, out) and torch.equal(h_T_f, h_T)
    assert gates.shape == (T, B, 3 * H) and extra.shape == (T, B, H)
    assert gates_f is None and extra_f is None  # nothing kept for a backward


def test_the_op_saves_by_default():
    cpu.load()
    args = _layer(5, 3, 8, 7, torch.float32, token_ids=True)
    _, _, gates, extra = torch.ops.grulm_cpu.forward(*args, False)
    assert gates.shape == (5, 3, 24) and extra.shape == (5, 3, 8)


def _batch_first_args(token_ids, requires_grad):
    """``gru_layer``'s arguments: batch-first x, h0, weight_ih, weight_hh, bias_ih, bias_hh."""
    T, B, H, V = 9, 4, 16, 11
    g = torch.Generator().manual_seed(1)
    x = (torch.randint(0, V, (B, T), generator=g) if token_ids
         else torch.randn(B, T, 6, generator=g))  # fmt: skip
    weights = [torch.randn(3 * H, V if token_ids else 6, generator=g) * 0.3,
               torch.randn(3 * H, H, generator=g) * 0.25, torch.randn(3 * H, generator=g),
               torch.randn(3 * H, generator=g)]  # fmt: skip
    for w in weights:
        w.requires_grad_(requires_grad)
    return x, torch.randn(B, H, generator=g), *weights


@pytest.mark.parametrize("reset_after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("token_ids", [True, False], ids=["onehot", "features"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no_input_requires_grad"])
def test_gru_layer_runs_forward_only_where_no_gradient_flows(layer_saves, reset_after,
                                                             token_ids, mode):  # fmt: skip
    """Same numbers as the training path, no autograd node, and the op asked not to save."""
    args = _batch_first_args(token_ids, requires_grad=True)
    expected_out, expected_h = cpu.gru_layer(*args, reset_after=reset_after)
    assert expected_out.grad_fn is not None  # the training path
    reference_out, _ = reference.gru_layer(*args, reset_after=reset_after)
    torch.testing.assert_close(expected_out, reference_out, rtol=1e-5, atol=1e-6)

    saves = layer_saves
    saves.clear()  # only the calls below
    if mode == "no_input_requires_grad":
        out, h = cpu.gru_layer(*_batch_first_args(token_ids, requires_grad=False),
                               reset_after=reset_after)
    else:
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            out, h = cpu.gru_layer(*args, reset_after=reset_after)
    assert saves == [False]
    assert out.grad_fn is None and not out.requires_grad
    assert torch.equal(out, expected_out.detach()) and torch.equal(h, expected_h.detach())


