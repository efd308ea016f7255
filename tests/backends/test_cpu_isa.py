"""The cpu kernels' instruction sets: choosing one (``GRULM_CPU_ISA``), and every path this CPU
runs against the reference.

The path is chosen once, when the extension loads, so each one runs the cpu backend's parity
tests (outputs, final state, every gradient) in a process of its own with ``GRULM_CPU_ISA``
set; this process's own path is the one the rest of the suite tests.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grulm.backends import cpu
from grulm.errors import ConfigError

pytestmark = pytest.mark.skipif(
    cpu.unavailable() is not None, reason=f"cpu backend unavailable: {cpu.unavailable()}"
)

TESTS = Path(__file__).parent
# The cpu backend's float32/float64 parity grid, the shapes and thread teams beyond it, the
# fused head and the large products (the same tiles), and the check that the forced path is
# the one in use.
PARITY_RUN = [
    str(TESTS / "test_backends_parity.py"), str(TESTS / "test_backends_cpu.py"),
    str(TESTS / "test_head_loss.py"), str(TESTS / "test_cpu_gemm.py"),
    f"{__file__}::test_the_forced_path_is_in_use",
    "-k", "not cuda and not twenty_epoch and (cpu-gru or test_backends_cpu or test_head_loss "
    "or test_cpu_gemm or forced_path)",
]


def _best() -> str:
    cpu.load()
    return torch.ops.grulm_cpu.isa_best()


def _run(env_isa: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, cpu.ISA_VARIABLE: env_isa}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=900)


def test_choosing_a_path():
    assert cpu.choose_isa(None, "avx2") == ("avx2", None)
    assert cpu.choose_isa("", "avx512") == ("avx512", None)
    assert cpu.choose_isa("generic", "avx512-bf16") == ("generic", None)
    assert cpu.choose_isa("avx512", "avx512") == ("avx512", None)
    path, warning = cpu.choose_isa("avx512-bf16", "avx2")
    assert path == "avx2"
    assert "cannot run grulm's avx512-bf16 kernels; using avx2" in warning
    with pytest.raises(ConfigError) as error:
        cpu.choose_isa("sse4", "avx512")
    assert "GRULM_CPU_ISA='sse4'" in str(error.value)
    assert "avx512-bf16, avx512, avx2, generic" in str(error.value)


def test_the_path_in_use_is_reported():
    assert cpu.isa() in cpu.ISAS
    assert cpu.ISAS.index(cpu.isa()) >= cpu.ISAS.index(_best())


def test_the_forced_path_is_in_use():
    forced = os.environ.get(cpu.ISA_VARIABLE)
    if not forced:
        pytest.skip(f"{cpu.ISA_VARIABLE} is not set")
    assert cpu.isa() == forced


def test_the_kernels_refuse_a_path_above_the_cpu_or_unknown():
    cpu.load()
    with pytest.raises(RuntimeError, match="unknown instruction set 'sse4'"):
        torch.ops.grulm_cpu.set_isa("sse4")
    if _best() == cpu.ISAS[0]:
        return  # nothing is above this CPU
    with pytest.raises(RuntimeError, match="this CPU cannot run"):
        torch.ops.grulm_cpu.set_isa(cpu.ISAS[0])


def test_an_unknown_value_is_one_clear_error():
    program = ("import torch; from grulm.backends import cpu; "
               "cpu.gru_layer(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 4), "
               "torch.zeros(12, 3), torch.zeros(12, 4), torch.zeros(12), torch.zeros(12), "
               "reset_after=False)")
    result = _run("sse4", "-c", program)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    message = ("GRULM_CPU_ISA='sse4' is not an instruction set of grulm's cpu kernels: use one "
               "of avx512-bf16, avx512, avx2, generic, or unset it for the best this CPU runs")
    assert last == f"grulm.errors.ConfigError: {message}"
    # The command line says it in one line, and exits with the usage-error status.
    result = _run("sse4", "-m", "grulm.cli", "bench", "--config", "seed", "--repeats", "1",
                  "--only", "grulm/cpu")
    assert result.returncode == 2
    assert result.stderr.strip() == f"grulm bench: error: {message}"


def test_a_path_above_the_cpu_falls_back_with_one_warning():
    best = _best()
    if best == cpu.ISAS[0]:
        pytest.skip(f"this CPU runs every path ({best}): the fallback is covered by "
                    "test_choosing_a_path")
    program = ("import warnings; warnings.simplefilter('always'); from grulm.backends import cpu; "
               "cpu.load(); cpu.load(); print(cpu.isa())")
    result = _run(cpu.ISAS[0], "-c", program)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == best
    assert result.stderr.count("cannot run grulm's") == 1, result.stderr


def test_avx2_and_avx512_give_the_same_bits():
    """The two float32 tiles add each output element's products in the same order."""
    if cpu.ISAS.index(_best()) > cpu.ISAS.index("avx512"):
        pytest.skip(f"this CPU has no AVX-512 (best path: {_best()})")
    torch.manual_seed(0)
    T, B, H = 4, 13, 40  # narrow last panels and partial row tiles on both paths
    results = {}
    before = cpu.isa()
    try:
        for path in ("avx2", "avx512"):
            torch.ops.grulm_cpu.set_isa(path)
            for reset_after in (False, True):
                generator = torch.Generator().manual_seed(1)
                x, h0, w, b_ih, b_hh, g = (
                    torch.randn(shape, generator=generator)
                    for shape in [(T, B, 3 * H), (B, H), (3 * H, H), (3 * H,), (3 * H,), (T, B, H)]
                )
                out, h_T, gates, extra = torch.ops.grulm_cpu.forward(
                    x, None, h0, w, b_ih, b_hh, reset_after)
                grads = torch.ops.grulm_cpu.backward(
                    g, h_T, x, None, h0, out, gates, extra, w, reset_after)
                results[path, reset_after] = [out, h_T, *grads]
    finally:
        torch.ops.grulm_cpu.set_isa(before)
    for reset_after in (False, True):
        for a, b in zip(results["avx2", reset_after], results["avx512", reset_after], strict=True):
            assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("path", cpu.ISAS)
def test_every_path_matches_the_reference(path):
    """The parity tests of the cpu backend, in a process that runs `path`; `avx2` is what a
    CPU without AVX-512 runs, `generic` one without AVX2."""
    best = _best()
    if cpu.ISAS.index(path) < cpu.ISAS.index(best):
        pytest.skip(f"this CPU cannot run the {path} kernels (best path: {best})")
    if path == cpu.isa() and not os.environ.get(cpu.ISA_VARIABLE):
        pytest.skip(f"{path} is this process's path: the suite's own parity tests run on it")
    result = _run(path, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PARITY_RUN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
