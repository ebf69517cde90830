import pytest

from fewstep.models import load_model


@pytest.fixture(scope="module")
def ring():
    """gmm2d evaluated in one block (fast; the statistical tests do not need bitwise batch independence)."""
    return load_model("gmm2d", chunk=1 << 16)


@pytest.fixture(scope="module")
def gmm2d_exact_rows():
    """gmm2d as bundled: bitwise batch-independent (blocks of 16 rows)."""
    return load_model("gmm2d")



@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_thread):
    """Every steering test module runs on one torch thread: its models are small, and threads only spin-wait on a
    shared machine (test_methods' 100-seed run took 28 CPU-s with two threads, 7 with one)."""
    yield
