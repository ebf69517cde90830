"""The shipped 8x8 digits: scaling, fixed split, agreement with scikit-learn, no sklearn at runtime."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fewstep.models.digits_data import DIGITS_PATH, digits_data

REPO = Path(__file__).resolve().parents[2]


def test_splits_shapes_scaling_and_disjointness():
    x_all, y_all = digits_data()
    x_tr, y_tr = digits_data("train")
    x_ho, y_ho = digits_data("heldout")
    assert x_all.shape == (1797, 64) and x_all.dtype == torch.float32 and y_all.dtype == torch.int64
    assert len(x_tr) + len(x_ho) == 1797 and len(x_ho) == 359
    pixels = (x_all + 1) * 8
    assert torch.equal(pixels, pixels.round()) and pixels.min() == 0 and pixels.max() == 16
    assert set(y_all.tolist()) == set(range(10)) and set(y_ho.tolist()) == set(range(10))
    # train and held out partition the rows of "all" (same multiset of (image, label) rows)
    rows = lambda x, y: sorted(map(tuple, torch.cat([x, y[:, None].float()], 1).tolist()))  # noqa: E731
    assert rows(torch.cat([x_tr, x_ho]), torch.cat([y_tr, y_ho])) == rows(x_all, y_all)


def test_returns_fresh_tensors_and_rejects_unknown_split():
    x, _ = digits_data("heldout")
    x.fill_(0.0)
    assert digits_data("heldout")[0].abs().sum() > 0
    with pytest.raises(ValueError, match=r"split must be one of \('all', 'train', 'heldout'\), got 'test'"):
        digits_data("test")


def test_archive_matches_scikit_learn_and_the_export_script():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x, y = digits_data()
    np.testing.assert_array_equal(((x + 1) * 8).numpy(), digits.data)
    np.testing.assert_array_equal(y.numpy(), digits.target)
    spec = importlib.util.spec_from_file_location("export_digits", REPO / "scripts/export_digits.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    with np.load(DIGITS_PATH, allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["heldout"], export.heldout_mask(len(y)))
        assert archive["images"].dtype == np.uint8


def test_runtime_imports_neither_sklearn_nor_scipy():
    code = (
        "import sys\n"
        "import fewstep.metrics as m\n"
        "from fewstep.models.digits_data import digits_data\n"
        "x, y = digits_data('heldout')\n"
        "m.fd_digits(x, x); m.sw(x, x); m.precision_recall(x, x); m.rmse(x, x)\n"
        "print(sorted(k for k in ('sklearn', 'scipy') if k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
