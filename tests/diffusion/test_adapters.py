"""Round trips of every conversion: a model that outputs the exact prediction of a known denoiser,
wrapped by the adapter, must give back that denoiser in sigma space."""

import math

import numpy as np
import pytest
import torch

from fewstep.diffusion.adapters import EDMPrecond, ModelDenoiser
from fewstep.diffusion.conversions import PREDICTIONS, from_x0, to_x0
from fewstep.diffusion.denoiser import CountingDenoiser, bcast
from fewstep.diffusion.processes import VE, Affine, Flow, VPContinuous, VPDiscrete, make_betas
from fewstep.models.exact import Gauss

TRUE = Gauss(dim=3, mean=torch.tensor([0.3, -0.5, 1.0]), std=torch.tensor([0.5, 1.0, 2.0]))


def cosine_affine():
    return Affine(alpha=lambda t: torch.cos(t * math.pi / 2), beta=lambda t: torch.sin(t * math.pi / 2),
                  t_min=1e-3, t_max=1 - 1e-3, label="trig")


PROCESSES = {
    "vp_linear": lambda: VPDiscrete.from_betas("linear"),
    "vp_scaled": lambda: VPDiscrete.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012),
    "vp_cos": lambda: VPDiscrete.from_betas("squaredcos_cap_v2"),
    "vp_custom": lambda: VPDiscrete.from_betas(np.linspace(1e-4, 0.03, 500)),
    "vpc_linear": lambda: VPContinuous("linear"),
    "vpc_cosine": lambda: VPContinuous("cosine", t_max=0.99),
    "ve": lambda: VE(0.01, 50.0),
    "flow": lambda: Flow(),
    "affine": cosine_affine,
}


def oracle(process, prediction):
    """A 'model' in the process's own space that predicts exactly what TRUE implies."""

    def model(xt, t):
        sigma = process.t_to_sigma(t.double()).to(xt.dtype)
        a, b = (bcast(c.to(xt.dtype), xt) for c in process.coeffs(sigma))
        x0 = TRUE(torch.where(bcast(torch.isinf(sigma), xt), xt, xt / a), sigma)
        da = db = None
        if prediction == "velocity":
            da, db = (bcast(c.to(xt.dtype), xt) for c in process.dcoeffs_dt(t.double()))
        return from_x0(prediction, x0, xt, a, b, da, db)

    return model


def valid(process_name, prediction):
    if prediction == "v":
        return process_name.startswith("vp")
    if prediction == "velocity":
        return process_name in ("flow", "affine")
    return True


@pytest.mark.parametrize("pname", list(PROCESSES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_adapter_round_trip(pname, prediction):
    process = PROCESSES[pname]()
    if not valid(pname, prediction):
        with pytest.raises(ValueError):
            ModelDenoiser(oracle(process, prediction), process, prediction)
        return
    D = ModelDenoiser(oracle(process, prediction), process, prediction, shape=(3,))
    g = torch.Generator().manual_seed(0)
    lo, hi = max(D.sigma_min, 0.02), min(D.sigma_max, 40.0)
    sig = torch.exp(torch.linspace(math.log(lo), math.log(hi), 7, dtype=torch.float64))
    for s in sig:
        x = TRUE.sample_data(5, g) + s * torch.randn(5, 3, generator=g, dtype=torch.float64)
        torch.testing.assert_close(D(x, s), TRUE(x, s), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_to_x0_inverts_from_x0(prediction):
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    t = torch.rand(4, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    a, b, da, db = 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
    if prediction == "v":  # v is defined for VP coefficients only
        a, b = torch.cos(t), torch.sin(t)
    out = from_x0(prediction, x0, xt, a, b, da, db)
    torch.testing.assert_close(to_x0(prediction, out, xt, a, b, da, db), x0)


def test_flow_velocity_is_eps_minus_x0():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    t = torch.full((3, 1), 0.3, dtype=torch.float64)
    xt = (1 - t) * x0 + t * eps
    u = from_x0("velocity", x0, xt, 1 - t, t, -torch.ones_like(t), torch.ones_like(t))
    torch.testing.assert_close(u, eps - x0)
    torch.testing.assert_close(to_x0("velocity", u, xt, 1 - t, t, -torch.ones_like(t), torch.ones_like(t)), xt - t * u)


def test_discrete_fractional_timesteps_round_trip():
    p = VPDiscrete.from_betas("linear")
    t = torch.tensor([0.0, 3.25, 17.5, 500.75, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(p.sigma_to_t(p.t_to_sigma(t)), t)
    # integer timesteps give the training sigmas exactly
    abar = np.cumprod(1 - make_betas("linear"))
    torch.testing.assert_close(p.t_to_sigma(torch.tensor([10.0], dtype=torch.float64)),
                               torch.tensor([math.sqrt((1 - abar[10]) / abar[10])],
                                            dtype=torch.float64))
    q = VPDiscrete.from_betas("linear", fractional=False)
    s = q.t_to_sigma(torch.tensor([41.4, 41.6], dtype=torch.float64))
    torch.testing.assert_close(q.sigma_to_t(s), torch.tensor([41.0, 42.0], dtype=torch.float64))
    torch.testing.assert_close(q.round_sigma(s), q.t_to_sigma(torch.tensor([41.0, 42.0], dtype=torch.float64)))


def test_continuous_vp_and_flow_time_round_trip():
    t = torch.linspace(0.01, 0.98, 9, dtype=torch.float64)
    for p in (VPContinuous("linear"), VPContinuous("cosine"), Flow(), cosine_affine()):
        torch.testing.assert_close(p.sigma_to_t(p.t_to_sigma(t)), t, rtol=1e-9, atol=1e-9)


def test_zero_terminal_snr_needs_no_division_by_zero():
    p = VPDiscrete.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    assert math.isinf(p.sigma_max) and p.alphas_cumprod[-1] == 0
    a, b = p.coeffs(torch.tensor([math.inf, 0.0], dtype=torch.float64))
    assert a.tolist() == [0.0, 1.0] and b.tolist() == [1.0, 0.0]
    D = ModelDenoiser(oracle(p, "v"), p, "v", shape=(3,))
    noise = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = D(noise, math.inf)  # at sigma = inf the state holds unit noise; D is the data mean
    torch.testing.assert_close(out, TRUE.mean.expand(4, 3), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="sigma = inf"):
        ModelDenoiser(oracle(p, "eps"), p, "eps")(noise, math.inf)


def test_edm_preconditioning_round_trip():
    sd = 0.5

    def F(x_in, c_noise):
        s = torch.exp(4 * c_noise)
        x = x_in * torch.sqrt(s[:, None] ** 2 + sd**2)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        return (TRUE(x, s) - c_skip[:, None] * x) / c_out[:, None]

    D = EDMPrecond(F, sigma_data=sd, shape=(3,))
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3
    for s in (0.01, 0.5, 10.0, 80.0):
        torch.testing.assert_close(D(x, s), TRUE(x, s))
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(F, sigma_data=0)


def test_counting_wrapper_and_cond_checks():
    c = CountingDenoiser(TRUE)
    x = torch.zeros(7, 3, dtype=torch.float64)
    c(x, 1.0)
    c(x, 0.5)
    assert (c.calls, c.samples) == (2, 14) and c.sigma_max == TRUE.sigma_max and c.shape == (3,)
    with pytest.raises(TypeError, match="mapping"):
        c(x, 1.0, cond=[1, 2])
    with pytest.raises(ValueError, match="shape"):
        TRUE(x, torch.ones(3))


def test_bad_process_arguments():
    with pytest.raises(ValueError, match="beta schedule"):
        VPDiscrete.from_betas("quadratic")
    with pytest.raises(ValueError, match="custom betas"):
        VPDiscrete.from_betas([0.1, -0.2])
    with pytest.raises(ValueError, match="linear"):
        VPContinuous("sqrt")
    with pytest.raises(ValueError, match="prediction"):
        ModelDenoiser(lambda x, t: x, VE(), "noise")
    with pytest.raises(ValueError, match="affine path"):
        ModelDenoiser(lambda x, t: x, VE(), "velocity")
