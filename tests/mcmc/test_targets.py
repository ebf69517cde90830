"""Each bundled target's exact sampler agrees with its log-density, and the normalised ones integrate to 1."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep.mcmc as mcmc
from fewstep.mcmc.registry import TARGETS, target_options

SMALL = {"gaussian": {"dim": 4}, "mixture": {"dim": 3, "modes": 3}, "funnel": {"dim": 3}, "banana": {"dim": 3},
         "student_t": {"dim": 3, "df": 5.0}, "logistic": {}}


@pytest.mark.parametrize("name", [n for n in TARGETS if TARGETS[n][1].exact])
def test_exact_samples_satisfy_steins_identities(name):
    """For x ~ pi: E[grad log pi(x)] = 0 and E[x . grad log pi(x)] = -dim (integration by parts), which ties the
    exact sampler to the log-density; checked within 5 standard errors."""
    target = mcmc.make_target(name, **SMALL[name])
    x = target.sample(20_000, torch.Generator().manual_seed(0)).requires_grad_(True)
    (grad,) = torch.autograd.grad(target.log_prob(x).sum(), x)
    x = x.detach()
    for f, truth in [(grad[:, k], 0.0) for k in range(target.dim)] + [((x * grad).sum(1), -target.dim)]:
        se = float(f.std()) / math.sqrt(len(f))
        assert abs(float(f.mean()) - truth) < 5 * se + 1e-12, (name, float(f.mean()), truth, se)


@pytest.mark.parametrize("name,kw,box", [("mixture", {"dim": 2, "modes": 3}, ((-9, 9), (-9, 9))),
                                         ("banana", {"dim": 2, "b": 1.0, "scale": 2.0}, ((-5, 7), (-4, 40))),
                                         ("student_t", {"dim": 2, "df": 30.0}, ((-12, 12), (-12, 12))),
                                         ("funnel", {"dim": 2, "scale": 1.0}, ((-7, 7), (-40, 40)))])
def test_normalised_targets_integrate_to_one(name, kw, box):
    target = mcmc.make_target(name, **kw)
    (a0, b0), (a1, b1) = box
    u, v = torch.linspace(a0, b0, 1201, dtype=torch.float64), torch.linspace(a1, b1, 2401, dtype=torch.float64)
    grid = torch.cartesian_prod(u, v)
    mass = target.log_prob(grid).exp().sum() * (u[1] - u[0]) * (v[1] - v[0])
    assert target.log_normalizer == 0.0 and float(mass) == pytest.approx(1.0, abs=2e-3)


def test_targets_refuse_bad_options():
    with pytest.raises(ValueError, match="unknown target"):
        mcmc.make_target("donut")
    with pytest.raises(ValueError, match="has no option 'dims'"):
        mcmc.make_target("mixture", dims=3)
    with pytest.raises(ValueError, match="modes must be in 2..2\\*dim"):
        mcmc.make_target("mixture", dim=2, modes=5)
    with pytest.raises(ValueError, match="no exact sampler"):
        mcmc.make_target("logistic").sample(3)


def test_every_target_is_batched_and_float64():
    for name in TARGETS:
        target = mcmc.make_target(name, **SMALL[name])
        assert set(SMALL[name]) <= set(target_options(name))
        x = torch.zeros(5, target.dim, dtype=torch.float64) + 0.1
        lp = target.log_prob(x)
        assert lp.shape == (5,) and lp.dtype == torch.float64 and torch.isfinite(lp).all()
    assert mcmc.make_target("logistic").prior is not None


def test_mixture_modes_are_separated():
    mix = mcmc.make_target("mixture", dim=16, modes=8, separation=8.0)
    d = torch.cdist(mix.means, mix.means) + torch.eye(8, dtype=torch.float64) * 1e9
    assert float(d.min()) >= 8.0 - 1e-9 and len(set(mix.weights.tolist())) == 8
