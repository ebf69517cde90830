"""Annealed importance sampling and sequential Monte Carlo, with the log normalising constant as an output.

Particles start from ``pi_0 = N(0, scale^2 I)`` (normalised) and follow the geometric path
``log pi_b = (1 - b) log pi_0 + b log pi`` over ``b_k = (k / K)^4``, k = 0..K (fine steps near ``pi_0``,
where the path changes fastest). At each step the weights gain ``(b_k - b_{k-1}) (log pi - log pi_0)`` at the
current particles, then every particle takes ``mcmc_steps`` MALA steps that leave ``pi_{b_k}`` invariant.
Without resampling this is annealed importance sampling (Neal, arXiv physics/9803008); with multinomial
resampling whenever the effective sample size ``1 / sum W^2`` falls below ``ess_threshold * N`` it is an SMC
sampler (Del Moral, Doucet and Jasra 2006, doi:10.1111/j.1467-9868.2006.00553.x). In both,
``log Z = sum_k log sum_i W_i^(k-1) exp(increment_i^(k))`` with normalised weights ``W``, an unbiased estimate
of ``Z = int exp(log_prob)`` (so ``log Z`` is biased low by about half its variance).

The MALA step size is tuned between steps from the population's acceptance rate (towards 0.574), which uses
only past particles. Particles interact through resampling, so one generator drives them all (``seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fewstep.limits import check_count
from fewstep.mcmc import _core
from fewstep.mcmc._core import Density, NonFiniteDensityError, _NonFinite

Tensor = torch.Tensor


@dataclass
class SMCResult:
    """``particles`` ``[N, dim]`` with normalised ``log_weights`` ``[N]``; ``log_z`` the estimate of
    ``log int exp(log_prob)``; ``n_density`` and ``n_grad`` totals over all particles; ``ess`` and ``accept``
    per annealing step; ``resampled`` how many times the particles were resampled."""

    particles: Tensor
    log_weights: Tensor
    log_z: float
    n_density: int
    n_grad: int
    betas: Tensor
    ess: Tensor
    accept: Tensor
    resampled: int


def smc(target, particles: int = 1000, steps: int = 50, seed: int = 0, mcmc_steps: int = 2, scale: float = 3.0,
        resample: bool = True, ess_threshold: float = 0.5, step_size: float = 0.1) -> SMCResult:
    """SMC (``resample=True``) or AIS (``resample=False``) from ``N(0, scale^2 I)`` to ``target``; see the module
    docstring. Costs ``steps * mcmc_steps`` density and gradient evaluations per particle, plus one at the start."""
    n = check_count("particles", particles, 2, 10_000_000)
    K = check_count("steps", steps, 1, 100_000)
    check_count("mcmc_steps", mcmc_steps, 0, 10_000)
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in [0, 1]; got {ess_threshold}")
    gen = torch.Generator().manual_seed(seed)
    d, dtype = target.dim, target.dtype
    density = Density(target, n)
    betas = torch.linspace(0, 1, K + 1, dtype=dtype) ** 4
    x = scale * torch.randn(n, d, dtype=dtype, generator=gen)

    def log_ref(x):
        return -0.5 * (x / scale).square().sum(1) - d * (math.log(scale) + 0.5 * math.log(2 * math.pi))

    log_w = torch.full((n,), -math.log(n), dtype=dtype)
    log_z, resampled, h = 0.0, 0, float(step_size)
    ess_trace, acc_trace = torch.zeros(K, dtype=dtype), torch.zeros(K, dtype=dtype)
    k = 0
    try:
        lp, g = density.log_prob_grad(x)
        for k in range(1, K + 1):
            b, db = float(betas[k]), float(betas[k] - betas[k - 1])
            inc = db * (lp - log_ref(x))
            inc = torch.where(torch.isneginf(lp), torch.full_like(inc, -math.inf), inc)
            step = torch.logsumexp(log_w + inc, 0)
            log_z += float(step)
            log_w = log_w + inc - step
            ess = float(1 / torch.exp(2 * log_w).sum())
            ess_trace[k - 1] = ess
            if resample and ess < ess_threshold * n:
                idx = torch.multinomial(log_w.exp(), n, replacement=True, generator=gen)
                x, lp, g = x[idx], lp[idx], g[idx]
                log_w = torch.full((n,), -math.log(n), dtype=dtype)
                resampled += 1
            accepted = torch.zeros(n, dtype=dtype)
            for _ in range(mcmc_steps):  # MALA on pi_b: grad log pi_b = b grad log pi - (1 - b) x / scale^2
                grad_b = b * g - (1 - b) * x / scale**2
                mean = x + h * grad_b
                y = mean + math.sqrt(2 * h) * torch.randn(n, d, dtype=dtype, generator=gen)
                lp_y, g_y = density.log_prob_grad(y)
                grad_y = b * g_y - (1 - b) * y / scale**2
                log_pi_x = b * lp + (1 - b) * log_ref(x)
                log_pi_y = b * lp_y + (1 - b) * log_ref(y)
                q_fwd = -(y - mean).square().sum(1) / (4 * h)
                q_back = -(x - y - h * grad_y).square().sum(1) / (4 * h)
                log_a = _core.log_acceptance(log_pi_y, log_pi_x, q_back, q_fwd)
                ok = torch.rand(n, dtype=dtype, generator=gen).log() < log_a
                x, lp, g = torch.where(ok[:, None], y, x), torch.where(ok, lp_y, lp), torch.where(ok[:, None], g_y, g)
                accepted += ok.to(dtype)
            if mcmc_steps:
                rate = float(accepted.mean()) / mcmc_steps
                acc_trace[k - 1] = rate
                h *= math.exp(2 * (rate - 0.574))
    except _NonFinite as exc:
        raise NonFiniteDensityError(f"the log-density of target {target.name!r} returned {exc.what} for particle(s) "
                                    f"{exc.chains[:8]} at annealing step {k} of {K}", k, exc.chains, None) from None
    return SMCResult(particles=x, log_weights=log_w, log_z=log_z, n_density=int(density._n_density.sum()),
                     n_grad=int(density._n_grad.sum()), betas=betas, ess=ess_trace, accept=acc_trace,
                     resampled=resampled)
