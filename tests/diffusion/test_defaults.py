"""The measured defaults (issue 17, item 1): every entry runs, ``plan`` reads the table only when the user left
the choice open, and on an exact model the default is no worse than the peers' default it was measured against."""

import copy

import pytest
import torch

import fewstep
from fewstep.diffusion.defaults import DEFAULTS, default_choice
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.processes import VPContinuous
from fewstep.diffusion.sampling import DEFAULT_SOLVER, plan, plan_steps
from fewstep.diffusion.schedules import get_sigmas, list_schedules

# a model of each family in the table: bundled, or (continuous VP, which no bundled model is) the exact gmm2d on
# the linear-beta VP SDE, as benchmarks/defaults.py measures it
MODEL_OF = {"ve": "gmm2d", "flow": "digits-flow", "vp_discrete": "digits-vp-eps", "vp_continuous": "gmm2d@vpc"}


def load(name: str):
    base, _, rebase = name.partition("@")
    model = fewstep.load_model(base)
    if rebase:
        model = copy.copy(model)
        model.process = VPContinuous()
    return model


def test_the_table_covers_the_measured_range_with_registered_choices():
    assert {fam for fam, _ in DEFAULTS} <= set(MODEL_OF)
    for (fam, nfe), entry in DEFAULTS.items():
        assert 3 <= nfe <= 10 and entry.solver in fewstep.list_solvers() and entry.schedule in list_schedules()
        assert set(entry.schedule_options) <= {"shift", "mu", "rho", "spacing", "sigma_max"}
        assert set(entry.solver_options) <= set(fewstep.list_solvers()[entry.solver]["options"])
    for fam in {fam for fam, _ in DEFAULTS}:
        assert {nfe for f, nfe in DEFAULTS if f == fam} == set(range(3, 11)), fam


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_entry_plans_within_its_budget(key):
    fam, nfe = key
    model = load(MODEL_OF[fam])
    assert model.process.family == fam
    chosen = plan(model, nfe=nfe)
    entry = DEFAULTS[key]
    assert (chosen.solver, chosen.solver_options, chosen.afs) == (entry.solver, entry.solver_options, entry.afs)
    top = entry.schedule_options.get("sigma_max", model.sigma_max)
    n = plan_steps(entry.solver, nfe, infinite_start=top == float("inf"), afs=entry.afs, options=entry.solver_options)
    torch.testing.assert_close(chosen.sigmas, get_sigmas(entry.schedule, n, model, **entry.schedule_options))


def test_plan_reads_the_table_only_when_the_choice_is_open():
    model = fewstep.load_model("gmm2d")
    solver = DEFAULTS[("ve", 6)].solver
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
    assert plan(model, nfe=6, solver_options={"lower_order_final": False}).solver == DEFAULT_SOLVER  # meant for it


def test_the_users_options_win_over_the_entrys():
    model = fewstep.load_model("gmm2d")
    key = next(k for k, e in sorted(DEFAULTS.items()) if k[0] == "ve" and e.afs)
    entry = DEFAULTS[key]
    assert plan(model, nfe=key[1]).afs and not plan(model, nfe=key[1], afs=False).afs
    mine = plan(model, nfe=key[1], afs=False)
    assert mine.solver == entry.solver and mine.sigmas.numel() < plan(model, nfe=key[1]).sigmas.numel()
    ranged = plan(model, nfe=key[1], schedule_options={"sigma_max": 40.0})
    assert ranged.solver == entry.solver and float(ranged.sigmas[0]) == pytest.approx(40.0)
    option = next(iter(fewstep.list_solvers()[entry.solver]["options"]))
    value = fewstep.list_solvers()[entry.solver]["options"][option]
    chosen = default_choice("ve", key[1], entry.solver, solver_options={option: value})
    assert chosen.solver_options[option] == value and chosen.schedule == entry.schedule


@pytest.mark.parametrize("nfe", [3, 5, 8])
def test_sample_with_the_default_counts_at_most_nfe_evaluations(nfe):
    counted = CountingDenoiser(fewstep.load_model("digits-flow"))
    x = fewstep.sample(counted, nfe=nfe, seeds=range(2))
    assert counted.calls <= nfe and torch.isfinite(x).all()
