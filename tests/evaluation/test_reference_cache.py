"""Cached references are verified on every read (issue 18, item 7): a truncated, empty, garbage, edited or
foreign entry is recomputed with a warning, never trusted, and writes are atomic."""

from __future__ import annotations

import warnings

import pytest
import torch

import fewstep
from fewstep.evaluation.references import reference_path, reference_samples

SEEDS = [0, 1, 2]


@pytest.fixture()
def gauss(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    return fewstep.load_model("gauss", dim=2)


def _fresh(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact entry is read without a warning
        return reference_samples(model, SEEDS)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "flip", "foreign"])
def test_a_damaged_or_foreign_entry_is_recomputed_with_a_warning(gauss, damage):
    good, tol = reference_samples(gauss, SEEDS)
    path = reference_path(gauss, SEEDS)
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not a torch file" * 10)
    elif damage == "flip":  # valid file, values edited: the checksum inside catches it
        entry = torch.load(path, weights_only=True)
        entry["x"] = entry["x"] + 1.0
        torch.save(entry, path)
    else:  # a valid entry of other seeds copied over this one
        other, _ = reference_samples(gauss, [7, 8, 9])
        path.write_bytes(reference_path(gauss, [7, 8, 9]).read_bytes())
        assert not torch.equal(other, good)
    with pytest.warns(UserWarning, match="is not usable"):
        again, tol2 = reference_samples(gauss, SEEDS)
    assert torch.equal(again, good) and tol2 == tol
    assert torch.equal(_fresh(gauss)[0], good)  # rewritten intact
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind
