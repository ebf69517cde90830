"""What the coefficient fits (ems, dc, iia) share beyond ``_tuning``: grids (also explicit ones), float64
runs from the seeds' noise, and reference states at every grid point."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from fewstep.diffusion.reference import reference_solution
from fewstep.diffusion.sampling import plan_steps, seeded_noise, solve
from fewstep.diffusion.schedules import as_list, check_sigmas, get_sigmas
from fewstep.diffusion.solvers import get_solver
from fewstep.diffusion.tune._tuning import start_sigma
from fewstep.metrics import rmse  # noqa: F401  (the one rmse, re-exported for the fits: M.rmse)


def grid(model, solver: str, nfe: int, schedule: str = "karras", solver_options: Mapping[str, Any] | None = None,
         sigmas=None) -> list[float]:
    """The grid ``fewstep.sample`` uses for ``solver`` at ``nfe`` (starting at ``start_sigma``), or the
    explicit ``sigmas`` (e.g. a tuned schedule), checked against the NFE budget."""
    if sigmas is not None:
        s = as_list(check_sigmas(sigmas))
        cost = get_solver(solver).evals(len(s) - 1, s[-1] == 0, solver_options)
        if cost > nfe:
            raise ValueError(f"the given sigmas have {len(s) - 1} steps, which cost {cost} evaluations with "
                             f"{solver!r}; the budget is nfe={nfe}")
    else:
        s = as_list(get_sigmas(schedule, plan_steps(solver, nfe, options=solver_options), model,
                               sigma_max=start_sigma(model)))
    if not math.isfinite(s[0]):
        raise ValueError("coefficient fits need a grid that starts at a finite sigma (the driver takes the step "
                         "from sigma = inf itself); use a sigma-space schedule such as 'karras'")
    return s


def trajectories(seeds, n: int) -> list[int]:
    """The first ``n`` seeds (the fits use a few trajectories, as their papers do)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"trajectories must be a positive integer; got {n!r}")
    return list(seeds)[:n]


def disjoint(tune_seeds, eval_seeds) -> None:
    shared = sorted(set(tune_seeds) & set(eval_seeds or ()))
    if shared:
        raise ValueError(f"tuning and evaluation seeds must differ; both contain {shared[:5]}")


def start(model, seeds: list[int], sigma0: float) -> torch.Tensor:
    """The float64 starting states for ``seeds``: the noise ``fewstep.sample`` draws, times ``sigma0``."""
    noise = seeded_noise(seeds, model.shape, dtype=torch.float64)
    return noise if math.isinf(sigma0) else sigma0 * noise


def run(model, seeds: list[int], sigmas: list[float], solver: str, options: Mapping[str, Any] | None = None):
    """Solve from the seeds' noise along ``sigmas`` in float64."""
    with torch.no_grad():
        return solve(model, start(model, seeds, sigmas[0]), sigmas, solver, float64=True, **dict(options or {}))


def reference_states(model, x: torch.Tensor, sigmas: list[float], rtol: float = 1e-5) -> list[torch.Tensor]:
    """Adaptive float64 solutions of the PF-ODE from ``x`` at ``sigmas[0]`` to every later grid point."""
    out, y = [x.double()], x.double()
    for s0, s1 in zip(sigmas[:-1], sigmas[1:]):
        y = reference_solution(model, y, s0, s1, rtol=rtol, atol=rtol * 1e-2)
        out.append(y)
    return out
