import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # bitwise reproducibility does not depend on thread scheduling
    yield
