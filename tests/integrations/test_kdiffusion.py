"""fewstep.integrations.kdiffusion: every solver with k-diffusion's calling convention."""

import pytest
import torch

import fewstep
from fewstep.diffusion.sampling import solve
from fewstep.diffusion.schedules import karras
from fewstep.diffusion.solvers import SOLVERS
from fewstep.integrations import kdiffusion
from fewstep.bench.peers import load_kdiffusion_sampling

MODEL = fewstep.load_model("gmm2d")
SIGMAS = torch.cat([karras(8, 0.01, 20.0), torch.zeros(1, dtype=torch.float64)])
X = 20 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
DETERMINISTIC = sorted(n for n, i in SOLVERS.items() if not i.stochastic)


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
    assert fn.__name__ == f"sample_{solver}"


def test_options_extra_args_and_listing():
    a = kdiffusion.sample_unipc(k_model, X, SIGMAS, disable=True, order=3)
    torch.testing.assert_close(a, solve(MODEL, X, SIGMAS, "unipc", order=3))
    halved = kdiffusion.sample_euler(k_model, X, SIGMAS, extra_args={"scale": 0.5}, disable=True)
    assert not torch.allclose(halved, solve(MODEL, X, SIGMAS, "euler"))
    assert kdiffusion.list_samplers() == [f"sample_{n}" for n in sorted(SOLVERS)]
    with pytest.raises(ValueError, match="unknown option.*ordr"):
        kdiffusion.sample_unipc(k_model, X, SIGMAS, disable=True, ordr=3)
    with pytest.raises(TypeError, match="extra_args must be a mapping"):
        kdiffusion.sample_euler(k_model, X, SIGMAS, extra_args=[1], disable=True)
    with pytest.raises(AttributeError, match="sample_dpmpp_9m"):
        kdiffusion.sample_dpmpp_9m  # noqa: B018


def test_same_call_as_k_diffusion_itself():
    """The call that runs k-diffusion's own sampler runs fewstep's unchanged (here both are Euler)."""
    try:
        k = load_kdiffusion_sampling()
    except ImportError as exc:
        pytest.skip(f"k-diffusion's sampling.py cannot be loaded: {exc}")
    args = (k_model, X, SIGMAS)
    kwargs = {"extra_args": {"scale": 1.0}, "callback": None, "disable": True}
    torch.testing.assert_close(kdiffusion.sample_euler(*args, **kwargs), k.sample_euler(*args, **kwargs))
    torch.testing.assert_close(kdiffusion.sample_dpmpp_2m(*args, **kwargs), k.sample_dpmpp_2m(*args, **kwargs))
