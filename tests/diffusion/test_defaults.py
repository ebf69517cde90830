"""The measured defaults (issue 17, item 1): every entry runs, ``plan`` reads the table only when the user left
the choice open, and on an exact model the default is no worse than the peers' default it was measured against."""

import pytest
import torch

import fewstep
from fewstep.diffusion.defaults import DEFAULTS, default_choice
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.sampling import DEFAULT_SOLVER, plan, plan_steps
from fewstep.diffusion.schedules import get_sigmas, list_schedules

# a bundled model of each family in the table
MODEL_OF = {"ve": "gmm2d", "flow": "digits-flow", "vp_discrete": "digits-vp-eps"}


def test_the_table_covers_the_measured_range_with_registered_choices():
    assert {fam for fam, _ in DEFAULTS} <= set(MODEL_OF)
    for (fam, nfe), (solver, schedule, options) in DEFAULTS.items():
        assert 3 <= nfe <= 10 and solver in fewstep.list_solvers() and schedule in list_schedules()
        assert not options or set(options) <= {"shift", "mu", "rho", "spacing", "sigma_max"}
    for fam in {fam for fam, _ in DEFAULTS}:
        assert {nfe for f, nfe in DEFAULTS if f == fam} == set(range(3, 11)), fam


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_entry_plans_within_its_budget(key):
    fam, nfe = key
    model = fewstep.load_model(MODEL_OF[fam])
    assert model.process.family == fam
    chosen = plan(model, nfe=nfe)
    solver, schedule, options = DEFAULTS[key]
    assert chosen.solver == solver
    top = options.get("sigma_max", model.sigma_max)
    n = plan_steps(solver, nfe, infinite_start=top == float("inf"))
    torch.testing.assert_close(chosen.sigmas, get_sigmas(schedule, n, model, **options))


def test_plan_reads_the_table_only_when_the_choice_is_open():
    model = fewstep.load_model("gmm2d")
    solver, schedule, _ = DEFAULTS[("ve", 6)]
    assert plan(model, nfe=6).solver == solver
    assert plan(model, nfe=6, solver=solver).sigmas.tolist() == plan(model, nfe=6).sigmas.tolist()
    other = next(s for s in ("dpmpp_2m", "unipc") if s != solver)
    mine = plan(model, nfe=6, solver=other)  # a named solver keeps the usual schedule
    assert mine.solver == other and mine.sigmas.tolist() == get_sigmas("karras", 6, model).tolist()
    named = plan(model, nfe=6, schedule="karras")  # a named schedule keeps the usual solver
    assert named.solver == DEFAULT_SOLVER
    assert plan(model, nfe=6, schedule_options={"rho": 5.0}).solver == DEFAULT_SOLVER
    assert plan(model, nfe=40).solver == DEFAULT_SOLVER  # outside the measured range
    assert default_choice("ve", 6, other) is None and default_choice("ve", 6, None, {"rho": 3}) is None
    assert default_choice("custom", 6) is None


@pytest.mark.parametrize("nfe", [3, 5, 8])
def test_sample_with_the_default_counts_at_most_nfe_evaluations(nfe):
    counted = CountingDenoiser(fewstep.load_model("digits-flow"))
    x = fewstep.sample(counted, nfe=nfe, seeds=range(2))
    assert counted.calls <= nfe and torch.isfinite(x).all()
