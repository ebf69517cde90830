"""Each method runs the base sampler through ``solve``: bitwise identities, seeds, evaluation counts, bad options."""

import pytest
import torch

from fewstep.diffusion.sampling import sample
from fewstep.steer import (
    METHODS,
    as_reward,
    best_of_n,
    fk_steer,
    linear,
    list_methods,
    noise_search,
    path_search,
    svdd,
)

RIGHT = linear([1.0, 0.0])
SEEDS = [0, 1, 2]


@pytest.mark.parametrize("solver", ["euler_ancestral", "ddpm", "dpmpp_2m_sde", "heun_churn", "sa_solver", "dpmpp_2m",
                                    "restart"])
def test_one_particle_is_the_base_sampler_bitwise(gmm2d_exact_rows, solver):
    base = sample(gmm2d_exact_rows, solver=solver, nfe=12, seeds=SEEDS)
    fk = fk_steer(gmm2d_exact_rows, RIGHT, particles=1, solver=solver, nfe=12, seeds=SEEDS)
    assert torch.equal(fk.samples, base)
    assert fk.evaluations == fk.nfe <= 12  # one particle per seed: evaluations per sample = model calls
    assert torch.equal(best_of_n(gmm2d_exact_rows, RIGHT, n=1, solver=solver, nfe=12, seeds=SEEDS).samples, base)
    if solver not in ("dpmpp_2m", "restart"):
        assert torch.equal(svdd(gmm2d_exact_rows, RIGHT, particles=1, solver=solver, nfe=12, seeds=SEEDS).samples, base)


@pytest.mark.parametrize("solver", ["euler_ancestral", "ddpm", "dpmpp_sde"])
def test_restarting_at_every_grid_point_changes_nothing_for_single_step_solvers(gmm2d_exact_rows, solver):
    """A constant reward never resamples, but K > 1 still stops and restarts the solver at every grid point; for a
    solver without history each particle is then the base sample of its seed ``s K + k``, bitwise, and the stored
    x0-prediction answers the restart (no evaluation beyond ``K x NFE``)."""
    K = 3
    fk = fk_steer(gmm2d_exact_rows, as_reward(lambda x: torch.zeros(x.shape[0])), particles=K, solver=solver,
                  nfe=12, seeds=SEEDS)
    base = sample(gmm2d_exact_rows, solver=solver, nfe=12, seeds=[s * K + k for s in SEEDS for k in range(K)])
    assert torch.equal(fk.particles.reshape(-1, 2), base)
    one = fk_steer(gmm2d_exact_rows, RIGHT, particles=1, solver=solver, nfe=12, seeds=[0])
    assert fk.nfe == one.nfe and fk.evaluations == K * one.nfe
    assert fk.info["resampled"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("method,size", [("fk", 4), ("svdd", 4), ("best_of_n", 4), ("noise_search", 3),
                                         ("path_search", 2)])
def test_seeded_runs_are_reproducible_and_independent_of_the_batch(gmm2d_exact_rows, method, size):
    fn, info = METHODS[method]
    kw = {info["size"]: size, "nfe": 10, "solver": "euler_ancestral"}
    many = fn(gmm2d_exact_rows, RIGHT, seeds=[5, 6, 7, 8], **kw)
    again = fn(gmm2d_exact_rows, RIGHT, seeds=[5, 6, 7, 8], **kw)
    alone = fn(gmm2d_exact_rows, RIGHT, seeds=[7], **kw)
    assert torch.equal(many.samples, again.samples) and torch.equal(many.rewards, again.rewards)
    assert torch.equal(many.samples[2:3], alone.samples)
    other = fn(gmm2d_exact_rows, RIGHT, seeds=[9, 10, 11, 12], **kw)
    assert not torch.equal(many.samples, other.samples)


def test_particle_methods_cost_particles_times_the_base_evaluations(gmm2d_exact_rows):
    base = fk_steer(gmm2d_exact_rows, RIGHT, particles=1, nfe=10, seeds=SEEDS)
    for K in (2, 5):
        assert fk_steer(gmm2d_exact_rows, RIGHT, particles=K, nfe=10, seeds=SEEDS).evaluations == K * base.nfe
        assert svdd(gmm2d_exact_rows, RIGHT, particles=K, nfe=10, seeds=SEEDS).evaluations == K * base.nfe
        assert best_of_n(gmm2d_exact_rows, RIGHT, n=K, nfe=10, solver="euler_ancestral",
                         seeds=SEEDS).evaluations == K * base.nfe
    ns = noise_search(gmm2d_exact_rows, RIGHT, candidates=3, iterations=2, nfe=10, solver="euler", seeds=SEEDS)
    assert ns.evaluations == (1 + 2 * 3) * 10
    # path search: N to the start, then per round N M (back + forward) steps and one x0-prediction unless at the end
    ps = path_search(gmm2d_exact_rows, RIGHT, width=2, branches=3, start=4, back=1, forward=3, nfe=10, solver="euler",
                     seeds=SEEDS)
    assert ps.info["rounds"] == 2 and ps.evaluations == 2 * 4 + 6 * (4 + 1) + 6 * (1 + 3)


def test_noise_search_never_loses_its_best(gmm2d_exact_rows):
    res = noise_search(gmm2d_exact_rows, RIGHT, candidates=4, iterations=4, nfe=8, seeds=list(range(6)))
    hist = res.info["reward_history"]
    assert (hist[1:] >= hist[:-1]).all() and torch.equal(hist[-1], res.rewards)
    assert torch.allclose(RIGHT(res.samples), res.rewards)


def test_steering_raises_the_reward(ring):
    seeds = list(range(100))
    base = fk_steer(ring, RIGHT, particles=1, nfe=20, seeds=seeds).rewards.mean()
    for res in (fk_steer(ring, RIGHT, particles=8, nfe=20, seeds=seeds),
                svdd(ring, RIGHT, particles=8, nfe=20, seeds=seeds),
                best_of_n(ring, RIGHT, n=8, nfe=20, seeds=seeds),
                noise_search(ring, RIGHT, candidates=4, iterations=2, nfe=20, seeds=seeds),
                path_search(ring, RIGHT, width=2, branches=2, nfe=20, seeds=seeds)):
        assert res.rewards.mean() > base + 0.8, res.info


def test_bad_options_are_refused_with_what_is_allowed(gmm2d_exact_rows):
    g = gmm2d_exact_rows
    cases = [
        (lambda: fk_steer(g, RIGHT, potential="prod", seeds=[0]), "choose one of difference, max, sum"),
        (lambda: fk_steer(g, RIGHT, resampler="stratified", seeds=[0]), "multinomial, systematic"),
        (lambda: fk_steer(g, RIGHT, temperature=0, seeds=[0]), "temperature > 0"),
        (lambda: fk_steer(g, RIGHT, particles=0, seeds=[0]), "particles"),
        (lambda: fk_steer(g, RIGHT, ess_threshold=2, seeds=[0]), r"\[0, 1\]"),
        (lambda: fk_steer(g, RIGHT, every=0, seeds=[0]), "positive integer"),
        (lambda: svdd(g, RIGHT, solver="dpmpp_2m", seeds=[0]), "stochastic solver .* euler_ancestral"),
        (lambda: svdd(g, RIGHT, temperature=-1, seeds=[0]), ">= 0"),
        (lambda: fk_steer(g, RIGHT, particles=2, solver="restart", nfe=12, seeds=[0]), "restart"),
        (lambda: path_search(g, RIGHT, start=0, nfe=10, solver="euler", seeds=[0]), "start must be an integer in 1..9"),
        (lambda: noise_search(g, RIGHT, radius=0, seeds=[0]), "radius"),
        (lambda: fk_steer(g, RIGHT, seeds=[0], batch=2), "not both"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()


def test_the_registry_says_what_each_method_needs():
    methods = list_methods()
    assert set(methods) == {"best_of_n", "noise_search", "path_search", "fk", "svdd"}
    assert not any(m["needs_gradient"] for m in methods.values())
    assert methods["svdd"]["needs_stochastic"] and methods["fk"]["targets_tilt"]
    assert not methods["best_of_n"]["targets_tilt"] and all("arXiv" in m["paper"] for m in methods.values())
