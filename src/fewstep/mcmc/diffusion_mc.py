"""Samplers that run a noising process backwards with a Monte Carlo score: reverse diffusion Monte Carlo and
walk-jump sampling (a chain of log-concave Markov chains). Neither is a Markov chain on the target: each draw is
an independent run, so ``draws`` per chain are independent samples, there is no warm-up, and ``accept`` is 1.

The score of the noised target comes from ``_denoise.MCDenoiser`` (importance sampling plus MALA on the posterior
``q(x | y) ∝ pi(x) N(x; y, s^2 I)``). Density and gradient evaluations are counted per chain, all of them.
"""

from __future__ import annotations

import math

import torch

from fewstep.diffusion.processes import vp_coeffs
from fewstep.limits import check_count
from fewstep.mcmc._core import Result, Run
from fewstep.mcmc._denoise import MCDenoiser, noise_levels

Tensor = torch.Tensor


def independent_run(name: str, target, chains: int, draws: int, warmup: int, seed, init) -> Run:
    """The bookkeeping of a sampler whose draws are independent runs: no warm-up and no starting point."""
    if warmup != 0:
        raise ValueError(f"{name} draws independent samples and has no warm-up; give warmup=0 (--warmup 0), "
                         f"got {warmup!r}")
    if init is not None:
        raise ValueError(f"{name} starts every draw from its own reference distribution; init is not used, so "
                         "leave it None")
    return Run(name, target, chains, draws, 0, seed, None)


def _finish(run: Run, x: Tensor, **stats) -> Result:
    """Record the ``[chains, draws, dim]`` samples with their log-densities (counted) as the run's draws."""
    C, n, d = x.shape
    lp = run.density.log_prob(x.reshape(-1, d), [c for c in range(C) for _ in range(n)]).reshape(C, n)
    run.draws[:], run.log_probs[:], run.accept[:] = x, lp, 1.0
    run.n_recorded = n
    return run.result(**stats)


def rdmc(target, chains: int = 4, draws: int = 100, warmup: int = 0, seed=0, init: Tensor | None = None,
         steps: int = 40, sigma_max: float = 20.0, sigma_min: float = 0.01, proposals: int = 64,
         inner_chains: int = 4, inner_steps: int = 8) -> Result:
    """Reverse diffusion Monte Carlo (Huang, Dong, Hao, Ma and Zhang, arXiv 2307.02037, Alg. 1).

    The OU process ``dx = -x dt + sqrt(2) dB`` has ``x_t = a x_0 + b eps`` with ``a = e^-t``,
    ``a^2 + b^2 = 1``, i.e. sigma ``= b / a`` (``vp_coeffs``). Its reverse SDE ``dy = (y + 2 grad log p_t(y)) dt
    + sqrt(2) dB`` is stepped with the score frozen over each step (the paper's update):

    ``y <- e^eta y + 2 (e^eta - 1) v + sqrt(e^(2 eta) - 1) xi``,  ``v = (a D(y / a, sigma) - y) / b^2``,

    where ``D`` is the Monte Carlo posterior mean of ``x_0`` (the paper's Sec. 3: importance sampling from the
    Gaussian factor, then Langevin on the posterior). ``steps`` steps on a log-sigma grid from ``sigma_max`` (start
    ``y ~ N(0, I)``, the OU's stationary law) to ``sigma_min``; a draw is ``y / a`` at ``sigma_min``. Costs per
    draw and step: ``proposals`` density evaluations and ``inner_chains * (inner_steps + 1)`` gradients.
    """
    check_count("steps", steps, 1, 100_000)
    sigmas = noise_levels(steps, float(sigma_min), float(sigma_max))
    run = independent_run("rdmc", target, chains, draws, warmup, seed, init)
    denoise = MCDenoiser(run, proposals, inner_chains, inner_steps)
    with run:
        y = run.rng.normal(None, draws, run.dim)
        for k, (sigma, sigma_next) in enumerate(zip(sigmas[:-1].tolist(), sigmas[1:].tolist())):
            run.step = k  # a NaN is reported with the reverse-SDE step
            a, b = (float(v) for v in vp_coeffs(torch.tensor(sigma, dtype=torch.float64)))
            eta = 0.5 * (math.log1p(sigma**2) - math.log1p(sigma_next**2))  # t_k - t_(k+1), t = log(1 + sigma^2) / 2
            v = (a * denoise(y / a, sigma) - y) / b**2
            y = (math.exp(eta) * y + 2 * math.expm1(eta) * v
                 + math.sqrt(math.expm1(2 * eta)) * run.rng.normal(None, draws, run.dim))
        a_min = float(vp_coeffs(sigmas[-1])[0])
        return _finish(run, y / a_min)


def walk_jump(target, chains: int = 4, draws: int = 100, warmup: int = 0, seed=0, init: Tensor | None = None,
              sigma: float = 1.0, measurements: int = 16, walk_steps: int = 10, first_walk_steps: int = 100,
              step_size: float = 0.25,
              proposals: int = 32, inner_chains: int = 4, inner_steps: int = 6) -> Result:
    """Walk-jump sampling as a chain of log-concave Markov chains (Saremi, Park and Bach, arXiv 2305.19473, Alg. 1).

    Measurements ``y_1, ..., y_M`` of one ``x ~ pi`` share the noise level ``sigma``: ``y_m = x + sigma eps_m``.
    The walk samples them in turn, ``y_m ~ p(y_m | y_1..y_(m-1))``, by ``walk_steps`` Langevin steps of size
    ``step_size * sigma^2`` started at ``y_(m-1)``, with the score

    ``grad_(y_m) log p(y_m | y_(<m)) = (E[x | y_(1..m)] - y_m) / sigma^2``,
    ``E[x | y_(1..m)] = D(ybar_m, sigma / sqrt m)``,

    since the running mean ``ybar_m`` is sufficient (Sec. 3 of the paper). The first chain, ``y_1 ~ p_sigma`` (the
    target smoothed at ``sigma``, the widest and the one that alone decides which ``x`` the later measurements
    refine), takes ``first_walk_steps`` steps. The jump is the empirical-Bayes
    estimate ``x_hat = D(ybar_M, sigma / sqrt M)``, whose law tends to ``pi`` as ``M`` grows (the posterior
    given ``M`` measurements has spread ``sigma / sqrt M``). ``D`` is the Monte Carlo posterior mean of
    ``_denoise``. ``y_1`` starts uniform on ``(-2, 2)^dim`` plus ``sigma`` noise.
    """
    M = check_count("measurements", measurements, 1, 100_000)
    n_walk = check_count("walk_steps", walk_steps, 1, 100_000)
    n_first = check_count("first_walk_steps", first_walk_steps, 1, 10_000_000)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number; got {sigma!r}")
    if not (math.isfinite(step_size) and 0 < step_size <= 1):
        raise ValueError(f"step_size (a fraction of sigma^2) must be in (0, 1]; got {step_size!r}")
    run = independent_run("walk_jump", target, chains, draws, warmup, seed, init)
    denoise = MCDenoiser(run, proposals, inner_chains, inner_steps)
    delta = step_size * sigma**2
    with run:
        y = 4 * run.rng.uniform(None, draws, run.dim) - 2 + sigma * run.rng.normal(None, draws, run.dim)
        y_sum = torch.zeros_like(y)
        for m in range(1, M + 1):
            run.step = m - 1  # a NaN is reported with the measurement
            for _ in range(n_first if m == 1 else n_walk):  # walk: ULA on p(y_m | y_(<m)), log-concave
                y_bar = (y_sum + y) / m
                score = (denoise(y_bar, sigma / math.sqrt(m)) - y) / sigma**2
                y = y + delta * score + math.sqrt(2 * delta) * run.rng.normal(None, draws, run.dim)
            y_sum = y_sum + y
        x_hat = denoise(y_sum / M, sigma / math.sqrt(M))  # jump: empirical Bayes
        return _finish(run, x_hat)
