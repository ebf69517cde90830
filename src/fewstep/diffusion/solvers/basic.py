"""Euler/DDIM, EDM's Heun, and two cheap multistep corrections of DDIM."""

from __future__ import annotations

import math

from fewstep.diffusion.solvers._core import ddim_step, emit, register


@register("ddim", order=1, paper="Song et al., DDIM, arXiv 2010.02502 (Eq. 12 with eta = 0)")
def ddim(D, x, sigmas, *, callback=None):
    """Deterministic DDIM: ``x' = (s'/s) x - expm1(-h) D`` (= Euler in sigma = DPM-Solver-1)."""
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        x = ddim_step(x, s, s_next, d)
    return x


register("euler", order=1, paper="Karras et al., EDM, arXiv 2206.00364 (Euler in sigma; same as ddim)", fn=ddim)


@register("heun", order=2, kind="singlestep", evals_per_step=2, final_evals=1,
          paper="Karras et al., EDM, arXiv 2206.00364, Algorithm 1 (Algorithm 2 with S_churn > 0: heun_churn)")
def heun(D, x, sigmas, *, callback=None, noise=None, S_churn: float = 0.0, S_min: float = 0.0,
         S_max: float = math.inf, S_noise: float = 1.0):
    """EDM Algorithm 1: Euler predictor, trapezoidal corrector; the step to sigma = 0 is Euler (2N-1 NFE).

    With ``S_churn > 0`` it is Algorithm 2: where ``S_min <= t_i <= S_max`` the state is first raised to
    ``t_hat = (1 + gamma) t_i``, ``gamma = min(S_churn / N, sqrt(2) - 1)``, by adding
    ``sqrt(t_hat^2 - t_i^2) S_noise z``; ``z = noise(t_i, t_{i+1})`` (the step's own increment, so that
    Brownian noise never reuses an interval) is injected by the driver.
    """
    if S_churn < 0 or S_noise < 0 or S_min > S_max:
        raise ValueError(f"heun needs S_churn >= 0, S_noise >= 0 and S_min <= S_max; got S_churn={S_churn!r}, "
                         f"S_noise={S_noise!r}, S_min={S_min!r}, S_max={S_max!r}")
    gamma_in = min(S_churn / (len(sigmas) - 1), math.sqrt(2) - 1)
    if gamma_in > 0 and noise is None:
        raise ValueError("S_churn > 0 makes heun stochastic: use solver 'heun_churn', whose noise the driver injects")
    for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        gamma = gamma_in if S_min <= t_cur <= S_max else 0.0
        t_hat, x_hat = t_cur, x
        if gamma > 0:  # increase noise temporarily
            t_hat = t_cur * (1 + gamma)
            x_hat = x + math.sqrt(t_hat**2 - t_cur**2) * S_noise * noise(t_cur, t_next)
        denoised = D(x_hat, t_hat)
        emit(callback, i, x, t_cur, denoised, sigma_hat=t_hat)
        x, _ = heun_step(D, x_hat, t_hat, t_next, denoised)
    return x


def heun_step(D, x_hat, t_hat: float, t_next: float, denoised):
    """EDM Algorithm 1's step from ``(x_hat, t_hat)`` with ``denoised = D(x_hat, t_hat)``: Euler, then the
    trapezoidal correction unless ``t_next = 0``. Returns ``x_next`` and the second evaluation
    ``D(x_euler, t_next)`` (``None`` on the Euler-only step)."""
    d_cur = (x_hat - denoised) / t_hat
    x_next = x_hat + (t_next - t_hat) * d_cur
    if t_next == 0:
        return x_next, None
    denoised_prime = D(x_next, t_next)  # 2nd-order correction
    d_prime = (x_next - denoised_prime) / t_next
    return x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime), denoised_prime


@register("gradient_estimation", order=1, paper="Permenter & Yuan, arXiv 2306.04848 (gradient-estimation sampler)",
          notes="gamma = 1 is DDIM; the extrapolation by one previous step keeps first order")
def gradient_estimation(D, x, sigmas, *, callback=None, gamma: float = 2.0):
    """``eps_bar_i = gamma eps_i + (1 - gamma) eps_{i-1}``, ``x' = x + (s' - s) eps_bar_i`` (first step DDIM)."""
    eps_prev = None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        eps = (x - d) / s
        eps_bar = eps if eps_prev is None else gamma * eps + (1 - gamma) * eps_prev
        x = x + (s_next - s) * eps_bar
        eps_prev = eps
    return x


def _abar(s: float) -> float:
    return 1.0 / (1.0 + s * s)


@register("ddim_accelerated", order=2,
          paper="Li et al., Accelerating Convergence of Score-Based Diffusion Models, Provably, arXiv 2403.03852",
          notes="eps is taken linear in abar = 1/(1+sigma^2) through the last two points and integrated exactly")
def ddim_accelerated(D, x, sigmas, *, callback=None):
    """Deterministic accelerated sampler, in sigma space:
    ``x' = x + (s'-s) eps_i + (eps_{i-1}-eps_i)/(a_{i-1}-a_i) [atan s' - atan s - a_i (s'-s)]``, ``a = 1/(1+s^2)``."""
    eps_prev = s_prev = None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        eps = (x - d) / s
        x_next = x + (s_next - s) * eps
        if eps_prev is not None:
            a_i, a_prev = _abar(s), _abar(s_prev)
            coef = (math.atan(s_next) - math.atan(s) - a_i * (s_next - s)) / (a_prev - a_i)
            x_next = x_next + coef * (eps_prev - eps)
        x, eps_prev, s_prev = x_next, eps, s
    return x
