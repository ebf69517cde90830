import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The samplers run small batched tensors: one thread avoids two OpenMP threads spinning on a shared core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
