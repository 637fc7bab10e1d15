import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise reproducibility does not depend on thread scheduling
    yield
    torch.set_num_threads(old)
