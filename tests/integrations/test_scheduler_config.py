"""FewstepScheduler.from_config honours a diffusers scheduler config: its grid is the source scheduler's own
(timesteps equal diffusers'), its class defaults count, its keys are honoured or named in a warning, and the
conventions pipelines read (init_noise_sigma, alphas_cumprod, order, compatibles, device, dtype) hold."""

import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from fewstep.diffusion.from_diffusers import IgnoredConfigWarning  # noqa: E402
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def quietly(config, **kwargs):
    """from_config that fails on any IgnoredConfigWarning (every key honoured)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredConfigWarning)
        return FewstepScheduler.from_config(config, **kwargs)


def refused(config, **kwargs):
    """The keys named by from_config's warnings, and the scheduler."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IgnoredConfigWarning)
        sch = FewstepScheduler.from_config(config, **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, IgnoredConfigWarning)]
    keys = {m.split("does not honour ")[1].split("=")[0].split(" ")[0] for m in messages}
    return keys, messages, sch


GRIDS = [  # (class, config, steps): each scheduler's own set_timesteps
    ("DPMSolverMultistepScheduler", dict(SD, timestep_spacing="leading", steps_offset=1), 25),  # [951, 913, 875, ...]
    ("DPMSolverMultistepScheduler", dict(SD), 25),
    ("DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True), 20),
    ("DPMSolverMultistepScheduler", dict(SD, use_lu_lambdas=True, final_sigmas_type="sigma_min"), 12),
    ("DPMSolverMultistepScheduler", dict(SD, lambda_min_clipped=-5.1, beta_schedule="squaredcos_cap_v2"), 10),
    ("UniPCMultistepScheduler", dict(SD), 25),
    ("UniPCMultistepScheduler", dict(SD, use_exponential_sigmas=True, timestep_spacing="trailing"), 9),
    ("DEISMultistepScheduler", dict(SD), 25),
    ("DEISMultistepScheduler", dict(SD, timestep_spacing="trailing", steps_offset=1), 8),
    ("DPMSolverSinglestepScheduler", dict(SD), 10),
    ("EulerDiscreteScheduler", dict(SD), 30),
    ("EulerDiscreteScheduler", dict(SD, timestep_spacing="leading", steps_offset=1, use_karras_sigmas=True), 7),
    ("EulerAncestralDiscreteScheduler", dict(SD, timestep_spacing="trailing"), 11),
    ("HeunDiscreteScheduler", dict(SD, use_karras_sigmas=True), 6),
    ("DDIMScheduler", dict(SD, set_alpha_to_one=False, steps_offset=1), 50),
    ("DDIMScheduler", dict(SD, timestep_spacing="trailing", rescale_betas_zero_snr=True,
                           prediction_type="v_prediction"), 10),
    ("DDPMScheduler", dict(SD), 20),
    ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0), 12),
    ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0, use_karras_sigmas=True), 12),
]


@pytest.mark.parametrize("name, config, steps", GRIDS, ids=lambda v: v if isinstance(v, str) else "")
def test_the_grid_is_the_source_schedulers_own(name, config, steps):
    ref = getattr(diffusers, name)(**config)
    # no fewstep equivalent of the singlestep sampler
    solver = {"DPMSolverSinglestepScheduler": "dpmpp_2m"}.get(name)
    few = quietly(ref.config, **({"solver": solver} if solver else {}))
    ref.set_timesteps(steps)
    few.set_timesteps(steps)
    torch.testing.assert_close(few.timesteps, ref.timesteps.float(), rtol=0, atol=0)
    if hasattr(ref, "sigmas"):  # the grid itself: diffusers' sigmas (Heun's repeated ones once; flow: t)
        grid = ref.sigmas.float().unique_consecutive()
        sigmas = few.sigmas
        if name.startswith("Flow"):  # fewstep's sigma = t / (1 - t); t = 1 is sigma = inf
            sigmas = torch.where(sigmas.isinf(), 1.0, sigmas / (1 + sigmas))
        torch.testing.assert_close(sigmas, grid)


def test_the_issue_example_and_defaults_of_the_source_class():
    """SD's scaled_linear betas, 25 steps: DPM-Solver's grid spaces N + 1 points (leading: 951, 913, 875), and
    an EulerDiscreteScheduler's default timestep_spacing is linspace, not FewstepScheduler's leading."""
    dpm = diffusers.DPMSolverMultistepScheduler(**SD, timestep_spacing="leading", steps_offset=1)
    few = quietly(dpm.config, solver="unipc")
    few.set_timesteps(25)
    assert few.timesteps[:3].tolist() == [951.0, 913.0, 875.0]
    euler = diffusers.EulerDiscreteScheduler(**SD)
    assert "timestep_spacing" in euler.config["_use_default_values"]  # diffusers' from_config would drop it
    few = quietly(euler.config)
    assert few.config.source["timestep_spacing"] == "linspace" and few.config.solver == "euler"
    few.set_timesteps(10)
    assert few.timesteps.tolist() == [999.0, 888.0, 777.0, 666.0, 555.0, 444.0, 333.0, 222.0, 111.0, 0.0]
    # a saved config lists only some keys: the rest are its class's defaults (Heun's betas are SD's)
    few = quietly({"_class_name": "HeunDiscreteScheduler", "prediction_type": "v_prediction"})
    assert (few.config.beta_start, few.config.beta_end, few.config.solver) == (0.00085, 0.012, "heun")
    assert few.config.prediction_type == "v_prediction"


def test_dpm_2m_karras_from_its_config_alone():
    ref = diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True)
    few = quietly(ref.config)
    assert few.config.solver == "dpmpp_2m" and few.config.schedule is None
    ref.set_timesteps(8)
    few.set_timesteps(8)
    torch.testing.assert_close(few.sigmas, ref.sigmas)  # Karras' sigmas, diffusers' rounded timesteps
    torch.testing.assert_close(few.timesteps, ref.timesteps.float())


HONOURED = [  # non-default values that are all honoured: no warning, and the solver they describe
    ("DPMSolverMultistepScheduler", dict(SD, use_exponential_sigmas=True, solver_order=3, lower_order_final=False,
                                         timestep_spacing="trailing", steps_offset=1,
                                         prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                         thresholding=True, sample_max_value=2.0),
     "dpmpp_3m", {"coefficients": "official", "lower_order_final": False}),
    ("DPMSolverMultistepScheduler", dict(SD, algorithm_type="sde-dpmsolver++", solver_type="heun",
                                         use_exponential_sigmas=True),
     "dpmpp_2m_sde", {"eta": 1.0, "solver_type": "taylor", "lower_order_final": True}),
    ("DPMSolverMultistepScheduler", dict(SD, algorithm_type="dpmsolver", solver_order=1, final_sigmas_type="sigma_min"),
     "ddim", {}),
    ("UniPCMultistepScheduler", dict(SD, solver_order=3, solver_type="bh1", lower_order_final=False,
                                     use_beta_sigmas=True),
     "unipc", {"order": 3, "variant": "bh1", "lower_order_final": False}),
    ("DDIMScheduler", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing"),
     "ddim", {}),
    ("DPMSolverMultistepScheduler", dict(SD, final_sigmas_type="sigma_min", timestep_spacing="trailing"), "dpmpp_2m",
     {}),
    ("DDPMScheduler", dict(SD, variance_type="fixed_large", clip_sample_range=2.0), "ddpm",
     {"variance": "fixed_large"}),
    ("FlowMatchEulerDiscreteScheduler", dict(use_dynamic_shifting=True, base_shift=0.4, max_shift=1.2,
                                             time_shift_type="linear", shift_terminal=0.1), "euler", {}),
]


@pytest.mark.parametrize("name, config, solver, options", HONOURED, ids=lambda v: v if isinstance(v, str) else "")
def test_honoured_keys_raise_no_warning(name, config, solver, options):
    ref = getattr(diffusers, name)(**config)
    few = quietly(ref.config)
    assert few.config.solver == solver
    assert {k: few.config.solver_options[k] for k in options} == options
    mu = {"mu": 0.8} if config.get("use_dynamic_shifting") else {}
    ref.set_timesteps(10, **mu)
    few.set_timesteps(10, **mu)
    torch.testing.assert_close(few.timesteps, ref.timesteps.float())


REFUSED = [  # (class, config, from_config arguments, the keys a warning names)
    ("DPMSolverMultistepScheduler", dict(SD, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"), {},
     {"algorithm_type"}),
    ("DPMSolverMultistepScheduler", dict(SD, algorithm_type="sde-dpmsolver++", solver_order=3), {}, {"solver_order"}),
    ("DPMSolverMultistepScheduler", dict(SD, euler_at_final=True, final_sigmas_type="sigma_min"), {},
     {"euler_at_final"}),
    ("UniPCMultistepScheduler", dict(SD, predict_x0=False, disable_corrector=[1]), {},
     {"predict_x0", "disable_corrector"}),
    ("DEISMultistepScheduler", dict(SD, solver_order=4), {}, {"solver_order"}),
    ("DDPMScheduler", dict(SD, variance_type="learned_range"), {}, {"variance_type"}),
    ("DDPMScheduler", dict(SD, variance_type="fixed_large"), dict(solver="unipc"), {"variance_type"}),
    ("PNDMScheduler", dict(SD, skip_prk_steps=True), {}, {"_class_name"}),
    ("PNDMScheduler", dict(SD, skip_prk_steps=True, steps_offset=1), dict(solver="unipc", schedule="karras"),
     {"skip_prk_steps", "steps_offset"}),
    ("DPMSolverMultistepScheduler", dict(SD, solver_order=3, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True),
     dict(solver="unipc", schedule="logsnr"), {"solver_order", "algorithm_type", "use_karras_sigmas"}),
    ("FlowMatchEulerDiscreteScheduler", dict(shift=2.0, stochastic_sampling=True), {}, {"stochastic_sampling"}),
]


@pytest.mark.parametrize("name, config, kwargs, keys", REFUSED, ids=lambda v: v if isinstance(v, str) else "")
def test_each_refused_key_is_named_in_a_warning(name, config, kwargs, keys):
    found, messages, _ = refused(getattr(diffusers, name)(**config).config, **kwargs)
    assert found == keys, messages


def test_unknown_keys_and_classes():
    found, messages, sch = refused({"_class_name": "EulerDiscreteScheduler", "my_key": 3, "steps_offset": 0})
    assert found == {"my_key"} and sch.config.solver == "euler"
    found, _, sch = refused({**SD, "use_karras_sigmas": True})  # no class: no grid, no sampler of its own
    assert found == {"_class_name", "use_karras_sigmas"} and sch.config.source is None
    # LMS and KDPM2 have the same keys: a directly built one's grid is known, its sampler is not
    found, messages, sch = refused(diffusers.KDPM2DiscreteScheduler(**SD).config)
    assert found == {"_class_name"} and "different samplers" in messages[0] and sch.config.source is not None


def test_conventions_pipelines_read():
    dpm = diffusers.DPMSolverMultistepScheduler(**SD)
    few = quietly(dpm.config)
    assert few.init_noise_sigma == dpm.init_noise_sigma == 1.0
    torch.testing.assert_close(few.alphas_cumprod, dpm.alphas_cumprod)
    assert few.alphas_cumprod.dtype == torch.float32
    assert {diffusers.DPMSolverMultistepScheduler, diffusers.EulerDiscreteScheduler,
            diffusers.FlowMatchEulerDiscreteScheduler} <= set(few.compatibles)
    few.set_timesteps(5, device="meta")
    for t in (few.timesteps, few.sigmas):
        assert t.device.type == "meta" and t.dtype == torch.float32
    # Euler keeps a sigma-space state: the first model input per unit noise is its own (b(sigma_0) for linspace)
    for spacing in ("linspace", "leading"):
        euler = diffusers.EulerDiscreteScheduler(**SD, timestep_spacing=spacing)
        few = quietly(euler.config, solver="heun")
        euler.set_timesteps(7)
        few.set_timesteps(7)
        first = euler.scale_model_input(torch.ones(1) * euler.init_noise_sigma, euler.timesteps[0])
        assert few.init_noise_sigma == pytest.approx(float(first), rel=1e-6) and few.order == 2
    flow = quietly(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert flow.init_noise_sigma == 1.0 and not hasattr(flow, "alphas_cumprod")


def test_eta_and_use_clipped_model_output_that_cannot_be_honoured():
    ddim = diffusers.DDIMScheduler(**SD)  # clip_sample=True by default
    x, out = torch.randn(2, 4), torch.randn(2, 4)
    for solver, kwargs, match in [("dpmpp_2m", dict(eta=0.5), "eta=0.5 is DDIM's stochastic step"),
                                  ("ddim", dict(eta=-1.0), "eta must be a finite number >= 0"),
                                  ("dpmpp_2m", dict(use_clipped_model_output=False), "DDIM's first-order step")]:
        few = FewstepScheduler.from_config(ddim.config, solver=solver)
        few.set_timesteps(5)
        with pytest.raises(ValueError, match=match):
            few.step(out, few.timesteps[0], x, **kwargs)
    few = FewstepScheduler.from_config(diffusers.EulerAncestralDiscreteScheduler(**SD).config)  # eta = 1
    few.set_timesteps(5)
    with pytest.raises(ValueError, match="with eta=1.0 cannot take"):
        few.step(out, few.timesteps[0], x, eta=0.5)
    few = FewstepScheduler.from_config(ddim.config)
    few.set_timesteps(5)
    x = few.step(out, few.timesteps[0], x, eta=0.3).prev_sample
    with pytest.raises(ValueError, match="must stay as they were"):
        few.step(out, few.timesteps[1], x, eta=0.0)
