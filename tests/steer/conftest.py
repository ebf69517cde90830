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

