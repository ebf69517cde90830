"""A recipe file is user input: every field is type-checked, sizes are bounded, and it cannot make the
program open a file it names (issue 18, items 1-3)."""

from __future__ import annotations

import json

import pytest

from fewstep.diffusion.recipe import Recipe
from fewstep.limits import MAX_JSON_DEPTH

BASE = {"model": "gauss", "model_hash": "0" * 16, "solver": "ddim", "nfe": 3, "sigmas": [80, 1, 0],
        "method": "manual"}


@pytest.mark.parametrize("changes, message", [
    ({"sigmas": 5}, "sigmas must be a list of numbers"),
    ({"sigmas": [80, None, 0]}, "sigmas must be a list of numbers"),
    ({"sigmas": [80, True, 0]}, "sigmas must be a list of numbers"),
    ({"solver": ["ddim"]}, "field 'solver' must be a str"),
    ({"model": 3}, "field 'model' must be a str"),
    ({"solver_options": [1, 2]}, "'solver_options' must be a JSON object"),
    ({"solver_options": "x"}, "'solver_options' must be a JSON object"),
    ({"quality": 1.5}, "'quality' must be a JSON object"),
    ({"nfe": True}, "nfe must be a positive integer"),
    ({"nfe": 3.0}, "nfe must be a positive integer"),
    ({"nfe": 1_000_000_000}, "nfe must be a positive integer up to"),
    ({"version": "1"}, "'version' must be a int"),
])
def test_wrong_types_and_sizes_are_refused_with_a_message(changes, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_json(json.dumps({**BASE, **changes}))


def test_a_recipe_cannot_name_a_file_to_open(tmp_path):
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"not for recipes")
    bad = {**BASE, "solver": "dpm_solver_v3", "solver_options": {"ems": str(secret)}}
    with pytest.raises(ValueError, match="embeds its EMS statistics"):
        Recipe.from_json(json.dumps(bad))


def test_deep_nesting_and_huge_files_are_refused(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(ValueError, match="nested too deeply"):
        Recipe.from_json('{"info": %s}' % deep)  # json's own recursion limit
    shallow_but_over = {**BASE, "info": {"x": json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)}}
    with pytest.raises(ValueError, match="nested too deeply"):
        Recipe.from_json(json.dumps(shallow_but_over))
    ok = {**BASE, "info": {"x": json.loads("[" * (MAX_JSON_DEPTH - 3) + "]" * (MAX_JSON_DEPTH - 3))}}
    assert Recipe.from_json(json.dumps(ok)).nfe == 3  # the limit is not hit by legitimate nesting
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="cannot read the recipe|must be JSON"):
        Recipe.load(tmp_path / "binary.json")
