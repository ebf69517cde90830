"""fewstep.integrations.kdiffusion: every fewstep solver with k-diffusion's calling convention (k-diffusion's own
names are tested against k-diffusion in test_kdiffusion_names.py)."""

import pytest
import torch

import fewstep
from fewstep.bench.peers import load_kdiffusion_sampling
from fewstep.diffusion.noise import make_noise
from fewstep.diffusion.sampling import solve
from fewstep.diffusion.schedules import karras
from fewstep.diffusion.solvers import SOLVERS
from fewstep.integrations import kdiffusion

MODEL = fewstep.load_model("gmm2d")
SIGMAS = torch.cat([karras(8, 0.01, 20.0), torch.zeros(1, dtype=torch.float64)])
X = 20 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
FEWSTEP_ONLY = sorted(n for n in SOLVERS if f"sample_{n}" not in kdiffusion.KDIFFUSION_SAMPLERS)
DETERMINISTIC = [n for n in FEWSTEP_ONLY if not SOLVERS[n].stochastic]
STOCHASTIC = [n for n in FEWSTEP_ONLY if SOLVERS[n].stochastic]


def k_model(x, sigma, *, scale=1.0):
    """A k-diffusion-style denoiser with a model keyword, as ComfyUI passes them through extra_args."""
    assert sigma.shape == (x.shape[0],)
    return scale * MODEL(x, sigma)


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_every_solver_has_a_k_diffusion_sampler(solver):
    fn = getattr(kdiffusion, f"sample_{solver}")
    seen = []
    out = fn(k_model, X, SIGMAS, extra_args={"scale": 1.0}, callback=seen.append, disable=True)
    torch.testing.assert_close(out, solve(MODEL, X, SIGMAS, solver), rtol=0, atol=0)
    assert len(seen) == len(SIGMAS) - 1
    assert sorted(seen[0]) == ["denoised", "i", "sigma", "sigma_hat", "x"]
    assert [p["i"] for p in seen] == list(range(len(SIGMAS) - 1))
    assert [float(p["sigma"]) for p in seen] == SIGMAS[:-1].tolist()
    assert all(torch.is_tensor(p["sigma"]) and torch.is_tensor(p["sigma_hat"]) for p in seen)
    assert fn.__name__ == f"sample_{solver}"


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_fewsteps_seeded_noise_passes_as_noise_sampler(solver):
    """A fewstep noise object is a k-diffusion noise sampler: with it, the sample is solve's with those seeds."""
    for noise_type in ("gaussian", "brownian"):
        noise = make_noise(noise_type, [3, 4, 5, 6], X.shape[1:], X.dtype)
        out = getattr(kdiffusion, f"sample_{solver}")(k_model, X, SIGMAS, disable=True, noise_sampler=noise)
        expected = solve(MODEL, X, SIGMAS, solver, noise_type=noise_type, noise_seeds=[3, 4, 5, 6])
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_without_a_noise_sampler_the_global_rng_draws_the_noise(solver):
    """torch.manual_seed(1) and torch.manual_seed(2) used to give the same sample."""
    def run(seed):
        torch.manual_seed(seed)
        return getattr(kdiffusion, f"sample_{solver}")(k_model, X, SIGMAS, disable=True)

    first = run(1)
    torch.testing.assert_close(first, run(1), rtol=0, atol=0)
    assert not torch.allclose(first, run(2))


def test_fewsteps_own_options_of_a_k_diffusion_name_are_reached_through_run():
    ours = kdiffusion.run("dpmpp_3m_sde", k_model, X, SIGMAS, disable=True, eta=0.0, coefficients="exact")
    torch.testing.assert_close(ours, solve(MODEL, X, SIGMAS, "dpmpp_3m_sde", eta=0.0, coefficients="exact"),
                               rtol=0, atol=0)
    churned = kdiffusion.run("heun", k_model, X, SIGMAS, disable=True, S_churn=2.0)
    assert torch.isfinite(churned).all() and not torch.allclose(churned, solve(MODEL, X, SIGMAS, "heun"))


def test_a_grid_from_infinity_takes_solves_first_step():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = torch.tensor([float("inf"), 5.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    seen = []
    out = kdiffusion.sample_unipc(MODEL, x, grid, disable=True, callback=seen.append)
    torch.testing.assert_close(out, solve(MODEL, x, grid, "unipc"), rtol=0, atol=0)
    assert [p["i"] for p in seen] == [0, 1, 2, 3] and float(seen[0]["sigma"]) == float("inf")


def test_options_extra_args_and_listing():
    a = kdiffusion.sample_unipc(k_model, X, SIGMAS, disable=True, order=3)
    torch.testing.assert_close(a, solve(MODEL, X, SIGMAS, "unipc", order=3))
    halved = kdiffusion.sample_euler(k_model, X, SIGMAS, extra_args={"scale": 0.5}, disable=True)
    assert not torch.allclose(halved, solve(MODEL, X, SIGMAS, "euler"))
    assert kdiffusion.list_samplers() == sorted(set(kdiffusion.KDIFFUSION_SAMPLERS) | {f"sample_{n}" for n in SOLVERS})
    with pytest.raises(ValueError, match="unknown option.*ordr"):
        kdiffusion.sample_unipc(k_model, X, SIGMAS, disable=True, ordr=3)
    with pytest.raises(ValueError, match="draws no noise"):
        kdiffusion.sample_unipc(k_model, X, SIGMAS, disable=True, noise_sampler=lambda s, t: torch.randn_like(X))
    with pytest.raises(TypeError, match="extra_args must be a mapping"):
        kdiffusion.sample_euler(k_model, X, SIGMAS, extra_args=[1], disable=True)
    with pytest.raises(TypeError, match="noise_sampler must be callable"):
        kdiffusion.sample_ddpm(k_model, X, SIGMAS, disable=True, noise_sampler=3)
    with pytest.raises(AttributeError, match="sample_dpmpp_9m"):
        kdiffusion.sample_dpmpp_9m  # noqa: B018


def test_same_call_as_k_diffusion_itself():
    """The call that runs k-diffusion's own sampler runs fewstep's unchanged, model keywords included."""
    try:
        k = load_kdiffusion_sampling()
    except ImportError as exc:
        pytest.skip(f"k-diffusion's sampling.py cannot be loaded: {exc}")
    args = (k_model, X, SIGMAS)
    kwargs = {"extra_args": {"scale": 1.0}, "callback": None, "disable": True}
    torch.testing.assert_close(kdiffusion.sample_euler(*args, **kwargs), k.sample_euler(*args, **kwargs))
    torch.testing.assert_close(kdiffusion.sample_dpmpp_2m(*args, **kwargs), k.sample_dpmpp_2m(*args, **kwargs))
