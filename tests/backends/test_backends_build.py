"""The one toolchain for compiled code: what the cache key covers, and the one fallback policy
where the extension cannot be built (one warning naming what to install, then the readable
PyTorch code, for training and generation alike)."""

import os
import subprocess
import sys
import textwrap

from grulm.backends import build


def test_the_cache_key_covers_every_source_and_header():
    names = {path.name for path in (*build.sources(), *build.headers())}
    assert {"gru_cpu.cpp", "head_loss.cpp", "clip_sgd.cpp", "decode_step.cpp"} <= names
    assert {"activations.h", "packed_matmul.h", "team.h"} <= names
    assert build.build_dir().name.startswith(f"{build.LIBRARY_NAME}-")
    assert build.compile_flags()[0] == "-O3"


def _run(script: str, tmp_path, **env) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter with an empty extension cache and ``env``."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_without_a_compiler_training_and_generation_fall_back_with_one_warning(tmp_path):
    """No working compiler and nothing cached: ONE warning, naming what to install, for a model
    that trains and then generates; the reference layer and the reference step run, and the
    text is the one ``forward`` gives."""
    result = _run(
        """
        import warnings
        import torch
        from grulm.backends import cpu
        from grulm.data.vocab import Vocab
        from grulm.generate import GRUStepDecoder, generate, warm_up
        from grulm.model import GRULM, GRUConfig

        vocab = Vocab(["<unk>", *"abcdefghijk"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = GRULM(GRUConfig(len(vocab), 8))
            names = [model.backend().name for _ in range(3)]
            logits, _ = model(torch.randint(0, len(vocab), (2, 4)))
            decoder, _ = warm_up(model, [1, 2])
            fast = generate(model, vocab, "abc", max_new=12)[0]
        slow = generate(model, vocab, "abc", max_new=12, fast=False)[0]
        messages = [str(w.message) for w in caught]
        print(names, tuple(logits.shape), decoder.backend.name, fast == slow, len(messages))
        print(messages[0])
        print(cpu.unavailable())
        """,
        tmp_path,
        CXX="/nonexistent/c++",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "['reference', 'reference', 'reference'] (2, 4, 12) reference True 1"
    assert "backend 'cpu' is unavailable (could not build grulm's C++ kernels" in lines[1]
    assert "install a C++ compiler (g++ or clang++) and ninja (pip install ninja)" in lines[1]
    assert lines[2].startswith("could not build grulm's C++ kernels: no C++ compiler")
    assert not list((tmp_path / "ext").glob("*/grulm_cpu.so"))


def test_a_named_cpu_backend_that_cannot_build_is_a_clear_error(tmp_path):
    result = _run(
        """
        import torch
        from grulm.errors import ConfigError
        from grulm.generate import GRUStepDecoder
        from grulm.model import GRULM, GRUConfig
        model = GRULM(GRUConfig(11, 8, backend="cpu"))
        for attempt in (model.backend, lambda: GRUStepDecoder(model, model.begin_state(1),
                                                               backend="cpu")):
            try:
                attempt()
            except ConfigError as error:
                print(error)
        """,
        tmp_path,
        CXX="/nonexistent/c++",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert "could not build grulm's C++ kernels: no C++ compiler '/nonexistent/c++'" in line
        assert "use backend='auto'" in line
