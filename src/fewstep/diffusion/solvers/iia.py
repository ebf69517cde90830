"""IIA: improved integration approximation (Zhang, Niwa & Kleijn, arXiv 2304.11328).

Each step of a base solver gets extra terms: scalar coefficients times differences of current and
recent model outputs (data predictions ``D``), fitted per step by least squares (MMSE over a batch)
so that the coarse step matches ``M`` fine sub-steps of the same solver from the same state. The
coefficients are fitted once per model, grid and NFE by ``fewstep.diffusion.tune.iia``, then stored
in the recipe.

The paper's exact term sets were not available to us (we could not verify its equations); fewstep uses,
with ``D_i`` the output at step ``i``:

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

from fewstep.diffusion.solvers._core import ddim_step, emit, lam, multistep_order, register
from fewstep.diffusion.solvers.basic import heun_step
from fewstep.diffusion.solvers.dpm import dpmpp_2m_step

__all__ = ["iia_ddim", "iia_dpmpp_2m", "iia_heun"]

BASES = {"iia_ddim": "ddim", "iia_dpmpp_2m": "dpmpp_2m", "iia_heun": "heun"}
N_TERMS = 2


def _base_step(D, base: str, x, s: float, s_next: float, d, d_prev, d_prev2, h_last, second: bool):
    """The base solver's step (the solvers' own step functions) and the IIA differences ``[delta_0, delta_1]``
    (``None`` where missing); ``d_prev``, ``d_prev2`` are the two earlier outputs, ``h_last`` the last step
    in lambda, and ``second`` whether DPM-Solver++(2M) takes its second-order step."""
    older = d - d_prev if d_prev is not None else None
    if base == "heun":
        x_next, d_euler = heun_step(D, x, s, s_next, d)
        return x_next, [d_euler - d if d_euler is not None else None, older]
    deltas = [older, d_prev - d_prev2 if d_prev2 is not None else None]
    if base == "ddim":
        return ddim_step(x, s, s_next, d), deltas
    return dpmpp_2m_step(x, s, s_next, d, d_prev if second else None, h_last), deltas


def run_iia(D, x, sigmas, base: str, coefficients, callback=None, fit=None):
    """Run the base solver with IIA terms; while fitting, ``fit(i, x, s, s_next, x_base, deltas) -> row``
    supplies each step's coefficients."""
    n = len(sigmas) - 1
    d_prev = d_prev2 = h_last = None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        emit(callback, i, x, s, d)
        second = multistep_order(2, i, n, s_next, True) == 2
        x_next, deltas = _base_step(D, base, x, s, s_next, d, d_prev, d_prev2, h_last, second)
        row = fit(i, x, s, s_next, x_next, deltas) if fit is not None else coefficients[i]
        for k, (c, delta) in enumerate(zip(row, deltas)):
            if c and delta is None:
                raise ValueError(f"IIA coefficient {k} of step {i} is {c}, but that difference does not exist "
                                 "at this step; it must be 0")
            if c:
                x_next = x_next + c * delta
        d_prev, d_prev2, h_last = d, d_prev, lam(s_next) - lam(s)
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


@register("iia_heun", order=2, kind="singlestep", evals_per_step=2, final_evals=1, paper=f"{_PAPER} (on heun)",
          notes=_NOTES)
def iia_heun(D, x, sigmas, *, callback=None, coefficients=None):
    """EDM's Heun with IIA terms ``c_0 (D'_i - D_i) + c_1 (D_i - D_{i-1})``, one row per step."""
    return run_iia(D, x, sigmas, "heun", _check(coefficients, len(sigmas) - 1), callback)
