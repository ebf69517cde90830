"""k-diffusion's algorithms that fewstep has no registered solver for, written in sigma space from their papers:
churned and ancestral steps (Karras et al., arXiv 2206.00364; Song et al., arXiv 2010.02502), DPM-2 (EDM's
second-order step in log sigma), linear multistep above order 4, 3M SDE with k-diffusion's Taylor warm-up, and the
DPM-Solver steps behind DPM-Solver-fast and the adaptive solver (Lu et al., arXiv 2206.00927). They have fewstep's
solver signature ``fn(D, x, sigmas, *, callback=None, ...)`` and are driven by ``fewstep.integrations.kdiffusion``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fewstep.diffusion.solvers import SOLVERS
from fewstep.diffusion.solvers._core import emit, lagrange_integrals, lam
from fewstep.diffusion.solvers.dpm import dpmpp_2m_step, dpmpp_3m_step
from fewstep.diffusion.solvers.stochastic import ancestral_split

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------
# k-diffusion's algorithms that fewstep has no registered solver for
# ----------------------------------------------------------------------------------------------

def euler_step(D, x: Tensor, s: float, s_next: float, d: Tensor) -> Tensor:
    """Euler in sigma, ``x' = x + (s' - s) (x - D) / s`` (the Euler step of Karras et al., arXiv 2206.00364, Alg. 1)."""
    return x + (s_next - s) * ((x - d) / s)


def dpm_2_step(D, x: Tensor, s: float, s_next: float, d: Tensor) -> Tensor:
    """DPM-Solver-2 with r1 = 1/2 (Lu et al., arXiv 2206.00927, Algorithm 1) in sigma space: Euler to the
    midpoint in log sigma, ``s_mid = sqrt(s s')``, then the whole step with the slope there; Euler to 0."""
    if s_next == 0:
        return euler_step(D, x, s, s_next, d)
    s_mid = math.sqrt(s * s_next)
    u = euler_step(D, x, s, s_mid, d)
    return x + (s_next - s) * ((u - D(u, s_mid)) / s_mid)


def dpmpp_2s_step(D, x: Tensor, s: float, s_next: float, d: Tensor) -> Tensor:
    """DPM-Solver++(2S) with r = 1/2 (Lu et al., arXiv 2211.01095, Algorithm 1): a data-form step to
    ``s_mid = sqrt(s s')``, then the whole step with ``D`` there; Euler to 0."""
    if s_next == 0:
        return euler_step(D, x, s, s_next, d)
    s_mid = math.sqrt(s * s_next)
    u = (s_mid / s) * x + (1 - s_mid / s) * d
    return (s_next / s) * x + (1 - s_next / s) * D(u, s_mid)


def churn(D, x, sigmas, *, callback=None, noise, step, s_churn: float, s_tmin: float, s_tmax: float,
           s_noise: float):
    """Karras et al., arXiv 2206.00364, Algorithm 2 with any ``step``: where ``s_tmin <= t_i <= s_tmax``, raise
    ``x`` to ``t_hat = (1 + gamma) t_i``, ``gamma = min(s_churn / N, sqrt(2) - 1)``, with ``sqrt(t_hat^2 - t_i^2)
    s_noise z``, then step from ``t_hat`` to ``t_{i+1}``."""
    check_nonnegative(s_churn=s_churn, s_noise=s_noise)
    gamma_in = min(s_churn / (len(sigmas) - 1), math.sqrt(2) - 1)
    for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        gamma = gamma_in if s_tmin <= t_cur <= s_tmax else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:  # increase noise temporarily
            x = x + math.sqrt(t_hat**2 - t_cur**2) * s_noise * noise(t_cur, t_next)
        denoised = D(x, t_hat)
        emit(callback, i, x, t_cur, denoised, sigma_hat=t_hat)
        x = step(D, x, t_hat, t_next, denoised)
    return x


def ancestral(D, x, sigmas, *, callback=None, noise, step, eta: float, s_noise: float):
    """Ancestral sampling with any ``step`` (docs/math.md, "Stochastic steps"): ``step`` to ``s_down``, then add
    ``s_noise s_up z``, with DDIM's eta-variance split ``s_down^2 + s_up^2 = s'^2`` (Song et al., arXiv 2010.02502)."""
    check_nonnegative(eta=eta, s_noise=s_noise)
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        s_down, s_up = ancestral_split(s, s_next, eta)
        x = step(D, x, s, s_down, d)
        if s_next > 0:
            x = x + s_noise * s_up * noise(s, s_next)
    return x


def lms(D, x, sigmas, *, callback=None, order: int):
    """Linear multistep in sigma: ``x' = x + sum_j w_j eps_{i-j}``, ``w_j = int_{s_i}^{s_i+1} l_j(s) ds`` with the
    Lagrange basis ``l_j`` on the last ``min(order, i + 1)`` sigmas (Adams-Bashforth with variable steps; Hairer,
    Norsett & Wanner, Solving ODEs I, III.5); ``ipndm_v`` is the same for order <= 4."""
    eps: list[Tensor] = []
    past: list[float] = []
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        eps, past = ([(x - d) / s] + eps)[:order], ([s] + past)[:order]
        w = lagrange_integrals(past, s, s_next, n_quad=order)
        x = x + sum(float(wj) * e for wj, e in zip(w, eps))
    return x


def dpmpp_3m_sde_taylor_warmup(D, x, sigmas, *, callback=None, noise, eta: float, s_noise: float):
    """DPM-Solver++(3M) SDE (Lu et al., arXiv 2211.01095) as k-diffusion runs it: fewstep's ``dpmpp_3m_sde`` with
    ``coefficients="official"`` and no lower order at the end, but with the order-2 warm-up step in the Taylor
    form (``h phi_2`` weight) where fewstep's uses the midpoint form."""
    check_nonnegative(eta=eta, s_noise=s_noise)
    d_prev = d_prev2 = h_last = h_last2 = None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        if h_last2 is not None:
            x = dpmpp_3m_step(x, s, s_next, d, d_prev, d_prev2, h_last, h_last2, 1.0, eta)
        else:
            x = dpmpp_2m_step(x, s, s_next, d, d_prev, h_last, "taylor", eta)
        if s_next > 0 and eta > 0 and s_noise > 0:
            x = x + s_noise * s_next * math.sqrt(-math.expm1(-2 * eta * (lam(s_next) - lam(s)))) * noise(s, s_next)
        d_prev, d_prev2, h_last, h_last2 = d, d_prev, lam(s_next) - lam(s), h_last
    return x


def check_nonnegative(**values: float) -> None:
    bad = {k: v for k, v in values.items() if not v >= 0}
    if bad:
        raise ValueError("need " + ", ".join(f"{k} >= 0" for k in values) + "; got "
                         + ", ".join(f"{k}={v!r}" for k, v in bad.items()))


# ----------------------------------------------------------------------------------------------
# DPM-Solver-fast and adaptive DPM-Solver: k-diffusion's (sigma_min, sigma_max) signature
# ----------------------------------------------------------------------------------------------

def dpm_solver_step(order: int, D, x: Tensor, s: float, s_next: float, callback=None, **options) -> Tensor:
    """One DPM-Solver-``order`` step (Lu et al., arXiv 2206.00927; order 1 is DDIM): the registered solver on a
    one-step grid."""
    name = {1: "ddim", 2: "dpm_solver_2", 3: "dpm_solver_3"}[order]
    return SOLVERS[name].fn(D, x, [s, s_next], callback=callback, **options)


def sigma_range(sigma_min: Any, sigma_max: Any, eta: float, s_noise: float) -> tuple[float, float]:
    lo, hi = float(sigma_min), float(sigma_max)
    if not (0 < lo < math.inf and 0 < hi < math.inf and lo != hi):
        raise ValueError(f"sigma_min and sigma_max must be positive, finite and different; got {lo!r}, {hi!r}")
    check_nonnegative(eta=eta, s_noise=s_noise)
    if eta and lo > hi:
        raise ValueError(f"eta must be 0 for reverse sampling (sigma_min > sigma_max); got eta={eta!r}")
    return lo, hi


def ancestral_target(s: float, s_next: float, eta: float, floor: float) -> tuple[float, float]:
    """Where a DPM-Solver step goes with ``eta > 0``: ``s_down``, no lower than ``floor`` (sigma_min), and the noise
    level ``s_up`` that brings it back to ``s_next``."""
    if not eta:
        return s_next, 0.0
    s_down = max(ancestral_split(s, s_next, eta)[0], floor)
    return s_down, math.sqrt(s_next**2 - s_down**2)
