"""The ``cpu`` backend: a fused GRU layer in C++ with a hand-written backward through time.

Same contract as :func:`grulm.backends.reference.gru_layer`, both variants. What makes it fast
on a CPU (see ``csrc/gru_cpu.cpp``):

- the input projection is hoisted out of the time loop: one matrix product for features; for
  one-hot input the kernel reads the row of ``W_ih^T`` each token id selects, and scatters the
  gradient back into those rows;
- per step, the recurrent products of all gates are one matrix product (reset-after) or two
  (reset-before: ``h W_hrz^T``, then ``(R ⊙ h) W_hn^T``), each followed by ONE fused
  elementwise pass that writes the gates, the saved activations and the next state. The
  products run on a small kernel of our own (``csrc/packed_matmul.h``): ``W_hh`` is packed once
  per call into 16-column panels and a 4×16 AVX2/FMA register tile multiplies against it,
  about 1.5× MKL's speed on these few-row shapes, with no dispatch per step;
- backward is a custom :class:`torch.autograd.Function` that walks the steps in reverse with
  one product per step for ``dh`` (two for reset-before) and forms ``dW_hh`` and the bias
  gradients once, over all T·B rows, after the loop;
- the time loop runs inside one OpenMP team in which each thread owns a block of the batch's
  sequences and walks all T steps for them: sequences do not interact, so the threads never
  wait for each other inside the loop. Calls too small to pay for a team run on one thread.

The same extension has the output head and the loss fused (``csrc/head_loss.cpp``,
:func:`head_loss`, used by :meth:`grulm.model.GRULM.loss`): logits, softmax, mean
cross-entropy and their gradients without ATen's three awkwardly shaped products; and
gradient clipping fused with a plain SGD step (``csrc/clip_sgd.cpp``, :func:`clip_sgd_`, which
:func:`grulm.optim.clip_and_step` takes for this backend's models).

The extension is compiled just in time, once per source/torch version/flags, by
``torch.utils.cpp_extension`` with ninja (about 23 s on two cores), into PyTorch's extension
directory (see :func:`build_dir`); later processes load the cached library directly (~2 ms).
Where it cannot be built (no compiler, no ninja, a failing build) :func:`unavailable` says why
and ``backend='auto'`` falls back to the next backend with one warning.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

LIBRARY_NAME = "grulm_cpu"
CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "gru_cpu.cpp", CSRC / "head_loss.cpp", CSRC / "clip_sgd.cpp")
HEADERS = (CSRC / "activations.h", CSRC / "packed_matmul.h", CSRC / "team.h")


def _compile_flags() -> list[str]:
    """Optimisation flags for this machine: AVX2/FMA where PyTorch itself uses them."""
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine() in ("x86_64", "AMD64") and capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def build_dir() -> Path:
    """Where the compiled library for this source, torch version and flag set lives.

    Beside PyTorch's own just-in-time extensions: ``$TORCH_EXTENSIONS_DIR``, else
    ``$XDG_CACHE_HOME/torch_extensions`` (``~/.cache/torch_extensions``). Not under
    ``$GRULM_CACHE``, so that runs with a fresh data cache (tests, sandboxes) reuse the build.
    """
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(cache) / "torch_extensions"
    key = hashlib.sha1()
    for path in (*SOURCES, *HEADERS):
        key.update(path.read_bytes())
    key.update(f"{torch.__version__} {torch.version.git_version}".encode())
    key.update(" ".join([platform.machine(), *_compile_flags()]).encode())
    return Path(root).expanduser() / f"{LIBRARY_NAME}-{key.hexdigest()[:16]}"


def _build(target: Path) -> None:
    """Compile the extension and move the library to ``target`` atomically.

    Raises:
        RuntimeError (or OSError): the compiler or ninja is missing or the build failed.
    """
    from torch.utils import cpp_extension  # imports setuptools: only when building

    # ninja from PyPI lives next to the interpreter; a venv used without activation does not
    # have that directory on PATH.
    bin_dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja

        bin_dirs.append(ninja.BIN_DIR)
    except ImportError:
        pass
    os.environ["PATH"] = os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")])
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / "build"
    work.mkdir(exist_ok=True)
    cpp_extension.load(
        name=LIBRARY_NAME,
        sources=[str(path) for path in SOURCES],
        extra_cflags=_compile_flags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(work),
        is_python_module=False,
        verbose=False,
    )
    # Copy then rename, so another process never loads a half-written library.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        shutil.copyfile(work / f"{LIBRARY_NAME}.so", tmp.name)
    os.replace(tmp.name, target)


@functools.cache
def _load() -> str | None:
    """Load the extension, building it first if needed; None on success, else the reason."""
    if hasattr(torch.ops, LIBRARY_NAME) and hasattr(torch.ops.grulm_cpu, "forward"):
        return None
    try:
        target = build_dir() / f"{LIBRARY_NAME}.so"
        if target.exists():
            torch.ops.load_library(str(target))
        else:
            _build(target)  # loads the freshly built library into this process
    except (RuntimeError, OSError, ImportError, SystemExit) as error:
        return f"could not build the C++ extension: {_summary(error)}"
    return None


def _summary(error: BaseException) -> str:
    """One line from a build failure: the first compiler error if there is one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "not found" in line]
    return (errors or lines or [type(error).__name__])[0][:300]


def unavailable() -> str | None:
    """Why the backend cannot run here (the extension failed to build or load), or None.

    The first call builds the extension if this machine has no cached copy (about 23 s
    on two cores), or loads the cached one.
    """
    return _load()


def load() -> None:
    """Build (if needed) and load the extension now.

    Raises:
        RuntimeError: it cannot be built or loaded here; the message says why.
    """
    reason = _load()
    if reason is not None:
        raise RuntimeError(reason)


class FusedGRULayer(torch.autograd.Function):
    """One GRU layer over T steps, time-major, with the backward written out by hand.

    Inputs: ``x`` — (T, B, 3H) projected features ``x W_ih^T`` (no bias), or (T, B) int64
    token ids with ``table`` = ``W_ih^T`` (V, 3H) (else None); ``h0`` (B, H); ``weight_hh``
    (3H, H); ``bias_ih``, ``bias_hh`` (3H,); ``reset_after`` (bool).
    Outputs: the state after every step (T, B, H) and the final state (B, H).
    """

    @staticmethod
    def forward(ctx, x, table, h0, weight_hh, bias_ih, bias_hh, reset_after):
        out, h_T, gates, extra = torch.ops.grulm_cpu.forward(
            x, table, h0, weight_hh, bias_ih, bias_hh, reset_after
        )
        ctx.save_for_backward(x, table, h0, out, gates, extra, weight_hh)
        ctx.reset_after = reset_after
        return out, h_T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_h_T):
        x, table, h0, out, gates, extra, weight_hh = ctx.saved_tensors
        d_x, d_h0, d_weight_hh, d_bias_ih, d_bias_hh = torch.ops.grulm_cpu.backward(
            grad_out, grad_h_T, x, table, h0, out, gates, extra, weight_hh, ctx.reset_after
        )
        if table is None:
            return d_x, None, d_h0, d_weight_hh, d_bias_ih, d_bias_hh, None
        return None, d_x, d_h0, d_weight_hh, d_bias_ih, d_bias_hh, None


def gru_layer(
    x: Tensor,
    h0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    *,
    reset_after: bool,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`grulm.backends.reference.gru_layer`.

    Args:
        x: (B, T) int64 token ids (one-hot input) or (B, T, I) features.
        h0: (B, H); weight_ih: (3H, V) or (3H, I); weight_hh: (3H, H); biases: (3H,).
        reset_after: the cuDNN variant if True, the textbook (reset-before) one if False.

    Returns:
        outputs (B, T, H) (a batch-first view of time-major storage) and h_T (B, H).

    Raises:
        RuntimeError: the extension cannot be built or loaded here.
    """
    load()
    if x.dtype == torch.int64:
        # One-hot input: the kernel gathers rows of W_ih^T by token id, step by step.
        x, table = x.T, weight_ih.T.contiguous()  # (T, B), (V, 3H)
    else:
        x, table = torch.nn.functional.linear(x.transpose(0, 1), weight_ih), None  # (T, B, 3H)
    out, h_T = FusedGRULayer.apply(x, table, h0, weight_hh, bias_ih, bias_hh, reset_after)
    return out.transpose(0, 1), h_T


class FusedHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of ``softmax(x W^T + b)`` against ``targets``, with its backward.

    Inputs: ``x`` (M, H), ``weight`` (V, H), ``bias`` (V,), ``targets`` (M,) int64.
    Output: the mean loss, 0-dim.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, targets):
        loss, probs = torch.ops.grulm_cpu.head_loss_forward(x, weight, bias, targets)
        ctx.save_for_backward(x, weight, probs, targets)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        x, weight, probs, targets = ctx.saved_tensors
        d_x, d_weight, d_bias = torch.ops.grulm_cpu.head_loss_backward(
            grad_loss, x, weight, probs, targets
        )
        return d_x, d_weight, d_bias, None


def head_loss(hidden: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias) over all positions, targets)``, fused.

    The logits are never returned: for training and evaluation, which need only the loss.

    Args:
        hidden: (B, T, H) the last layer's outputs (a batch-first view of time-major storage
            from :func:`gru_layer` is read without a copy).
        weight: (V, H); bias: (V,): the head.
        targets: (B, T) int64 token ids.

    Returns:
        The mean loss over all B·T positions, 0-dim.

    Raises:
        RuntimeError: a target outside [0, V), or the extension cannot be built or loaded.
    """
    load()
    x = hidden.transpose(0, 1).reshape(-1, hidden.shape[-1])  # (T·B, H): time-major rows
    return FusedHeadLoss.apply(x, weight, bias, targets.T.reshape(-1))


def clip_sgd_(
    params: list[Tensor], grads: list[Tensor], lrs: list[float], max_norm: float
) -> Tensor:
    """Clip ``grads`` to global L2 norm ``max_norm``, then ``params[i] -= lrs[i] * grads[i]``.

    In place, in two passes over memory; the same as clipping by the global norm followed by
    ``torch.optim.SGD`` without momentum or weight decay.

    Args:
        params, grads: non-empty lists of dense, contiguous CPU float32/float64 tensors,
            ``grads[i]`` of ``params[i]``'s shape and dtype.
        lrs: the learning rate of each parameter.

    Returns:
        The gradients' norm before clipping, 0-dim (NaN if a gradient is NaN, and then every
        parameter becomes NaN too, as unfused).

    Raises:
        RuntimeError: the lists do not fit together, or the extension cannot be loaded.
    """
    load()
    with torch.no_grad():
        return torch.ops.grulm_cpu.clip_sgd_(params, grads, lrs, max_norm)
