"""A Monte Carlo denoiser for an unnormalised density: ``D(y, s) = E[x | y]`` when ``x ~ pi`` and
``y = x + s eps``, ``eps ~ N(0, I)`` (the sigma space of docs/MATH.md), with no model, only ``log pi``.

The posterior of ``x`` given ``y`` is ``q(x | y) ∝ pi(x) N(x; y, s^2 I)``. Reverse diffusion Monte Carlo
(Huang et al., arXiv 2307.02037, Sec. 3) turns the score of the noised target into its mean,
``grad log p_s(y) = (D(y, s) - y) / s^2``, and estimates it by sampling ``q``; so does the empirical-Bayes jump of
walk-jump sampling (Saremi, Park and Bach, arXiv 2305.19473). Here, as in the RDMC paper's warm start:

1. importance sampling: ``P`` proposals ``x_j = y + s eps_j`` from the Gaussian factor, weighted by ``pi(x_j)``;
2. ``k`` inner chains drawn from those weights, then ``n`` MALA steps on ``q`` (gradient
   ``grad log pi(x) + (y - x) / s^2``), each chain with a step size adapted towards acceptance 0.574;
3. ``D`` is the mean of the inner chains over the last half of their steps (with ``n = 0``: the self-normalised
   importance-sampling mean).

Rows are grouped by chain, ``y`` ``[chains, rows, dim]``; every random number of a chain's rows comes from that
chain's generator, and evaluations are counted on that chain.
"""

from __future__ import annotations

import math

import torch

from fewstep.diffusion.schedules import logsnr
from fewstep.limits import check_count
from fewstep.mcmc import _core

Tensor = torch.Tensor


class MCDenoiser:
    """``D(y, s)`` by importance sampling plus MALA on the posterior; ``step`` holds each chain's MALA step size
    (a fraction of ``s^2``), carried from one call to the next."""

    def __init__(self, run: _core.Run, proposals: int = 64, inner_chains: int = 4, inner_steps: int = 8):
        self.P = check_count("proposals", proposals, 1, 100_000)
        self.k = check_count("inner_chains", inner_chains, 1, 10_000)
        self.n = check_count("inner_steps", inner_steps, 0, 100_000)
        self.run = run
        self.step = torch.full((run.chains,), 0.5, dtype=run.dtype)

    def _owners(self, C: int, per_chain: int) -> list[int]:
        return [c for c in range(C) for _ in range(per_chain)]

    def __call__(self, y: Tensor, s: float) -> Tensor:
        run, P, k = self.run, self.P, self.k
        C, R, d = y.shape
        # 1. importance sampling from the Gaussian factor N(x; y, s^2 I), weights pi(x)
        x = y[:, :, None, :] + s * run.rng.normal(None, R, P, d)
        log_w = run.density.log_prob(x.reshape(-1, d), self._owners(C, R * P)).reshape(C, R, P)
        log_w = torch.where(torch.isneginf(log_w).all(-1, keepdim=True), torch.zeros_like(log_w), log_w)
        w = torch.softmax(log_w, dim=-1)
        if self.n == 0:
            return (w[..., None] * x).sum(2)
        # 2. inner chains started from the weighted proposals (multinomial, per chain's generator)
        pick = torch.stack([torch.multinomial(w[c], k, replacement=True, generator=run.rng.gens[c])
                            for c in range(C)])
        z = torch.gather(x, 2, pick[..., None].expand(C, R, k, d)).reshape(C, R * k, d)
        yk = y[:, :, None, :].expand(C, R, k, d).reshape(C, R * k, d)
        owners = self._owners(C, R * k)

        def log_q(z):
            lp, g = run.density.log_prob_grad(z.reshape(-1, d), owners)
            lp, g = lp.reshape(C, R * k), g.reshape(C, R * k, d)
            return lp - (z - yk).square().sum(-1) / (2 * s * s), g + (yk - z) / (s * s)

        lq, gq = log_q(z)
        total, kept = torch.zeros_like(z), 0
        for i in range(self.n):
            h = (self.step * s * s)[:, None, None]
            mean_fwd = z + h * gq
            z_new = mean_fwd + (2 * h).sqrt() * run.rng.normal(None, R * k, d)
            lq_new, gq_new = log_q(z_new)
            log_q_fwd = -(z_new - mean_fwd).square().sum(-1) / (4 * h[..., 0])
            log_q_back = -(z - z_new - h * gq_new).square().sum(-1) / (4 * h[..., 0])
            log_a = _core.log_acceptance(lq_new, lq, log_q_back, log_q_fwd)
            ok = run.rng.uniform(None, R * k).log() < log_a
            z = torch.where(ok[..., None], z_new, z)
            lq, gq = torch.where(ok, lq_new, lq), torch.where(ok[..., None], gq_new, gq)
            rate = log_a.exp().mean(1)
            self.step = (self.step * torch.exp(2 * (rate - 0.574))).clamp(1e-4, 2.0)
            if i >= self.n // 2:
                total, kept = total + z, kept + 1
        # 3. the posterior mean over inner chains and the second half of their steps
        return (total / kept).reshape(C, R, k, d).mean(2)


def noise_levels(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``steps + 1`` noise levels from ``sigma_max`` down to ``sigma_min``, uniform in ``log sigma``
    (``fewstep.diffusion.schedules.logsnr``)."""
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf; got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return logsnr(steps + 1, sigma_min, sigma_max)
