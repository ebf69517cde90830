"""fewstep.bench.harness: one row per configuration on the same noise, the NFE counted (never above the budget,
the warm-up left out), rmse_ref against the exact answer, an error row where a solver cannot fit the budget."""

from __future__ import annotations

import itertools
import math
import platform
import re

import numpy
import pytest
import torch

import fewstep
from fewstep.bench import harness
from fewstep.bench.harness import BenchSpec, device_name, run_bench, solver_overhead, versions
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.noise import seeded_noise
from fewstep.diffusion.sampling import sample
from fewstep.diffusion.schedules import SIGMA_CAP
from fewstep.evaluation import reference_samples
from fewstep.metrics import rmse
from fewstep.models import load_model
from fewstep.models.exact import Gauss

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

MODELS = ("gauss", "gmm2d")
SOLVERS = ("ddim", "dpmpp_2m", "restart")  # restart's shortest run costs more than NFE 4: error rows
NFES = (3, 4)
SEEDS = tuple(range(6))
METRICS = ("rmse_ref", "fd", "sw")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The rows of one small run, the log lines and the calls ``run_bench`` made to ``sample``."""
    calls = []

    def spy(model, **kw):
        before = model.calls
        out = sample(model, **kw)
        calls.append({"model": model.name, "solver": kw.get("solver", "default"), "nfe": kw["nfe"],
                      "seeds": list(kw["seeds"]), "calls": model.calls - before})
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEWSTEP_CACHE", str(tmp_path_factory.mktemp("fewstep-cache")))
        mp.setattr(harness, "sample", spy)
        spec = BenchSpec(models=MODELS, solvers=SOLVERS, nfes=NFES, metrics=METRICS, seeds=SEEDS)
        log: list[str] = []
        rows = run_bench(spec, progress=False, log=log.append)
        yield spec, rows, log, calls


def _good(rows):
    return [r for r in rows if "error" not in r]


def _exact(model, seeds, top):
    """The exact PF-ODE solution from ``top`` to sigma_min, closed by ``x = D(x, sigma_min)`` like every grid."""
    x_T = top * seeded_noise(seeds, model.shape, dtype=torch.float64)
    return model(model.ode_solution(x_T, top, model.sigma_min), model.sigma_min)


def test_spec_defaults():
    a, b = BenchSpec(["gmm2d"], ["ddim"]), BenchSpec(["gmm2d"], ["ddim"])
    assert tuple(a.schedules) == ("karras",) and tuple(a.metrics) == ("rmse_ref", "fd")
    assert list(a.seeds) == list(range(256)) and not a.peers and not a.recipes
    assert a.extra == {} and a.extra is not b.extra  # a fresh dict per spec


def test_one_row_per_configuration_in_order_with_the_common_fields(bench):
    spec, rows, _, _ = bench
    configs = list(itertools.product(MODELS, SOLVERS, spec.schedules, NFES))
    assert [(r["model"], r["solver"], r["schedule"], r["nfe_budget"]) for r in rows] == configs
    for r in rows:
        assert r["source"] == "fewstep" and r["seeds"] == len(SEEDS)
        assert r["device"] == device_name() and r["versions"] == versions()
    for r in _good(rows):
        assert set(METRICS) <= set(r) and r["wall_s"] >= 0
        assert all(math.isfinite(r[m]) and r[m] >= 0 for m in METRICS)  # exact models have data: no NaN


def test_the_counted_nfe_never_exceeds_the_budget_and_is_one_run(bench):
    _, rows, _, _ = bench
    good = _good(rows)
    assert len(good) == len(MODELS) * 2 * len(NFES)
    for r in good:
        assert 1 <= r["nfe"] <= r["nfe_budget"]
        counted = CountingDenoiser(load_model(r["model"]))
        sample(counted, solver=r["solver"], nfe=r["nfe_budget"], schedule=r["schedule"], seeds=SEEDS)
        assert r["nfe"] == counted.calls, r  # one model call per evaluation of the whole batch


def test_the_warm_up_runs_first_and_is_not_counted(bench):
    _, rows, _, calls = bench
    for r in _good(rows):
        mine = [c for c in calls if (c["model"], c["solver"], c["nfe"]) == (load_model(r["model"]).name,
                                                                           r["solver"], r["nfe_budget"])]
        assert [c["seeds"] for c in mine] == [list(SEEDS[:2]), list(SEEDS)]  # the warm-up, then the timed run
        warm, timed = mine
        assert warm["calls"] == timed["calls"] > 0  # the warm-up evaluated the model just as often ...
        assert r["nfe"] == timed["calls"]  # ... and the row counts only the timed run


def test_an_nfe_too_small_for_the_solver_is_an_error_row(bench):
    _, rows, _, calls = bench
    errors = [r for r in rows if "error" in r]
    assert {(r["model"], r["solver"], r["nfe_budget"]) for r in errors} == set(
        itertools.product(MODELS, ["restart"], NFES))
    for r in errors:
        assert re.search(rf"nfe={r['nfe_budget']} is too small for solver 'restart'", r["error"])
        assert not {"nfe", "wall_s", *METRICS} & set(r)
    assert all(c["solver"] != "restart" or c["calls"] == 0 for c in calls)  # refused before any evaluation


def test_rmse_ref_is_the_distance_to_the_exact_ode_solution(bench):
    """gauss has a closed-form PF-ODE solution: the reference the harness solved is within its tolerance check
    of it, so each row's rmse_ref is the samples' distance to the exact answer."""
    spec, rows, log, _ = bench
    # one reference per model (all its rows start at the same sigma), each with a small tolerance check
    assert len(log) == len(MODELS) and all(f"reference for {m} from sigma 80" in line for m, line in zip(MODELS, log))
    checks = [float(re.search(r"tolerance check (\S+)", line).group(1)) for line in log]
    assert all(0 <= c < 1e-5 for c in checks)
    g = load_model("gauss")
    exact = _exact(g, SEEDS, g.sigma_max)
    for r in _good(rows):
        if r["model"] != "gauss":
            continue
        x = sample(g, solver=r["solver"], nfe=r["nfe_budget"], schedule=r["schedule"], seeds=SEEDS)
        assert r["rmse_ref"] == pytest.approx(rmse(x, exact), abs=1e-5)
        assert r["rmse_ref"] > 1e-3  # few steps: a real discretisation error, far above the tolerance


def test_rmse_ref_of_gmm2d_rows_uses_the_cached_reference(bench):
    spec, rows, _, _ = bench
    m = load_model("gmm2d")
    ref, _ = reference_samples(m, SEEDS)  # the cache the run filled (FEWSTEP_CACHE)
    for r in _good(rows):
        if r["model"] == "gmm2d":
            x = sample(m, solver=r["solver"], nfe=r["nfe_budget"], schedule=r["schedule"], seeds=SEEDS)
            assert r["rmse_ref"] == pytest.approx(rmse(x, ref), rel=1e-6)


def test_an_infinite_sigma_max_is_benchmarked_from_the_cap(tmp_path, monkeypatch):
    """A zero-terminal-SNR model's sigma-space grids and references start at SIGMA_CAP: its rows are those of the
    same model whose range ends there."""
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path))
    models = {"capped": Gauss(dim=2, sigma_max=SIGMA_CAP), "unbounded": Gauss(dim=2, sigma_max=math.inf)}
    monkeypatch.setattr(harness, "load_model", models.__getitem__)
    log: list[str] = []
    spec = BenchSpec(models=list(models), solvers=["dpmpp_2m"], nfes=[4], metrics=["rmse_ref"], seeds=SEEDS)
    capped, unbounded = run_bench(spec, progress=False, log=log.append)
    assert f"from sigma {SIGMA_CAP:g}" in log[1] and unbounded["nfe"] == capped["nfe"] <= 4
    assert unbounded["rmse_ref"] == pytest.approx(capped["rmse_ref"], abs=1e-6)
    x = sample(models["capped"], solver="dpmpp_2m", nfe=4, schedule="karras", seeds=SEEDS)
    assert unbounded["rmse_ref"] == pytest.approx(rmse(x, _exact(models["capped"], SEEDS, SIGMA_CAP)), abs=1e-5)


def test_metrics_without_rmse_ref_solve_no_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path))
    log: list[str] = []
    spec = BenchSpec(models=["gmm2d"], solvers=["ddim"], nfes=[3], metrics=["sw"], seeds=SEEDS)
    (row,) = run_bench(spec, progress=False, log=log.append)
    assert "rmse_ref" not in row and math.isfinite(row["sw"])
    assert log == [] and not (tmp_path / "reference").exists()


def test_batch_streams_the_seeds_and_counts_nfe_per_sample(tmp_path, monkeypatch):
    """Issue 18: the harness counted the model calls of every chunk together (the CLI divided them back); with
    ``batch=`` it runs the chunks itself and a row's NFE is what one sample costs, as with one chunk."""
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path))
    seen: list[int] = []

    def spy(model, **kw):
        seen.append(len(kw["seeds"]))
        return sample(model, **kw)

    monkeypatch.setattr(harness, "sample", spy)
    spec = BenchSpec(models=["gmm2d"], solvers=["heun", "dpmpp_2m"], nfes=[4], metrics=["sw"], seeds=range(11))
    whole = run_bench(spec, progress=False, log=lambda line: None)
    seen.clear()
    chunked = run_bench(spec, progress=False, log=lambda line: None, batch=3)
    assert seen == [2, 3, 3, 3, 2] * 2  # per configuration: the warm-up pass on two seeds, then chunks of 3
    assert [r["nfe"] for r in chunked] == [r["nfe"] for r in whole] == [3, 4]  # heun at budget 4 uses 3
    assert [r["sw"] for r in chunked] == [r["sw"] for r in whole]  # the same samples, bitwise


def test_solver_overhead_is_finite_for_every_solver():
    out = solver_overhead(["ddim", "dpmpp_2m", "heun"], model_name="gmm2d", n_steps=3, batch=8, repeats=2)
    assert list(out) == ["ddim", "dpmpp_2m", "heun"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())


def test_versions_and_device_name(monkeypatch):
    v = versions()
    assert v == {"fewstep": fewstep.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
                 "python": platform.python_version()}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    name = device_name()
    assert name.startswith("cpu (") and f"{torch.get_num_threads()} threads" in name
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"accelerator {i}")
    assert device_name() == "accelerator 0"


def test_the_default_row_is_what_sample_runs_with_no_choice_scored_from_where_it_starts(tmp_path, monkeypatch):
    """``default`` in the solvers is ``fewstep.sample(model, nfe=n)`` (the measured table), one row per NFE, labelled
    with what it chose and scored against the reference from its own first sigma."""
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path))
    seeds = tuple(range(6))
    spec = BenchSpec(models=["gmm2d"], solvers=["default"], schedules=["karras", "logsnr"], nfes=[4, 6],
                     metrics=["rmse_ref"], seeds=seeds)
    rows = run_bench(spec, progress=False, log=lambda s: None)
    assert [(r["solver"], r["schedule"], r["nfe_budget"]) for r in rows] == [("default", "default", 4),
                                                                           ("default", "default", 6)]
    model = load_model("gmm2d")
    for row in rows:
        chosen = fewstep.diffusion.sampling.plan(model, nfe=row["nfe_budget"])
        assert row["label"].startswith(f"default: {chosen.solver}") and row["nfe"] <= row["nfe_budget"]
        x = sample(model, nfe=row["nfe_budget"], seeds=seeds)
        ref, _ = reference_samples(model, seeds, sigma_max=float(chosen.sigmas[0]), rtol=1e-6)
        assert row["rmse_ref"] == pytest.approx(rmse(x.double(), ref), rel=1e-9)
