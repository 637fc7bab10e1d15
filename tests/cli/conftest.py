import pytest
import torch

from .helpers import TEXT


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private data cache, no progress bars, one torch thread (restored afterwards)."""
    monkeypatch.setenv("HYPERMLP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CI", "true")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)
