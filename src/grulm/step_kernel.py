"""The C decoding step (``csrc/step_kernel.c``), compiled on first use with the system compiler.

Single-stream generation on a CPU is bound by the cost of each Python-level call, not by the
arithmetic: a step of a 256-wide GRU is ~0.2 MFLOP. :class:`grulm.generate.GRUStepDecoder`
therefore runs its step (and the whole greedy loop) as one call into this small C library
when it is available, and its NumPy step otherwise; both compute the same thing (tested).

The library is plain C (no Python or torch headers), so it builds in well under a second:
``$CC`` (default ``cc``) ``-O3 -shared``, into ``$GRULM_CACHE/extensions`` under a name that
hashes the source and flags, written atomically; later processes load the cached file. Where
there is no compiler or the build fails, :func:`unavailable` says why and generation uses the
NumPy step (slower, same results).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "step_kernel.c"


class Stack(ctypes.Structure):
    """Mirror of ``Stack`` in ``step_kernel.c``: sizes and the addresses of NumPy arrays."""

    _fields_ = [
        ("layers", ctypes.c_int64),
        ("batch", ctypes.c_int64),
        ("hidden", ctypes.c_int64),
        ("vocab", ctypes.c_int64),
        ("reset_after", ctypes.c_int64),
        ("table", ctypes.c_void_p),
        ("w_out", ctypes.POINTER(ctypes.c_void_p)),
        ("b_out", ctypes.POINTER(ctypes.c_void_p)),
        ("w_hn", ctypes.POINTER(ctypes.c_void_p)),
        ("h", ctypes.POINTER(ctypes.c_void_p)),
        ("gh", ctypes.POINTER(ctypes.c_void_p)),
        ("x", ctypes.c_void_p),
        ("work", ctypes.c_void_p),
    ]


def _compiler() -> str:
    return os.environ.get("CC", "cc")


def _flags() -> list[str]:
    flags = ["-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=fast"]
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine() in ("x86_64", "AMD64") and capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def library_path() -> Path:
    """Where the library for this source, compiler and flag set lives."""
    from grulm.data.sources import cache_dir

    key = hashlib.sha1(SOURCE.read_bytes())
    key.update(" ".join([platform.machine(), _compiler(), *_flags()]).encode())
    return cache_dir() / "extensions" / f"grulm_step-{key.hexdigest()[:16]}.so"


def _build(target: Path) -> None:
    """Compile to a temporary file beside ``target``, then rename it into place."""
    if shutil.which(_compiler()) is None:
        raise OSError(f"no C compiler {_compiler()!r} on PATH (set CC to one)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    try:
        result = subprocess.run(
            [_compiler(), *_flags(), "-o", tmp, str(SOURCE), "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["failed"]
            raise OSError(f"{_compiler()} failed: {lines[0][:300]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load() -> ctypes.CDLL | str:
    """The loaded library, building it first if needed; or why it cannot be had."""
    try:
        target = library_path()
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        return f"could not build the C step kernel: {error}"
    for suffix in ("f32", "f64"):
        step = getattr(lib, f"grulm_step_{suffix}")
        step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        step.restype = None
        greedy = getattr(lib, f"grulm_greedy_{suffix}")
        greedy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        greedy.argtypes += [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        greedy.restype = None
        prefill = getattr(lib, f"grulm_prefill_{suffix}")
        prefill.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        prefill.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded C library (built on the first call), or None where it cannot be built."""
    lib = _load()
    return None if isinstance(lib, str) else lib


def unavailable() -> str | None:
    """Why the C step cannot be used here, or None if it can."""
    lib = _load()
    return lib if isinstance(lib, str) else None


def pointers(arrays) -> ctypes.Array:
    """A C array of the data addresses of NumPy ``arrays`` (None → NULL)."""
    return (ctypes.c_void_p * len(arrays))(*[None if a is None else a.ctypes.data for a in arrays])
