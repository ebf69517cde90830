"""IIA: improved integration approximation (Zhang, Niwa & Kleijn, arXiv 2304.11328).

Each step of a base solver gets extra terms: scalar coefficients times differences of current and
recent model outputs (data predictions ``D``), fitted per step by least squares (MMSE over a batch)
so that the coarse step matches ``M`` fine sub-steps of the same solver from the same state. The
coefficients are fitted once per model, grid and NFE, then stored in the recipe.

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

import torch

from fewstep.diffusion.solvers._core import ddim_step, emit, lam, multistep_order, register

__all__ = ["fit_coefficients", "tune"]

BASES = {"iia_ddim": "ddim", "iia_dpmpp_2m": "dpmpp_2m", "iia_heun": "heun"}
N_TERMS = 2
TARGETS = ("fine", "reference")


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


def _run(D, x, sigmas, base: str, coefficients, callback=None, fit=None):
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


def _solver(name: str, base: str):
    def fn(D, x, sigmas, *, callback=None, coefficients=None):
        return _run(D, x, sigmas, base, _check(coefficients, len(sigmas) - 1), callback)

    fn.__name__ = name
    fn.__doc__ = (f"{base} with IIA terms (arXiv 2304.11328); ``coefficients`` come from "
                  f"``fewstep.diffusion.tune.iia.tune`` (one row per step), and without them it is {base}.")
    return fn


for _name, _base, _order, _evals in (("iia_ddim", "ddim", 1, 1), ("iia_dpmpp_2m", "dpmpp_2m", 2, 1),
                                     ("iia_heun", "heun", 2, 2)):
    register(_name, order=_order, kind="singlestep" if _evals == 2 else "multistep", evals_per_step=_evals,
             final_evals=1, options={"coefficients": None}, fn=_solver(_name, _base),
             paper=f"Zhang, Niwa & Kleijn, IIA, arXiv 2304.11328 (on {_base})",
             notes="fitted coefficients from fewstep.diffusion.tune.iia; without them it is the base solver")


def _fine_target(model, x, s: float, s_next: float, base: str, fine_steps: int, target: str, rtol: float):
    from fewstep.diffusion.sampling import solve

    if target == "reference":
        from fewstep.diffusion.reference import reference_solution

        return reference_solution(model, x, s, s_next, rtol=rtol, atol=rtol * 1e-2)
    end = s_next if s_next > 0 else s / 100
    sub = torch.exp(torch.linspace(math.log(s), math.log(end), fine_steps + 1, dtype=torch.float64)).tolist()
    return solve(model, x, sub if s_next > 0 else sub + [0.0], base, float64=True)


def fit_coefficients(model, x, sigmas: list[float], solver: str = "iia_dpmpp_2m", *, fine_steps: int = 10,
                     target: str = "fine", rtol: float = 1e-5, progress: bool = False):
    """Fit each step's coefficients by least squares (steps in order, earlier ones fixed).

    Returns ``(coefficients, per_step)``, where ``per_step`` lists the step's mean squared distance to
    its fine target before and after the IIA terms.
    """
    if solver not in BASES:
        raise ValueError(f"IIA is available for {sorted(BASES)}; got {solver!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
    if not isinstance(fine_steps, int) or fine_steps < 2:
        raise ValueError(f"fine_steps must be an integer >= 2; got {fine_steps!r}")
    base, rows, per_step = BASES[solver], [], []
    from tqdm import tqdm

    bar = tqdm(total=len(sigmas) - 1, disable=not progress, desc="IIA", unit="step")

    def fit(i, x_i, s, s_next, x_base, deltas):
        y = (_fine_target(model, x_i, s, s_next, base, fine_steps, target, rtol) - x_base).reshape(-1)
        avail = [k for k, dl in enumerate(deltas) if dl is not None]
        row = [0.0] * N_TERMS
        if avail:
            F = torch.stack([deltas[k].reshape(-1) for k in avail], 1)
            G = F.T @ F
            c = torch.linalg.solve(G + 1e-12 * G.diagonal().mean() * torch.eye(len(avail), dtype=G.dtype), F.T @ y)
            for k, ck in zip(avail, c.tolist()):
                row[k] = ck
            per_step.append((float(y.pow(2).mean()), float((y - F @ c).pow(2).mean())))
        else:
            per_step.append((float(y.pow(2).mean()),) * 2)
        rows.append(row)
        bar.update()
        return row

    with torch.no_grad():
        _run(lambda y, sig: model(y, sig).double(), x.double(), sigmas, base, None, fit=fit)
    bar.close()
    return rows, per_step


def tune(model, *, solver: str = "iia_dpmpp_2m", nfe: int, seeds=range(100_000, 100_128), eval_seeds=range(256),
         progress: bool = True, trajectories: int = 32, schedule: str = "karras", sigmas=None, fine_steps: int = 10,
         target: str = "fine", fit_rtol: float = 1e-5):
    """Fit IIA coefficients for ``solver`` (``iia_ddim``, ``iia_dpmpp_2m``, ``iia_heun``, or their base
    names) at ``nfe`` on the first ``trajectories`` tuning seeds; ``sigmas`` replaces the ``schedule``
    grid. Quality compares, on ``eval_seeds``, the fitted solver with its base solver."""
    import time

    from fewstep.diffusion.tune import _measure as M
    from fewstep.diffusion.tune import _tuning as T

    t0 = time.perf_counter()
    solver = {v: k for k, v in BASES.items()}.get(solver, solver)
    if solver not in BASES:
        raise ValueError(f"the iia method tunes {sorted(BASES)} (or their bases {sorted(BASES.values())}); "
                         f"got {solver!r}")
    T.check_args(model, solver, nfe)
    seeds = T.seed_list(seeds, "seeds")
    tune_seeds = M.trajectories(seeds, trajectories)
    M.disjoint(tune_seeds, eval_seeds)
    sigmas = M.grid(model, solver, nfe, schedule, sigmas=sigmas)
    rows, per_step = fit_coefficients(model, M.start(model, tune_seeds, sigmas[0]), sigmas, solver,
                                      fine_steps=fine_steps, target=target, rtol=fit_rtol, progress=progress)
    ref = T.tuning_references(model, seeds, sigmas[0], len(tune_seeds), progress)
    final = [M.rmse(M.run(model, tune_seeds, sigmas, solver, opts), ref) for opts in ({}, {"coefficients": rows})]
    objective = {"step_mse_before_after": per_step, "final_rmse_tune_seeds": final}
    return T.make_recipe(model, "iia", solver, nfe, sigmas, t_start=t0, solver_options={"coefficients": rows},
                         objective=objective,
                         options={"target": target, "fine_steps": fine_steps, "schedule": schedule},
                         tune_seeds=tune_seeds, eval_seeds=eval_seeds, baseline=(BASES[solver], {}), progress=progress)
