"""The one toolchain for grulm's compiled code: every source in ``csrc/`` is ONE torch extension.

The training kernels (the fused GRU layer, the fused head and loss, fused clipping + SGD) and
the generation kernel (single-step decoding) are C++ functions registered as ``torch.ops``
under :data:`LIBRARY_NAME`. They are compiled just in time by ``torch.utils.cpp_extension``
with ninja, once per source, torch version and flag set, into one cache directory
(:func:`build_dir`); later processes load the cached library directly.

One fallback policy: where the library cannot be built (no C++ compiler, no ninja, a failing
build), :func:`unavailable` says why and what to install, the backends that need it report
themselves unavailable, and ``backend='auto'`` (for training and for decoding alike) warns once
and uses the readable PyTorch code instead.
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

LIBRARY_NAME = "grulm_cpu"
CSRC = Path(__file__).with_name("csrc")
INSTALL_HINT = "install a C++ compiler (g++ or clang++) and ninja (pip install ninja)"


def sources() -> list[Path]:
    """The C++ translation units of the extension."""
    return sorted(CSRC.glob("*.cpp"))


def headers() -> list[Path]:
    return sorted(CSRC.glob("*.h"))


def isa_flags() -> list[str]:
    """The library's baseline vector instructions: AVX2/FMA where PyTorch itself uses them.

    Only the baseline: the AVX-512 tiles (``csrc/packed_avx512.h``) carry their instruction set
    as per-function target attributes and run only where the CPU has it (``csrc/isa.h``), so
    that the library built here loads on any x86-64 CPU with AVX2. Without these flags the
    kernels use ATen products and the compiler's own vectorisation (the ``generic`` path).
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine() in ("x86_64", "AMD64") and capability in ("AVX2", "AVX512"):
        return ["-mavx2", "-mfma"]
    return []


def compile_flags() -> list[str]:
    """Optimisation flags: no errno or trap bookkeeping in the math, OpenMP for thread teams."""
    return ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", *isa_flags()]


def build_dir() -> Path:
    """Where the compiled library for these sources, this torch version and flag set lives.

    Beside PyTorch's own just-in-time extensions: ``$TORCH_EXTENSIONS_DIR``, else
    ``$XDG_CACHE_HOME/torch_extensions`` (``~/.cache/torch_extensions``). Not under
    ``$GRULM_CACHE``, so that runs with a fresh data cache (tests, sandboxes) reuse the build.
    """
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(cache) / "torch_extensions"
    key = hashlib.sha1()
    for path in (*sources(), *headers()):
        key.update(path.name.encode())
        key.update(path.read_bytes())
    key.update(f"{torch.__version__} {torch.version.git_version}".encode())
    key.update(" ".join([platform.machine(), *compile_flags()]).encode())
    return Path(root).expanduser() / f"{LIBRARY_NAME}-{key.hexdigest()[:16]}"


def _tool_dirs() -> list[str]:
    """Directories that may hold ninja: the interpreter's (a venv used without activation does
    not have it on PATH) and the ``ninja`` package's."""
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja

        dirs.append(ninja.BIN_DIR)
    except ImportError:
        pass
    return dirs


def _missing_tool() -> str | None:
    """The build tool this machine lacks, named as what to install; None if both are there."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler {compiler!r} on PATH ({INSTALL_HINT}, or set CXX to one)"
    if shutil.which("ninja") is None:
        return f"no ninja on PATH ({INSTALL_HINT})"
    return None


def _build(target: Path) -> None:
    """Compile the extension, load it, and move the library to ``target`` atomically.

    Raises:
        RuntimeError (or OSError): a tool is missing or the build failed.
    """
    os.environ["PATH"] = os.pathsep.join([*_tool_dirs(), os.environ.get("PATH", "")])
    missing = _missing_tool()
    if missing is not None:
        raise RuntimeError(missing)
    from torch.utils import cpp_extension  # imports setuptools: only when building

    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / "build"
    work.mkdir(exist_ok=True)
    cpp_extension.load(
        name=LIBRARY_NAME,
        sources=[str(path) for path in sources()],
        extra_cflags=compile_flags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(work),
        is_python_module=False,
        verbose=False,
    )
    # Copy then rename, so that another process never loads a half-written library.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        shutil.copyfile(work / f"{LIBRARY_NAME}.so", tmp.name)
    os.replace(tmp.name, target)


@functools.cache
def _load() -> str | None:
    """Load the extension, building it first if needed; None on success, else the reason."""
    if hasattr(torch.ops, LIBRARY_NAME) and hasattr(getattr(torch.ops, LIBRARY_NAME), "forward"):
        return None
    try:
        target = build_dir() / f"{LIBRARY_NAME}.so"
        if target.exists():
            torch.ops.load_library(str(target))
        else:
            _build(target)  # loads the freshly built library into this process
    except (RuntimeError, OSError, ImportError, SystemExit) as error:
        return f"could not build grulm's C++ kernels: {_summary(error)}"
    return None


def _summary(error: BaseException) -> str:
    """One line from a build failure: the first compiler error if there is one, and what to
    install where that is not already said."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "not found" in line]
    line = (errors or lines or [type(error).__name__])[0][:300]
    return line if INSTALL_HINT in line else f"{line} ({INSTALL_HINT})"


def unavailable() -> str | None:
    """Why the compiled kernels cannot run here (the extension failed to build or load), or None.

    The first call builds the extension if this machine has no cached copy (tens of seconds),
    or loads the cached one.
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
