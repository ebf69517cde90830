"""SMC and AIS estimate log Z (0 for the normalised bundled targets) and, with resampling, the mode weights."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep.mcmc as mcmc


@pytest.mark.parametrize("resample", [True, False])
def test_log_z_of_a_normalised_gaussian_is_zero(resample):
    target = mcmc.make_target("gaussian", dim=3, condition=10.0)
    out = mcmc.smc(target, particles=1000, steps=30, seed=0, resample=resample)
    assert abs(out.log_z) < 0.1, out.log_z
    assert out.n_grad == 1000 * (1 + 30 * 2) and out.n_density == out.n_grad
    assert (out.resampled > 0) == resample
    w = out.log_weights.exp()
    mean = (w[:, None] * out.particles).sum(0)
    assert float(mean.abs().max()) < 0.15


def test_log_z_shifts_with_the_density_and_mode_weights_are_recovered():
    mix = mcmc.make_target("mixture", dim=2, modes=3, separation=8.0)

    class Shifted(type(mix)):
        def log_prob(self, x):
            return super().log_prob(x) + 2.0

    shifted = Shifted(mix.means, mix.stds, mix.weights)
    out = mcmc.smc(shifted, particles=2000, steps=40, seed=1, scale=6.0)
    assert abs(out.log_z - 2.0) < 0.1, out.log_z
    idx = torch.multinomial(out.log_weights.exp(), 4000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert mcmc.mode_weight_error(mix, out.particles[idx]) < 0.05


def test_smc_refuses_bad_input_and_reports_nan():
    target = mcmc.make_target("gaussian", dim=2)
    with pytest.raises(ValueError, match="particles must be"):
        mcmc.smc(target, particles=1)

    class Bad(type(target)):
        def log_prob(self, x):
            lp = super().log_prob(x)
            return torch.where(x[:, 0] > 2.5, torch.full_like(lp, math.nan), lp)

    with pytest.raises(mcmc.NonFiniteDensityError, match="annealing step"):
        mcmc.smc(Bad(target.mean, target.cov), particles=200, steps=5)
