"""Deterministic and stochastic solvers, looked up by name in one registry.

Each solver is a small function ``fn(D, x, sigmas, *, callback=None, **options) -> x`` over a
shared time grid; ``D(x, sigma)`` is the evaluator the driver builds around the model. Stochastic
solvers also take ``noise(sigma, sigma_next)``, which only the driver passes (see ``noise.py``).
"""

from __future__ import annotations

from typing import Any

from fewstep.diffusion.solvers import adams, basic, dpm, unipc  # noqa: F401  (register themselves)
from fewstep.diffusion.solvers import dpm_v3  # noqa: F401  (DPM-Solver-v3 on empirical model statistics)
from fewstep.diffusion.solvers import restart, sde, stochastic  # noqa: F401  (stochastic samplers)
from fewstep.diffusion.solvers._core import SOLVERS, SolverInfo, get_solver, register
from fewstep.diffusion.tune import dc, iia  # noqa: E402,F401  (tuned solvers: DC-Solver, IIA)
from fewstep.diffusion import corrections  # noqa: E402,F401  (ddim_ts, the time-shift sampler)
from fewstep.diffusion.tune import usf  # noqa: E402,F401  (usf, the per-step solver of S3)
from fewstep.diffusion.tune import learned  # noqa: E402,F401  (learned, the solver ld3 trains)

__all__ = ["SOLVERS", "SolverInfo", "get_solver", "list_solvers", "register"]


def list_solvers() -> dict[str, dict[str, Any]]:
    """Every registered solver with its info (order, evaluations per step, paper, options)."""
    return {name: info.describe() for name, info in sorted(SOLVERS.items())}
