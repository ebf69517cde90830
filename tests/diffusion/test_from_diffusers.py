"""from_diffusers: a model that outputs, by diffusers' own definitions, the exact prediction of a known
denoiser must come back as that denoiser, for every prediction type and noise process."""

import math
import subprocess
import sys

import pytest
import torch

from fewstep.diffusion import from_diffusers
from fewstep.diffusion.from_diffusers import ShiftedFlow, dynamic_threshold, spec_from_config
from fewstep.diffusion.schedules import get_sigmas
from fewstep.models.exact import Gauss

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

TRUE = Gauss(dim=3, mean=torch.tensor([0.3, -0.5, 1.0]), std=torch.tensor([0.5, 1.0, 2.0]))
X = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

VP_CONFIGS = {
    "ddpm-eps": dict(beta_schedule="linear", prediction_type="epsilon"),
    "sd-v": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"),
    "cos-sample": dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample"),
    "zero-snr-v": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                       prediction_type="v_prediction", rescale_betas_zero_snr=True),
}


def diffusers_vp_model(scheduler):
    """Outputs the exact prediction at integer timesteps, using the scheduler's own alphas_cumprod."""
    ac = scheduler.alphas_cumprod.double()
    kind = scheduler.config.prediction_type

    def model(xt, timestep):
        t = timestep.round().long()
        a, b = ac[t].sqrt()[:, None], (1 - ac[t]).sqrt()[:, None]
        sigma = (b / a).flatten()
        x = torch.where(torch.isinf(sigma)[:, None], xt, xt / a)
        x0 = TRUE(x, sigma)
        eps = (xt - a * x0) / b
        return {"epsilon": eps, "v_prediction": a * eps - b * x0, "sample": x0}[kind]

    return model


@pytest.mark.parametrize("name", list(VP_CONFIGS))
def test_vp_round_trip_at_training_timesteps(name):
    scheduler = diffusers.DDIMScheduler(clip_sample=False, **VP_CONFIGS[name])
    model = from_diffusers(diffusers_vp_model(scheduler), scheduler, shape=(3,))
    prediction = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[VP_CONFIGS[name]["prediction_type"]]
    assert model.prediction == prediction
    ac = scheduler.alphas_cumprod.double()
    for t in (0, 10, 500, 998):
        sigma = float(((1 - ac[t]) / ac[t]).sqrt())
        # diffusers keeps alphas_cumprod in float32, fewstep in float64: sigmas agree to ~1e-6
        torch.testing.assert_close(model(X, sigma), TRUE(X, sigma), rtol=2e-5, atol=2e-5)
    if VP_CONFIGS[name].get("rescale_betas_zero_snr"):
        assert math.isinf(model.sigma_max)
        torch.testing.assert_close(model(X, math.inf), TRUE.mean.expand(5, 3), rtol=1e-5, atol=1e-5)


def test_epsilon_model_at_infinite_sigma_raises():
    cfg = dict(VP_CONFIGS["zero-snr-v"], prediction_type="epsilon")
    model = from_diffusers(lambda xt, timestep: xt, cfg, shape=(3,))
    with pytest.raises(ValueError, match="epsilon-prediction.*sigma = inf"):
        model(X, math.inf)


def flow_model(shift_scale):
    """diffusers' flow definitions: x_t = (1 - t) x0 + t eps with t = timestep / 1000, velocity eps - x0."""

    def model(xt, timestep):
        t = (timestep / 1000)[:, None]
        sigma = (t / (1 - t)).flatten()
        x = torch.where(t >= 1, xt, xt / (1 - t))
        x0 = TRUE(x, sigma)
        eps = torch.where(t > 0, (xt - (1 - t) * x0) / t.clamp_min(1e-300), torch.zeros_like(xt))
        return eps - x0

    return model


@pytest.mark.parametrize("config,mu", [({"shift": 1.0}, None), ({"shift": 3.0}, None),
                                       ({"use_dynamic_shifting": True}, 0.7),
                                       ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, 2.0)])
def test_flow_round_trip_and_shifted_grid(config, mu):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    model = from_diffusers(flow_model(1.0), scheduler, mu=mu, shape=(3,))
    assert isinstance(model.process, ShiftedFlow) and model.prediction == "velocity"
    for sigma in (0.01, 0.5, 3.0, 200.0, math.inf):
        expected = TRUE.mean.expand(5, 3) if math.isinf(sigma) else TRUE(X, sigma)
        torch.testing.assert_close(model(X, sigma), expected, rtol=1e-9, atol=1e-9)
    # fewstep's time-uniform grid on the wrapped model is diffusers' own (shifted) grid
    scheduler.set_timesteps(12, mu=mu)
    theirs = scheduler.sigmas.double()
    ours = get_sigmas("time_uniform", 12, model)
    assert math.isinf(ours[0])
    torch.testing.assert_close(ours[1:] / (1 + ours[1:]), theirs[1:],
                               rtol=2e-6, atol=2e-6)


def test_dpm_flow_sigmas_config_is_flow():
    cfg = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=2.0,
                                                prediction_type="flow_prediction").config
    spec = spec_from_config(cfg)
    assert spec.kind == "flow" and spec.process.shift == 2.0


def test_clip_sample_and_thresholding_act_on_d():
    scheduler = diffusers.DDPMScheduler()  # clip_sample=True by default
    model = from_diffusers(diffusers_vp_model(scheduler), scheduler, shape=(3,))
    big = 30 * X
    d = model(big, 0.05)
    torch.testing.assert_close(d, TRUE(big, 0.05).clamp(-1, 1), rtol=2e-5, atol=2e-5)
    x0 = torch.tensor([[0.5, -3.0, 2.0, 1.5]], dtype=torch.float64)
    s = torch.quantile(x0.abs(), 0.75, dim=1).clamp(1.0, 2.5)
    torch.testing.assert_close(dynamic_threshold(x0, 0.75, 2.5), x0.clamp(-s, s) / s)
    spec = spec_from_config({"thresholding": True, "dynamic_thresholding_ratio": 0.75, "sample_max_value": 2.5})
    assert spec.threshold == (0.75, 2.5)


def test_real_unet_learned_variance_and_call_convention():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=4, block_out_channels=(8, 8),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    model = from_diffusers(unet, diffusers.DDPMScheduler(clip_sample=False).config)
    assert model.shape == (2, 8, 8)
    x = torch.randn(2, 2, 8, 8)
    t = model.spec.model_time(torch.full((2,), 3.0, dtype=torch.float64)).float()
    eps = unet(x / math.sqrt(10), t).sample[:, :2]  # the mean half of a learned-variance output
    a = 1 / math.sqrt(10)
    torch.testing.assert_close(model(x, 3.0), (a * x - math.sqrt(1 - a * a) * eps) / a, rtol=1e-5, atol=1e-5)


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown prediction_type 'x0'.*epsilon"):
        spec_from_config({"prediction_type": "x0"})
    with pytest.raises(ValueError, match="dynamic shifting.*mu"):
        spec_from_config(diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    with pytest.raises(ValueError, match="shift_terminal"):
        spec_from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift_terminal=0.1))
    with pytest.raises(ValueError, match="unknown beta schedule"):
        spec_from_config({"beta_schedule": "cosine"})
    with pytest.raises(TypeError, match="scheduler or its config"):
        spec_from_config(3)
    with pytest.raises(ValueError, match="mu is only used"):
        spec_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler"}, mu=0.5)


def test_importing_fewstep_does_not_import_diffusers():
    code = ("import sys, fewstep, fewstep.diffusion, fewstep.integrations; "
            "from fewstep.diffusion import from_diffusers; from fewstep.integrations import kdiffusion; "
            "from fewstep.bench import peers; "
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
