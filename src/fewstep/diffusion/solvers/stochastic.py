"""Stochastic samplers (1 of 3): ancestral DDPM / DDIM-eta, EDM churn, accelerated DDPM, DPM-Solver++ SDE.

Every stochastic solver takes ``noise(sigma, sigma_next) -> Tensor`` (standard normal, shaped like
``x``), which the driver injects: one generator per sample, Gaussian or Brownian
(``fewstep.diffusion.noise``). A step draws the increment of its own interval, so with Brownian
noise the increments of a coarse grid are sums of those of a finer one.

In sigma space an ancestral step from ``s`` to ``s'`` goes deterministically to ``s_down`` and adds
``s_up z``, with ``s_down^2 + s_up^2 = s'^2`` (docs/math.md). The SDE family integrates the linear part
exactly in ``lambda = -log sigma``: ``x' = (s'/s) e^{-eta h} x - expm1(-(1+eta) h) D + s' sqrt(-expm1(-2 eta h)) z``.
"""

from __future__ import annotations

import math

from fewstep.diffusion.solvers._core import (
    check_choice,
    check_nonnegative,
    ddim_step,
    emit,
    lam,
    multistep_order,
    register,
)
from fewstep.diffusion.solvers.basic import heun
from fewstep.diffusion.solvers.dpm import dpmpp_2m_step, dpmpp_3m_step

E = math.expm1


def ancestral_split(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """``(s_down, s_up)``: DDIM's eta-variance (arXiv 2010.02502, Eq. 16) in sigma space,
    ``s_up = min(s', eta s' sqrt(1 - s'^2/s^2))``, ``s_down = sqrt(s'^2 - s_up^2)``."""
    if s_next == 0 or eta == 0:
        return s_next, 0.0
    s_up = min(s_next, eta * s_next * math.sqrt(max(0.0, 1 - (s_next / s) ** 2)))
    return math.sqrt(s_next**2 - s_up**2), s_up


def split_increment(noise, s: float, s_mid: float, s_next: float):
    """Normalised Brownian increments over ``[s_mid, s]`` and over the whole ``[s_next, s]``, built from the
    two disjoint halves, so that a stage and its step share one path (Gaussian or Brownian noise alike)."""
    z_a, z_b = noise(s, s_mid), noise(s_mid, s_next)
    return z_a, (math.sqrt(s - s_mid) * z_a + math.sqrt(s_mid - s_next) * z_b) / math.sqrt(s - s_next)


@register("euler_ancestral", order=1, stochastic=True,
          paper="Song et al., DDIM, arXiv 2010.02502, Eq. 12 and 16 (eta); k-diffusion's ancestral Euler",
          notes="eta = 1 is DDPM's posterior step; eta = 0 is ddim")
def euler_ancestral(D, x, sigmas, *, callback=None, noise=None, eta: float = 1.0, s_noise: float = 1.0):
    """``x' = (s_down/s) x + (1 - s_down/s) D + s_noise s_up z``, with DDIM's eta-variance split."""
    check_nonnegative("euler_ancestral", eta=eta, s_noise=s_noise)
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        s_down, s_up = ancestral_split(s, s_next, eta)
        x = ddim_step(x, s, s_down, d)
        if s_up > 0 and s_noise > 0:
            x = x + s_noise * s_up * noise(s, s_next)
    return x


@register("ddpm", order=1, stochastic=True, paper="Ho et al., DDPM, arXiv 2006.11239, Algorithm 2",
          notes="variance fixed_small (posterior beta~) equals euler_ancestral with eta = 1")
def ddpm(D, x, sigmas, *, callback=None, noise=None, variance: str = "fixed_small"):
    """Algorithm 2 in sigma space: ``x' = x - (s^2 - s'^2)/s eps + std z``. ``fixed_small``:
    ``std^2 = s'^2 (s^2 - s'^2)/s^2`` (beta~, the posterior); ``fixed_large``: ``std^2 = a (s^2 - s'^2)``
    (beta), ``a = (1 + s'^2)/(1 + s^2)`` being the VP ``alpha_t``. No noise on the step to sigma = 0."""
    check_choice("ddpm", "variance", variance, ("fixed_small", "fixed_large"))
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        delta = s * s - s_next * s_next
        x = x - delta / s * ((x - d) / s)
        if s_next > 0:
            var = s_next**2 * delta / s**2 if variance == "fixed_small" else (1 + s_next**2) / (1 + s**2) * delta
            x = x + math.sqrt(var) * noise(s, s_next)
    return x


@register("heun_churn", order=2, kind="singlestep", evals_per_step=2, final_evals=1, stochastic=True,
          paper="Karras et al., EDM, arXiv 2206.00364, Algorithm 2",
          notes="heun with churn; EDM's ImageNet-64 settings except S_noise = 1 (1.003 there offsets an imperfect "
                "denoiser and biases exact models)")
def heun_churn(D, x, sigmas, *, callback=None, noise=None, S_churn: float = 40.0, S_min: float = 0.05,
               S_max: float = 50.0, S_noise: float = 1.0):
    """EDM's stochastic sampler: ``heun`` with churn ``gamma = min(S_churn/N, sqrt(2)-1)`` in ``[S_min, S_max]``."""
    return heun(D, x, sigmas, callback=callback, noise=noise, S_churn=S_churn, S_min=S_min, S_max=S_max,
                S_noise=S_noise)


@register("ddpm_accelerated", order=1, stochastic=True,
          paper="Li et al., Accelerating Convergence of Score-Based Diffusion Models, Provably, arXiv 2403.03852 "
                "(accelerated stochastic sampler)",
          notes="one evaluation per step, at a point perturbed with half the step's noise")
def ddpm_accelerated(D, x, sigmas, *, callback=None, noise=None):
    """``Y+ = Y + sqrt((1-a)/2) Z``, ``Y' = (Y+ + (1-a) s_t(Y+))/sqrt(a) + sqrt((1-a)/2) Z+`` in sigma space:
    ``x+ = x + sqrt(delta/2) z1``, ``x' = x+ - (delta/s) eps(x+, s) + sqrt(a delta/2) z2``, with
    ``delta = s^2 - s'^2`` and ``a = (1 + s'^2)/(1 + s^2)``. ``z1, z2`` are the increments of the
    step's two halves (split at ``sqrt((s^2 + s'^2)/2)``); the step to sigma = 0 adds no ``z2``, as in
    the official code (which also scales ``z1`` by an extra ``sqrt(a)``, not done here)."""
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        delta = s * s - s_next * s_next
        s_mid = math.sqrt(0.5 * (s * s + s_next * s_next))
        x_plus = x + math.sqrt(delta / 2) * noise(s, s_mid)
        d = D(x_plus, s)
        emit(callback, i, x, s, d)
        x = x_plus - delta / s * ((x_plus - d) / s)
        if s_next > 0:
            x = x + math.sqrt((1 + s_next**2) / (1 + s**2) * delta / 2) * noise(s_mid, s_next)
    return x


@register("dpmpp_sde", order=2, kind="singlestep", evals_per_step=2, final_evals=1, stochastic=True,
          paper="Lu et al., DPM-Solver++, arXiv 2211.01095 (2S) with ancestral noise, as k-diffusion's dpmpp_sde",
          notes="eta = 0 is dpmpp_2s; the step to sigma = 0 is x' = D")
def dpmpp_sde(D, x, sigmas, *, callback=None, noise=None, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
    """Two ancestral sub-steps: to ``s_r = s e^{-r h}`` with ``D``, then to ``s'`` with
    ``D_bar = (1 - 1/(2r)) D + 1/(2r) D(x_r, s_r)``; the stage's noise is part of the step's."""
    check_nonnegative("dpmpp_sde", eta=eta, s_noise=s_noise)
    if not 0 < r < 1:
        raise ValueError(f"solver 'dpmpp_sde' needs 0 < r < 1; got r={r!r}")
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        if s_next == 0:
            x = d
            continue
        s_r = s * math.exp(-r * (lam(s_next) - lam(s)))
        stochastic = eta > 0 and s_noise > 0
        z_r, z = split_increment(noise, s, s_r, s_next) if stochastic else (0.0, 0.0)
        s_down, s_up = ancestral_split(s, s_r, eta)
        x_r = ddim_step(x, s, s_down, d) + s_noise * s_up * z_r
        d_bar = (1 - 1 / (2 * r)) * d + 1 / (2 * r) * D(x_r, s_r)
        s_down, s_up = ancestral_split(s, s_next, eta)
        x = ddim_step(x, s, s_down, d_bar) + s_noise * s_up * z
    return x


@register("dpmpp_2m_sde", order=2, stochastic=True,
          paper="Lu et al., DPM-Solver++, arXiv 2211.01095 (2M) for the SDE, as k-diffusion/diffusers 2M SDE",
          notes="eta = 0 is dpmpp_2m; solver_type 'taylor' is k-diffusion's 'heun'")
def dpmpp_2m_sde(D, x, sigmas, *, callback=None, noise=None, eta: float = 1.0, s_noise: float = 1.0,
                 lower_order_final: bool = True, solver_type: str = "midpoint"):
    """``x' = (s'/s) e^{-eta h} x - E(-H) D_i - E(-H)/(2r) (D_i - D_{i-1}) + s' sqrt(-E(-2 eta h)) z``,
    ``H = (1 + eta) h``; ``solver_type="taylor"`` uses ``(E(-H)/H + 1)/r (D_i - D_{i-1})`` instead."""
    check_nonnegative("dpmpp_2m_sde", eta=eta, s_noise=s_noise)
    check_choice("dpmpp_2m_sde", "solver_type", solver_type, ("midpoint", "taylor"))
    n = len(sigmas) - 1
    d_prev = h_last = None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        second = multistep_order(2, i, n, s_next, lower_order_final) == 2
        x_next = dpmpp_2m_step(x, s, s_next, d, d_prev if second else None, h_last, solver_type, eta)
        x = x_next + _sde_noise(noise, s, s_next, eta, s_noise)
        d_prev, h_last = d, lam(s_next) - lam(s)
    return x


@register("dpmpp_3m_sde", order=3, stochastic=True,
          paper="Lu et al., DPM-Solver++, arXiv 2211.01095 (3M) for the SDE, as k-diffusion/diffusers 3M SDE",
          notes="eta = 0 is dpmpp_3m; coefficients='official' halves the third-order term as k-diffusion does")
def dpmpp_3m_sde(D, x, sigmas, *, callback=None, noise=None, eta: float = 1.0, s_noise: float = 1.0,
                 lower_order_final: bool = True, coefficients: str = "exact"):
    """``x' = e^{-H} x - E(-H) D_i + phi2 d1 - c phi3 d2 + noise`` with ``phi2 = E(-H)/H + 1``,
    ``phi3 = phi2/H - 1/2`` and the divided differences ``d1, d2`` of ``dpmpp_3m`` (``c = 2``, exact;
    k-diffusion's ``c = 1``). Warm-up orders 1, 2 (midpoint)."""
    check_nonnegative("dpmpp_3m_sde", eta=eta, s_noise=s_noise)
    check_choice("dpmpp_3m_sde", "coefficients", coefficients, ("exact", "official"))
    c3 = 2.0 if coefficients == "exact" else 1.0
    n = len(sigmas) - 1
    d_prev = d_prev2 = h_last = h_last2 = None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        order = multistep_order(3, i, n, s_next, lower_order_final)
        if order == 3:
            x_next = dpmpp_3m_step(x, s, s_next, d, d_prev, d_prev2, h_last, h_last2, c3, eta)
        else:
            x_next = dpmpp_2m_step(x, s, s_next, d, d_prev if order == 2 else None, h_last, eta=eta)
        x = x_next + _sde_noise(noise, s, s_next, eta, s_noise)
        d_prev, d_prev2, h_last, h_last2 = d, d_prev, lam(s_next) - lam(s), h_last
    return x


def _sde_noise(noise, s: float, s_next: float, eta: float, s_noise: float):
    """The SDE family's noise ``s_noise s' sqrt(-E(-2 eta h)) z`` (0 on the step to sigma = 0 or without noise)."""
    if s_next == 0 or eta == 0 or s_noise == 0:
        return 0.0
    return s_noise * s_next * math.sqrt(-E(-2 * eta * (lam(s_next) - lam(s)))) * noise(s, s_next)
