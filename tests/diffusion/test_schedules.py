import math

import pytest
import torch

import fewstep
from fewstep.diffusion.adapters import ModelDenoiser
from fewstep.diffusion.processes import Flow, VPDiscrete
from fewstep.diffusion.schedules import (
    check_sigmas,
    discrete_timesteps,
    exponential,
    get_sigmas,
    karras,
    list_schedules,
    logsnr,
)
from fewstep.models.exact import Gauss

GAUSS = Gauss(dim=2)


def test_karras_logsnr_exponential_closed_forms():
    k = karras(5, 0.002, 80.0, rho=7.0)
    assert k[0] == pytest.approx(80.0) and k[-1] == pytest.approx(0.002)
    torch.testing.assert_close(k ** (1 / 7), torch.linspace(80 ** (1 / 7), 0.002 ** (1 / 7), 5, dtype=torch.float64))
    lg = logsnr(6, 0.01, 10.0)
    torch.testing.assert_close(torch.diff(-torch.log(lg)), torch.full((5,), math.log(1000) / 5, dtype=torch.float64))
    torch.testing.assert_close(exponential(6, 0.01, 10.0), lg)
    assert not torch.allclose(exponential(6, 0.01, 10.0, rho=2.0), lg)


def test_time_uniform_and_quadratic_are_uniform_in_native_time():
    vp = ModelDenoiser(lambda x, t: x, VPDiscrete.from_betas("linear"), "x0")
    s = get_sigmas("time_uniform", 4, vp)
    t = vp.process.sigma_to_t(s[:-1])
    torch.testing.assert_close(torch.diff(t), torch.full((3,), -999 / 3, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    q = get_sigmas("time_quadratic", 4, vp)
    tq = vp.process.sigma_to_t(q[:-1]).sqrt()
    torch.testing.assert_close(torch.diff(tq), torch.full((3,), float(tq[1] - tq[0]), dtype=torch.float64))
    flow = ModelDenoiser(lambda x, t: x, Flow(), "velocity")
    fs = get_sigmas("time_uniform", 4, flow)
    assert math.isinf(fs[0]) and fs[-1] == 0
    torch.testing.assert_close(flow.process.sigma_to_t(fs[:-1]), torch.linspace(1, 1e-3, 4, dtype=torch.float64))


def test_discrete_spacings_match_their_definitions():
    assert discrete_timesteps(10, 1000, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert discrete_timesteps(10, 1000, "leading", steps_offset=1).tolist() == [901, 801, 701, 601, 501, 401, 301,
                                                                               201, 101, 1]
    assert discrete_timesteps(4, 1000, "linspace").tolist() == [999, 666, 333, 0]
    vp = ModelDenoiser(lambda x, t: x, VPDiscrete.from_betas("linear"), "x0")
    s = get_sigmas("discrete", 10, vp)  # default spacing trailing: starts at the last timestep
    assert float(s[0]) == pytest.approx(vp.sigma_max) and s[-1] == 0
    with pytest.raises(ValueError, match="spacing"):
        get_sigmas("discrete", 10, vp, spacing="middle")
    with pytest.raises(ValueError, match="discrete-time model"):
        get_sigmas("discrete", 10, GAUSS)


@pytest.mark.parametrize("name", ["karras", "logsnr", "exponential", "time_uniform", "time_quadratic", "flow_shift",
                                  "flow_dynamic"])
@pytest.mark.parametrize("final", ["zero", "min"])
def test_every_schedule_is_decreasing_with_the_right_ends(name, final):
    s = get_sigmas(name, 7, GAUSS, final=final)
    assert s.numel() == 8 and s.dtype == torch.float64
    assert (s[1:] < s[:-1]).all()
    assert float(s[0]) == pytest.approx(GAUSS.sigma_max)
    assert float(s[-1]) == (0.0 if final == "zero" else pytest.approx(GAUSS.sigma_min))


def _diffusers_flow_sigmas(n: int, config: dict, **kwargs) -> torch.Tensor:
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config({"num_train_timesteps": 1000, **config})
    scheduler.set_timesteps(n, **kwargs)
    return scheduler.sigmas.double()


FLOW = ModelDenoiser(lambda x, t: x, Flow(t_min=1e-3), "velocity")  # t_min = 1 / 1000, as diffusers


@pytest.mark.parametrize("n", [1, 3, 7, 10])
@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_flow_shift_is_diffusers_flow_grid(n, shift):
    """The grid in flow time t = sigma / (1 + sigma) is diffusers' own FlowMatchEulerDiscreteScheduler sigmas
    (which are float32), with t = 1 as sigma = inf."""
    ours = get_sigmas("flow_shift", n, FLOW, shift=shift)
    assert ours.numel() == n + 1 and math.isinf(ours[0]) and ours[-1] == 0
    t = torch.where(torch.isinf(ours), torch.ones_like(ours), ours / (1 + ours))
    torch.testing.assert_close(t, _diffusers_flow_sigmas(n, {"shift": shift}), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [2, 5, 10])
@pytest.mark.parametrize("mu", [0.0, 0.5, 1.15])
def test_flow_dynamic_is_diffusers_dynamic_shifting(n, mu):
    ours = get_sigmas("flow_dynamic", n, FLOW, mu=mu)
    t = torch.where(torch.isinf(ours), torch.ones_like(ours), ours / (1 + ours))
    config = {"use_dynamic_shifting": True, "time_shift_type": "exponential"}
    torch.testing.assert_close(t, _diffusers_flow_sigmas(n, config, mu=mu), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [1, 3, 7, 10])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_sigmas_is_diffusers_use_flow_sigmas_grid(n, shift):
    """``flow_sigmas`` is the grid of diffusers' DPMSolverMultistepScheduler with ``use_flow_sigmas=True``: flow
    times ``linspace(1 - 1/1000, 0, n + 1)``, shifted, the 0 dropped, then sigma = 0; it never starts at t = 1.
    (diffusers' UniPC spaces ``linspace(1, 1/1000, n + 1)`` instead and starts at t = 1.)"""
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=shift,
                                                prediction_type="flow_prediction")
    sch.set_timesteps(n)
    theirs = sch.sigmas.double()  # flow times t, then the final 0
    ours = get_sigmas("flow_sigmas", n, FLOW, shift=shift)
    assert ours.numel() == n + 1 and math.isfinite(ours[0]) and ours[-1] == 0
    torch.testing.assert_close(ours / (1 + ours), theirs, rtol=1e-6, atol=1e-7)
    ve = get_sigmas("flow_sigmas", n, GAUSS)  # a finite sigma_max is where the grid starts, on any model
    assert float(ve[0]) == pytest.approx(GAUSS.sigma_max)
    with pytest.raises(ValueError, match="final='min' is not available"):
        get_sigmas("flow_sigmas", n, FLOW, final="min")


def test_flow_grids_plain_and_bad_options():
    plain = get_sigmas("flow_shift", 6, FLOW)
    torch.testing.assert_close(get_sigmas("flow_dynamic", 6, FLOW), plain)
    t = plain[1:-1] / (1 + plain[1:-1])
    torch.testing.assert_close(torch.diff(t), torch.full((4,), float(t[1] - t[0]), dtype=torch.float64))
    assert (get_sigmas("flow_shift", 6, FLOW, shift=3.0)[1:-1] > plain[1:-1]).all()  # shift > 1 stays noisier
    assert float(get_sigmas("flow_shift", 4, FLOW, sigma_max=80.0)[0]) == pytest.approx(80.0)
    with pytest.raises(ValueError, match="shift must be > 0"):
        get_sigmas("flow_shift", 4, FLOW, shift=0.0)
    with pytest.raises(ValueError, match="unknown option"):
        get_sigmas("flow_shift", 4, FLOW, mu=1.0)


def test_explicit_and_bad_schedules():
    s = get_sigmas("explicit", 2, GAUSS, sigmas=[10.0, 1.0, 0.0])
    assert s.tolist() == [10.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="3 steps but 2"):
        get_sigmas("explicit", 2, GAUSS, sigmas=[10.0, 5.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_sigmas([1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        check_sigmas([1.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        check_sigmas([1.0, -0.5])
    with pytest.raises(ValueError, match="at least 2"):
        check_sigmas([1.0])
    with pytest.raises(ValueError, match="unknown option"):
        get_sigmas("karras", 3, GAUSS, rhoo=7)
    with pytest.raises(ValueError, match="finite sigma_max"):
        get_sigmas("karras", 3, ModelDenoiser(lambda x, t: x, Flow(), "velocity"))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        get_sigmas("karras", 3, GAUSS, sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="positive integer"):
        get_sigmas("karras", 0, GAUSS)
    assert set(list_schedules()) == set(fewstep.list_schedules()) >= {"karras", "logsnr", "time_uniform", "discrete"}
