"""Training-free corrections: each one's defining identity, its paper's claim where it is cheap to
measure on a bundled model, zero terminal SNR against the exact Gaussian solution, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep
from fewstep.diffusion.adapters import ModelDenoiser
from fewstep.diffusion.conversions import from_x0
from fewstep.diffusion.corrections import (
    Calibrated,
    CalibrationTable,
    DynamicThreshold,
    EpsScaling,
    Wrapper,
    calibrate,
    zero_terminal_snr,
)
from fewstep.diffusion.denoiser import CountingDenoiser, Denoiser, bcast
from fewstep.diffusion.processes import VPDiscrete
from fewstep.diffusion.sampling import sample, seeded_noise, solve
from fewstep.diffusion.schedules import discrete_timesteps, get_sigmas
from fewstep.diffusion.solvers import SOLVERS, register
from fewstep.models.digits_data import digits_data
from fewstep.models.exact import Gauss

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


class Const(Denoiser):
    """Returns a fixed prediction, to test the wrappers on chosen values of D."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value, self.shape, self.name = value, tuple(value.shape[1:]), "const"

    def denoise(self, x, sigma, cond):
        return self.value.to(x)


@pytest.fixture(scope="module")
def gauss():
    return Gauss(dim=6, mean=torch.linspace(-1, 1, 6), std=torch.linspace(0.3, 1.2, 6))


def test_eps_scaling_divides_eps_by_lambda_and_lambda_one_is_the_identity(gauss):
    x = seeded_noise(range(5), (6,), torch.float64) * 3
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0, 20.0], dtype=torch.float64)
    d = gauss(x, sigma)
    assert torch.equal(EpsScaling(gauss, 1.0)(x, sigma), d)
    lam = 1.05
    eps, eps_scaled = (x - d) / bcast(sigma, x), (x - EpsScaling(gauss, lam)(x, sigma)) / bcast(sigma, x)
    torch.testing.assert_close(eps_scaled, eps / lam, rtol=1e-12, atol=1e-12)
    linear = EpsScaling(gauss, lambda s: 1 + 0.01 * s)  # the paper's lambda(t) = k t + b, here in sigma
    torch.testing.assert_close((x - linear(x, sigma)) / bcast(sigma, x), eps / bcast(1 + 0.01 * sigma, x))
    at_inf = torch.full((5,), math.inf, dtype=torch.float64)
    assert torch.equal(EpsScaling(gauss, lam)(x, at_inf), gauss(x, at_inf))


def test_dynamic_threshold_keeps_in_range_predictions_and_clips_and_rescales_the_rest():
    inside = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = torch.zeros_like(inside)
    assert torch.equal(DynamicThreshold(Const(inside))(x, 1.0), inside)
    big = inside.clone()
    big[0] *= 3  # sample 0 out of range everywhere, sample 1 with one outlier, sample 2 in range
    big[1, 0, 0, 0] = 5.0
    out = DynamicThreshold(Const(big), percentile=0.995)(x, 1.0)
    s0 = torch.quantile(big[0].abs().flatten().double(), 0.995).float()
    torch.testing.assert_close(out[0], big[0].clamp(-s0, s0) / s0)
    s1 = max(float(torch.quantile(big[1].abs().flatten().double(), 0.995)), 1.0)
    torch.testing.assert_close(out[1], big[1].clamp(-s1, s1) / s1)
    assert torch.equal(out[2], big[2]) and out.abs().max() <= 1
    wide = DynamicThreshold(Const(big), max_value=2.0)(x, 1.0)  # data range [-2, 2]
    assert wide.abs().max() <= 2 and torch.equal(wide[2], big[2])


def test_calibrated_adds_exactly_sigma_times_the_stored_mean_interpolated_in_log_sigma(gauss, tmp_path):
    sigmas = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    eta = torch.stack([torch.full((6,), v) for v in (1.0, 2.0, 4.0)])
    table = CalibrationTable(sigmas, eta, "gauss6", 1)
    cal = Calibrated(gauss, table)
    x = seeded_noise(range(4), (6,), torch.float64)
    s = torch.tensor([0.1, 1.0, math.sqrt(10.0), 100.0], dtype=torch.float64)  # grid, log-midpoint, beyond the end
    diff = (cal(x, s) - gauss(x, s)) / bcast(s, x)
    torch.testing.assert_close(diff[:, 0], torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    at_inf = torch.full((4,), math.inf, dtype=torch.float64)
    assert torch.equal(cal(x, at_inf), gauss(x, at_inf))
    table.save(tmp_path / "t.safetensors")
    back = CalibrationTable.load(tmp_path / "t.safetensors")
    assert torch.equal(back.eta, table.eta) and torch.equal(back.sigmas, table.sigmas) and back.model == "gauss6"


def test_a_model_whose_eps_has_zero_mean_is_unchanged_and_a_biased_one_is_repaired(gauss):
    data = gauss.sample_data(4000, torch.Generator().manual_seed(1))
    grid = torch.logspace(-1, 1, 5, dtype=torch.float64)
    table = calibrate(gauss, data, grid, seed=2)
    assert table.n == 4000 and table.eta.abs().max() < 5 / math.sqrt(4000)  # Monte Carlo error only

    class Biased(Wrapper):  # eps_hat = eps + b: D' = D - sigma b
        tag = "biased"

        def denoise(self, x, sigma, cond):
            return self.model(x, sigma, cond) - bcast(sigma, x) * 0.3

    biased = Biased(gauss)
    fixed = Calibrated(biased, calibrate(biased, data, grid, seed=2))
    x, s = seeded_noise(range(8), (6,), torch.float64), torch.full((8,), 1.0, dtype=torch.float64)
    assert (biased(x, s) - gauss(x, s)).abs().max() > 0.29
    assert (fixed(x, s) - gauss(x, s)).abs().max() < 5 / math.sqrt(4000)


def test_calibration_lowers_the_held_out_denoising_loss_by_eta_squared():
    # Pang et al. (arXiv 2302.10688, Sec. 4): E|eps_hat - eta - eps|^2 = E|eps_hat - eps|^2 - |eta|^2. The
    # bundled nets come out calibrated (|eta|^2 is at the Monte Carlo floor; see docs/benchmarks.md), so
    # digits-cond's eps gets a known mean offset here, and calibration on the train split must remove it.
    model = fewstep.load_model("digits-cond")
    offset = 0.4 * torch.linspace(-1, 1, 64).reshape(1, 8, 8)

    class Offset(Wrapper):  # eps_hat + offset, i.e. D - sigma offset
        tag = "offset"

        def denoise(self, x, sigma, cond):
            return self.model(x, sigma, cond) - bcast(sigma, x) * offset

    biased = Offset(model)
    sigma = 0.5
    with torch.no_grad():
        table = calibrate(biased, digits_data("train")[0].reshape(-1, 1, 8, 8), [sigma], seed=0)
        held = digits_data("heldout")[0].reshape(-1, 1, 8, 8)
        eps = torch.randn(held.shape, generator=torch.Generator().manual_seed(5))
        x = held + sigma * eps
        loss = lambda den: float(((x - den(x, sigma)) / sigma - eps).square().sum(dim=(1, 2, 3)).mean())  # noqa: E731
        gain = loss(biased) - loss(Calibrated(biased, table))
    eta_sq = float(table.eta.double().square().sum())
    assert eta_sq == pytest.approx(float(offset.square().sum()), rel=0.15)
    assert gain == pytest.approx(eta_sq, rel=0.25)


def _ztsnr_v_model(gauss: Gauss, process: VPDiscrete) -> ModelDenoiser:
    """The exact v-prediction of Gaussian data on a VP process, finite at abar = 0."""
    mu, s2 = gauss.mean, gauss.std**2

    def v_model(xt, t):
        a, b = (bcast(c, xt) for c in process.coeffs(process.t_to_sigma(t)))
        x0 = mu + s2 * a * (xt - a * mu) / (a * a * s2 + b * b)  # the posterior mean in VP coordinates
        return from_x0("v", x0, xt, a, b)

    return ModelDenoiser(v_model, process, "v", shape=(6,))


def test_zero_terminal_snr_starts_at_the_last_timestep_and_matches_the_exact_solution(gauss):
    base = VPDiscrete.from_betas("linear")
    ztsnr = zero_terminal_snr(base)
    assert math.isinf(ztsnr.sigma_max) and ztsnr.sigma_min == pytest.approx(base.sigma_min)
    assert ztsnr.alphas_cumprod[-1] == 0 and ztsnr.alphas_cumprod[0] == pytest.approx(base.alphas_cumprod[0])
    assert torch.equal(ztsnr.sigmas[:-1], VPDiscrete.from_betas("linear", rescale_betas_zero_snr=True).sigmas[:-1])
    model = CountingDenoiser(_ztsnr_v_model(gauss, ztsnr))
    trailing = get_sigmas("discrete", 10, model)
    assert discrete_timesteps(10, 1000)[0] == 999 and math.isinf(trailing[0])  # trailing: t = T - 1 first
    assert math.isfinite(get_sigmas("discrete", 10, model, spacing="leading")[0])  # the flaw Lin et al. fix
    z = seeded_noise(range(64), (6,), torch.float64)
    x = sample(model, solver="dpmpp_2m", nfe=50, noise=z, dtype=torch.float64)
    assert model.calls == 50 and torch.isfinite(x).all()
    exact = gauss.mean + gauss.std * z  # the PF-ODE from sigma = inf maps unit noise z to mu + s z
    assert float((x - exact).abs().max()) < 2e-2
    eps_model = ModelDenoiser(lambda xt, t: xt, ztsnr, "eps", shape=(6,))
    with pytest.raises(ValueError, match="sigma = inf"):
        sample(eps_model, solver="ddim", nfe=4, batch=2)


def test_time_shift_ddim_reduces_to_ddim_without_shifts_and_shifts_per_sample(gauss):
    model = gauss
    x_ddim = sample(model, solver="ddim", nfe=8, batch=6)
    assert torch.equal(sample(model, solver="ddim_ts", nfe=8, batch=6, solver_options={"cutoff": 1000}), x_ddim)
    torch.testing.assert_close(sample(model, solver="ddim_ts", nfe=8, batch=6, solver_options={"window": 0}),
                               x_ddim, rtol=1e-5, atol=1e-5)
    shifted = sample(model, solver="ddim_ts", nfe=8, batch=6, solver_options={"window": 40, "cutoff": 200})
    assert (shifted - x_ddim).abs().amax(dim=1).min() > 0 and torch.isfinite(shifted).all()
    counter = CountingDenoiser(model)
    sample(counter, solver="ddim_ts", nfe=8, batch=2)
    assert counter.calls == 8
    assert fewstep.list_solvers()["ddim_ts"]["options"] == {"window": 30, "cutoff": 300, "alphas_cumprod": None}


def test_time_shift_measures_time_in_the_alphas_cumprod_it_is_given(gauss):
    """gauss is a VE model, so ddim_ts counts timesteps in DDPM's linear schedule unless it is given one
    (FewstepScheduler gives its config's: tests/integrations/test_scheduler.py)."""
    shift = {"window": 40, "cutoff": 200}
    ddpm = VPDiscrete.from_betas("linear").alphas_cumprod.tolist()
    sd = VPDiscrete.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    default = sample(gauss, solver="ddim_ts", nfe=8, batch=6, solver_options=shift)
    assert torch.equal(sample(gauss, solver="ddim_ts", nfe=8, batch=6,
                              solver_options={**shift, "alphas_cumprod": ddpm}), default)
    other = sample(gauss, solver="ddim_ts", nfe=8, batch=6, solver_options={**shift, "alphas_cumprod": sd})
    assert (other - default).abs().max() > 1e-3


@pytest.mark.parametrize("make, message", [
    (lambda m: EpsScaling(m, 0.0), r"scale \(lambda, or a callable of sigma\) must be a finite number > 0"),
    (lambda m: EpsScaling(m, math.nan), "finite number > 0"),
    (lambda m: DynamicThreshold(m, percentile=1.5), r"percentile must lie in \(0, 1\]"),
    (lambda m: DynamicThreshold(m, max_value=-1.0), "max_value must be"),
    (lambda m: CalibrationTable(torch.tensor([1.0, 0.5]), torch.zeros(2, 6)), "strictly increasing"),
    (lambda m: CalibrationTable(torch.tensor([1.0]), torch.zeros(2, 6)), r"eta must have shape \[1, \*shape\]"),
    (lambda m: Calibrated(m, CalibrationTable(torch.tensor([1.0]), torch.zeros(1, 5))), "per-sample shape"),
    (lambda m: calibrate(m, torch.zeros(3, 5), [1.0]), "the model expects"),
    (lambda m: calibrate(m, torch.zeros(3, 6), [0.0, 1.0]), "positive and finite"),
    (lambda m: sample(m, solver="ddim_ts", nfe=4, batch=1, solver_options={"window": -2}), "window must be"),
    (lambda m: sample(m, solver="ddim_ts", nfe=4, batch=1, solver_options={"span": 3}), "valid options: window=30"),
    (lambda m: sample(m, solver="ddim_ts", nfe=4, batch=1, solver_options={"alphas_cumprod": [0.5, 0.9]}),
     r"alphas_cumprod must be .* strictly decreasing .*; got \[0.5, 0.9\]"),
])
def test_bad_input_is_rejected_with_the_allowed_values(gauss, make, message):
    with pytest.raises(ValueError, match=message):
        make(gauss)
    with pytest.raises(TypeError, match="Denoiser"):
        EpsScaling(lambda x, s: x, 1.0)
    with pytest.raises(TypeError, match="VPDiscrete"):
        zero_terminal_snr(gauss.process)


def test_time_shift_is_declared_a_correction_because_it_does_not_converge_to_the_ode_solution():
    """ddim_ts aims each step at a shifted time, so refining the grid does not remove its error (DDIM's falls as
    1/N); the registry says so by its kind and order, and the order tests select solvers by that declaration."""
    info = SOLVERS["ddim_ts"]
    assert info.kind == "correction" and info.order is None
    gauss = Gauss(dim=64, mean=0.3, std=0.5)
    x_T = 80.0 * seeded_noise(range(16), (64,), dtype=torch.float64)
    exact = gauss.ode_solution(x_T, 80.0, 0.0)
    shift = {"window": 40, "cutoff": 0}

    def error(solver, n, **options):
        return float((solve(gauss, x_T, get_sigmas("karras", n, gauss), solver, **options) - exact).abs().max())

    assert error("ddim", 64) < error("ddim", 16) / 3  # first order converges
    assert error("ddim_ts", 64, **shift) > 3 * error("ddim", 64)  # the correction keeps its shift
    with pytest.raises(ValueError, match="a correction has order None"):
        register("bad_correction", order=1, kind="correction", paper="-", fn=lambda D, x, sigmas, *, callback=None: x)
