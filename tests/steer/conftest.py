import pytest
import torch

from fewstep.models import load_model


@pytest.fixture(scope="module")
def ring():
    """gmm2d evaluated in one block (fast; the statistical tests do not need bitwise batch independence)."""
    return load_model("gmm2d", chunk=1 << 16)


@pytest.fixture(scope="module")
def gmm2d_exact_rows():
    """gmm2d as bundled: bitwise batch-independent (blocks of 16 rows)."""
    return load_model("gmm2d")


def components(gmm, x):
    """The nearest mean's index of each 2-D sample (gmm2d's components are 1.5 apart with std 0.1)."""
    return ((x[:, None, :].double() - gmm.means[None]) ** 2).sum(-1).argmin(1)


def tv_to(gmm, weights, x):
    """Total-variation distance between the component histogram of ``x`` and ``weights``."""
    h = torch.bincount(components(gmm, x), minlength=len(weights)).double() / x.shape[0]
    return 0.5 * float((h - weights).abs().sum())
