"""The cpu backend's float32 matrix product (``csrc/gemm_f32.h``, the op ``grulm_cpu::mm``):
the input projection of features, its gradients and the layers' weight gradients run on it.

Products of 2^28 multiply-adds or more run on grulm's tiles; smaller ones, which fit in cache,
are ATen's. The tiled ones are checked against a float64 product on a shape that exercises
every edge of the blocking: three slices of K (the last short), row blocks of 64 split over a
thread team with a remainder, a partial register tile and a narrow last panel; with operands
read transposed, as the weight gradients read the states.
"""

import pytest
import torch

from grulm.backends import cpu

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)

TILED_MIN = 1 << 28  # multiply-adds
TILED = (1003, 1100, 263)  # M, K, N: 290 million multiply-adds
SHAPES = [(1, 1, 1), (13, 40, 33), (300, 64, 1536), TILED]


def _operands(M, K, N, *, a_transposed, b_transposed, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(K, M, generator=generator).T if a_transposed else torch.randn(
        M, K, generator=generator)
    b = torch.randn(N, K, generator=generator).T if b_transposed else torch.randn(
        K, N, generator=generator)
    return a, b


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("a_transposed", [False, True], ids=["a", "a^T"])
@pytest.mark.parametrize("b_transposed", [False, True], ids=["b", "b^T"])
@pytest.mark.parametrize(("M", "K", "N"), SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in SHAPES])
def test_the_product_matches_float64(M, K, N, a_transposed, b_transposed, threads):
    a, b = _operands(M, K, N, a_transposed=a_transposed, b_transposed=b_transposed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        actual = torch.ops.grulm_cpu.mm(a, b)
    finally:
        torch.set_num_threads(before)
    assert actual.dtype == torch.float32 and actual.shape == (M, N)
    expected = a.double() @ b.double()
    # float32 rounding of K products: relative to the size of the terms, not of the sum.
    scale = (a.double().abs() @ b.double().abs()).clamp_min(1.0)
    assert ((actual.double() - expected).abs() / scale).max() <= 4e-7 * K ** 0.5


def test_large_products_run_on_the_tiles_and_small_ones_are_aten_s():
    """ATen's product gives other bits than the tiles' (another order of additions), so bit
    equality with torch.mm tells which one ran."""
    if cpu.isa() == "generic":
        pytest.skip("the generic path has no tiles: every product is ATen's")
    for M, K, N in SHAPES:
        a, b = _operands(M, K, N, a_transposed=True, b_transposed=False, seed=2)
        assert torch.equal(torch.ops.grulm_cpu.mm(a, b), torch.mm(a, b)) == (M * K * N < TILED_MIN)


def test_the_result_does_not_depend_on_the_threads():
    """Each thread owns whole rows of the output and adds every element's products in order of
    k, so one thread and two give the same bits."""
    a, b = _operands(*TILED, a_transposed=True, b_transposed=False, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.grulm_cpu.mm(a, b)
        torch.set_num_threads(2)
        two = torch.ops.grulm_cpu.mm(a, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_float64_is_aten_s_product():
    a, b = _operands(*TILED, a_transposed=True, b_transposed=False)
    a, b = a.double(), b.double()
    assert torch.equal(torch.ops.grulm_cpu.mm(a, b), torch.mm(a, b))


def test_empty_products():
    assert torch.equal(torch.ops.grulm_cpu.mm(torch.ones(3, 0), torch.ones(0, 4)),
                       torch.zeros(3, 4))
    assert torch.ops.grulm_cpu.mm(torch.ones(0, 5), torch.ones(5, 4)).shape == (0, 4)


@pytest.mark.parametrize(("a", "b", "message"), [
    (torch.ones(3, 4), torch.ones(5, 2), r"needs \(M, K\) and \(K, N\)"),
    (torch.ones(3), torch.ones(3, 2), r"needs \(M, K\) and \(K, N\)"),
    (torch.ones(3, 4), torch.ones(4, 2, dtype=torch.float64), "two float32 or two float64"),
    (torch.ones(3, 4, dtype=torch.int64), torch.ones(4, 2, dtype=torch.int64),
     "two float32 or two float64"),
])
def test_bad_operands_are_refused(a, b, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.grulm_cpu.mm(a, b)


def test_avx2_and_avx512_give_the_same_bits():
    """Both tiles add each element's products in order of k, one FMA each."""
    if cpu.ISAS.index(torch.ops.grulm_cpu.isa_best()) > cpu.ISAS.index("avx512"):
        pytest.skip("this CPU has no AVX-512")
    a, b = _operands(*TILED, a_transposed=True, b_transposed=False, seed=4)
    before = cpu.isa()
    results = {}
    try:
        for path in ("avx2", "avx512"):
            torch.ops.grulm_cpu.set_isa(path)
            results[path] = torch.ops.grulm_cpu.mm(a, b)
    finally:
        torch.ops.grulm_cpu.set_isa(before)
    assert torch.equal(results["avx2"], results["avx512"])


@pytest.mark.parametrize("reset_after", [False, True], ids=["reset_before", "reset_after"])
def test_a_layer_large_enough_for_the_tiles_matches_the_reference(reset_after):
    """A layer over features whose input projection, its gradients and weight gradients are
    large enough to run on the tiles (T·B = 2048 rows, H = I = 256): outputs, final state and
    every gradient against the reference in float64."""
    from grulm.backends import reference

    T, B, H = 32, 64, 256
    assert 2 * H * T * B * H >= TILED_MIN  # dW_hh, the smallest of the tiled products
    generator = torch.Generator().manual_seed(5)
    inputs = [torch.randn(B, T, H, generator=generator),
              0.5 * torch.randn(B, H, generator=generator)]
    inputs += [0.1 * torch.randn(shape, generator=generator)
               for shape in [(3 * H, H), (3 * H, H), (3 * H,), (3 * H,)]]
    g_out, g_h = torch.randn(B, T, H, generator=generator), torch.randn(B, H, generator=generator)

    def run(layer, dtype):
        leaves = [t.to(dtype, copy=True).requires_grad_(True) for t in inputs]
        out, h_T = layer(*leaves, reset_after=reset_after)
        ((out * g_out.to(dtype)).sum() + (h_T * g_h.to(dtype)).sum()).backward()
        return [out.detach(), h_T.detach(), *(t.grad for t in leaves)]

    names = ["outputs", "h_T", "d_x", "d_h0", "d_w_ih", "d_w_hh", "d_b_ih", "d_b_hh"]
    for name, actual, expected in zip(names, run(cpu.gru_layer, torch.float32),
                                      run(reference.gru_layer, torch.float64), strict=True):
        torch.testing.assert_close(actual.double(), expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item(), msg=name)
