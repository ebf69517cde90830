"""FewstepScheduler: every deterministic solver behind diffusers' scheduler protocol gives what fewstep.sample
gives on the wrapped model, in a hand-written loop, a DDPMPipeline and a tiny text-conditioned pipeline."""

import json
import math

import pytest
import torch

import fewstep
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.from_diffusers import from_diffusers, spec_from_config
from fewstep.diffusion.sampling import solve
from fewstep.diffusion.schedules import list_schedules
from fewstep.diffusion.solvers import SOLVERS
from fewstep.models.exact import Gauss

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402

TRUE = Gauss(dim=4, mean=torch.tensor([0.5, -1.0, 0.0, 2.0]), std=torch.tensor([0.5, 1.0, 2.0, 0.7]))
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
# ddim_ts moves each sample's next sigma by the state, which one-timestep-per-call schedulers cannot express
DETERMINISTIC = sorted(n for n, i in SOLVERS.items() if not i.stochastic and i.kind != "state_adaptive")
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


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_every_solver_matches_fewstep_sample(solver):
    cfg = dict(SD, prediction_type="v_prediction", _class_name="DDIMScheduler")
    model = stand_in(cfg)
    for schedule, options in (("karras", {}), (None, {})):
        sch = FewstepScheduler.from_config(cfg, solver=solver, schedule=schedule, float64=True)
        out = run_loop(sch, model, NOISE, num_inference_steps=6)
        counted = CountingDenoiser(from_diffusers(model, cfg, shape=(4,)))
        if schedule is None:  # the default grid: the config's own discrete spacing
            options = {"spacing": "leading", "steps_offset": 0}
        ref = fewstep.sample(counted, solver=solver, nfe=len(sch.timesteps), schedule=schedule or "discrete",
                             schedule_options=options, noise=NOISE, dtype=torch.float64)
        assert counted.calls == len(sch.timesteps) and sch.order == SOLVERS[solver].evals_per_step
        torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7)


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
                         schedule_options=options, noise=NOISE, dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7)


def test_flow_config_zero_terminal_snr_and_custom_sigmas():
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    model = stand_in(FewstepScheduler.from_config(flow).config)
    sch = FewstepScheduler.from_config(flow, solver="dpmpp_2m")
    assert sch.config.prediction_type == "flow_prediction" and sch.config.shift == 3.0
    out = run_loop(sch, model, NOISE, num_inference_steps=8)
    assert math.isinf(sch.sigmas[0]) and sch.init_noise_sigma == 1.0
    ref = fewstep.sample(from_diffusers(model, flow, shape=(4,)), solver="dpmpp_2m", nfe=8, noise=NOISE)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # custom flow sigmas follow diffusers: shifted, then 0 appended
    ts = [1.0, 0.75, 0.5, 0.25]
    sch.set_timesteps(sigmas=ts)
    shifted = torch.tensor([3 * t / (1 + 2 * t) for t in ts], dtype=torch.float64)
    torch.testing.assert_close(sch.sigmas[1:-1] / (1 + sch.sigmas[1:-1]), shifted[1:])
    torch.testing.assert_close(sch.timesteps, (shifted * 1000).float())


def test_custom_sigmas_timesteps_add_noise_and_config_round_trip(tmp_path):
    cfg = diffusers.DDPMScheduler(**SD).config
    sch = FewstepScheduler.from_config(cfg, solver="heun", schedule="karras", solver_options={})
    sch.set_timesteps(sigmas=[10.0, 2.0, 0.5, 0.0])
    assert len(sch.timesteps) == 5 and sch.order == 2  # Heun: 2 evaluations per step, the last one Euler
    sch.set_timesteps(timesteps=[999, 500, 10])
    spec = spec_from_config(cfg)
    torch.testing.assert_close(sch.sigmas[:-1], spec.process.t_to_sigma(torch.tensor([999.0, 500.0, 10.0], dtype=torch.float64)))
    # add_noise is diffusers' own at training timesteps
    ddpm = diffusers.DDPMScheduler(**SD)
    x0, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(sch.add_noise(x0, eps, t), ddpm.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)
    # the config survives from_config and save / from_pretrained
    again = FewstepScheduler.from_config(sch.config)
    sch.save_config(tmp_path)
    loaded = FewstepScheduler.from_pretrained(tmp_path)
    keys = [k for k in sch.config if not k.startswith("_")]
    for other in (again, loaded):
        assert {k: other.config[k] for k in keys} == {k: sch.config[k] for k in keys}
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["solver"] == "heun"


def test_changed_sample_restarts_the_solver_at_a_step_and_begin_index():
    cfg = dict(SD, prediction_type="epsilon")
    model = stand_in(cfg)
    wrapped = from_diffusers(model, cfg, shape=(4,))
    sch = FewstepScheduler.from_config(cfg, solver="dpmpp_3m", schedule="karras", float64=True)
    sch.set_timesteps(8)
    grid = sch.sigmas.tolist()
    x = NOISE * sch.init_noise_sigma
    for k, t in enumerate(sch.timesteps):
        if k == 4:  # a pipeline blends latents here (inpainting): the solver restarts from the new state
            x = x * 1.01
            restart_x = sch._spec.state(x, torch.full((3,), grid[4], dtype=torch.float64))
        x = sch.step(model(x, t), t, x).prev_sample
    torch.testing.assert_close(x, solve(wrapped, restart_x, grid[4:], "dpmpp_3m"), rtol=1e-7, atol=1e-7)
    # img2img: start at a step with set_begin_index, from add_noise
    sch.set_timesteps(8)
    sch.set_begin_index(3)
    x0 = TRUE.sample_data(3, torch.Generator().manual_seed(1))
    x = sch.add_noise(x0, NOISE, sch.timesteps[3:4])
    start = sch._spec.state(x, torch.full((3,), grid[3], dtype=torch.float64))
    for t in sch.timesteps[3:]:
        x = sch.step(model(x, t), t, x).prev_sample
    torch.testing.assert_close(x, solve(wrapped, start, grid[3:], "dpmpp_3m"), rtol=1e-7, atol=1e-7)


def test_changed_sample_inside_a_heun_step_is_an_error():
    cfg = dict(SD, prediction_type="epsilon")
    model = stand_in(cfg)
    sch = FewstepScheduler.from_config(cfg, solver="heun", schedule="karras")
    sch.set_timesteps(4)
    x = NOISE * sch.init_noise_sigma
    x = sch.step(model(x, sch.timesteps[0]), sch.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="inside a heun step"):
        sch.step(model(x, sch.timesteps[1]), sch.timesteps[1], x + 1)


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
    with pytest.raises(ValueError, match="deterministic"):
        stochastic = next((n for n, i in SOLVERS.items() if i.stochastic), None)
        if stochastic is None:
            raise ValueError("deterministic (no stochastic solver is registered)")
        FewstepScheduler(solver=stochastic)
    with pytest.raises(ValueError, match="unknown solver 'unipcc'"):
        FewstepScheduler(solver="unipcc")
    with pytest.raises(ValueError, match="unknown option.*ordr"):
        FewstepScheduler(solver="unipc", solver_options={"ordr": 3})
    with pytest.raises(ValueError, match="unknown schedule 'karas'"):
        FewstepScheduler(schedule="karas")
    with pytest.raises(ValueError, match="final must be"):
        FewstepScheduler(final="end")
    sch = FewstepScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        sch.step(torch.zeros(1, 4), 999, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="exactly one of"):
        sch.set_timesteps(5, timesteps=[999, 10])
    with pytest.raises(ValueError, match="include the final value"):
        sch.set_timesteps(3, sigmas=[10.0, 1.0, 0.0])


# ------------------------------------------------------------------------------------------------
# real pipelines with tiny random weights (no download)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["unipc", "heun"])
def test_ddpm_pipeline_equals_fewstep_sample(solver):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = sch = FewstepScheduler.from_config(pipe.scheduler.config, solver=solver, schedule="karras")
    finals, step = [], sch.step
    sch.step = lambda *a, **k: finals.append(step(*a, **k)) or finals[-1]  # keep the state before clamping
    steps = 5
    pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(3), output_type="pt")
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    model = CountingDenoiser(from_diffusers(unet, pipe.scheduler.config))
    # DDPMPipeline starts from x_t = noise and ignores init_noise_sigma = b(sigma_0): fewstep's x = sigma_0 noise'
    ours = fewstep.sample(model, solver=solver, nfe=len(sch.timesteps), schedule="karras",
                          noise=noise / sch.init_noise_sigma)
    assert model.calls == len(sch.timesteps) == len(finals) == SOLVERS[solver].evals(steps, True)
    torch.testing.assert_close(finals[-1].prev_sample, ours, rtol=1e-4, atol=1e-5)


def tiny_sd_pipeline(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"),
                              model_max_length=8)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2,
                                                max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1))
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                          attention_head_dim=2,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                  norm_num_groups=4, down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), sample_size=8)
    scheduler = diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1, **SD)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text_conditioned_pipeline_with_guidance_equals_fewstep_sample(tmp_path):
    solver, options = "unipc", {"order": 3}
    pipe = tiny_sd_pipeline(tmp_path)
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver=solver, solver_options=options,
                                                  schedule="karras")
    prompts, g, steps = ["a cat", "the dog"], 4.0, 6
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=g, latents=latents, output_type="latent").images
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(prompts, "cpu", 1, True)
    unet = pipe.unet

    def guided(xt, timestep):  # classifier-free guidance on eps, batched as the pipeline does
        eps = unet(torch.cat([xt, xt]), timestep=torch.cat([timestep, timestep]),
                   encoder_hidden_states=torch.cat([neg, pos])).sample
        uncond, cond = eps.chunk(2)
        return uncond + g * (cond - uncond)

    model = from_diffusers(guided, pipe.scheduler.config, shape=(4, 8, 8), model_dtype=torch.float32)
    ours = fewstep.sample(model, solver=solver, nfe=steps, schedule="karras", noise=latents, solver_options=options)
    torch.testing.assert_close(out, ours, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out, fewstep.sample(model, solver="ddim", nfe=steps, schedule="karras", noise=latents),
                              atol=1e-3)
