"""IIA: improved integration approximation (Zhang, Niwa & Kleijn, arXiv 2304.11328).

Each step of a base solver gets extra terms: scalar coefficients times differences of current and
recent model outputs (data predictions ``D``), fitted per step by least squares (MMSE over a batch)
so that the coarse step matches ``M`` fine sub-steps of the same solver from the same state. The
coefficients are fitted once per model, grid and NFE by ``fewstep.diffusion.tune.iia``, then stored
in the recipe.

The paper's exact term sets were not available to us (its equations are unverified in
REFERENCES.md); fewstep uses, with ``D_i`` the output at step ``i``:

- ``iia_ddim``, ``iia_dpmpp_2m``: ``x' = base + c_0 (D_i - D_{i-1}) + c_1 (D_{i-1} - D_{i-2})``;
- ``iia_heun`` (EDM Heun): ``x' = base + c_0 (D'_i - D_i) + c_1 (D_i - D_{i-1})``, where ``D'_i`` is the
  second evaluation of the step (at the Euler point).

A difference that does not exist yet (the first steps, the last Heun step) has no coefficient. These
terms span the same directions as the base update's own extrapolation terms, so the fit adjusts the
step's weights on the model outputs, which is what IIA does for EDM, DDIM and DPM-Solver. The
fine target is ``M`` sub-steps of the base solver, uniform in ``lambda`` (to ``sigma_i / 100`` and then
0 for a last step to sigma = 0), or, with ``target="reference"``, the adaptive reference solver.
"""

from __future__ import annotations

import math
from typing import Any

from fewstep.diffusion.solvers._core import ddim_step, emit, lam, multistep_order, register

__all__ = ["iia_ddim", "iia_dpmpp_2m", "iia_heun"]

BASES = {"iia_ddim": "ddim", "iia_dpmpp_2m": "dpmpp_2m", "iia_heun": "heun"}
N_TERMS = 2


def _base_step(D, base: str, x, s: float, s_next: float, d, prev: list, i: int, n: int):
    """The base solver's step and the IIA differences ``[delta_0, delta_1]`` (``None`` where missing);
    ``prev`` holds ``(lambda, D)`` of earlier points, newest first."""
    if base == "heun":
        older = d - prev[0][1] if prev else None
        if s_next == 0:
            return d, [None, older]
        d_cur = (x - d) / s
        x_euler = x + (s_next - s) * d_cur
        d2 = D(x_euler, s_next)
        return x + (s_next - s) * 0.5 * (d_cur + (x_euler - d2) / s_next), [d2 - d, older]
    deltas = [d - prev[0][1] if prev else None, prev[0][1] - prev[1][1] if len(prev) > 1 else None]
    x_ddim = ddim_step(x, s, s_next, d)
    if base == "ddim" or multistep_order(2, i, n, s_next, True) == 1:
        return x_ddim, deltas
    # DPM-Solver++(2M), midpoint form: x' = (s'/s) x - E(-h) [(1 + 1/(2 r0)) D_i - D_{i-1} / (2 r0)]
    r0 = (lam(s) - prev[0][0]) / (lam(s_next) - lam(s))
    return x_ddim + (1 - s_next / s) / (2 * r0) * deltas[0], deltas


def run_iia(D, x, sigmas, base: str, coefficients, callback=None, fit=None):
    """Run the base solver with IIA terms; while fitting, ``fit(i, x, s, s_next, x_base, deltas) -> row``
    supplies each step's coefficients."""
    n = len(sigmas) - 1
    hist: list[tuple[float, Any]] = []  # (lambda, D) of earlier points, newest last
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        x_next, deltas = _base_step(D, base, x, s, s_next, d, hist[::-1], i, n)
        row = fit(i, x, s, s_next, x_next, deltas) if fit is not None else coefficients[i]
        for k, (c, delta) in enumerate(zip(row, deltas)):
            if c and delta is None:
                raise ValueError(f"IIA coefficient {k} of step {i} is {c}, but that difference does not exist "
                                 "at this step; it must be 0")
            if c:
                x_next = x_next + c * delta
        hist = (hist + [(lam(s), d)])[-2:]
        x = x_next
    return x


def _check(coefficients, n: int) -> list[list[float]]:
    if coefficients is None:
        return [[0.0] * N_TERMS for _ in range(n)]
    rows = [[float(c) for c in row] for row in coefficients]
    if len(rows) != n or any(len(r) > N_TERMS or not all(math.isfinite(c) for c in r) for r in rows):
        raise ValueError(f"IIA coefficients need {n} rows (one per step) of at most {N_TERMS} finite numbers; "
                         f"got {coefficients!r}")
    return rows


_PAPER = "Zhang, Niwa & Kleijn, IIA, arXiv 2304.11328"
_NOTES = "fitted coefficients from fewstep.diffusion.tune.iia; without them it is the base solver"


@register("iia_ddim", order=1, final_evals=1, paper=f"{_PAPER} (on ddim)",
          notes=_NOTES)
def iia_ddim(D, x, sigmas, *, callback=None, coefficients=None):
    """DDIM with IIA terms ``c_0 (D_i - D_{i-1}) + c_1 (D_{i-1} - D_{i-2})``, one row per step."""
    return run_iia(D, x, sigmas, "ddim", _check(coefficients, len(sigmas) - 1), callback)


@register("iia_dpmpp_2m", order=2, final_evals=1, paper=f"{_PAPER} (on dpmpp_2m)",
          notes=_NOTES)
def iia_dpmpp_2m(D, x, sigmas, *, callback=None, coefficients=None):
    """DPM-Solver++(2M) with IIA terms ``c_0 (D_i - D_{i-1}) + c_1 (D_{i-1} - D_{i-2})``, one row per step."""
    return run_iia(D, x, sigmas, "dpmpp_2m", _check(coefficients, len(sigmas) - 1), callback)


@register("iia_heun", order=2, kind="singlestep", evals_per_step=2, final_evals=1, paper=f"{_PAPER} (on heun)", notes=_NOTES)
def iia_heun(D, x, sigmas, *, callback=None, coefficients=None):
    """EDM's Heun with IIA terms ``c_0 (D'_i - D_i) + c_1 (D_i - D_{i-1})``, one row per step."""
    return run_iia(D, x, sigmas, "heun", _check(coefficients, len(sigmas) - 1), callback)
