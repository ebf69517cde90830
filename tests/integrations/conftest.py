import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The models here are tiny: one intra-op thread avoids OpenMP spin-waiting when the two cores are busy
    (measured: a 20-step tiny-UNet pipeline takes 0.8 s with one thread and 20 s with two on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
