import pytest

from .helpers import TEXT


@pytest.fixture(autouse=True)
def _isolated(isolated_run):
    yield


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)
