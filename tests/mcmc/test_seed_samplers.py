"""The seed's diffusion-based samplers: rdmc (arXiv 2307.02037), walk_jump (arXiv 2305.19473) and data_init
(arXiv 2310.01762). Each is exact on a Gaussian in a limit (moments within Monte Carlo error of the exact ones,
the draws being independent), each has a negative control, seeds reproduce, evaluations are counted exactly and
bad input is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep.mcmc as mcmc
from fewstep.mcmc import _denoise, diffusion_mc
from fewstep.mcmc.targets import Gaussian, Target

from .invariance import invariant, z_scores

GAUSS = Gaussian(torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([[0.5, 0.2], [0.2, 2.0]],
                                                                               dtype=torch.float64))
EXACT_LIMIT = {  # each close to its exact limit, and a second or two on one core
    "rdmc": dict(steps=150, proposals=64, inner_chains=2, inner_steps=4),
    "walk_jump": dict(measurements=12, walk_steps=16, first_walk_steps=100, step_size=0.4, proposals=32,
                      inner_chains=1, inner_steps=0),
    "data_init": dict(steps=40, step_size=0.005, n_data=4000),
}


def _run(name, target=GAUSS, chains=4, draws=150, seed=5, **kw):
    return mcmc.run_sampler(name, target, chains=chains, draws=draws, warmup=0, seed=seed,
                            **{**EXACT_LIMIT[name], **kw})


@pytest.mark.parametrize("name", list(EXACT_LIMIT))
def test_exact_on_a_gaussian_in_the_limit(name):
    result = _run(name)
    assert result.n_recorded == 150 and result.draws.shape == (4, 150, 2)
    z = z_scores(result.draws, GAUSS.mean, GAUSS.cov)
    assert invariant(result.draws, GAUSS.mean, GAUSS.cov), f"{name}: z-scores {np.round(z, 2)}"


class _FlatWeights(_denoise.MCDenoiser):
    """A wrong score estimate: the importance weights pi(x_j) dropped, so the posterior forgets the target."""

    def __call__(self, y, s):
        P, d = self.P, y.shape[-1]
        x = y[:, :, None, :] + s * self.run.rng.normal(None, y.shape[1], P, d)
        return x.mean(2)


@pytest.mark.parametrize("name", ["rdmc", "walk_jump"])
def test_a_score_without_the_target_fails_the_same_check(name, monkeypatch):
    monkeypatch.setattr(diffusion_mc, "MCDenoiser", _FlatWeights)
    result = _run(name)
    assert not invariant(result.draws, GAUSS.mean, GAUSS.cov)


def test_walk_jump_needs_its_chain_of_measurements():
    """One measurement makes the jump a posterior mean at noise sigma: shrunk, var s^4 / (s^2 + sigma^2) (0.06
    here). Its estimate must be precise for that to show (many proposals): a noisy posterior mean is itself
    close to a posterior draw, which would put the spread back."""
    result = _run("walk_jump", measurements=1, sigma=2.0, first_walk_steps=20, proposals=512)
    assert not invariant(result.draws, GAUSS.mean, GAUSS.cov)
    assert float(result.draws.reshape(-1, 2).var(0)[0]) < 0.3


def test_data_init_takes_its_weights_from_the_data():
    """Langevin with the vanilla score keeps the data's mode weights (Koehler and Vuong): exact data give the
    true weights, data from one mode give that mode only, although the dynamics is the same."""
    mix = mcmc.make_target("mixture", dim=16, modes=4)
    good = mcmc.data_init(mix, chains=4, draws=250, seed=0, n_data=2000, steps=30, step_size=0.05)
    assert mcmc.mode_weight_error(mix, good.draws) < 0.05
    data = mix.sample(2000, torch.Generator().manual_seed(1))
    one_mode = data[mix.assign(data) == 0]
    bad = mcmc.data_init(mix, chains=4, draws=250, seed=0, data=one_mode, steps=30, step_size=0.05)
    assert float(mcmc.mode_weights(mix, bad.draws)[0]) > 0.99
    assert mcmc.mode_weight_error(mix, bad.draws) > 0.5


def test_data_from_another_law_fails_the_moment_check():
    shifted = GAUSS.sample(4000, torch.Generator().manual_seed(2)) + 0.3
    result = _run("data_init", data=shifted)
    assert not invariant(result.draws, GAUSS.mean, GAUSS.cov)


@pytest.mark.parametrize("name", list(EXACT_LIMIT))
def test_seeds_reproduce_and_a_chain_depends_on_its_seed_only(name):
    small = dict(EXACT_LIMIT[name], **({"steps": 6} if name == "rdmc" else {"measurements": 3} if name == "walk_jump"
                                       else {"steps": 5}))
    if name == "walk_jump":
        small["first_walk_steps"] = 3

    def run(seeds):
        return mcmc.run_sampler(name, GAUSS, chains=len(seeds), draws=8, warmup=0, seed=seeds, **small)

    together, again, alone = run([7, 8, 9]), run([7, 8, 9]), run([8])
    assert torch.equal(together.draws, again.draws)
    torch.testing.assert_close(together.draws[1], alone.draws[0], rtol=1e-8, atol=1e-10)
    assert int(together.n_grad[1]) == int(alone.n_grad[0])
    assert not torch.equal(run([10]).draws[0], alone.draws[0])


def test_evaluations_are_counted_per_chain():
    chains, draws = 3, 5
    r = mcmc.rdmc(GAUSS, chains=chains, draws=draws, steps=4, proposals=6, inner_chains=2, inner_steps=3)
    # per draw and step: 6 proposals (density) and 2 inner chains x (1 + 3) MALA evaluations; one more at the end
    assert r.n_grad.tolist() == [draws * 4 * 2 * 4] * chains
    assert r.n_density.tolist() == [draws * (4 * (6 + 2 * 4) + 1)] * chains
    r = mcmc.walk_jump(GAUSS, chains=chains, draws=draws, measurements=3, walk_steps=2, first_walk_steps=4,
                       proposals=5, inner_chains=1, inner_steps=0)
    assert r.n_grad.tolist() == [0] * chains and r.n_density.tolist() == [draws * ((4 + 2 * 2 + 1) * 5 + 1)] * chains
    r = mcmc.data_init(GAUSS, chains=chains, draws=draws, steps=7)
    assert r.n_grad.tolist() == [draws * 7] * chains and r.n_density.tolist() == [draws * 8] * chains
    assert (r.n_grad_warmup == 0).all() and r.warmup == 0 and bool((r.accept == 1).all())


class _NoSampler(Target):
    name, dim = "nosampler", 2

    def log_prob(self, x):
        return -0.5 * x.square().sum(1)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no warm-up; give warmup=0"):
        mcmc.rdmc(GAUSS, warmup=10)
    with pytest.raises(ValueError, match="init is not used"):
        mcmc.walk_jump(GAUSS, init=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        mcmc.rdmc(GAUSS, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="inner_chains must be"):
        mcmc.rdmc(GAUSS, inner_chains=0)
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        mcmc.walk_jump(GAUSS, sigma=-1.0)
    with pytest.raises(ValueError, match=r"data must be \[n, dim\]"):
        mcmc.data_init(GAUSS, data=torch.zeros(5, 3))
    with pytest.raises(ValueError, match="has no exact sampler, so pass data"):
        mcmc.data_init(_NoSampler())


def test_nan_mid_run_is_reported_with_the_step():
    class Broken(Gaussian):
        def log_prob(self, x):
            lp = super().log_prob(x)
            return torch.where(x[:, 0].abs() > 1.5, torch.full_like(lp, math.nan), lp)

    target = Broken(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    with pytest.raises(mcmc.NonFiniteDensityError, match="iteration") as info:
        mcmc.data_init(target, data=torch.zeros(3, 2), steps=200, step_size=0.1)
    assert info.value.step > 0 and info.value.result.n_recorded == 0


def test_registered_and_run_by_the_cli(tmp_path):
    from fewstep.cli import main

    for name in ("rdmc", "walk_jump", "data_init"):
        assert mcmc.SAMPLERS[name][1].independent
    out = tmp_path / "r"
    assert main(["mcmc", "--target", "mixture:dim=2,modes=2", "--sampler", "rdmc:steps=5,proposals=8",
                 "--chains", "2", "--draws", "6", "--reference", "100", "--out", str(out)]) == 0
    with np.load(out.with_suffix(".npz")) as z:
        assert z["draws"].shape == (2, 6, 2)
