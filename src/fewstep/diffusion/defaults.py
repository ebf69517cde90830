"""What ``fewstep.sample`` runs when the user names neither a solver nor a schedule (issue 17, item 1).

``DEFAULTS`` maps ``(model family, nfe)`` to a ``Default``: solver and options, schedule and options, and whether
to take the analytic first step. It is data, measured by
``benchmarks/defaults.py`` (NFE 3-10 on the bundled models against k-diffusion's and diffusers' own defaults,
rmse_ref; docs/benchmarks.md, "Defaults against the peers' defaults") and pasted here by hand from its output.
A family or an NFE without an entry keeps ``sampling.DEFAULT_SOLVER`` and the schedule ``plan`` chose before.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# Schedule options a user may give beside a table entry: they only move the grid's ends.
RANGE_OPTIONS = frozenset({"sigma_min", "sigma_max", "final"})


class Default(NamedTuple):
    """One measured choice: the solver and its options, the schedule and its options, and whether the first
    evaluation is replaced by the analytic first step (AFS, Zhou et al., arXiv 2312.00094)."""

    solver: str
    solver_options: dict[str, Any]
    schedule: str
    schedule_options: dict[str, Any]
    afs: bool = False


# Made by: python benchmarks/defaults.py measure (every model of its MODELS), then `report` (64 seeds); chosen on the
# exact models (also rebased onto flow, discrete VP and continuous VP) and the trained flow and discrete-VP nets,
# digits-edm held out. docs/benchmarks.md has the numbers.
DEFAULTS: dict[tuple[str, int], Default] = {
    ("flow", 3): Default("unipc", {}, "flow_sigmas", {}, afs=True),
    ("flow", 4): Default("unipc", {"order": 3}, "flow_sigmas", {}, afs=True),
    ("flow", 5): Default("unipc", {"order": 3}, "flow_sigmas", {}),
    ("flow", 6): Default("dpmpp_2m", {}, "flow_sigmas", {}),
    ("flow", 7): Default("deis", {}, "flow_sigmas", {}),
    ("flow", 8): Default("deis", {}, "flow_sigmas", {}),
    ("flow", 9): Default("ipndm", {"order": 3}, "flow_sigmas", {}),
    ("flow", 10): Default("ipndm", {"order": 3}, "flow_sigmas", {}),
    ("ve", 3): Default("deis", {"order": 2}, "karras", {}, afs=True),
    ("ve", 4): Default("deis", {}, "logsnr", {}, afs=True),
    ("ve", 5): Default("deis", {"variable": "log_sigma"}, "logsnr", {}, afs=True),
    ("ve", 6): Default("deis", {"variable": "log_sigma"}, "karras", {"rho": 5.0}, afs=True),
    ("ve", 7): Default("deis", {"variable": "log_sigma"}, "logsnr", {}, afs=True),
    ("ve", 8): Default("deis", {"variable": "log_sigma"}, "logsnr", {}),
    ("ve", 9): Default("ipndm", {"order": 3}, "karras", {}, afs=True),
    ("ve", 10): Default("ipndm", {"order": 3}, "logsnr", {}, afs=True),
    ("vp_continuous", 3): Default("deis", {}, "time_quadratic", {}, afs=True),
    ("vp_continuous", 4): Default("deis", {}, "time_quadratic", {}, afs=True),
    ("vp_continuous", 5): Default("deis", {}, "time_quadratic", {}, afs=True),
    ("vp_continuous", 6): Default("deis", {}, "time_quadratic", {}, afs=True),
    ("vp_continuous", 7): Default("deis", {"order": 2, "variable": "log_sigma"}, "time_quadratic", {}, afs=True),
    ("vp_continuous", 8): Default("ipndm", {"order": 3}, "time_quadratic", {}, afs=True),
    ("vp_continuous", 9): Default("ipndm", {"order": 3}, "time_quadratic", {}, afs=True),
    ("vp_continuous", 10): Default("ipndm", {"order": 3}, "time_quadratic", {}, afs=True),
    ("vp_discrete", 3): Default("deis", {"variable": "log_sigma"}, "time_quadratic", {}, afs=True),
    ("vp_discrete", 4): Default("deis", {}, "time_quadratic", {}, afs=True),
    ("vp_discrete", 5): Default("deis", {}, "time_quadratic", {}, afs=True),
    ("vp_discrete", 6): Default("deis", {"order": 2, "variable": "log_sigma"}, "time_quadratic", {}, afs=True),
    ("vp_discrete", 7): Default("ipndm", {"order": 3}, "time_quadratic", {}, afs=True),
    ("vp_discrete", 8): Default("ipndm", {"order": 3}, "time_quadratic", {}, afs=True),
    ("vp_discrete", 9): Default("ipndm", {"order": 3}, "time_quadratic", {}, afs=True),
    ("vp_discrete", 10): Default("ipndm", {"order": 3}, "time_quadratic", {}, afs=True),
}


def default_choice(family: str, nfe: int, solver: str | None = None,
                   schedule_options: dict[str, Any] | None = None,
                   solver_options: dict[str, Any] | None = None) -> Default | None:
    """The measured choice for a model of ``family`` at ``nfe``, with the user's options merged in, or ``None``.

    ``None`` when the table has no entry; when ``solver`` is given and is not the entry's solver (a named solver
    then keeps its usual schedule); when ``solver_options`` are given without a solver (they were meant for the
    usual default solver); or when ``schedule_options`` hold options of a particular schedule (anything beyond
    ``sigma_min``, ``sigma_max`` and ``final``), which the user meant for the usual one. The user's options win
    over the entry's.
    """
    entry = DEFAULTS.get((family, nfe))
    if entry is None or (solver is not None and solver != entry.solver):
        return None
    if (solver is None and solver_options) or not set(schedule_options or {}) <= RANGE_OPTIONS:
        return None
    return entry._replace(solver_options={**entry.solver_options, **(solver_options or {})},
                          schedule_options={**entry.schedule_options, **(schedule_options or {})})
