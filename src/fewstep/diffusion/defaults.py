"""What ``fewstep.sample`` runs when the user names neither a solver nor a schedule (issue 17, item 1).

``DEFAULTS`` maps ``(model family, nfe)`` to ``(solver, schedule, schedule options)``. It is data, measured by
``benchmarks/defaults.py`` (NFE 3-10 on the bundled models against k-diffusion's and diffusers' own defaults,
rmse_ref; docs/benchmarks.md, "Defaults against the peers' defaults") and pasted here by hand from its output.
A family or an NFE without an entry keeps ``sampling.DEFAULT_SOLVER`` and the schedule ``plan`` chose before.
"""

from __future__ import annotations

from typing import Any

# Schedule options a user may give beside a table entry: they only move the grid's ends.
RANGE_OPTIONS = frozenset({"sigma_min", "sigma_max", "final"})

# Made by: python benchmarks/defaults.py measure gmm2d digits-gmm digits-edm, then `report` (64 seeds): chosen on
# gmm2d and digits-gmm, digits-edm held out. The flow and discrete-VP families are not measured to the end yet
# (their references did not finish in the time given), so they keep the usual default.
DEFAULTS: dict[tuple[str, int], tuple[str, str, dict[str, Any]]] = {
    ("ve", 3): ("deis", "logsnr", {}),
    ("ve", 4): ("deis", "karras", {}),
    ("ve", 5): ("deis", "karras", {}),
    ("ve", 6): ("ipndm", "karras", {}),
    ("ve", 7): ("ipndm", "logsnr", {}),
    ("ve", 8): ("deis", "logsnr", {}),
    ("ve", 9): ("ipndm", "logsnr", {}),
    ("ve", 10): ("ipndm", "logsnr", {}),
}


def default_choice(family: str, nfe: int, solver: str | None = None,
                   schedule_options: dict[str, Any] | None = None) -> tuple[str, str, dict[str, Any]] | None:
    """The measured ``(solver, schedule, schedule options)`` for a model of ``family`` at ``nfe``, or ``None``.

    ``None`` when the table has no entry, when ``solver`` is given and is not the entry"s solver (a named
    solver then keeps its usual schedule), or when ``schedule_options`` holds options of a particular schedule
    (anything beyond ``sigma_min``, ``sigma_max`` and ``final``), which the user meant for the usual one.
    """
    entry = DEFAULTS.get((family, nfe))
    if entry is None or (solver is not None and solver != entry[0]):
        return None
    if not set(schedule_options or {}) <= RANGE_OPTIONS:
        return None
    return entry[0], entry[1], dict(entry[2])
