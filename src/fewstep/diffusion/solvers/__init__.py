"""Deterministic and stochastic solvers, looked up by name in one registry.

Each solver is a small function ``fn(D, x, sigmas, *, callback=None, **options) -> x`` over a
shared time grid; ``D(x, sigma)`` is the evaluator the driver builds around the model. Stochastic
solvers also take ``noise(sigma, sigma_next)``, which only the driver passes (see ``noise.py``).
"""

from __future__ import annotations

from typing import Any

# Every module below registers its solvers when imported; the registry imports nothing from outside solvers/.
from fewstep.diffusion.solvers import (  # noqa: F401  (imported for their registrations)
    adams,
    basic,
    dc,
    dpm,
    dpm_v3,
    iia,
    learned,
    restart,
    sde,
    stochastic,
    time_shift,
    unipc,
    usf,
)
from fewstep.diffusion.solvers._core import SOLVERS, SolverInfo, get_solver, register

__all__ = ["SOLVERS", "SolverInfo", "get_solver", "list_solvers", "register"]


def list_solvers() -> dict[str, dict[str, Any]]:
    """Every registered solver with its info (order, evaluations per step, paper, options)."""
    return {name: info.describe() for name, info in sorted(SOLVERS.items())}
