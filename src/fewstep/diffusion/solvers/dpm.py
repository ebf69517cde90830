"""DPM-Solver (singlestep, noise form) and DPM-Solver++ (singlestep 2S, multistep 2M/3M, data form)."""

from __future__ import annotations

import math

from fewstep.diffusion.solvers._core import emit, lam, multistep_order, register

E = math.expm1


@register("dpm_solver_2", order=2, kind="singlestep", evals_per_step=2, final_evals=1, paper="Lu et al., DPM-Solver, arXiv 2206.00927, Algorithm 1 (DPM-Solver-2)",
          notes="the step to sigma = 0 is first order")
def dpm_solver_2(D, x, sigmas, *, callback=None, r1: float = 0.5):
    """``u = x - s1 E(r1 h) eps_s``; ``x' = x - s' E(h) eps_s - s'/(2 r1) E(h) (eps(u, s1) - eps_s)``."""
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        if s_next == 0:
            x = d
            continue
        h = lam(s_next) - lam(s)
        s1 = s * math.exp(-r1 * h)
        eps_s = (x - d) / s
        u = x - s1 * E(r1 * h) * eps_s
        eps_1 = (u - D(u, s1)) / s1
        x = x - s_next * E(h) * eps_s - s_next / (2 * r1) * E(h) * (eps_1 - eps_s)
    return x


@register("dpm_solver_3", order=3, kind="singlestep", evals_per_step=3, final_evals=1,
          paper="Lu et al., DPM-Solver, arXiv 2206.00927, Algorithm 2 (DPM-Solver-3)",
          notes="the step to sigma = 0 is first order")
def dpm_solver_3(D, x, sigmas, *, callback=None, r1: float = 1 / 3, r2: float = 2 / 3):
    """DPM-Solver-3 with intermediate points at ``lambda_s + r1 h`` and ``lambda_s + r2 h``."""
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        if s_next == 0:
            x = d
            continue
        h = lam(s_next) - lam(s)
        s1, s2 = s * math.exp(-r1 * h), s * math.exp(-r2 * h)
        eps_s = (x - d) / s
        u1 = x - s1 * E(r1 * h) * eps_s
        eps_1 = (u1 - D(u1, s1)) / s1
        u2 = x - s2 * E(r2 * h) * eps_s - (r2 / r1) * s2 * (E(r2 * h) / (r2 * h) - 1) * (eps_1 - eps_s)
        eps_2 = (u2 - D(u2, s2)) / s2
        x = x - s_next * E(h) * eps_s - (s_next / r2) * (E(h) / h - 1) * (eps_2 - eps_s)
    return x


@register("dpmpp_2s", order=2, kind="singlestep", evals_per_step=2, final_evals=1, paper="Lu et al., DPM-Solver++, arXiv 2211.01095, Algorithm 1 (2S)",
          notes="the step to sigma = 0 is first order")
def dpmpp_2s(D, x, sigmas, *, callback=None, r: float = 0.5):
    """``u = (s1/s) x - E(-r h) D_s``; ``x' = (s'/s) x - E(-h) D_s - 1/(2r) E(-h) (D(u) - D_s)``."""
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        if s_next == 0:
            x = d
            continue
        h = lam(s_next) - lam(s)
        s1 = s * math.exp(-r * h)
        u = (s1 / s) * x - E(-r * h) * d
        d1 = D(u, s1)
        x = (s_next / s) * x - E(-h) * d - (1 / (2 * r)) * E(-h) * (d1 - d)
    return x


@register("dpmpp_2m", order=2, paper="Lu et al., DPM-Solver++, arXiv 2211.01095, Algorithm 2 (2M)")
def dpmpp_2m(D, x, sigmas, *, callback=None, lower_order_final: bool = True, solver_type: str = "midpoint"):
    """``D_bar = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``, ``x' = (s'/s) x - E(-h) D_bar``, ``r = h_{i-1}/h``.

    ``solver_type="taylor"`` uses ``h phi_2(-h) (D_i - D_{i-1}) / r`` for the correction instead.
    """
    return _dpmpp_multistep(D, x, sigmas, 2, callback, lower_order_final, solver_type)


@register("dpmpp_3m", order=3, paper="Lu et al., DPM-Solver++, arXiv 2211.01095 (multistep third order)",
          notes="coefficients='official' reproduces dpm-solver/k-diffusion/diffusers, which converge at order 2")
def dpmpp_3m(D, x, sigmas, *, callback=None, lower_order_final: bool = True, coefficients: str = "exact"):
    """Third-order multistep DPM-Solver++ with warm-up orders 1, 2.

    With ``d2 ~ h^2 D''/2`` (divided differences of the last three points), the exponential
    integrator's second-derivative term is ``h^3 phi_3(-h) D'' = 2 h phi_3(-h) d2``. The official
    code (and k-diffusion, diffusers) uses ``h phi_3(-h) d2``, half of it, which makes the method
    second order; ``coefficients="official"`` reproduces it for comparisons.
    """
    if coefficients not in ("exact", "official"):
        raise ValueError(f"coefficients must be 'exact' or 'official'; got {coefficients!r}")
    return _dpmpp_multistep(D, x, sigmas, 3, callback, lower_order_final, "midpoint",
                            c3=2.0 if coefficients == "exact" else 1.0)


def _dpmpp_multistep(D, x, sigmas, order, callback, lower_order_final, solver_type, c3=2.0, *, eta=0.0,
                     s_noise=0.0, noise=None):
    """DPM-Solver++(2M/3M) in data form. With ``eta > 0`` it is the SDE variant (Lu et al. 2022;
    k-diffusion's 2M/3M SDE): the linear part becomes ``(s'/s) e^{-eta h} x - E(-H) D`` with
    ``H = (1 + eta) h``, and ``s' sqrt(-E(-2 eta h)) z`` is added."""
    if solver_type not in ("midpoint", "taylor"):
        raise ValueError(f"solver_type must be 'midpoint' or 'taylor'; got {solver_type!r}")
    n = len(sigmas) - 1
    hist: list = []  # (lambda, D) of earlier points, newest last
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        p = multistep_order(order, i, n, s_next, lower_order_final)
        if s_next == 0:
            x_next = d
        else:
            h = lam(s_next) - lam(s)
            H = (1 + eta) * h
            x_next = (s_next / s) * math.exp(-eta * h) * x - E(-H) * d
            if p >= 2:
                r0 = (lam(s) - hist[-1][0]) / h
                d1_0 = (d - hist[-1][1]) / r0
            if p == 2:
                x_next = x_next - E(-H) / 2 * d1_0 if solver_type == "midpoint" else x_next + (E(-H) / H + 1) * d1_0
            elif p == 3:
                r1 = (hist[-1][0] - hist[-2][0]) / h
                d1_1 = (hist[-1][1] - hist[-2][1]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = E(-H) / H + 1
                phi_3 = phi_2 / H - 0.5
                x_next = x_next + phi_2 * d1 - c3 * phi_3 * d2
            if eta > 0 and s_noise > 0:
                x_next = x_next + s_noise * s_next * math.sqrt(-E(-2 * eta * h)) * noise(s, s_next)
        hist = (hist + [(lam(s), d)])[-2:]
        x = x_next
    return x
