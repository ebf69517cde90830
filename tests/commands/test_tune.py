"""``fewstep tune``, ``fewstep sample --recipe`` and ``fewstep bench --recipes`` on every path."""

import json

import numpy as np
import pytest

from fewstep.cli import main
from fewstep.diffusion.tune import METHOD_MODULES, Recipe

TUNE_ARGS = ["tune", "--model", "gmm2d", "--method", "gits", "--solver", "dpmpp_2m", "--nfe", "4",
             "--seeds", "100000-100023", "--eval-seeds", "500-531", "--option", "fine_steps=16", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread", "shared_reference_cache")  # see tests/conftest.py



@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory, one_thread):
    path = tmp_path_factory.mktemp("tune") / "gits.json"
    mp = pytest.MonkeyPatch()
    mp.setenv("FEWSTEP_CACHE", str(tmp_path_factory.getbasetemp() / "fewstep-cache"))
    assert main(TUNE_ARGS + ["--out", str(path)]) == 0
    mp.undo()
    return path


def test_tune_writes_a_recipe_and_refuses_to_overwrite(recipe_path, capsys):
    r = Recipe.load(recipe_path)
    assert (r.method, r.solver, r.nfe, r.model, r.n_steps) == ("gits", "dpmpp_2m", 4, "gmm2d", 4)
    assert r.info["tune_seeds"] == "100000-100023" and r.info["options"]["fine_steps"] == 16
    assert r.quality["eval_seeds"] == "500-531" and r.quality["rmse_ref"] < r.quality["untuned"]["rmse_ref"]
    before = recipe_path.read_bytes()
    assert main(TUNE_ARGS + ["--out", str(recipe_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and recipe_path.read_bytes() == before


def test_tune_prints_its_progress_and_result(tmp_path, capsys):
    out = tmp_path / "a.json"
    args = [a for a in TUNE_ARGS if a != "--no-progress"]
    args[args.index("gits")] = "ays"
    args[args.index("fine_steps=16")] = "max_sweeps=1"
    assert main(args + ["--out", str(out), "--eval-seeds", "none"]) == 0
    captured = capsys.readouterr()
    assert "ays" in captured.err and "<" in captured.err  # tqdm's bar with its time left
    assert f"wrote {out}" in captured.out and Recipe.load(out).quality == {}


@pytest.mark.parametrize("extra,message", [
    (["--method", "magic"], "unknown tuning method 'magic'; choose one of ays, gits, s3"),
    (["--option", "fine_step=3"], "unknown option 'fine_step' for this method; allowed: fine_steps, teacher, coeff"),
    (["--option", "fine_steps"], "bad --option 'fine_steps': write KEY=VALUE"),
    (["--nfe", "0"], "argument --nfe: must be an integer in 1..100,000; got '0'"),
    (["--solver", "nope"], "unknown solver 'nope'"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--seeds", "5-1"], "is empty"),
    (["--option", "fine_steps=1000000000"], "fine_steps must be an integer in 4..500; got 1000000000"),  # it hung
])
def test_tune_bad_input(tmp_path, capsys, extra, message):
    args = list(TUNE_ARGS)
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag == "--option":
            args[args.index("fine_steps=16")] = value
        else:
            args[args.index(flag) + 1] = value
    assert main(args + ["--out", str(tmp_path / "x.json")]) == 2
    assert message in capsys.readouterr().err


def test_tune_names_a_missing_method_module(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(METHOD_MODULES, "gits", "fewstep.diffusion.tune.not_written_yet")
    assert main(TUNE_ARGS + ["--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "tuning method 'gits' is not available" in err and "fewstep.diffusion.tune.not_written_yet" in err


def test_sample_with_a_recipe(recipe_path, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--recipe", str(recipe_path), "--seeds", "0-7", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gmm2d with dpmpp_2m in 4 model evaluations (budget 4)" in text
    z = np.load(out.with_suffix(".npz"))
    assert z["samples"].shape == (8, 2) and int(z["nfe"]) == 4 and str(z["solver"]) == "dpmpp_2m"
    # refused for another NFE (--force only overwrites outputs), then allowed with a one-line warning
    for force in ([], ["--force"]):
        assert main(["sample", "--recipe", str(recipe_path), "--nfe", "6", "--out", str(tmp_path / "t"), *force]) == 2
        err = capsys.readouterr().err
        assert "made for NFE 4, not 6 (pass --allow-mismatch to use it anyway)" in err
        assert not (tmp_path / "t.npz").exists()
    assert main(["sample", "--recipe", str(recipe_path), "--nfe", "6", "--seeds", "0-7", "--out",
                 str(tmp_path / "t"), "--allow-mismatch"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("fewstep sample: warning: recipe mismatch: it was made for NFE 4, not 6")
    assert err.count("\n") == 1 and "warn" not in err.split("warning:", 1)[1]  # one line, no Python source
    assert np.array_equal(np.load(tmp_path / "t.npz")["samples"], z["samples"])  # the recipe, used as it is
    # another model's recipe is refused
    assert main(["sample", "--recipe", str(recipe_path), "--model", "gauss", "--out", str(tmp_path / "u")]) == 2
    assert "made for model 'gmm2d'" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--solver", "unipc"], "--solver unipc conflicts with the recipe's solver dpmpp_2m"),
    (["--schedule", "karras"], "--schedule cannot be combined with --recipe"),
])
def test_sample_recipe_conflicts(recipe_path, tmp_path, capsys, extra, message):
    assert main(["sample", "--recipe", str(recipe_path), "--out", str(tmp_path / "s"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_sample_rejects_a_bad_recipe_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "gmm2d", "model_hash": "0", "solver": "ddim", "nfe": 2, "sigmas": [1.0, 2.0],
                               "method": "ays"}))
    assert main(["sample", "--recipe", str(bad), "--out", str(tmp_path / "s")]) == 2
    assert "strictly decreasing" in capsys.readouterr().err


def test_bench_adds_a_row_per_recipe(recipe_path, tmp_path, capsys):
    js = tmp_path / "rows.json"
    assert main(["bench", "--models", "gmm2d", "--solvers", "dpmpp_2m", "--nfe", "4", "--seeds", "500-531",
                 "--recipes", str(recipe_path), "--json", str(js), "--no-progress"]) == 0
    rows = json.loads(js.read_text())
    base, tuned = rows
    assert (tuned["label"], tuned["schedule"], tuned["nfe"], tuned["recipe"]) == ("gits", "tuned", 4, str(recipe_path))
    assert base["solver"] == "dpmpp_2m" and base["nfe"] == 4
    r = Recipe.load(recipe_path)  # the bench measures what the recipe recorded on the same held-out seeds
    assert tuned["rmse_ref"] == pytest.approx(r.quality["rmse_ref"], rel=1e-9)
    assert base["rmse_ref"] == pytest.approx(r.quality["untuned"]["rmse_ref"], rel=1e-9)
    assert "gits" in capsys.readouterr().out
    assert main(["bench", "--models", "gmm2d", "--nfe", "4", "--recipes", str(tmp_path / "none.json")]) == 2
    assert "--recipes: " in capsys.readouterr().err


def test_tune_ld3_from_the_best_solver(tmp_path, capsys):
    out = tmp_path / "ld3.json"
    args = list(TUNE_ARGS)
    args[args.index("gits")] = "ld3"
    args[args.index("dpmpp_2m")] = "best"
    args[args.index("fine_steps=16")] = "steps=20"
    assert main(args + ["--out", str(out)]) == 0
    r = Recipe.load(out)
    assert (r.method, r.solver, r.nfe) == ("ld3", "learned", 4)
    assert r.info["options"]["solver"] == "best" and r.info["options"]["steps"] == 20
    assert r.quality["rmse_ref"] < r.quality["untuned"]["rmse_ref"]
    out_text = capsys.readouterr().out
    untuned = r.quality["untuned"]
    assert "tuned in" in out_text and f"untuned ({untuned['solver']}, {untuned['schedule']})" in out_text
