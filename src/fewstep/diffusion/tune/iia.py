"""Fitting IIA (Zhang, Niwa & Kleijn, arXiv 2304.11328): each step's coefficients by least squares against
``M`` fine sub-steps of the base solver (or the adaptive reference solver). The solvers that use them
live in ``fewstep.diffusion.solvers.iia``.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm import tqdm

from fewstep.diffusion.reference import reference_solution
from fewstep.diffusion.sampling import solve
from fewstep.diffusion.solvers.iia import BASES, N_TERMS, run_iia
from fewstep.diffusion.tune import _measure as M
from fewstep.diffusion.tune import _tuning as T
from fewstep.seeds import EVAL_SEEDS, TUNE_SEEDS

__all__ = ["fit_coefficients", "tune"]

TARGETS = ("fine", "reference")
MAX_SUBSTEPS = 1_000  # fine_steps: sub-steps of the base solver per grid step (docs/tuning.md, "Limits")


def _fine_target(model, x, s: float, s_next: float, base: str, fine_steps: int, target: str, rtol: float):
    if target == "reference":
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
    T.check_sizes(fine_steps=(fine_steps, 2, MAX_SUBSTEPS))
    base, rows, per_step = BASES[solver], [], []
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
        run_iia(lambda y, sig: model(y, sig).double(), x.double(), sigmas, base, None, fit=fit)
    bar.close()
    return rows, per_step


def tune(model, *, solver: str = "iia_dpmpp_2m", nfe: int, seeds=TUNE_SEEDS, eval_seeds=EVAL_SEEDS,
         progress: bool = True, trajectories: int = 32, schedule: str = "karras", sigmas=None, fine_steps: int = 10,
         target: str = "fine", fit_rtol: float = 1e-5):
    """Fit IIA coefficients for ``solver`` (``iia_ddim``, ``iia_dpmpp_2m``, ``iia_heun``, or their base
    names) at ``nfe`` on the first ``trajectories`` tuning seeds; ``sigmas`` replaces the ``schedule``
    grid. Quality compares, on ``eval_seeds``, the fitted solver with its base solver."""
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
