"""FewstepScheduler in real diffusers pipelines with tiny random weights (no download): what fewstep.sample gives
on the wrapped model (DDPM, text-conditioned Stable Diffusion), and what diffusers' own scheduler gives in the
same pipeline with the same seed (DDIM with eta, Stable Diffusion inpainting and img2img)."""

import json
import math
import warnings

import pytest
import torch

import fewstep
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.from_diffusers import IgnoredConfigWarning, from_diffusers
from fewstep.diffusion.solvers import SOLVERS

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
CLOSE = dict(rtol=1e-4, atol=1e-5)  # float32 pipelines; diffusers' schedulers also round their grids to float32


def b0(scheduler):
    """b(sigma_0): the pipeline's x_t = noise is fewstep's x = sigma_0 * (noise / b0)."""
    s0 = scheduler._grid[0]
    return 1.0 if math.isinf(s0) else s0 / math.sqrt(1 + s0 * s0)


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))


@pytest.mark.parametrize("solver", ["unipc", "heun"])
def test_ddpm_pipeline_equals_fewstep_sample(solver):
    unet = tiny_unet()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = sch = FewstepScheduler.from_config(pipe.scheduler.config, solver=solver, schedule="karras")
    finals, step = [], sch.step
    sch.step = lambda *a, **k: finals.append(step(*a, **k)) or finals[-1]  # keep the state before clamping
    steps = 5
    pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(3), output_type="pt")
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    model = CountingDenoiser(from_diffusers(unet, pipe.scheduler.config))
    # DDPMPipeline starts from x_t = noise, as init_noise_sigma = 1 says
    ours = fewstep.sample(model, solver=solver, nfe=len(sch.timesteps), schedule="karras", noise=noise / b0(sch))
    assert model.calls == len(sch.timesteps) == len(finals) == SOLVERS[solver].evals(steps, True)
    torch.testing.assert_close(finals[-1].prev_sample, ours, **CLOSE)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_pipeline_with_eta_equals_ddim_scheduler(eta):
    """DDIMPipeline passes eta and use_clipped_model_output to step (it crashed on them); eta > 0 runs
    euler_ancestral(eta), DDIM's eta-step, with noise from the pipeline's generator."""
    unet = tiny_unet()
    ddim = diffusers.DDIMScheduler(clip_sample=True, clip_sample_range=0.5)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=ddim)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(batch_size=2, num_inference_steps=6, eta=eta, output_type="np")
    ref = pipe(generator=torch.Generator().manual_seed(4), **kwargs).images
    pipe.scheduler = FewstepScheduler.from_config(ddim.config)
    ours = pipe(generator=torch.Generator().manual_seed(4), **kwargs).images
    assert pipe.scheduler.config.solver == "ddim"
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(ref), **CLOSE)


def tiny_sd_parts(tmp_path):
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
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)


def tiny_pipeline(cls, tmp_path, scheduler):
    pipe = getattr(diffusers, cls)(scheduler=scheduler, **tiny_sd_parts(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text_conditioned_pipeline_with_guidance_equals_fewstep_sample(tmp_path):
    solver, options = "unipc", {"order": 3}
    pipe = tiny_pipeline("StableDiffusionPipeline", tmp_path,
                         diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1, **SD))
    with warnings.catch_warnings():  # PNDM's skip_prk_steps and steps_offset: replaced by solver and schedule
        warnings.simplefilter("ignore", IgnoredConfigWarning)
        pipe.scheduler = sch = FewstepScheduler.from_config(pipe.scheduler.config, solver=solver,
                                                            solver_options=options, schedule="karras")
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
    noise = latents / b0(sch)
    ours = fewstep.sample(model, solver=solver, nfe=steps, schedule="karras", noise=noise, solver_options=options)
    torch.testing.assert_close(out, ours, **CLOSE)
    assert not torch.allclose(out, fewstep.sample(model, solver="ddim", nfe=steps, schedule="karras", noise=noise),
                              atol=1e-3)


@pytest.mark.parametrize("cls, scheduler", [
    ("StableDiffusionInpaintPipeline", diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True)),
    ("StableDiffusionInpaintPipeline", diffusers.UniPCMultistepScheduler(**SD)),
    ("StableDiffusionInpaintPipeline", diffusers.HeunDiscreteScheduler(**SD)),
    ("StableDiffusionImg2ImgPipeline", diffusers.DPMSolverMultistepScheduler(**SD, solver_order=3)),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_inpainting_and_img2img_pipelines_equal_diffusers_schedulers(cls, scheduler, tmp_path):
    """The same pipeline, seed and config with diffusers' scheduler and with FewstepScheduler.from_config of it:
    inpainting blends its latents after every step (the solver keeps its history; Heun's two calls per step),
    img2img starts late (set_begin_index, add_noise)."""
    pipe = tiny_pipeline(cls, tmp_path, scheduler)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1.0
    kwargs = dict(prompt="a cat", image=image, num_inference_steps=8, guidance_scale=3.0, output_type="latent",
                  strength=1.0 if "Inpaint" in cls else 0.6)
    if "Inpaint" in cls:
        kwargs["mask_image"] = mask
    ref = pipe(generator=torch.Generator().manual_seed(7), **kwargs).images
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredConfigWarning)
        pipe.scheduler = FewstepScheduler.from_config(scheduler.config)
    ours = pipe(generator=torch.Generator().manual_seed(7), **kwargs).images
    torch.testing.assert_close(ours, ref, **CLOSE)
