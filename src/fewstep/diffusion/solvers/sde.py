"""Stochastic samplers (2 of 3): SA-Solver (stochastic Adams) and the ER-SDE solvers.

Both integrate a one-parameter family of reverse-time SDEs whose linear part is solved exactly and
whose data prediction ``D`` is replaced by a polynomial through earlier evaluations.
"""

from __future__ import annotations

import math

import numpy as np

from fewstep.diffusion.solvers._core import (
    check_choice,
    check_nonnegative,
    check_order,
    emit,
    exp_weights,
    lam,
    quad,
    register,
)

E = math.expm1


@register("sa_solver", order=3, stochastic=True,
          paper="Xue et al., SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models, "
                "arXiv 2309.05019 (stochastic Adams-Bashforth predictor, Adams-Moulton corrector)",
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
    keep = max(predictor_order, corrector_order, 1)
    lams: list[float] = []  # lambdas and model values of the earlier points, newest first
    ds: list = []
    last = None  # (x, lambda, h, c, noise term) of the step that led to the current state
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        if last is not None and corrector_order > 0:  # Adams-Moulton: redo the last step with the new point
            x_prev, lam_prev, h, c, z_term = last
            nodes, values = [lam(s)] + lams[:corrector_order - 1], [d] + ds[:corrector_order - 1]
            b = exp_weights([lm - lam_prev for lm in nodes], h, c)
            x = math.exp(-c * h) * x_prev + sum(float(bj) * dj for bj, dj in zip(b, values)) + z_term
        emit(callback, i, x, s, d)
        lams, ds = ([lam(s)] + lams)[:keep], ([d] + ds)[:keep]
        if s_next == 0:
            x = d
            continue
        tau2 = tau * tau if S_min <= s <= S_max else 0.0
        h, c = lam(s_next) - lam(s), 1 + tau2
        b = exp_weights([lm - lam(s) for lm in lams[:predictor_order]], h, c)  # Adams-Bashforth predictor
        z_term = s_next * math.sqrt(-E(-2 * tau2 * h)) * noise(s, s_next) if tau2 > 0 else 0.0
        last = (x, lam(s), h, c, z_term)
        x = math.exp(-c * h) * x + sum(float(bj) * dj for bj, dj in zip(b, ds)) + z_term
    return x


NOISE_SCALES = {
    "ode": lambda s: s,  # the PF-ODE: no noise
    "sde": lambda s: s * s,  # the reverse-time SDE: order 1 is DDPM
    "sde_5": lambda s: s * (math.exp(s**0.3) + 10),  # the official default ("SDE_5", App. A.8)
}


def _integral(f, a: float, b: float) -> float:
    """``int_a^b f(t) dt`` for ``0 < a < b``, by 16-point Gauss-Legendre in ``u = log t`` (smooth for ``f ~ 1/t``)."""
    return float(quad(lambda u: np.array([f(t) for t in np.exp(u)]) * np.exp(u), math.log(a), math.log(b)))


@register("er_sde", order=3, stochastic=True,
          paper="Cui et al., Elucidating the solution space of extended reverse-time SDE for diffusion models, "
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
    s_prev = s_prev2 = d_prev = slope_prev = None  # the two earlier sigmas, and D and D' at the last one
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        slope = (d - d_prev) / (s - s_prev) if s_prev is not None else None
        if s_next == 0:
            x = d
        else:
            r = fs(s_next) / fs(s)
            x_next = r * x + (1 - r) * d
            if order >= 2 and slope is not None:
                d1 = slope
                if order >= 3 and s_prev2 is not None:
                    d2 = 2 * (slope - slope_prev) / (s - s_prev2)
                    if coefficients == "exact":
                        d1 = slope + (s - s_prev) * d2 / 2
                    i2 = _integral(lambda t: (t - s) / fs(t), s_next, s)
                    x_next = x_next + ((s_next - s) ** 2 / 2 + fs(s_next) * i2) * d2
                x_next = x_next + (s_next - s + fs(s_next) * _integral(lambda t: 1 / fs(t), s_next, s)) * d1
            var = s_next**2 - (r * s) ** 2
            if var > 1e-12 * s_next**2:  # phi = sigma (the ODE) adds no noise
                x_next = x_next + math.sqrt(var) * noise(s, s_next)
            x = x_next
        s_prev, s_prev2, d_prev, slope_prev = s, s_prev, d, slope
    return x
