"""fewstep.bench.recipes: a recipe's row is measured exactly as the untuned rows are (same seeds, noise,
metrics and references), every file is checked before anything runs, and another model's recipe is refused."""

from __future__ import annotations

import math

import pytest

from fewstep.bench.harness import BenchSpec, run_bench
from fewstep.bench.recipes import recipe_rows
from fewstep.diffusion.denoiser import model_hash
from fewstep.diffusion.recipe import Recipe
from fewstep.diffusion.sampling import plan_steps
from fewstep.diffusion.schedules import get_sigmas
from fewstep.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

SEEDS = tuple(range(6))


def _recipe(model, sigmas, **kw):
    return Recipe(**{"model": "gmm2d", "model_hash": model_hash(model), "solver": "ddim", "nfe": 4,
                     "sigmas": tuple(float(s) for s in sigmas), "method": "manual", "info": {"tune_seconds": 0.5},
                     **kw})


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    return BenchSpec(models=["gmm2d"], solvers=["ddim"], nfes=[4], metrics=["rmse_ref", "fd"], seeds=SEEDS)


def test_a_recipe_on_the_untuned_grid_reproduces_the_untuned_row(gmm2d, spec, tmp_path):
    grid = get_sigmas("karras", plan_steps("ddim", 4), gmm2d)
    path = _recipe(gmm2d, grid).save(tmp_path / "r.json")
    (untuned,) = run_bench(spec, progress=False, log=lambda s: None)
    log: list[str] = []
    (row,) = recipe_rows([path], spec, progress=False, log=log.append)
    assert set(untuned) <= set(row)  # the keys of run_bench's rows, and more
    assert (row["label"], row["schedule"], row["source"]) == ("manual", "tuned", "fewstep-recipe")
    assert row["recipe"] == str(path) and row["tune_seconds"] == 0.5 and row["seeds"] == len(SEEDS)
    assert row["nfe_budget"] == 4 and row["nfe"] == untuned["nfe"] <= 4
    for metric in ("rmse_ref", "fd"):  # the same samples against the same references and data
        assert row[metric] == pytest.approx(untuned[metric], rel=1e-9)
    assert len(log) == 1 and len(list((tmp_path / "cache" / "reference").glob("*.pt"))) == 1  # one shared reference


def test_rmse_ref_is_measured_from_the_models_start_even_when_the_recipe_starts_lower(gmm2d, spec, tmp_path):
    low = _recipe(gmm2d, get_sigmas("karras", plan_steps("ddim", 4), gmm2d, sigma_max=10.0)).save(tmp_path / "r.json")
    log: list[str] = []
    (row,) = recipe_rows([low], spec, progress=False, log=log.append)
    assert len(log) == 1 and f"from sigma {gmm2d.sigma_max:g}" in log[0]
    (untuned,) = run_bench(spec, progress=False, log=log.append)
    assert log[1] == log[0] and len(list((tmp_path / "cache" / "reference").glob("*.pt"))) == 1  # the same one
    assert math.isfinite(row["rmse_ref"]) and row["rmse_ref"] != pytest.approx(untuned["rmse_ref"], rel=1e-3)


def test_every_file_is_checked_before_anything_runs(gmm2d, spec, tmp_path):
    good = _recipe(gmm2d, get_sigmas("karras", plan_steps("ddim", 4), gmm2d)).save(tmp_path / "r.json")
    (tmp_path / "bad.json").write_text("{not json")
    for bad, message in [(tmp_path / "missing.json", "no recipe file"), (tmp_path / "bad.json", "must be JSON")]:
        with pytest.raises(ValueError, match=message):
            recipe_rows([good, bad], spec, progress=False, log=pytest.fail)
    assert not (tmp_path / "cache").exists()  # no reference was solved


def test_a_recipe_for_another_model_is_refused(gmm2d, spec, tmp_path):
    other = _recipe(load_model("gauss"), get_sigmas("karras", plan_steps("ddim", 4), gmm2d)).save(tmp_path / "r.json")
    with pytest.raises(ValueError, match="recipe mismatch: it was made for model 'gmm2d' \\(hash"):
        recipe_rows([other], spec, progress=False, log=pytest.fail)


def test_force_runs_another_models_recipe_with_a_warning_and_batch_keeps_nfe_per_sample(gmm2d, spec, tmp_path):
    grid = get_sigmas("karras", plan_steps("ddim", 4), gmm2d)
    other = _recipe(load_model("gauss"), grid).save(tmp_path / "r.json")
    with pytest.warns(UserWarning, match="recipe mismatch"):
        (forced,) = recipe_rows([other], spec, progress=False, log=lambda s: None, force=True)
    mine = _recipe(gmm2d, grid).save(tmp_path / "mine.json")
    (whole,) = recipe_rows([mine], spec, progress=False, log=lambda s: None)
    (chunked,) = recipe_rows([mine], spec, progress=False, log=lambda s: None, batch=4)  # 2 chunks of 6 seeds
    assert forced["nfe"] == whole["nfe"] == chunked["nfe"] <= 4
    assert forced["rmse_ref"] == pytest.approx(whole["rmse_ref"], rel=1e-12)  # the same grid and solver
    assert chunked["rmse_ref"] == pytest.approx(whole["rmse_ref"], rel=1e-12)
