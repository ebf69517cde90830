"""``ddim_ts``: DDIM with shifted time steps (Li et al., *Alleviating Exposure Bias in Diffusion Models through
Sampling with Shifted Time Steps*, arXiv 2305.15583), a state-adaptive correction of exposure bias."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fewstep.diffusion.denoiser import bcast
from fewstep.diffusion.processes import NoiseProcess, VPDiscrete
from fewstep.diffusion.solvers._core import ddim_step, emit, register

__all__ = ["ddim_time_shift"]

_DDPM = VPDiscrete.from_betas("linear")


def _reference_process(D, alphas_cumprod: Sequence[float] | None) -> VPDiscrete:
    """The discrete schedule the shift is measured in: ``alphas_cumprod`` when given, else the model's own
    (``D.model.process``, as ``fewstep.sample`` passes it), else DDPM's linear one."""
    if alphas_cumprod is not None:
        try:
            return VPDiscrete(torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu().numpy())
        except (TypeError, ValueError, RuntimeError):
            given = repr(alphas_cumprod)
            raise ValueError("alphas_cumprod must be the training schedule abar_t, t = 0 .. T-1: a strictly "
                             "decreasing 1-D sequence in [0, 1] with >= 2 entries; got "
                             f"{given if len(given) <= 80 else given[:77] + '...'}") from None
    process: NoiseProcess | None = getattr(getattr(D, "model", None), "process", None)
    return process if isinstance(process, VPDiscrete) else _DDPM


@register("ddim_ts", order=None, kind="correction",
          paper="Li et al., Alleviating Exposure Bias ... Shifted Time Steps, arXiv 2305.15583 (TS-DDIM)",
          notes="window and cutoff in training timesteps of alphas_cumprod (default: the model's discrete "
                "schedule, else DDPM's linear one)")
def ddim_time_shift(D, x, sigmas, *, callback=None, window: int = 30, cutoff: int = 300,
                    alphas_cumprod: Sequence[float] | None = None):
    """Time-Shift DDIM (arXiv 2305.15583, Alg. 2, as in the authors' ADM code): after the first step and
    while the current timestep ``t > cutoff``, pick per sample ``t_s = argmin_{|tau - t| <= window/2}
    |Var(x_vp) - (1 - abar_tau)|`` (``x_vp = x / sqrt(1 + sigma^2)``, variance over all dimensions) and
    aim the DDIM step at the scheduled next timestep shifted by ``t_s - t``; the model is still called
    at the scheduled times. The README's (window, cutoff) pairs are (5, 550), (30, 300), (10, 900).
    ``alphas_cumprod`` is the training schedule ``abar_t`` the timesteps count in (``FewstepScheduler`` passes
    its config's); a sample of one value has no variance and takes the scheduled DDIM step.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an int >= 0 (training timesteps); got {window!r}")
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or cutoff < 0:
        raise ValueError(f"cutoff must be a timestep >= 0; got {cutoff!r}")
    proc = _reference_process(D, alphas_cumprod)
    T = proc.num_train_timesteps
    one_minus_abar = 1 - torch.from_numpy(proc.alphas_cumprod)  # [T], float64
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        t_cur = float(proc.sigma_to_t(torch.tensor([s], dtype=torch.float64)))
        if i == 0 or s_next == 0 or t_cur <= cutoff or x[0].numel() < 2:
            x = ddim_step(x, s, s_next, d)
            continue
        centre = round(t_cur)
        taus = torch.arange(max(0, centre - window // 2), min(T - 1, centre + window // 2) + 1)
        var = (x.double() / math.sqrt(1 + s * s)).reshape(x.shape[0], -1).var(dim=1)
        t_s = taus[(var[:, None] - one_minus_abar[taus][None, :]).abs().argmin(dim=1)]
        t_next = float(proc.sigma_to_t(torch.tensor([s_next], dtype=torch.float64)))
        sig_tgt = proc.t_to_sigma((t_next + (t_s - centre).double()).clamp(0, T - 1)).to(x.dtype)
        # DDIM (Eq. 12) aimed at sig_tgt, in VP coordinates; the state is then read at the scheduled s_next
        a_ratio = bcast(torch.sqrt((1 + s_next**2) / (1 + sig_tgt**2)), x)
        x = a_ratio * (d + bcast(sig_tgt, x) * (x - d) / s)
    return x
