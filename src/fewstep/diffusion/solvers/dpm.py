"""DPM-Solver (singlestep, noise form) and DPM-Solver++ (singlestep 2S, multistep 2M/3M, data form)."""

from __future__ import annotations

import math

from fewstep.diffusion.solvers._core import check_choice, emit, exp_moments, exp_weights, lam, multistep_order, register

E = math.expm1


@register("dpm_solver_2", order=2, kind="singlestep", evals_per_step=2, final_evals=1,
          paper="Lu et al., DPM-Solver, arXiv 2206.00927, Algorithm 1 (DPM-Solver-2)",
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


@register("dpmpp_2s", order=2, kind="singlestep", evals_per_step=2, final_evals=1,
          paper="Lu et al., DPM-Solver++, arXiv 2211.01095, Algorithm 1 (2S)",
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


def dpmpp_2m_step(x, s: float, s_next: float, d, d_prev=None, h_last: float | None = None,
                  solver_type: str = "midpoint", eta: float = 0.0):
    """One DPM-Solver++(2M) step from ``s`` to ``s'`` (its deterministic part) with ``D_i = d``,
    ``D_{i-1} = d_prev`` and ``h_last = lambda_i - lambda_{i-1}``; without ``d_prev`` it is first order.

    The kernel rate is ``c = 1 + eta`` (``(s'/s) e^{-eta h} = e^{-c h}``; docs/math.md). ``midpoint``, Algorithm 2:
    ``D_bar``, the line through ``D_{i-1}`` and ``D_i`` at the step's midpoint, times the one-node weight
    ``-expm1(-c h)``; ``taylor``: the line integrated exactly (its two-node weights).
    """
    if s_next == 0:
        return d
    h = lam(s_next) - lam(s)
    c = 1 + eta
    x_next = (s_next / s) * math.exp(-eta * h) * x
    if d_prev is None:
        d_bar = d
    elif solver_type == "midpoint":
        r = h_last / h
        d_bar = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * d_prev
    else:
        w, w_prev = exp_weights([0.0, -h_last], h, c)
        return x_next + w * d + w_prev * d_prev
    return x_next + exp_weights([0.0], h, c)[0] * d_bar


def dpmpp_3m_step(x, s: float, s_next: float, d, d_prev, d_prev2, h_last: float, h_last2: float,
                  c3: float = 2.0, eta: float = 0.0):
    """One DPM-Solver++(3M) step from ``D_i, D_{i-1}, D_{i-2}`` (``h_last``, ``h_last2``: the two previous
    steps in lambda), in the official Taylor form ``x' = (s'/s) e^{-eta h} x + m_0 D_i + m_1 d1 + (c3/2) m_2 d2``.

    ``d1 ~ h D'`` and ``d2 ~ h^2 D''/2`` are the parabola's divided differences, and ``m_k`` the kernel
    moments in ``(v/h)^k`` (``h phi_1, h phi_2, 2 h phi_3`` at ``-(1 + eta) h``). ``c3 = 2`` integrates the
    parabola exactly (= ``exp_weights`` on the three nodes); the official code's ``c3 = 1`` halves that term.
    """
    if s_next == 0:
        return d
    h = lam(s_next) - lam(s)
    r0, r1 = h_last / h, h_last2 / h
    d1_0, d1_1 = (d - d_prev) / r0, (d_prev - d_prev2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    m0, m1, m2 = exp_moments(3, h, 1 + eta, scale=h)
    return (s_next / s) * math.exp(-eta * h) * x + m0 * d + m1 * d1 + c3 / 2 * m2 * d2


@register("dpmpp_2m", order=2, paper="Lu et al., DPM-Solver++, arXiv 2211.01095, Algorithm 2 (2M)")
def dpmpp_2m(D, x, sigmas, *, callback=None, lower_order_final: bool = True, solver_type: str = "midpoint"):
    """``D_bar = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``, ``x' = (s'/s) x - E(-h) D_bar``, ``r = h_{i-1}/h``.

    ``solver_type="taylor"`` uses ``h phi_2(-h) (D_i - D_{i-1}) / r`` for the correction instead.
    """
    check_choice("dpmpp_2m", "solver_type", solver_type, ("midpoint", "taylor"))
    n = len(sigmas) - 1
    d_prev = h_last = None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        second = multistep_order(2, i, n, s_next, lower_order_final) == 2
        x = dpmpp_2m_step(x, s, s_next, d, d_prev if second else None, h_last, solver_type)
        d_prev, h_last = d, lam(s_next) - lam(s)
    return x


@register("dpmpp_3m", order=3, paper="Lu et al., DPM-Solver++, arXiv 2211.01095 (multistep third order)",
          notes="coefficients='official' reproduces dpm-solver/k-diffusion/diffusers, which converge at order 2")
def dpmpp_3m(D, x, sigmas, *, callback=None, lower_order_final: bool = True, coefficients: str = "exact"):
    """Third-order multistep DPM-Solver++ with warm-up orders 1, 2 (midpoint).

    With ``d2 ~ h^2 D''/2`` (divided differences of the last three points), the exponential
    integrator's second-derivative term is ``h^3 phi_3(-h) D'' = 2 h phi_3(-h) d2``. The official
    code (and k-diffusion, diffusers) uses ``h phi_3(-h) d2``, half of it, which makes the method
    second order; ``coefficients="official"`` reproduces it for comparisons.
    """
    check_choice("dpmpp_3m", "coefficients", coefficients, ("exact", "official"))
    c3 = 2.0 if coefficients == "exact" else 1.0
    n = len(sigmas) - 1
    d_prev = d_prev2 = h_last = h_last2 = None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        order = multistep_order(3, i, n, s_next, lower_order_final)
        if order == 3:
            x = dpmpp_3m_step(x, s, s_next, d, d_prev, d_prev2, h_last, h_last2, c3)
        else:
            x = dpmpp_2m_step(x, s, s_next, d, d_prev if order == 2 else None, h_last)
        d_prev, d_prev2, h_last, h_last2 = d, d_prev, lam(s_next) - lam(s), h_last
    return x
