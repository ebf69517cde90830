"""ULA (unadjusted Langevin) samples its own biased stationary law, which is known in closed form on a Gaussian:
the draws match it, and the same check rejects the target itself (the bias is visible, so the check can fail)."""

from __future__ import annotations

import pytest
import torch

import fewstep.mcmc as mcmc
from fewstep.mcmc.langevin import ula

from .invariance import invariant

TARGET = mcmc.make_target("gaussian", dim=3, condition=10.0, seed=3)  # eigenvalues 0.1 .. 1


def ula_stationary_cov(cov: torch.Tensor, h: float) -> torch.Tensor:
    """ULA's stationary covariance on ``N(m, cov)``: each eigenvalue ``l`` becomes ``l / (1 - h / (2 l))``."""
    eig, q = torch.linalg.eigh(cov)
    return (q * (eig / (1 - h / (2 * eig)))) @ q.T


def test_ula_samples_its_biased_stationary_law_and_not_the_target():
    h = 0.03  # the smallest eigenvalue's variance is inflated by 1 / (1 - 0.15) = 1.18
    result = ula(TARGET, chains=256, draws=600, warmup=300, seed=2, step_size=h)
    biased = ula_stationary_cov(TARGET.cov, h)
    assert invariant(result.draws, TARGET.mean, biased)
    assert not invariant(result.draws, TARGET.mean, TARGET.cov)  # negative control: the bias is detected
    assert (result.accept == 1).all() and (result.n_grad == result.n_density).all()
    assert int(result.n_grad[0]) == 900 + 1  # one evaluation per iteration and one at the start


def test_ula_bad_step_and_divergence():
    with pytest.raises(ValueError, match="step_size must be a positive number"):
        ula(TARGET, step_size=0.0)
    with pytest.raises(mcmc.NonFiniteDensityError, match="at iteration"):  # h far above 2 l_min: it blows up
        ula(TARGET, chains=2, draws=5000, warmup=0, step_size=5.0)
