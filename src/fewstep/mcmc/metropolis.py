"""Metropolis samplers: random-walk Metropolis and MALA, batched over chains, with warm-up adaptation.

Both use a diagonal preconditioner ``M^-1`` (the inverse mass of ``_adapt``) and a step size adapted by dual
averaging towards the acceptance rates that are optimal in high dimension: 0.234 for the random walk
(Roberts, Gelman and Gilks 1997, doi:10.1214/aoap/1034625254) and 0.574 for MALA (Roberts and Rosenthal 1998,
doi:10.1111/1467-9868.00123).
"""

from __future__ import annotations

import math

import torch

from fewstep.mcmc import _core
from fewstep.mcmc._adapt import Adaptation, initial_step_size
from fewstep.mcmc._core import Result, Run

Tensor = torch.Tensor
RWM_MASS_SHARE = 0.6  # the share of warm-up with mass windows for rwm (see _adapt): the rest tunes the step alone


def rwm(target, chains: int = 4, draws: int = 1000, warmup: int = 1000, seed=0, init: Tensor | None = None,
        step_size: float | None = None, target_accept: float = 0.234, adapt_mass: bool = True) -> Result:
    """Random-walk Metropolis (Metropolis et al. 1953, doi:10.1063/1.1699114): propose
    ``y = x + eps M^{-1/2} z``, ``z ~ N(0, I)``, accept with probability ``min(1, pi(y) / pi(x))``.

    One density evaluation per iteration. ``step_size`` starts at ``2.38 / sqrt(dim)`` unless given.
    """
    run = Run("rwm", target, chains, draws, warmup, seed, init)
    with run:
        x, lp = run.start()
        eps0 = 2.38 / math.sqrt(run.dim) if step_size is None else float(step_size)
        adapt = Adaptation(torch.full((chains,), eps0, dtype=run.dtype), warmup, target_accept, run.dim, adapt_mass,
                           mass_share=RWM_MASS_SHARE)
        for i in run.iterations():
            eps = adapt.step_size[:, None]
            y = x + eps * adapt.inv_mass.sqrt() * run.rng.normal(None, run.dim)
            lp_y = run.density.log_prob(y)
            log_a = _core.log_acceptance(lp_y, lp)
            accept = run.rng.uniform(None).log() < log_a
            x = torch.where(accept[:, None], y, x)
            lp = torch.where(accept, lp_y, lp)
            adapt.update(i, log_a.exp(), x)
            run.record(i, x, lp, accept.to(run.dtype))
    return run.result(step_size=adapt.step_size, inv_mass=adapt.inv_mass)


def mala(target, chains: int = 4, draws: int = 1000, warmup: int = 1000, seed=0, init: Tensor | None = None,
         step_size: float | None = None, target_accept: float = 0.574, adapt_mass: bool = True) -> Result:
    """Metropolis-adjusted Langevin (Roberts and Tweedie 1996, doi:10.2307/3318418): propose
    ``y = x + h M^-1 grad log pi(x) + sqrt(2h) M^{-1/2} z`` and accept with the Metropolis-Hastings ratio
    ``pi(y) q(x | y) / (pi(x) q(y | x))``, ``q(y | x) = N(y; x + h M^-1 grad log pi(x), 2h M^-1)``.

    One density and one gradient evaluation per iteration (plus the initial step-size search).
    """
    run = Run("mala", target, chains, draws, warmup, seed, init)
    with run:
        x, lp, g = run.start(grad=True)
        inv_mass = torch.ones_like(x)

        def propose(h: Tensor, idx: list[int], x, g, inv_mass):
            h = h[:, None]
            mean_fwd = x + h * inv_mass * g
            y = mean_fwd + (2 * h * inv_mass).sqrt() * run.rng.normal(idx, run.dim)
            lp_y, g_y = run.density.log_prob_grad(y, idx)
            mean_back = y + h * inv_mass * g_y
            log_q_fwd = -((y - mean_fwd).square() / inv_mass).sum(1) / (4 * h[:, 0])
            log_q_back = -((x - mean_back).square() / inv_mass).sum(1) / (4 * h[:, 0])
            return y, lp_y, g_y, log_q_back, log_q_fwd

        def trial(h, idx):
            _, lp_y, _, q_back, q_fwd = propose(h[idx], idx, x[idx], g[idx], inv_mass[idx])
            return _core.log_acceptance(lp_y, lp[idx], q_back, q_fwd)

        h0 = torch.full((chains,), 0.1 if step_size is None else float(step_size), dtype=run.dtype)
        if step_size is None and warmup > 0:
            h0 = initial_step_size(trial, h0)
        adapt = Adaptation(h0, warmup, target_accept, run.dim, adapt_mass)
        everyone = list(range(chains))
        for i in run.iterations():
            y, lp_y, g_y, q_back, q_fwd = propose(adapt.step_size, everyone, x, g, adapt.inv_mass)
            log_a = _core.log_acceptance(lp_y, lp, q_back, q_fwd)
            x, g, lp = _core.accept_gradient_step(run, adapt, i, log_a, (x, g, lp), (y, g_y, lp_y))
    return run.result(step_size=adapt.step_size, inv_mass=adapt.inv_mass)
