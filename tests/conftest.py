"""Shared fixtures: the corpora from ../shared/data, an isolated cache, the CLI in this process
or as a subprocess."""

import contextlib
import io
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


def _run_grulm_process(*args, env=None, input=None, timeout=600, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "grulm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=timeout,
        cwd=cwd,
    )


def _run_grulm_in_process(*args, env=None, input=None, cwd=None):
    """``grulm.cli.main`` in this process, as a process would see it: its own environment
    variables, working directory, stdin, stdout and stderr, and the thread count restored."""
    from grulm.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    os.environ.update(env or {})
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                _stdin(input):
            try:
                status = main([str(arg) for arg in args])
            except SystemExit as exit:  # --help, argparse's usage errors
                status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(args, status, stdout.getvalue(), stderr.getvalue())


@contextlib.contextmanager
def _stdin(text):
    saved = sys.stdin
    sys.stdin = io.StringIO(text or "")
    try:
        yield
    finally:
        sys.stdin = saved


@pytest.fixture(scope="session")
def run_grulm():
    """``run_grulm(*args, env=, input=, cwd=)``: the ``grulm`` command in this process
    (:func:`grulm.cli.main` with its own environment, stdin and captured output); returns a
    ``CompletedProcess`` (text mode). A bug's exception propagates into the test."""
    return _run_grulm_in_process


@pytest.fixture(scope="session")
def run_grulm_process():
    """``run_grulm_process(*args, env=, input=, timeout=, cwd=)``: the real command in a
    subprocess, for what only a process shows: signals, pipes and hangs (a timeout)."""
    return _run_grulm_process


@pytest.fixture
def one_thread():
    """One intra-op thread: these models are tiny, and on a busy machine several threads per
    process spin against each other (the textbook trajectory takes 6 s instead of minutes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class _RecordingOps:
    """``torch.ops.grulm_cpu`` that notes the ``save`` flag of every layer forward."""

    def __init__(self, ops):
        self.ops, self.saves = ops, []

    def forward(self, *args, **kwargs):
        self.saves.append(args[7])
        return self.ops.forward(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.ops, name)


@pytest.fixture
def layer_saves(monkeypatch):
    """The ``save`` flags of the fused cpu layer's forwards during the test, in call order."""
    from grulm.backends import cpu

    cpu.load()
    recording = _RecordingOps(torch.ops.grulm_cpu)
    monkeypatch.setattr(torch.ops, "grulm_cpu", recording)
    return recording.saves
