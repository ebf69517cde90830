"""Documented limits: a size past one fails at once with a clear message (issue 18, item 1), and step planning
costs O(log NFE), so even the largest allowed budget plans instantly."""

from __future__ import annotations

import pytest

import fewstep
from fewstep.diffusion.sampling import plan_steps
from fewstep.diffusion.solvers import SOLVERS
from fewstep.limits import MAX_NFE, MAX_SEEDS
from fewstep.seeds import parse_seeds


def _brute_force(solver, nfe, **kw):
    """The old linear scan: the largest n in 1..nfe+2 whose cost fits."""
    info = SOLVERS[solver]
    final_zero, afs, dz = kw.get("final_zero", True), kw.get("afs", False), kw.get("denoise_to_zero", False)
    best = 0
    for n in range(1, nfe + 3):
        try:
            c = info.evals(n, final_zero, kw.get("options")) - int(afs) + int(dz and not final_zero)
        except ValueError:
            continue
        if c <= nfe:
            best = n
    return best


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_bisection_plans_what_the_linear_scan_planned(solver):
    for nfe in range(1, 26):
        for kw in ({}, {"afs": True}, {"final_zero": False, "denoise_to_zero": True}):
            want = _brute_force(solver, nfe, **kw)
            if want == 0:
                with pytest.raises(ValueError, match="too small"):
                    plan_steps(solver, nfe, **kw)
            else:
                assert plan_steps(solver, nfe, **kw) == want, (solver, nfe, kw)


def test_the_largest_budget_plans_at_once_and_a_larger_one_is_refused():
    assert plan_steps("heun", MAX_NFE) == (MAX_NFE + 1) // 2
    for bad in (MAX_NFE + 1, 10**9, 0, -3, True, 2.5):
        with pytest.raises(ValueError, match="nfe must be a positive integer up to"):
            plan_steps("ddim", bad)
    with pytest.raises(ValueError, match="nfe must be a positive integer up to"):
        fewstep.sample(fewstep.load_model("gauss"), nfe=10**9)


def test_seed_ranges_are_bounded_before_they_are_expanded():
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    with pytest.raises(ValueError, match="more than 10,000,000 seeds"):
        parse_seeds("0-100000000000")
    with pytest.raises(ValueError, match="more than"):
        parse_seeds(f"0-5,6-{MAX_SEEDS + 2}")  # the running total counts
    with pytest.raises(ValueError, match="batch must be a positive integer up to"):
        fewstep.sample(fewstep.load_model("gauss"), batch=MAX_SEEDS + 1)
