"""The cpu backend's float32 matrix product (``csrc/gemm_f32.h``, the op ``grulm_cpu::mm``):
the input projection of features, its gradients and the layers' weight gradients run on it.

Checked against a float64 product on shapes that exercise every edge of its blocking: partial
register tiles and panels, more than one slice of K, row blocks split over a thread team, and
operands read transposed (as the weight gradients read the states).
"""

import pytest
import torch

from grulm.backends import cpu

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)

SHAPES = [  # M, K, N
    (1, 1, 1),
    (7, 3, 5),  # less than one tile and one panel
    (13, 40, 33),  # a partial tile after a whole one, a narrow last panel
    (130, 1100, 70),  # three slices of K, row blocks of 64 and a remainder
    (300, 64, 1536),  # the step's shapes: many panels
    (1536, 700, 96),  # tall: row blocks on both threads
]


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


def test_the_result_does_not_depend_on_the_threads():
    """Each thread owns whole rows of the output and adds every element's products in order of
    k, so one thread and two give the same bits."""
    a, b = _operands(1536, 700, 96, a_transposed=True, b_transposed=False, seed=3)
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
    a, b = _operands(130, 1100, 70, a_transposed=True, b_transposed=False)
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
    a, b = _operands(130, 1100, 70, a_transposed=True, b_transposed=False, seed=4)
    before = cpu.isa()
    results = {}
    try:
        for path in ("avx2", "avx512"):
            torch.ops.grulm_cpu.set_isa(path)
            results[path] = torch.ops.grulm_cpu.mm(a, b)
    finally:
        torch.ops.grulm_cpu.set_isa(before)
    assert torch.equal(results["avx2"], results["avx512"])
