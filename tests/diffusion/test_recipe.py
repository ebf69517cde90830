"""Recipes (``fewstep.diffusion.recipe``) round-trip through JSON, drive ``fewstep.sample``, and bad or
mismatched recipes are refused."""

import json
import math

import pytest
import torch

import fewstep
from fewstep.diffusion.denoiser import CountingDenoiser, model_hash
from fewstep.diffusion.recipe import Recipe, as_recipe
from fewstep.diffusion.sampling import seeded_noise, solve
from fewstep.models import load_model

SIGMAS = (80.0, 4.0, 0.9, 0.1, 0.002, 0.0)



@pytest.fixture()
def recipe(gmm2d):
    return Recipe(model="gmm2d", model_hash=model_hash(gmm2d), solver="usf", nfe=5, sigmas=SIGMAS, method="s3",
                  solver_options={"orders": [1, 2, 3, 2, 2], "predictions": ["data", "noise", "data", "noise", "data"],
                                  "correctors": [True, False, True, True, False], "relax": [0, 0.2, -0.1, 0, 0]},
                  quality={"rmse_ref": 0.1, "untuned": {"rmse_ref": 0.3}}, info={"tune_seconds": 1.5})


def test_round_trip_through_json_and_files(recipe, tmp_path):
    assert Recipe.from_json(recipe.to_json()) == recipe
    path = recipe.save(tmp_path / "r.json")
    assert Recipe.load(path) == recipe and as_recipe(str(path)) == recipe
    assert as_recipe(json.loads(path.read_text())) == recipe and as_recipe(recipe) is recipe
    d = json.loads(recipe.to_json())
    assert d["version"] == 1 and d["sigmas"] == list(SIGMAS) and d["method"] == "s3"
    inf = Recipe(**{**recipe.__dict__, "sigmas": (math.inf, 3.0, 0.0)})
    assert Recipe.from_json(inf.to_json()).sigmas[0] == math.inf  # JSON has no inf; stored as "inf"


def test_sample_with_a_recipe_is_its_solver_on_its_sigmas(recipe, gmm2d, tmp_path):
    counted = CountingDenoiser(gmm2d)
    x = fewstep.sample(counted, recipe=recipe.save(tmp_path / "r.json"), seeds=range(6))
    assert counted.calls == recipe.nfe
    direct = solve(gmm2d, SIGMAS[0] * seeded_noise(range(6), (2,)), SIGMAS, "usf", **recipe.solver_options)
    assert torch.equal(x, direct)
    assert torch.equal(fewstep.sample(gmm2d, recipe=recipe, nfe=5, seeds=range(6)), x)  # the matching NFE is fine
    # a grid ending above 0 stops there, as final="min" does
    short = Recipe(**{**recipe.__dict__, "solver": "dpmpp_2m", "solver_options": {}, "sigmas": SIGMAS[:-1], "nfe": 4})
    y = fewstep.sample(gmm2d, recipe=short, seeds=range(6))
    assert torch.equal(y, solve(gmm2d, SIGMAS[0] * seeded_noise(range(6), (2,)), SIGMAS[:-1], "dpmpp_2m"))


def test_mismatched_model_or_nfe_is_refused_or_forced_with_a_warning(recipe, gmm2d):
    other = load_model("gauss", dim=2)
    with pytest.raises(ValueError, match=r"made for model 'gmm2d' \(hash .*\), not this one \('gauss2'.*force"):
        fewstep.sample(other, recipe=recipe, seeds=range(2))
    with pytest.raises(ValueError, match="made for NFE 5, not 8"):
        fewstep.sample(gmm2d, recipe=recipe, nfe=8, seeds=range(2))
    with pytest.warns(UserWarning, match="made for NFE 5, not 8"):
        x = fewstep.sample(gmm2d, recipe=recipe, nfe=8, seeds=range(2), force=True)
    assert torch.equal(x, fewstep.sample(gmm2d, recipe=recipe, seeds=range(2)))  # used as it is
    counted = CountingDenoiser(other)
    with pytest.warns(UserWarning, match="made for model"):
        fewstep.sample(counted, recipe=recipe, seeds=range(2), force=True)
    assert counted.calls == 5


def _mutated(recipe, **changes):
    d = json.loads(recipe.to_json())
    d.update(changes)
    return json.dumps(d)


@pytest.mark.parametrize("changes,message", [
    ({"version": 2}, "recipe version 2 is not supported"),
    ({"sigmas": [80.0, 90.0, 0.0]}, "strictly decreasing"),
    ({"sigmas": [80.0, float("nan"), 0.0]}, "strictly decreasing"),
    ({"sigmas": [80.0, 1.0, -0.5]}, "ending at >= 0"),
    ({"sigmas": [80.0]}, "strictly decreasing"),
    ({"method": "magic"}, "unknown recipe method 'magic'"),
    ({"solver": "nope"}, "unknown solver 'nope'"),
    ({"nfe": 0}, "nfe must be a positive integer"),
    ({"nfe": 5.5}, "nfe must be a positive integer"),
    ({"temperature": 0.7}, r"unknown recipe field\(s\) \['temperature'\]"),
])
def test_bad_recipes_are_rejected(recipe, changes, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_json(_mutated(recipe, **changes))


def test_malformed_files_are_rejected(recipe, tmp_path):
    d = json.loads(recipe.to_json())
    del d["model_hash"]
    with pytest.raises(ValueError, match=r"lacks the field\(s\) \['model_hash'\]"):
        Recipe.from_json(json.dumps(d))
    with pytest.raises(ValueError, match="must be JSON"):
        Recipe.from_json("{not json")
    with pytest.raises(ValueError, match="JSON object"):
        Recipe.from_json("[1, 2]")
    with pytest.raises(ValueError, match="no recipe file"):
        Recipe.load(tmp_path / "missing.json")


def test_recipe_options_are_checked_by_the_solver(recipe, gmm2d):
    bad = Recipe(**{**recipe.__dict__, "solver_options": {"orders": [1, 2]}})
    with pytest.raises(ValueError, match="one entry per step"):
        fewstep.sample(gmm2d, recipe=bad, seeds=range(2))
    wrong_nfe = Recipe(**{**recipe.__dict__, "nfe": 3})  # 5 steps cannot run within 3 evaluations
    with pytest.raises(ValueError, match="explicit schedule has 5 steps but 3 were asked for"):
        fewstep.sample(gmm2d, recipe=wrong_nfe, seeds=range(2))


def test_save_is_atomic_an_interrupted_save_keeps_the_old_file(recipe, tmp_path, monkeypatch):
    """Issue 18: ``save`` wrote the final path in place, so an interrupted save left a partial recipe."""
    path = recipe.save(tmp_path / "r.json")
    before = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr("fewstep.cache.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Recipe(**{**recipe.__dict__, "nfe": 6}).save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_name_too_long_for_the_file_system_is_one_clear_line(recipe, tmp_path):
    """Issue 18: ``Recipe.load`` of a 300-character name raised a raw OSError (ENAMETOOLONG)."""
    path = tmp_path / ("r" * 300 + ".json")
    for call in (lambda: Recipe.load(path), lambda: recipe.save(path)):
        with pytest.raises(ValueError, match=r"the name r{24}\.\.\. has 305 bytes; this file system allows \d+ per "
                                             r"name$") as info:
            call()
        assert "\n" not in str(info.value) and len(str(info.value)) < 200
    assert list(tmp_path.iterdir()) == []
