"""Fixtures for the data tests: an empty cache and data path per test, the shared corpora."""

from __future__ import annotations

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
