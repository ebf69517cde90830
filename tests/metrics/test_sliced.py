"""Sliced W2: exact in 1-D (shifts, unequal sizes), and a^2/D for a shift in D dimensions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewstep.metrics import sw


def _w2_by_replication(x: np.ndarray, y: np.ndarray) -> float:
    """Oracle: repeat x M times and y N times; equal-size sorted matching is then optimal."""
    xr = np.sort(np.repeat(x, len(y)))
    yr = np.sort(np.repeat(y, len(x)))
    return float(np.sqrt(np.mean((xr - yr) ** 2)))


def test_one_dimensional_shift_is_exact():
    x = torch.randn(257, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for shift in (0.0, 0.3, -2.5):
        assert sw(x, x + shift, n_projections=4) == pytest.approx(abs(shift), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(("n", "m"), [(6, 4), (37, 23), (1, 5), (50, 50)])
def test_one_dimensional_unequal_sizes_match_oracle(n, m):
    rng = np.random.default_rng(n * 100 + m)
    x, y = rng.normal(size=n), rng.gamma(2.0, size=m)
    expected = _w2_by_replication(x, y)
    assert sw(x, y, n_projections=3) == pytest.approx(expected, rel=1e-12)
    assert sw(y, x, n_projections=3) == pytest.approx(expected, rel=1e-12)


def test_shift_along_a_direction_matches_expectation_over_the_sphere():
    # Projections of x and x + a u differ by a (theta . u), so SW^2 is a^2 times the Monte Carlo
    # mean of (theta . u)^2, whose mean is 1/D and variance 2(D - 1) / (D^2 (D + 2)).
    d, a, n_proj = 5, 3.0, 2000
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, d, generator=gen, dtype=torch.float64)
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    u = u / u.norm()
    value = sw(x, x + a * u, n_projections=n_proj, generator=gen) ** 2
    sd = a**2 * math.sqrt(2 * (d - 1) / (d**2 * (d + 2)) / n_proj)
    assert abs(value - a**2 / d) <= 5 * sd
    assert 5 * sd < 0.2 * a**2 / d


def test_identical_sets_seeded_directions_and_permutation_invariance():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(100, 3, generator=gen)
    y = torch.randn(80, 3, generator=gen) + 1.0
    assert sw(x, x, generator=torch.Generator().manual_seed(3)) <= 1e-12
    first = sw(x, y, generator=torch.Generator().manual_seed(4))
    assert sw(x, y, generator=torch.Generator().manual_seed(4)) == first
    perm = torch.randperm(100, generator=gen)
    assert sw(x[perm], y.numpy(), generator=torch.Generator().manual_seed(4)) == pytest.approx(first, rel=1e-12)


def test_projection_blocks_do_not_change_the_result(monkeypatch):
    import fewstep.metrics.sliced as sliced

    gen_data = torch.Generator().manual_seed(5)
    x, y = torch.randn(40, 4, generator=gen_data), torch.randn(25, 4, generator=gen_data)
    whole = sw(x, y, n_projections=10, generator=torch.Generator().manual_seed(6))
    monkeypatch.setattr(sliced, "_MAX_ELEMENTS", 3 * 65)  # blocks of 3 directions
    blocked = sw(x, y, n_projections=10, generator=torch.Generator().manual_seed(6))
    assert blocked == pytest.approx(whole, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_projections": 0}, ValueError, "n_projections must be an int >= 1, got 0"),
        ({"n_projections": 2.5}, ValueError, "n_projections"),
        ({"generator": 0}, TypeError, "torch.Generator or None, got int"),
        ({"y": torch.zeros(5, 3)}, ValueError, "same feature dimension"),
        ({"x": torch.zeros(0, 2)}, ValueError, "at least 1 sample, got 0"),
        ({"x": torch.zeros(5, 2, 2)}, ValueError, r"\[N\] or \[N, D\]"),
    ],
)
def test_bad_input_raises(kwargs, error, match):
    args = {"x": torch.zeros(5, 2), "y": torch.ones(4, 2)} | kwargs
    with pytest.raises(error, match=match):
        sw(**args)
