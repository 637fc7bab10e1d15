"""Fixtures the test folders share; each folder's conftest.py turns on the ones it needs."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread (restored afterwards): bitwise results do not depend on thread scheduling."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def isolated_run(tmp_path, monkeypatch, one_thread):
    """A private data cache and no progress bars (CI=true), on one torch thread."""
    monkeypatch.setenv("HYPERMLP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CI", "true")
    yield
