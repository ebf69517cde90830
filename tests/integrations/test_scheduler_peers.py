"""FewstepScheduler.from_config(scheduler.config) against diffusers' own scheduler in float64: the same config,
the same grid and timesteps, the same model, the same generator, the same loop (a pipeline's, optionally with
inpainting's latent blending or img2img's late start). Where the algorithm is the same the outputs agree to
diffusers' float32 rounding (its grids, alphas_cumprod and, in DPM-Solver and Euler, the state inside step)."""

import inspect
import warnings

import pytest
import torch

from fewstep.diffusion.from_diffusers import IgnoredConfigWarning, spec_from_config
from fewstep.models.exact import GMM

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402

_A = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
# two full-covariance components: the coordinates are coupled, so the blended (known) part steers the rest
TRUE = GMM(torch.tensor([0.4, 0.6]), torch.tensor([[1.0, -1.0, 0.0, 2.0], [-1.0, 0.5, 1.0, -0.5]]),
           _A @ _A.transpose(1, 2) / 4 + 0.05 * torch.eye(4))
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
NOISE = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
KNOWN = TRUE.sample_data(3, torch.Generator().manual_seed(1)).double()
MASK = torch.tensor([[0.0, 1.0, 1.0, 0.0]] * 3, dtype=torch.float64)  # 0: the known part (columns 0 and 3)
TOL = dict(rtol=1e-6, atol=2e-6)  # measured: 1.5e-6 (DEIS, eps form in float32), at most 6.2e-7 elsewhere


def stand_in(cfg):
    """A diffusers-style model whose denoiser is exactly TRUE (timestep -> sigma by the config's own map)."""
    spec = spec_from_config(cfg)

    def model(xt, t):
        sigma = spec.sigma_of_time(torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(xt.shape[0]))
        return spec.from_x0(TRUE(spec.state(xt, sigma), sigma), xt, sigma)

    return model


def blend(sch, x, t):
    """Inpainting: the known part is the known data noised to the next timestep (``add_noise`` or flow's
    ``scale_noise``), the rest is the scheduler's output."""
    t = t.reshape(1)
    known = sch.add_noise(KNOWN, NOISE, t) if hasattr(sch, "add_noise") else sch.scale_noise(KNOWN, t, NOISE)
    return (1 - MASK) * known + MASK * x


def drive(sch, model, steps, *, seed=None, inpaint=False, strength=None, **step_kw):
    """A pipeline's loop: ``latents = noise * init_noise_sigma`` (img2img with ``strength``: ``add_noise`` of the
    known data at the first kept step, after ``set_begin_index``), ``scale_model_input``, the model, ``step``
    with the generator where ``step`` takes one, and inpainting's blend after every step but the last."""
    sch.set_timesteps(steps)
    ts = sch.timesteps
    if "generator" in inspect.signature(sch.step).parameters:
        step_kw["generator"] = None if seed is None else torch.Generator().manual_seed(seed)
    if strength is None:
        x = NOISE * getattr(sch, "init_noise_sigma", 1.0)
    else:
        begin = (steps - int(steps * strength)) * sch.order
        ts = ts[begin:]
        sch.set_begin_index(begin)
        x = sch.add_noise(KNOWN, NOISE, ts[:1])
    scale = getattr(sch, "scale_model_input", lambda v, t: v)
    for i, t in enumerate(ts):
        x = sch.step(model(scale(x, t), t), t, x, **step_kw).prev_sample
        if inpaint and i < len(ts) - 1:
            x = blend(sch, x, ts[i + 1])
    return x


def pair(name, config, steps=10, **kw):
    """diffusers' scheduler ``name`` with ``config`` and FewstepScheduler.from_config of its config (no other
    argument, so the source's own algorithm), each driven by ``drive(**kw)``; no key may be refused."""
    ref = getattr(diffusers, name)(**config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredConfigWarning)
        few = FewstepScheduler.from_config(ref.config, float64=True)
    model = stand_in(dict(ref.config))
    a, b = drive(ref, model, steps, **kw), drive(few, model, steps, **kw)
    torch.testing.assert_close(few.timesteps, ref.timesteps.float())
    return a, b, few


DETERMINISTIC = [
    ("DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True), "dpmpp_2m"),  # DPM++ 2M Karras
    ("DPMSolverMultistepScheduler", dict(SD, timestep_spacing="leading", steps_offset=1, solver_order=3,
                                         prediction_type="v_prediction"), "dpmpp_3m"),
    ("DPMSolverMultistepScheduler", dict(SD, solver_type="heun", final_sigmas_type="sigma_min",
                                         lower_order_final=False), "dpmpp_2m"),
    ("DPMSolverMultistepScheduler", dict(SD, use_exponential_sigmas=True), "dpmpp_2m"),
    ("DPMSolverMultistepScheduler", dict(SD, solver_order=1, use_lu_lambdas=True), "ddim"),
    ("UniPCMultistepScheduler", dict(SD), "unipc"),
    ("UniPCMultistepScheduler", dict(SD, solver_order=3, timestep_spacing="trailing", prediction_type="sample",
                                     use_beta_sigmas=True), "unipc"),
    ("DEISMultistepScheduler", dict(SD, solver_order=1, timestep_spacing="leading"), "deis"),
    ("DDIMScheduler", dict(SD, set_alpha_to_one=False, steps_offset=1, clip_sample=False), "ddim"),
    ("EulerDiscreteScheduler", dict(SD), "euler"),
    ("EulerDiscreteScheduler", dict(SD, use_karras_sigmas=True, prediction_type="v_prediction"), "euler"),
    ("HeunDiscreteScheduler", dict(SD), "heun"),
    ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0), "euler"),
]


@pytest.mark.parametrize("name, config, solver", DETERMINISTIC, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("inpaint", [False, True], ids=["plain", "inpaint"])
def test_same_algorithm_same_result(name, config, solver, inpaint):
    a, b, few = pair(name, config, inpaint=inpaint)
    assert few.config.solver == solver
    torch.testing.assert_close(b, a, **TOL)


@pytest.mark.parametrize("config", [
    dict(SD, lower_order_final=False), dict(SD, timestep_spacing="trailing"),
    dict(SD, solver_order=2, timestep_spacing="leading", steps_offset=1, lower_order_final=False),
], ids=["order3", "trailing", "leading2"])
def test_deis_above_order_one_is_diffusers_logrho(monkeypatch, config):
    """DEISMultistepScheduler at orders 2 and 3 is deis(variable="log_sigma"). diffusers keeps its sigmas in
    float32, and its log-sigma coefficients (up to ~30 in size, with cancellation) carry that round-off: the two
    differ by up to ~1e-5. With diffusers' sigmas in float64 they agree to 1e-12."""
    set_timesteps = diffusers.DEISMultistepScheduler.set_timesteps

    def float64_sigmas(self, *args, **kwargs):
        set_timesteps(self, *args, **kwargs)
        self.sigmas = self.sigmas.double()

    monkeypatch.setattr(diffusers.DEISMultistepScheduler, "set_timesteps", float64_sigmas)
    a, b, few = pair("DEISMultistepScheduler", config)
    assert few.config.solver == "deis" and few.config.solver_options["variable"] == "log_sigma"
    torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, config", [
    ("DDIMScheduler", dict(SD, set_alpha_to_one=False, clip_sample=False)),
    ("DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True, final_sigmas_type="sigma_min",
                                         lower_order_final=False)),
    ("DEISMultistepScheduler", dict(SD, use_beta_sigmas=True, solver_order=1)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_zero_length_last_step_is_left_out(name, config):
    """Some diffusers grids end with a step from the final sigma to itself (DDIM from t = 0 to alphas_cumprod[0];
    Karras, exponential or beta sigmas that end at sigma_min, then sigma_min again). That step changes nothing
    and fewstep's grids are strictly decreasing: one timestep fewer, the same result (with lower_order_final,
    diffusers lowers the order of that empty step and fewstep of the last real one: docs/compat.md)."""
    ref = getattr(diffusers, name)(**config)
    few = FewstepScheduler.from_config(ref.config, float64=True)
    model = stand_in(dict(ref.config))
    a, b = drive(ref, model, 10), drive(few, model, 10)
    torch.testing.assert_close(few.timesteps, ref.timesteps[:-1].float())
    torch.testing.assert_close(b, a, **TOL)


def test_inpainting_keeps_the_multistep_history():
    """Blending at every step must not turn a multistep solver into DDIM (a restart at every step would): the
    generated part differs from DDIM's by far more than the agreement above, and the blend does steer it."""
    a, b, _ = pair("DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True), inpaint=True)
    ddim = FewstepScheduler.from_config(diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True).config,
                                        solver="ddim", float64=True)
    model = stand_in(dict(ddim.config))
    assert (drive(ddim, model, 10, inpaint=True) - b)[:, [1, 2]].abs().max() > 1e-3
    plain, _, _ = pair("DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True))
    assert (plain - a)[:, [1, 2]].abs().max() > 1e-2


@pytest.mark.parametrize("name, config, solver", [
    ("DPMSolverMultistepScheduler", dict(SD, solver_order=3), "dpmpp_3m"),
    ("UniPCMultistepScheduler", dict(SD, solver_order=3), "unipc"),
    ("HeunDiscreteScheduler", dict(SD), "heun"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_img2img_starts_where_diffusers_starts(name, config, solver):
    a, b, few = pair(name, config, steps=10, strength=0.6)
    assert few.config.solver == solver
    torch.testing.assert_close(b, a, **TOL)


STOCHASTIC = [
    ("EulerAncestralDiscreteScheduler", dict(SD), {}, "euler_ancestral"),
    ("DDIMScheduler", dict(SD, clip_sample=False), dict(eta=0.7), "ddim"),  # eta > 0: euler_ancestral(eta)
    ("DDIMScheduler", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), dict(eta=1.0), "ddim"),
    ("DPMSolverMultistepScheduler", dict(SD, algorithm_type="sde-dpmsolver++"), {}, "dpmpp_2m_sde"),
    ("DPMSolverMultistepScheduler", dict(SD, algorithm_type="sde-dpmsolver++", solver_type="heun",
                                         use_karras_sigmas=True), {}, "dpmpp_2m_sde"),
    ("DPMSolverMultistepScheduler", dict(SD, algorithm_type="sde-dpmsolver++", solver_order=1), {}, "euler_ancestral"),
    ("DDPMScheduler", dict(SD, clip_sample=False), {}, "ddpm"),
    ("DDPMScheduler", dict(SD, variance_type="fixed_large"), {}, "ddpm"),
]


@pytest.mark.parametrize("name, config, step_kw, solver", STOCHASTIC, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("inpaint", [False, True], ids=["plain", "inpaint"])
def test_stochastic_samplers_draw_from_the_pipelines_generator(name, config, step_kw, solver, inpaint):
    a, b, few = pair(name, config, seed=5, inpaint=inpaint, **step_kw)
    assert few.config.solver == solver
    torch.testing.assert_close(b, a, **TOL)
    other, _, _ = pair(name, config, seed=6, inpaint=inpaint, **step_kw)
    assert (other - a).abs().max() > 1e-2  # the noise matters, so the agreement is the generator's draws


@pytest.mark.parametrize("use_clipped_model_output", [None, False, True])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_clipping_and_use_clipped_model_output(use_clipped_model_output, eta):
    config = dict(SD, clip_sample=True, clip_sample_range=0.8)
    a, b, _ = pair("DDIMScheduler", config, seed=3, eta=eta, use_clipped_model_output=use_clipped_model_output)
    torch.testing.assert_close(b, a, **TOL)
    if use_clipped_model_output:
        c, _, _ = pair("DDIMScheduler", config, seed=3, eta=eta, use_clipped_model_output=False)
        assert (c - a).abs().max() > 1e-3  # the clipping is active, so the two readings differ


def test_euler_ancestral_is_ddim_with_eta_one_also_unclipped():
    """solver='euler_ancestral' (its own eta = 1) with the pipeline's eta = 0 is DDIMScheduler with eta = 1, also
    when the step uses the model's unclipped eps (use_clipped_model_output=False)."""
    config = dict(SD, clip_sample=True, clip_sample_range=0.8)
    ref = diffusers.DDIMScheduler(**config)
    few = FewstepScheduler.from_config(ref.config, solver="euler_ancestral", float64=True)
    model = stand_in(dict(ref.config))
    a = drive(ref, model, 10, seed=8, eta=1.0, use_clipped_model_output=False)
    b = drive(few, model, 10, seed=8, eta=0.0, use_clipped_model_output=False)
    torch.testing.assert_close(b, a, **TOL)


def kdpm2_midpoints(steps=10):
    """KDPM2 as a loaded pipeline has it (its config names the class): the largest differences of the timesteps
    and of the outputs. fewstep calls the model at its midpoints' fractional timesteps, diffusers at its own."""
    ref = diffusers.KDPM2DiscreteScheduler(**SD)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredConfigWarning)
        few = FewstepScheduler.from_config({**ref.config, "_class_name": "KDPM2DiscreteScheduler"}, float64=True)
    model = stand_in(dict(ref.config))
    a, b = drive(ref, model, steps), drive(few, model, steps)
    return (few.timesteps.double() - ref.timesteps.double()).abs().max().item(), (b - a).abs().max().item(), few


def test_kdpm2_midpoints_at_fewsteps_timesteps_agree():
    timesteps, outputs, few = kdpm2_midpoints()
    assert few.config.solver == "dpm_solver_2" and 0 < timesteps < 1e-3
    assert outputs < TOL["atol"]


def _largest(name, config, steps=10, **kw):
    ref = getattr(diffusers, name)(**config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IgnoredConfigWarning)
        few = FewstepScheduler.from_config(ref.config, float64=True)
    model = stand_in(dict(ref.config))
    return f"{(drive(ref, model, steps, **kw) - drive(few, model, steps, **kw)).abs().max().item():.1e}"


if __name__ == "__main__":  # the numbers of docs/compat.md: python tests/integrations/test_scheduler_peers.py
    for name, config, solver in DETERMINISTIC:
        print(name, solver, "plain", _largest(name, config), "inpainting", _largest(name, config, inpaint=True))
    for name, config, step_kw, solver in STOCHASTIC:
        print(name, solver, step_kw, "plain", _largest(name, config, seed=5, **step_kw),
              "inpainting", _largest(name, config, seed=5, inpaint=True, **step_kw))
    for name, config in [("DPMSolverMultistepScheduler", dict(SD, solver_order=3)),
                         ("UniPCMultistepScheduler", dict(SD, solver_order=3)), ("HeunDiscreteScheduler", SD)]:
        print(name, "img2img", _largest(name, config, strength=0.6))
    print("differences:")
    print("zero-length last step, DPM 2M Karras to sigma_min", _largest(
        "DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True, final_sigmas_type="sigma_min")))
    for solver_type, order in (("heun", 2), ("midpoint", 3)):
        ref = diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True, final_sigmas_type="sigma_min",
                                                    lower_order_final=False, solver_type=solver_type,
                                                    solver_order=order)
        few = FewstepScheduler.from_config(ref.config, float64=True)
        model = stand_in(dict(ref.config))
        print("zero-length last step without lower_order_final,", solver_type, order, "NaN: diffusers",
              bool(drive(ref, model, 10).isnan().any()), "fewstep", bool(drive(few, model, 10).isnan().any()))
    for spacing, steps in (("linspace", 10), ("trailing", 7), ("trailing", 10)):
        print("DDIM", spacing, steps, _largest("DDIMScheduler", dict(SD, timestep_spacing=spacing, clip_sample=False),
                                               steps))
    for order in (3, 2):
        print("img2img 20 steps, strength 0.5, DPM order", order,
              _largest("DPMSolverMultistepScheduler", dict(SD, solver_order=order), 20, strength=0.5))
    print("KDPM2, 10 steps: timesteps {:.1e}, outputs {:.1e}".format(*kdpm2_midpoints()[:2]))
    print("FlowMatch Heun, 8 steps", _largest("FlowMatchHeunDiscreteScheduler", dict(shift=3.0), 8))
    flow = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
    model = stand_in(dict(flow.config))
    exact = drive(diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0), model, 400)
    for n in (8, 16, 32):
        errors = [(drive(s, model, n) - exact).abs().max().item() for s in
                  (diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0),
                   FewstepScheduler.from_config(flow.config, float64=True))]
        print(f"FlowMatch Heun, {n} steps, error to 400 steps: diffusers {errors[0]:.2g}, fewstep {errors[1]:.2g}")
