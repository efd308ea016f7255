"""Fixtures for the data tests: an empty cache and data path per test, the shared corpora,
a FIFO that cannot hang a test."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).parents[2] / "../shared/data").resolve()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test reads the user's cache or data path, or writes outside tmp_path."""
    monkeypatch.setenv("GRULM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GRULM_DATA_PATH", raising=False)


@pytest.fixture
def shared_data(monkeypatch) -> Path:
    """GRULM_DATA_PATH pointing at ../shared/data; skips when the corpora are absent."""
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip(f"the shared corpora are not at {SHARED_DATA}")
    monkeypatch.setenv("GRULM_DATA_PATH", str(SHARED_DATA))
    return SHARED_DATA


@pytest.fixture
def fifo(tmp_path):
    """A named pipe with no writer. Code that wrongly opens it for reading would block forever;
    a thread watches for such a reader and opens the write end at once, so the reader sees end
    of file and the test fails instead of hanging."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    done = threading.Event()

    def release_readers():
        while not done.wait(0.02):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: nobody is reading
                continue

    watcher = threading.Thread(target=release_readers, daemon=True)
    watcher.start()
    yield path
    done.set()
    watcher.join()
