"""Tuning methods improve their own objectives; AYS interpolation; the per-step solver usf proved with math."""

import itertools
import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.sampling import plan_steps, solve
from fewstep.diffusion.schedules import get_sigmas, karras, logsnr
from fewstep.diffusion.tune import ays, gits, s3
from fewstep.diffusion.tune._tuning import Predictor
from fewstep.models import load_model
from fewstep.models.exact import Gauss

TUNE = range(100_000, 100_024)
HELD_OUT = range(500, 532)



pytestmark = pytest.mark.usefixtures("one_thread", "shared_reference_cache")  # see tests/conftest.py



# ---------------------------------------------------------------------------------------------
# AYS
# ---------------------------------------------------------------------------------------------

def test_loglinear_interp_properties():
    s = logsnr(6, 0.01, 50.0)
    for n in (2, 5, 9, 20):
        out = ays.loglinear_interp(s, n)
        assert out.numel() == n + 1 and out[0] == s[0] and out[-1] == s[-1]
        assert (out[1:] < out[:-1]).all()
        # log-linear in the index: a geometric grid stays geometric
        assert torch.allclose(out, logsnr(n + 1, 0.01, 50.0), rtol=1e-12)
    assert torch.allclose(ays.loglinear_interp(s, 5), s, rtol=1e-14)  # same length: unchanged
    z = get_sigmas("karras", 6, load_model("gauss"))
    out = ays.loglinear_interp(z, 10)
    assert out.numel() == 11 and out[-1] == 0 and out[-2] == z[-2] and out[0] == z[0]
    assert (out[1:] < out[:-1]).all()
    # the interpolant passes through every original point when the step count is refined exactly
    assert torch.allclose(ays.loglinear_interp(z, 11)[:-1:2], z[:-1], rtol=1e-12)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ays.loglinear_interp([1.0, 2.0, 0.0], 4)
    with pytest.raises(ValueError, match="n_steps must be an integer"):
        ays.loglinear_interp(z, 1)


def test_ays_lowers_the_klub(gmm2d):
    r = ays.tune(gmm2d, solver="dpmpp_2m", nfe=5, seeds=TUNE, eval_seeds=None, progress=False, mc_samples=128,
                 candidates=4, max_sweeps=3)
    obj = r.info["objective"]
    # measured on fresh Monte Carlo draws, not the ones it was fitted on
    assert obj["final"] < 0.7 * obj["initial"]
    assert all(b <= a for a, b in zip(obj["fit_history"], obj["fit_history"][1:]))  # coordinate descent
    assert r.method == "ays" and r.nfe == 5 and len(r.sigmas) == 6 and r.sigmas[-1] == 0
    assert r.sigmas[0] == gmm2d.sigma_max and r.sigmas[-2] == pytest.approx(gmm2d.sigma_min)
    # the estimate is a deterministic function of the schedule (common random numbers)
    klub = ays.KLUB(gmm2d, gmm2d.sample_data(64, torch.Generator().manual_seed(1)), 4, seed=3)
    assert klub.terms(list(r.sigmas[:-1])) == klub.terms(list(r.sigmas[:-1]))


def test_ays_rejects_bad_options(gmm2d):
    with pytest.raises(ValueError, match="mc_samples"):
        ays.tune(gmm2d, nfe=5, mc_samples=2, eval_seeds=None, progress=False)
    with pytest.raises(ValueError, match="stochastic"):
        ays.tune(gmm2d, solver="euler_ancestral", nfe=5, eval_seeds=None, progress=False)
    with pytest.raises(TypeError, match="Denoiser"):
        ays.tune("gmm2d", nfe=5)


# ---------------------------------------------------------------------------------------------
# GITS
# ---------------------------------------------------------------------------------------------

def test_gits_dp_is_the_exact_minimum():
    g = torch.Generator().manual_seed(0)
    m = 8
    cost = torch.rand(m, m, generator=g, dtype=torch.float64) + torch.triu(torch.ones(m, m, dtype=torch.float64))
    cost = torch.where(torch.arange(m)[:, None] < torch.arange(m)[None], cost, torch.full_like(cost, math.inf))
    for k in (1, 3, 5, 7):
        path, best = gits.dp_schedule(cost, k)
        brute = min(gits.path_cost(cost, (0, *mid, m - 1)) for mid in itertools.combinations(range(1, m - 1), k - 1))
        assert best == pytest.approx(brute) and gits.path_cost(cost, path) == pytest.approx(best)
        assert path[0] == 0 and path[-1] == m - 1 and len(path) == k + 1
    with pytest.raises(ValueError, match="room for"):
        gits.dp_schedule(cost, m)


def test_gits_lowers_its_cost_and_the_held_out_error(gmm2d):
    r = gits.tune(gmm2d, solver="dpmpp_2m", nfe=4, seeds=TUNE, eval_seeds=HELD_OUT, progress=False, fine_steps=24)
    obj = r.info["objective"]
    assert obj["final"] < obj["initial"]
    fine = get_sigmas("karras", 24, gmm2d).tolist()
    assert [fine[i] for i in obj["path"]] == list(r.sigmas)  # a subset of the fine teacher grid
    q = r.quality
    assert q["eval_seeds"] == "500-531" and q["untuned"]["solver"] == "dpmpp_2m"
    assert q["rmse_ref"] < 0.5 * q["untuned"]["rmse_ref"]  # held-out seeds, not the tuning seeds


def test_gits_one_step_costs_match_direct_steps(gmm2d):
    fine = get_sigmas("karras", 6, gmm2d)
    x = 80 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    states = gits.teacher_states(gmm2d, x / 80, fine, "dpmpp_3m")
    for solver in ("dpmpp_2m", "heun"):
        c = gits.cost_matrix(gmm2d, states, fine.tolist(), solver)
        step = solve(gmm2d, states[1], [float(fine[1]), float(fine[4])], solver).double()
        direct = (step - states[4].double()).pow(2).flatten(1).mean(1).sqrt().mean()
        assert float(c[1, 4]) == pytest.approx(float(direct), rel=1e-12)
        assert torch.isinf(c[4, 1]) and torch.isinf(c[2, 2])


# ---------------------------------------------------------------------------------------------
# S3 and its solver
# ---------------------------------------------------------------------------------------------

def test_s3_lowers_its_predictor_and_the_held_out_error(gmm2d):
    r = s3.tune(gmm2d, solver="unipc", nfe=4, seeds=TUNE, eval_seeds=HELD_OUT, progress=False, population=10,
                generations=4, children=6, elite=4, refine_sweeps=1)
    obj = r.info["objective"]
    assert obj["final"] < 0.5 * obj["initial"]
    starts_with_mean = r.solver_options["first_x0"] is not None
    assert r.solver == "usf" and r.nfe == 4 and len(r.solver_options["orders"]) == r.n_steps == 4 + starts_with_mean
    counted = CountingDenoiser(gmm2d)
    fewstep.sample(counted, recipe=r, seeds=range(3))
    assert counted.calls == 4
    # the stored options reproduce the predictor's number
    pred = Predictor(gmm2d, TUNE)
    assert pred(r.sigmas, "usf", r.solver_options) == pytest.approx(obj["final"], rel=1e-6)
    assert r.quality["rmse_ref"] < r.quality["untuned"]["rmse_ref"]
    assert r.quality["untuned"]["solver"] == "unipc"


def test_s3_at_one_evaluation_toggles_the_mean_start_both_ways(gmm2d):
    """Regression: at NFE 1 a mutation that switched the data-mean start on (or off) interpolated a grid with one
    positive sigma and failed inside the search ("loglinear_interp needs at least 2 positive sigmas")."""
    search = s3.Search.__new__(s3.Search)
    search.s_min, search.s_max = float(gmm2d.sigma_min), 80.0
    one = s3.Candidate((80.0, 0.0), (2,), ("data",), (True,), (0.0,), False)
    two = search.toggle_first(one)
    assert two.first and two.n == 2 and two.sigmas[0] == 80.0 and two.sigmas[-1] == 0.0 and 0 < two.sigmas[1] < 80
    back = search.toggle_first(two)
    assert not back.first and back.sigmas == (80.0, 0.0) and back.orders == (2,)
    r = s3.tune(gmm2d, solver="unipc", nfe=1, seeds=TUNE, eval_seeds=None, progress=False, population=6,
                generations=3, children=4, batch=16)
    counted = CountingDenoiser(gmm2d)
    fewstep.sample(counted, recipe=r, seeds=range(3))
    assert r.nfe == 1 and counted.calls == 1


GAUSS = Gauss(dim=3, mean=torch.tensor([0.5, -1.0, 2.0]), std=torch.tensor([0.5, 1.0, 0.7]))
X_T = 80 * torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_usf_identities():
    s = get_sigmas("karras", 6, GAUSS).tolist()
    n = 6
    for pred in ("data", "noise"):
        a = solve(GAUSS, X_T, s, "usf", orders=[1] * n, predictions=[pred] * n, correctors=[False] * n)
        assert torch.allclose(a, solve(GAUSS, X_T, s, "ddim"), rtol=0, atol=1e-12)
    # exact integral of the linear interpolant in lambda = DPM-Solver++(2M) in its Taylor form
    a = solve(GAUSS, X_T, s, "usf", orders=[1, 2, 2, 2, 2, 1], correctors=[False] * n)
    assert torch.allclose(a, solve(GAUSS, X_T, s, "dpmpp_2m", solver_type="taylor"), rtol=0, atol=1e-12)
    # relax = 0 is the exact step; relax scales the part beyond the DDIM step
    plan = dict(orders=[2] * n, predictions=["noise"] * n, correctors=[False] * n)
    one = s[:2] + [s[2]]
    base = solve(GAUSS, X_T, one, "usf", **{k: v[:2] for k, v in plan.items()})
    ddim = solve(GAUSS, X_T, one, "ddim")
    relaxed = solve(GAUSS, X_T, one, "usf", relax=[0.0, 0.5], **{k: v[:2] for k, v in plan.items()})
    assert not torch.allclose(base, ddim)
    assert torch.allclose(relaxed - ddim, 1.5 * (base - ddim), rtol=0, atol=1e-12)
    assert torch.equal(solve(GAUSS, X_T, s, "usf", relax=[0.0] * n, **plan), solve(GAUSS, X_T, s, "usf", **plan))


def test_usf_first_x0_replaces_the_first_evaluation():
    s = get_sigmas("karras", 5, GAUSS).tolist()
    mean = GAUSS.data_mean().tolist()

    class MeanFirst(Gauss):  # the model itself, except that its first evaluation returns the data mean
        calls = 0

        def denoise(self, x, sigma, cond):
            self.calls += 1
            return GAUSS.data_mean().to(x).expand_as(x) if self.calls == 1 else GAUSS.denoise(x, sigma, cond)

    counted = CountingDenoiser(GAUSS)
    a = solve(counted, X_T, s, "usf", first_x0=mean)
    b = solve(MeanFirst(dim=3), X_T, s, "usf")
    assert counted.calls == 4 and torch.allclose(a, b, rtol=0, atol=1e-12)
    assert plan_steps("usf", 4, options={"first_x0": mean}) == 5 and plan_steps("usf", 4) == 4
    with pytest.raises(ValueError, match="first_x0 needs 3 values"):
        solve(GAUSS, X_T, s, "usf", first_x0=[0.0, 1.0])


@pytest.mark.parametrize("pred,corrector,order", [("data", False, 3), ("noise", False, 3), ("data", True, 4)])
def test_usf_order_of_convergence(pred, corrector, order):
    ref = GAUSS.ode_solution(X_T, 80.0, 0.002)
    Ns = [64, 128, 256]  # the noise form is pre-asymptotic below 64 steps on a Karras grid
    errs = []
    for N in Ns:
        x = solve(GAUSS, X_T, karras(N + 1, 0.002, 80.0), "usf", orders=[3] * N, predictions=[pred] * N,
                  correctors=[corrector] * N)
        errs.append(float((x - ref).abs().max()))
    assert -np.polyfit(np.log(Ns), np.log(errs), 1)[0] > order - 0.25


@pytest.mark.parametrize("options,message", [
    ({"orders": [2, 2]}, "one entry per step"),
    ({"orders": [4, 2, 2]}, "orders must be integers in 1..3"),
    ({"predictions": ["v", "data", "data"]}, "predictions must each be one of"),
    ({"correctors": [1, 0, 1]}, "correctors must be booleans"),
    ({"relax": [0.0, 2.0, 0.0]}, r"relax values must be numbers in \[-1, 1\]"),
])
def test_usf_rejects_bad_plans(options, message):
    with pytest.raises(ValueError, match=message):
        solve(GAUSS, X_T, get_sigmas("karras", 3, GAUSS), "usf", **options)
