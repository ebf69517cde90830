"""Each exact denoiser is the posterior mean E[x0 | x]; checked by Monte Carlo."""

import math

import pytest
import torch

import fewstep
from fewstep.models.exact import GMM, Gauss

MODELS = ["gauss", "gmm2d", "digits-gmm", "digits-empirical"]


def orthogonality_stats(model, D, sigma, n, seed=0):
    """E[(x0 - D(x)) f(x)] for f = 1 and f = x: zero for the posterior mean, measured in units of
    its Monte Carlo standard error."""
    g = torch.Generator().manual_seed(seed)
    x0 = model.sample_data(n, g).reshape(n, -1)
    x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    r = x0 - D(x.reshape(n, *model.shape), sigma).reshape(n, -1)
    feats = torch.cat([r, r * x], 1)  # [n, 2d]
    z = feats.mean(0) / (feats.std(0) / math.sqrt(n) + 1e-12)
    return z.abs().max().item(), feats.shape[1]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("sigma", [0.1, 1.0, 5.0])
def test_denoiser_is_the_posterior_mean(name, sigma):
    model = fewstep.load_model(name)
    n = 20000 if model.dim <= 4 else 4000
    z, k = orthogonality_stats(model, model, sigma, n)
    assert z < 5.0, f"{name} at sigma={sigma}: max |z| = {z:.1f} over {k} moments"
    # negative control: a denoiser off by 0.1 is detected at the same sample size
    z_bad, _ = orthogonality_stats(model, lambda x, s: model(x, s) + 0.1, sigma, n)
    assert z_bad > 6.0


@pytest.mark.parametrize("name", ["gauss", "gmm2d"])
def test_denoiser_matches_importance_sampled_posterior_mean(name):
    model = fewstep.load_model(name)
    g = torch.Generator().manual_seed(1)
    prior = model.sample_data(400_000, g)
    x = torch.tensor([[0.3, -0.2], [1.5, 1.0], [-2.0, 0.1]], dtype=torch.float64)
    for sigma in (0.3, 1.0):
        logw = -((x[:, None, :] - prior[None]) ** 2).sum(-1) / (2 * sigma**2)
        mc = torch.softmax(logw, 1) @ prior
        torch.testing.assert_close(model(x, sigma), mc, atol=0.02, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_float32_and_float64(name):
    model = fewstep.load_model(name)
    x = 2 * torch.randn(5, *model.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d64 = model(x, 0.7)
    d32 = model(x.float(), 0.7)
    assert d64.dtype == torch.float64 and d32.dtype == torch.float32 and d64.shape == x.shape
    torch.testing.assert_close(d32.double(), d64, atol=1e-4, rtol=1e-4)


def test_gauss_ode_solution_solves_the_ode():
    m = Gauss(dim=3, mean=torch.tensor([1.0, 0.0, -1.0]), std=torch.tensor([0.5, 1.0, 3.0]))
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 5
    s, ds = 2.0, 1e-5
    dx = (m.ode_solution(x, 5.0, s + ds) - m.ode_solution(x, 5.0, s - ds)) / (2 * ds)
    xs = m.ode_solution(x, 5.0, s)
    torch.testing.assert_close(dx, (xs - m(xs, s)) / s, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(m.ode_solution(x, 5.0, 5.0), x)


def test_registry_and_bad_input():
    names = fewstep.list_models()
    assert set(MODELS) <= set(names)
    assert fewstep.load_model("gauss", dim=8).shape == (8,)
    with pytest.raises(ValueError, match="unknown model 'gaus'.*gauss"):
        fewstep.load_model("gaus")
    with pytest.raises(ValueError, match="bad options"):
        fewstep.load_model("gauss", dimension=3)
    with pytest.raises(ValueError, match="dim must be"):
        Gauss(dim=0)
    with pytest.raises(ValueError, match="covariances"):
        GMM(torch.ones(2), torch.zeros(2, 3), torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="unconditional"):
        fewstep.load_model("gmm2d")(torch.zeros(1, 2), 1.0, cond={"y": 1})
