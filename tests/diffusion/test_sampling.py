"""The driver's arguments (``fewstep.sample`` / ``plan``): one way to resolve a recipe, and bad or conflicting
arguments refused with a message that says what was wrong, before any model call."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep
from fewstep.diffusion.denoiser import CountingDenoiser, model_hash
from fewstep.diffusion.noise import seeded_noise
from fewstep.diffusion.recipe import Recipe
from fewstep.diffusion.sampling import plan
from fewstep.diffusion.schedules import get_sigmas

GAUSS = fewstep.load_model("gauss", dim=3)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 0}, "batch must be a positive integer"),
    ({"batch": -1}, "batch must be a positive integer"),
    ({"batch": True}, "batch must be a positive integer"),
    ({"seeds": []}, "non-empty sequence"),
    ({"seeds": [0, -3]}, "non-negative"),
    ({"seeds": [0.5]}, "non-negative integers"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"seeds": [1, 2], "batch": 2}, "not both"),
    ({"noise": torch.zeros(2, 4)}, r"noise has shape \(2, 4\), but this model's samples have shape \(3,\)"),
    ({"noise": torch.zeros(2, 3), "seeds": [1, 2, 3]}, "3 seeds for noise with a batch of 2"),
    ({"noise": torch.zeros(2, 3), "batch": 3}, "3 seeds for noise with a batch of 2"),
])
def test_bad_batch_seeds_and_noise_are_refused_before_any_evaluation(kwargs, message):
    counted = CountingDenoiser(GAUSS)
    with pytest.raises((ValueError, TypeError), match=message):
        fewstep.sample(counted, solver="ddim", nfe=3, **kwargs)
    assert counted.calls == 0


def test_seeds_batch_and_noise_give_the_same_samples():
    by_batch = fewstep.sample(GAUSS, solver="unipc", nfe=5, batch=3, seed=7)
    by_seeds = fewstep.sample(GAUSS, solver="unipc", nfe=5, seeds=[7, 8, 9])
    by_noise = fewstep.sample(GAUSS, solver="unipc", nfe=5, noise=seeded_noise([7, 8, 9], (3,)))
    assert torch.equal(by_batch, by_seeds) and torch.equal(by_seeds, by_noise)
    assert torch.equal(fewstep.sample(GAUSS, solver="unipc", nfe=5, seeds=[8])[0], by_seeds[1])  # batch-independent
    assert fewstep.sample(GAUSS, solver="ddim", nfe=3).shape == (1, 3)  # one sample, seed 0, by default


def test_dtype_sets_the_state():
    assert fewstep.sample(GAUSS, solver="ddim", nfe=3, batch=2, dtype=torch.float64).dtype == torch.float64
    assert fewstep.sample(GAUSS, solver="ddim", nfe=3, noise=torch.zeros(2, 3, dtype=torch.float64)).dtype == \
        torch.float64


def test_schedule_options_carry_the_range_and_the_final_point():
    p = plan(GAUSS, solver="ddim", nfe=4, schedule="karras", schedule_options={"sigma_max": 10.0, "final": "min"})
    assert float(p.sigmas[0]) == pytest.approx(10.0) and float(p.sigmas[-1]) == pytest.approx(GAUSS.sigma_min)
    assert len(p.sigmas) == 5  # four evaluations, no step to 0


@pytest.fixture()
def recipe():
    sigmas = [float(s) for s in get_sigmas("karras", 4, GAUSS)]
    return Recipe(model=GAUSS.name, model_hash=model_hash(GAUSS), solver="dpmpp_2m", nfe=4, sigmas=tuple(sigmas),
                  method="manual", solver_options={"lower_order_final": False})


@pytest.mark.parametrize("kwargs, message", [
    ({"schedule": "logsnr"}, "schedule/schedule_options"),
    ({"schedule_options": {"sigma_max": 5.0}}, "schedule/schedule_options"),
    ({"solver": "ddim"}, "solver='ddim'"),
    ({"solver_options": {"lower_order_final": True}}, r"solver_options \['lower_order_final'\]"),
])
def test_a_recipe_refuses_conflicting_arguments(recipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fewstep.sample(GAUSS, recipe=recipe, batch=2, **kwargs)


def test_a_recipe_is_resolved_once_into_its_solver_options_and_sigmas(recipe):
    p = plan(GAUSS, recipe=recipe, solver="dpmpp_2m", solver_options={"solver_type": "midpoint"})
    assert p.solver == "dpmpp_2m" and p.solver_options == {"lower_order_final": False, "solver_type": "midpoint"}
    assert [float(s) for s in p.sigmas] == list(recipe.sigmas)
    assert not math.isinf(float(p.sigmas[0]))


def test_afs_from_an_infinite_sigma_max_is_the_zero_limit():
    """AFS replaces the first evaluation by ``x - sigma x / sqrt(1 + sigma^2)`` (``x = sigma eps``), whose limit
    at sigma = inf is 0; it used to be inf/inf = NaN there."""
    counted = CountingDenoiser(fewstep.load_model("digits-flow"))  # rectified flow: sigma_max = inf
    x = fewstep.sample(counted, solver="ddim", nfe=4, batch=2, afs=True)
    assert torch.isfinite(x).all() and counted.calls <= 4
