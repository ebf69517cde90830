"""FewstepScheduler: every solver behind diffusers' scheduler protocol gives what fewstep gives on the wrapped
model, in a hand-written loop. Agreement with diffusers' own schedulers: test_scheduler_peers.py; config
keys and conventions: test_scheduler_config.py; real pipelines: test_scheduler_pipelines.py."""

import json
import math
import warnings

import pytest
import torch

import fewstep
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.from_diffusers import from_diffusers, spec_from_config
from fewstep.diffusion.schedules import list_schedules
from fewstep.diffusion.solvers import SOLVERS
from fewstep.integrations._stepper import run_solver
from fewstep.models.exact import Gauss

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402

TRUE = Gauss(dim=4, mean=torch.tensor([0.5, -1.0, 0.0, 2.0]), std=torch.tensor([0.5, 1.0, 2.0, 0.7]))
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
DETERMINISTIC = sorted(n for n, i in SOLVERS.items() if not i.stochastic)
NOISE = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def stand_in(cfg):
    """A diffusers-style model whose denoiser is exactly TRUE (timestep -> sigma by the config's own map)."""
    spec = spec_from_config(cfg)

    def model(xt, timestep):
        sigma = spec.sigma_of_time(timestep.double().expand(xt.shape[0]))
        return spec.from_x0(TRUE(spec.state(xt, sigma), sigma), xt, sigma)

    return model


def run_loop(scheduler, model, noise, **set_kw):
    scheduler.set_timesteps(**set_kw)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x


def on_grid(t):
    """fewstep's fractional timestep, snapped to the integer timestep it stands for at a grid point."""
    return torch.where((t - t.round()).abs() < 1e-3, t.round(), t)


def fewstep_noise(scheduler, noise):
    """The noise of fewstep.sample that starts where the pipeline's ``latents = noise * init_noise_sigma`` does:
    the model input ``x_t = b(sigma_0) noise'`` (fewstep's ``x = sigma_0 noise'``)."""
    s0 = scheduler._grid[0]
    b0 = 1.0 if math.isinf(s0) else s0 / math.sqrt(1 + s0 * s0)
    return noise * scheduler.init_noise_sigma / b0


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_every_solver_matches_fewstep_sample(solver):
    cfg = dict(SD, prediction_type="v_prediction", clip_sample=False, _class_name="DDIMScheduler")
    model = stand_in(cfg)
    for schedule in ("karras", None):  # None: DDIMScheduler's own grid
        sch = FewstepScheduler.from_config(cfg, solver=solver, schedule=schedule, float64=True)
        out = run_loop(sch, model, NOISE, num_inference_steps=6)
        assert sch.init_noise_sigma == 1.0  # diffusers' VP schedulers start from x_t = noise
        # DDIMScheduler's grid points are integer timesteps, which the pipeline passes as they are
        counted = CountingDenoiser(from_diffusers(model, cfg, shape=(4,), timestep_fn=None if schedule else on_grid))
        ref = fewstep.sample(counted, solver=solver, nfe=len(sch.timesteps), schedule="explicit",
                             schedule_options={"sigmas": sch._grid}, noise=fewstep_noise(sch, NOISE),
                             dtype=torch.float64)
        assert counted.calls == len(sch.timesteps) and sch.order == SOLVERS[solver].evals_per_step
        torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7)


def test_ddim_ts_counts_time_in_the_configs_schedule_and_plans_without_warnings():
    """ddim_ts behind the scheduler sees the model only through D; the scheduler gives it the config's
    alphas_cumprod (scaled_linear here, not DDPM's linear fallback), and planning a run warns about nothing."""
    cfg = dict(SD, prediction_type="epsilon", _class_name="DDIMScheduler")
    options = {"window": 40, "cutoff": 200}
    sch = FewstepScheduler.from_config(cfg, solver="ddim_ts", solver_options=options, float64=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's var() of the planning run's one-value sample warned, per step
        out = run_loop(sch, stand_in(cfg), NOISE, num_inference_steps=8)
    runs = {}
    for name, schedule in (("config", SD), ("ddpm", {})):
        ac = spec_from_config(schedule).process.alphas_cumprod
        ref = FewstepScheduler.from_config(cfg, solver="ddim_ts", float64=True,
                                           solver_options={**options, "alphas_cumprod": ac.tolist()})
        runs[name] = run_loop(ref, stand_in(cfg), NOISE, num_inference_steps=8)
    torch.testing.assert_close(out, runs["config"], rtol=0, atol=1e-12)
    assert (runs["ddpm"] - out).abs().max() > 1e-3


@pytest.mark.parametrize("schedule", sorted(list_schedules()))
def test_every_schedule_matches_fewstep_sample(schedule):
    cfg = dict(SD, prediction_type="epsilon")
    model = stand_in(cfg)
    options = {"sigmas": [14.0, 5.0, 1.0, 0.3, 0.05, 0.0]} if schedule == "explicit" else {}
    if schedule == "discrete":
        options = {"spacing": "trailing"}
    sch = FewstepScheduler.from_config(cfg, solver="unipc", schedule=schedule, schedule_options=options, float64=True)
    out = run_loop(sch, model, NOISE, num_inference_steps=5)
    ref = fewstep.sample(from_diffusers(model, cfg, shape=(4,)), solver="unipc", nfe=5, schedule=schedule,
                         schedule_options=options, noise=fewstep_noise(sch, NOISE), dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7)


def test_flow_config_zero_terminal_snr_and_custom_sigmas():
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    model = stand_in(FewstepScheduler.from_config(flow).config)
    sch = FewstepScheduler.from_config(flow, solver="dpmpp_2m")
    assert sch.config.prediction_type == "flow_prediction" and sch.config.shift == 3.0
    out = run_loop(sch, model, NOISE, num_inference_steps=8)
    assert math.isinf(sch.sigmas[0]) and sch.init_noise_sigma == 1.0
    # the source's grid is fewstep's time-uniform grid of the shifted flow (diffusers rounds it to float32)
    ref = fewstep.sample(from_diffusers(model, flow, shape=(4,)), solver="dpmpp_2m", nfe=8, schedule="time_uniform",
                         noise=NOISE)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # custom flow sigmas follow diffusers: shifted, then 0 appended
    ts = [1.0, 0.75, 0.5, 0.25]
    sch.set_timesteps(sigmas=ts)
    shifted = torch.tensor([3 * t / (1 + 2 * t) for t in ts], dtype=torch.float64)
    grid = torch.tensor(sch._grid[1:-1], dtype=torch.float64)
    torch.testing.assert_close(grid / (1 + grid), shifted[1:])
    torch.testing.assert_close(sch.timesteps, (shifted * 1000).float())


def test_custom_sigmas_timesteps_add_noise_and_config_round_trip(tmp_path):
    cfg = diffusers.DDPMScheduler(**SD).config
    sch = FewstepScheduler.from_config(cfg, solver="heun", schedule="karras", solver_options={})
    sch.set_timesteps(sigmas=[10.0, 2.0, 0.5, 0.0])
    assert len(sch.timesteps) == 5 and sch.order == 2  # Heun: 2 evaluations per step, the last one Euler
    sch.set_timesteps(timesteps=[999, 500, 10])
    spec = spec_from_config(cfg)
    torch.testing.assert_close(torch.tensor(sch._grid[:-1], dtype=torch.float64),
                               spec.process.t_to_sigma(torch.tensor([999.0, 500.0, 10.0], dtype=torch.float64)))
    assert sch.timesteps.tolist() == [999.0, 500.0, 500.0, 10.0, 10.0]
    # add_noise is diffusers' own at training timesteps
    ddpm = diffusers.DDPMScheduler(**SD)
    x0, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(sch.add_noise(x0, eps, t), ddpm.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)
    # the config survives from_config and save / from_pretrained, the source scheduler's config included
    again = FewstepScheduler.from_config(sch.config)
    sch.save_config(tmp_path)
    loaded = FewstepScheduler.from_pretrained(tmp_path)
    keys = [k for k in sch.config if not k.startswith("_")]
    for other in (again, loaded):
        assert {k: other.config[k] for k in keys} == {k: sch.config[k] for k in keys}
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["solver"] == "heun" and saved["source"]["_class_name"] == "DDPMScheduler"


STOCHASTIC = sorted(n for n, i in SOLVERS.items() if i.stochastic)


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_stochastic_solvers_draw_from_the_steps_generator(solver):
    """Each draw is randn_tensor(model_output.shape, generator) in call order (before the first evaluation too:
    ddpm_accelerated, heun_churn; Restart's spawned streams): the run equals the solver fed those draws."""
    cfg = dict(SD, prediction_type="epsilon")
    model = stand_in(cfg)
    sch = FewstepScheduler.from_config(cfg, solver=solver, schedule="karras", float64=True)
    runs = []
    for seed in (11, 11, 12):
        sch.set_timesteps(6)
        g = torch.Generator().manual_seed(seed)
        x = NOISE
        for t in sch.timesteps:
            x = sch.step(model(x, t), t, x, generator=g).prev_sample
        runs.append(x)
    g = torch.Generator().manual_seed(11)
    noise = type("Draws", (), {"__call__": lambda self, s, s_next: torch.randn(3, 4, generator=g, dtype=torch.float64),
                               "spawn": lambda self, i: self})()
    wrapped = from_diffusers(model, cfg, shape=(4,))
    if solver in ("heun_churn", "ddpm_accelerated"):  # they move the state before their first evaluation, and the
        wrapped = _FirstInput(wrapped, NOISE)  # pipeline has evaluated the model at its own sample there
    start = sch._spec.state(NOISE, torch.full((3,), sch._grid[0], dtype=torch.float64))
    ref = run_solver(wrapped, start, sch._grid, solver, {}, noise=noise)
    torch.testing.assert_close(runs[0], ref, rtol=1e-6, atol=1e-6)  # float32 timesteps: 4e-7 (sa_solver)
    assert torch.equal(runs[0], runs[1]) and (runs[2] - runs[0]).abs().max() > 1e-3


class _FirstInput:
    """A denoiser whose first input is replaced, in place, by the state of the model input ``xt``."""

    def __init__(self, inner, xt):
        self.inner, self.xt, self.first = inner, xt, True

    def __call__(self, x, sigma, cond=None):
        if self.first:
            self.first = False
            x.copy_(self.inner.spec.state(self.xt, torch.full((x.shape[0],), sigma, dtype=torch.float64)))
        return self.inner(x, sigma, cond)


class _Blending:
    """A denoiser that changes its input in place at given calls, as a pipeline changes its latents between
    two steps: fewstep's own reading of a changed sample (the solver goes on from it, history kept)."""

    def __init__(self, inner, at):
        self.inner, self.at, self.calls = inner, at, 0

    def __call__(self, x, sigma, cond=None):
        if self.calls in self.at:
            x.mul_(1.01)
        self.calls += 1
        return self.inner(x, sigma, cond)


@pytest.mark.parametrize("solver", ["dpmpp_3m", "unipc", "heun", "deis", "dpm_solver_2"])
def test_changed_sample_keeps_the_history_and_begin_index_starts_a_run(solver):
    cfg = dict(SD, prediction_type="epsilon")
    model = stand_in(cfg)
    wrapped = from_diffusers(model, cfg, shape=(4,))
    sch = FewstepScheduler.from_config(cfg, solver=solver, schedule="karras", float64=True)
    sch.set_timesteps(8)
    grid, changed = sch._grid, {3, 4, 6}
    x = NOISE
    for k, t in enumerate(sch.timesteps):
        if k in changed:  # a pipeline blends latents here (inpainting)
            x = x * 1.01
        x = sch.step(model(x, t), t, x).prev_sample
    start = sch._spec.state(NOISE, torch.full((3,), grid[0], dtype=torch.float64))
    ref = run_solver(_Blending(wrapped, changed), start, grid, solver, {})
    torch.testing.assert_close(x, ref, rtol=1e-7, atol=1e-7)
    # img2img: start at a step with set_begin_index, from add_noise; the run starts there, warm-up orders included
    sch.set_timesteps(8)
    begin = 3 * sch.order
    sch.set_begin_index(begin)
    x0 = TRUE.sample_data(3, torch.Generator().manual_seed(1))
    x = sch.add_noise(x0, NOISE, sch.timesteps[begin:begin + 1])
    start = sch._spec.state(x, torch.full((3,), grid[3], dtype=torch.float64))
    for t in sch.timesteps[begin:]:
        x = sch.step(model(x, t), t, x).prev_sample
    torch.testing.assert_close(x, run_solver(wrapped, start, grid[3:], solver, {}), rtol=1e-7, atol=1e-7)


def test_a_run_cannot_begin_inside_a_heun_step():
    cfg = dict(SD, prediction_type="epsilon")
    model = stand_in(cfg)
    sch = FewstepScheduler.from_config(cfg, solver="heun", schedule="karras")
    sch.set_timesteps(4)
    sch.set_begin_index(1)
    with pytest.raises(ValueError, match="inside a heun step"):
        sch.step(model(NOISE, sch.timesteps[1]), sch.timesteps[1], NOISE)


def test_solver_errors_reach_the_pipeline_and_abandoned_runs_end():
    cfg = dict(SD, prediction_type="epsilon")
    model = stand_in(cfg)
    sch = FewstepScheduler.from_config(cfg, solver="unipc", schedule="karras")
    sch.set_timesteps(4)
    x = NOISE * sch.init_noise_sigma
    x = sch.step(model(x, sch.timesteps[0]), sch.timesteps[0], x).prev_sample
    with pytest.raises(FloatingPointError, match="NaN or Inf at step 1"):  # raised in the solver's thread
        sch.step(torch.full_like(x, math.nan), sch.timesteps[1], x)
    sch.set_timesteps(4)
    x = NOISE * sch.init_noise_sigma
    sch.step(model(x, sch.timesteps[0]), sch.timesteps[0], x)
    worker = sch._run._thread
    sch.set_timesteps(4)  # abandons the half-finished run
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_bad_input():
    with pytest.raises(ValueError, match="unknown solver 'unipcc'"):
        FewstepScheduler(solver="unipcc")
    with pytest.raises(ValueError, match="unknown option.*ordr"):
        FewstepScheduler(solver="unipc", solver_options={"ordr": 3})
    with pytest.raises(ValueError, match="unknown schedule 'karas'"):
        FewstepScheduler(schedule="karas")
    with pytest.raises(ValueError, match="final must be"):
        FewstepScheduler(final="end")
    with pytest.raises(ValueError, match="source must be the config of a diffusers scheduler"):
        FewstepScheduler(source={"_class_name": "NoSuchScheduler"})
    sch = FewstepScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        sch.step(torch.zeros(1, 4), 999, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="exactly one of"):
        sch.set_timesteps(5, timesteps=[999, 10])
    with pytest.raises(ValueError, match="include the final value"):
        sch.set_timesteps(3, sigmas=[10.0, 1.0, 0.0])
