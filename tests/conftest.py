"""Shared fixtures: the corpora from ../shared/data, an isolated cache, the CLI as a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture
def shared_data(monkeypatch, tmp_path):
    """GRULM_DATA_PATH pointing at ../shared/data and a fresh cache; skips where absent."""
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip(f"the corpora are not in {SHARED_DATA}")
    monkeypatch.setenv("GRULM_DATA_PATH", str(SHARED_DATA))
    monkeypatch.setenv("GRULM_CACHE", str(tmp_path / "cache"))
    return SHARED_DATA


def _run_grulm(*args, env=None, input=None, timeout=600, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "grulm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def run_grulm():
    """``run_grulm(*args, env=, input=, timeout=, cwd=)``: run the real ``grulm`` command with
    this interpreter in a subprocess and return the ``CompletedProcess`` (text mode)."""
    return _run_grulm


@pytest.fixture
def one_thread():
    """One intra-op thread: these models are tiny, and on a busy machine several threads per
    process spin against each other (the textbook trajectory takes 6 s instead of minutes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
