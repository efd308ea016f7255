"""The cpu backend's bf16 precision: every matrix product of the layer from bfloat16-rounded
operands with float32 accumulation.

Checked against an oracle written here from the textbook equations, whose every product (and
every product of its backward, through :class:`_Bf16Product`) rounds its operands with
``.bfloat16().float()`` and multiplies in float32; gathered rows of one-hot input stay exact.
Then against float32 itself: bf16 must train the same model (loss within 1%, gradients
pointing the same way). Both on this process's path and, in a subprocess, on the emulated
path (``GRULM_CPU_ISA=avx512``: no ``vdpbf16ps``).
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from grulm.backends import cpu

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)

# Oracle and kernel round the same float32 values, but those come from float32 sums added in
# different orders (~1e-6 relative apart), so now and then an operand lands on the other side
# of a bf16 rounding boundary: a 2^-8 relative change of one term of a sum of H terms, carried
# through the steps. Seen: at most 4e-5 of each tensor's largest magnitude (16 seeded cases,
# both paths); allowed: 5e-4, still ten times tighter than bf16's own distance from float32.
RTOL, ATOL = 5e-4, 5e-4
CASES = [(input_kind, variant) for input_kind in ("onehot", "features")
         for variant in ("reset_before", "reset_after")]
CASE_IDS = [f"{i}-{v}" for i, v in CASES]


def _r(t):
    return t.bfloat16().float()


class _Bf16Product(torch.autograd.Function):
    """a @ b of rounded operands; its backward's two products round theirs as well."""

    @staticmethod
    def forward(ctx, a, b):
        a, b = _r(a), _r(b)
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = _r(grad)
        return grad @ b.T, a.T @ grad


def _oracle_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, *, reset_after):
    """The GRU layer (both variants) with every product through :class:`_Bf16Product`."""
    mm = _Bf16Product.apply
    H = h0.shape[1]
    if x.dtype == torch.int64:
        xp = weight_ih.T[x]  # (B, T, 3H): a one-hot product is an exact row gather
    else:
        xp = mm(x.reshape(-1, x.shape[-1]), weight_ih.T).view(*x.shape[:2], 3 * H)
    h, outputs = h0, []
    for t in range(xp.shape[1]):
        x_r, x_z, x_n = (xp[:, t] + bias_ih).chunk(3, -1)  # (B, H) each
        if reset_after:
            g_r, g_z, g_n = (mm(h, weight_hh.T) + bias_hh).chunk(3, -1)  # (B, H) each
            R, Z = torch.sigmoid(x_r + g_r), torch.sigmoid(x_z + g_z)  # (B, H)
            H_tilde = torch.tanh(x_n + R * g_n)  # (B, H)
        else:
            g_r, g_z = (mm(h, weight_hh[: 2 * H].T) + bias_hh[: 2 * H]).chunk(2, -1)
            R, Z = torch.sigmoid(x_r + g_r), torch.sigmoid(x_z + g_z)  # (B, H)
            H_tilde = torch.tanh(x_n + mm(R * h, weight_hh[2 * H:].T) + bias_hh[2 * H:])
        h = Z * h + (1 - Z) * H_tilde  # (B, H)
        outputs.append(h)
    return torch.stack(outputs, 1), h


def _inputs(input_kind, B=5, T=7, I=12, H=16, seed=0):  # noqa: E741
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, I, (B, T), generator=generator) if input_kind == "onehot"
         else torch.randn(B, T, I, generator=generator))
    h0 = 0.5 * torch.randn(B, H, generator=generator)
    params = [0.3 * torch.randn(shape, generator=generator)
              for shape in [(3 * H, I), (3 * H, H), (3 * H,), (3 * H,)]]
    head = 0.3 * torch.randn(I, H, generator=generator)
    targets = torch.randint(0, I, (B, T), generator=generator)
    return x, h0, params, head, targets


def _run(layer, x, h0, params, head, targets, **options):
    """The layer under a cross-entropy head: loss, outputs, final state, every gradient."""
    x = x if x.dtype == torch.int64 else x.clone().requires_grad_(True)
    h0 = h0.clone().requires_grad_(True)
    params = [p.clone().requires_grad_(True) for p in params]
    out, h_T = layer(x, h0, *params, **options)
    loss = F.cross_entropy((out @ head.T).flatten(0, 1), targets.flatten())
    (loss + h_T.square().mean()).backward()
    grads = {"h0": h0.grad, **{n: p.grad for n, p in zip(("w_ih", "w_hh", "b_ih", "b_hh"),
                                                           params, strict=True)}}
    if x.dtype != torch.int64:
        grads["x"] = x.grad
    return loss.detach(), {"outputs": out.detach(), "h_T": h_T.detach(), **grads}


@pytest.mark.parametrize(("input_kind", "variant"), CASES, ids=CASE_IDS)
def test_bf16_matches_the_bf16_oracle(input_kind, variant):
    inputs = _inputs(input_kind)
    reset_after = variant == "reset_after"
    loss, actual = _run(cpu.gru_layer, *inputs, reset_after=reset_after, precision="bf16")
    expected_loss, expected = _run(_oracle_layer, *inputs, reset_after=reset_after)
    torch.testing.assert_close(loss, expected_loss, rtol=RTOL, atol=0)
    for what, e in expected.items():
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(actual[what], e, rtol=RTOL, atol=ATOL * scale, msg=what)


@pytest.mark.parametrize(("input_kind", "variant"), CASES, ids=CASE_IDS)
def test_bf16_trains_like_float32(input_kind, variant):
    """On a wider layer: the loss within 1% and every gradient at cosine ≥ 0.999."""
    inputs = _inputs(input_kind, B=8, T=20, I=40, H=64, seed=1)
    reset_after = variant == "reset_after"
    loss, bf16 = _run(cpu.gru_layer, *inputs, reset_after=reset_after, precision="bf16")
    loss32, float32 = _run(cpu.gru_layer, *inputs, reset_after=reset_after)
    assert abs(loss - loss32) <= 1e-2 * abs(loss32)
    assert not torch.equal(bf16["w_hh"], float32["w_hh"])  # bf16 did round something
    for what, g in float32.items():
        cosine = F.cosine_similarity(bf16[what].flatten(), g.flatten(), dim=0)
        assert cosine >= 0.999, what


def test_the_bf16_product_op():
    """mm(bf16=True) against a float32 product of rounded operands: odd K, partial tiles and
    panels, and a transposed left-hand side."""
    generator = torch.Generator().manual_seed(2)
    for M, K, N in [(1, 1, 1), (13, 7, 40), (300, 129, 33), (9, 600, 96)]:
        a = torch.randn(K, M, generator=generator).T  # strided
        b = torch.randn(K, N, generator=generator)
        expected = _r(a).double() @ _r(b).double()
        actual = torch.ops.grulm_cpu.mm(a, b, bf16=True)
        assert actual.dtype == torch.float32
        torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5 * K ** 0.5)


def test_bf16_refuses_float64_and_unknown_precisions():
    x, h0, params, _, _ = _inputs("onehot")
    with pytest.raises(ValueError, match="precision 'bf16' rounds float32 operands"):
        cpu.gru_layer(x, h0.double(), *[p.double() for p in params], reset_after=False,
                      precision="bf16")
    with pytest.raises(ValueError, match="use one of float32, bf16"):
        cpu.gru_layer(x, h0, *params, reset_after=False, precision="fp8")


def _subprocess(isa: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, cpu.ISA_VARIABLE: isa}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_emulated_bf16_warns_once():
    program = ("import warnings, torch; warnings.simplefilter('always'); "
               "from grulm.backends import cpu; x = torch.zeros(2, 3, dtype=torch.long); "
               "p = [torch.zeros(12, 4), torch.zeros(12, 4), torch.zeros(12), torch.zeros(12)]; "
               "[cpu.gru_layer(x, torch.zeros(2, 4), *p, reset_after=True, precision='bf16') "
               "for _ in range(2)]; print(cpu.isa())")
    result = _subprocess("avx2", "-c", program)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("bf16 precision on the avx2 kernels is emulated") == 1
    assert result.stdout.strip() == "avx2"


def test_the_emulated_path_matches_too():
    """This file's oracle and float32 tests on the AVX-512 path without vdpbf16ps."""
    if os.environ.get(cpu.ISA_VARIABLE):
        pytest.skip(f"already on a forced path ({os.environ[cpu.ISA_VARIABLE]})")
    if cpu.isa() != "avx512-bf16":
        pytest.skip(f"this process's path ({cpu.isa()}) already emulates bf16")
    result = _subprocess("avx512", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "-W", "ignore::UserWarning", __file__,
                         "-k", "oracle or float32 or product_op")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "9 passed" in result.stdout, result.stdout[-1000:]
