"""rmse: the square root of the mean over samples of the per-sample mean squared error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewstep.metrics import rmse


def test_known_value_per_sample_constant_errors():
    # Sample i is off by c_i in every one of its 12 values: rmse = sqrt(mean_i c_i^2).
    c = torch.tensor([0.0, 1.0, 2.0, -3.0], dtype=torch.float64)
    a = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = a + c[:, None, None, None]
    assert rmse(a, b) == pytest.approx(math.sqrt(14 / 4), rel=1e-14)
    assert rmse(b, a) == rmse(a, b)


def test_mean_over_coordinates_then_samples():
    a = np.zeros((2, 4))
    b = np.array([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # per-sample mean squared errors: 4/4 = 1 and 4/4 = 1 -> rmse 1
    assert rmse(a, b) == pytest.approx(1.0, rel=1e-15)
    assert rmse(a, a) == 0.0
    assert rmse(torch.zeros(3), torch.full((3,), 0.5)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("a", "b", "error", "match"),
    [
        (torch.zeros(4, 2), torch.zeros(4, 3), ValueError, r"same shape, got \[4, 2\] and \[4, 3\]"),
        (torch.zeros(0, 2), torch.zeros(0, 2), ValueError, "N >= 1"),
        (torch.tensor(1.0), torch.tensor(1.0), ValueError, r"\[N, \.\.\.\]"),
        (torch.zeros(2, 2), [[0.0, 0.0], [0.0, 0.0]], TypeError, "got list"),
        (torch.zeros(2), torch.tensor([0.0, float("inf")]), ValueError, "NaN or infinite"),
    ],
)
def test_bad_input_raises(a, b, error, match):
    with pytest.raises(error, match=match):
        rmse(a, b)
