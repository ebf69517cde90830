"""Stochastic samplers (2 of 3): SA-Solver (stochastic Adams) and the ER-SDE solvers.

Both integrate a one-parameter family of reverse-time SDEs whose linear part is solved exactly and
whose data prediction ``D`` is replaced by a polynomial through earlier evaluations.
"""

from __future__ import annotations

import math

import numpy as np

from fewstep.diffusion.solvers._core import check_order, emit, gauss_legendre, lam, phi, register
from fewstep.diffusion.solvers.stochastic import check_choice, check_nonnegative

E = math.expm1


def exp_weights(nodes: list[float], h: float, c: float) -> np.ndarray:
    """``b`` with ``sum_j b_j D_j = c int_0^h e^{-c(h-v)} P(v) dv``, ``P`` the polynomial through ``(nodes_j, D_j)``.

    ``v = lambda - lambda_s``. The moments are ``c int_0^h e^{-c(h-v)} v^k dv = c k! h^(k+1) phi_{k+1}(-c h)``,
    and ``b`` solves ``sum_j b_j nodes_j^k = m_k`` (exact for every polynomial of degree < len(nodes)).
    """
    m = [c * math.factorial(k) * h ** (k + 1) * phi(k + 1, -c * h) for k in range(len(nodes))]
    return np.linalg.solve(np.vander(np.asarray(nodes, dtype=np.float64), increasing=True).T, np.asarray(m))


@register("sa_solver", order=3, stochastic=True,
          paper="Xue et al., SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models, "
                "arXiv 2309.05019",
          notes="order = predictor order; the corrector reuses the next step's evaluation (no extra NFE); "
                "tau = 0 is the PF-ODE (predictor only: Adams-Bashforth in lambda, order 2 = dpmpp_2m taylor)")
def sa_solver(D, x, sigmas, *, callback=None, noise=None, predictor_order: int = 3, corrector_order: int = 4,
              tau: float = 1.0, S_min: float = 0.0, S_max: float = math.inf):
    """Stochastic Adams predictor-corrector in data form, ``c = 1 + tau^2``:
    ``x' = e^{-c h} x + sum_j b_j D_j + s' sqrt(1 - e^{-2 tau^2 h}) z``, ``b = exp_weights(past lambdas, h, c)``.

    The corrector (Adams-Moulton, ``corrector_order`` points including the new one; 0 = off) redoes
    the step with ``D`` at the predicted point and the same ``z``; that ``D`` is kept for the next step,
    so the corrector costs no evaluation, and the last step is not corrected. ``tau`` applies where
    ``S_min <= sigma <= S_max`` (the paper's default window is t in [0.2, 0.8]). The step to 0 is ``x' = D``.
    """
    check_order("sa_solver", predictor_order, 4)
    if not (isinstance(corrector_order, int) and 0 <= corrector_order <= 4):
        raise ValueError(f"solver 'sa_solver' supports corrector_order 0..4 (0 = off); got {corrector_order!r}")
    check_nonnegative("sa_solver", tau=tau)
    if not S_min <= S_max:
        raise ValueError(f"solver 'sa_solver' needs S_min <= S_max; got S_min={S_min!r}, S_max={S_max!r}")
    hist: list = []  # (lambda, D), newest last
    last = None  # (x, lambda, h, c, noise term) of the step that led to the current state
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        if last is not None and corrector_order > 0:
            x_prev, lam_prev, h, c, z_term = last
            pts = [(lam(s), d)] + hist[::-1][:corrector_order - 1]
            b = exp_weights([p[0] - lam_prev for p in pts], h, c)
            x = math.exp(-c * h) * x_prev + sum(float(bj) * p[1] for bj, p in zip(b, pts)) + z_term
        emit(callback, i, x, s, d)
        hist = (hist + [(lam(s), d)])[-max(predictor_order, corrector_order, 1):]
        if s_next == 0:
            x = d
            continue
        tau2 = tau * tau if S_min <= s <= S_max else 0.0
        h, c = lam(s_next) - lam(s), 1 + tau2
        pts = hist[::-1][:predictor_order]
        b = exp_weights([p[0] - lam(s) for p in pts], h, c)
        z_term = s_next * math.sqrt(-E(-2 * tau2 * h)) * noise(s, s_next) if tau2 > 0 else 0.0
        last = (x, lam(s), h, c, z_term)
        x = math.exp(-c * h) * x + sum(float(bj) * p[1] for bj, p in zip(b, pts)) + z_term
    return x


NOISE_SCALES = {
    "ode": lambda s: s,  # the PF-ODE: no noise
    "sde": lambda s: s * s,  # the reverse-time SDE: order 1 is DDPM
    "sde_5": lambda s: s * (math.exp(s**0.3) + 10),  # the official default ("SDE_5", App. A.8)
}


def _integral(f, a: float, b: float, n: int = 16) -> float:
    """``int_a^b f(t) dt`` for ``0 < a < b`` by Gauss-Legendre in ``log t`` (smooth for ``f ~ 1/t``)."""
    xg, wg = gauss_legendre(n)
    u = 0.5 * (math.log(b) - math.log(a)) * xg + 0.5 * (math.log(b) + math.log(a))
    t = np.exp(u)
    return float(0.5 * (math.log(b) - math.log(a)) * np.dot(wg, np.array([f(v) for v in t]) * t))


@register("er_sde", order=3, stochastic=True, paper="Cui et al., Elucidating the solution space of extended reverse-time SDE for diffusion models, "
                "arXiv 2309.06169 (ER-SDE-Solver-1/2/3, VE form)",
          notes="noise_scale 'ode' is the PF-ODE (order 1 = ddim); 'sde' at order 1 is ddpm; coefficients='official' "
                "uses the chord slope as D' at order 3, as the official code does, which is second order")
def er_sde(D, x, sigmas, *, callback=None, noise=None, order: int = 3, noise_scale: str = "sde_5",
           coefficients: str = "exact"):
    """ER-SDE with noise-scale function ``phi`` and ``r = phi(s')/phi(s)``:
    ``x' = r x + (1-r) D + (s'-s + phi(s') I1) D' + ((s'-s)^2/2 + phi(s') I2) D'' + sqrt(s'^2 - r^2 s^2) z``,
    ``I1 = int_{s'}^{s} dt/phi(t)``, ``I2 = int_{s'}^{s} (t-s)/phi(t) dt``; ``D'``, ``D''`` are divided
    differences in sigma of the last two or three evaluations (warm-up orders 1, 2). At order 3 the
    official code takes the chord ``(D_i - D_{i-1})/(s_i - s_{i-1})`` as ``D'``, which is first-order
    accurate and leaves the method second order; ``coefficients="exact"`` adds ``(s_i - s_{i-1}) D''/2``
    (Newton's form), which makes it third order. The step to 0 is ``x' = D``."""
    check_order("er_sde", order, 3)
    check_choice("er_sde", "noise_scale", noise_scale, tuple(NOISE_SCALES))
    check_choice("er_sde", "coefficients", coefficients, ("exact", "official"))
    fs = NOISE_SCALES[noise_scale]
    hist: list = []  # (sigma, D, D'), newest last
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        slope = (d - hist[-1][1]) / (s - hist[-1][0]) if hist else None
        if s_next == 0:
            x = d
        else:
            r = fs(s_next) / fs(s)
            x_next = r * x + (1 - r) * d
            if order >= 2 and slope is not None:
                d1 = slope
                if order >= 3 and len(hist) >= 2:
                    d2 = 2 * (slope - hist[-1][2]) / (s - hist[-2][0])
                    if coefficients == "exact":
                        d1 = slope + (s - hist[-1][0]) * d2 / 2
                    i2 = _integral(lambda t: (t - s) / fs(t), s_next, s)
                    x_next = x_next + ((s_next - s) ** 2 / 2 + fs(s_next) * i2) * d2
                x_next = x_next + (s_next - s + fs(s_next) * _integral(lambda t: 1 / fs(t), s_next, s)) * d1
            var = s_next**2 - (r * s) ** 2
            if var > 1e-12 * s_next**2:  # phi = sigma (the ODE) adds no noise
                x_next = x_next + math.sqrt(var) * noise(s, s_next)
            x = x_next
        hist = (hist + [(s, d, slope)])[-2:]
    return x
