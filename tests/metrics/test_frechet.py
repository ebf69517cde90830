"""Fréchet distance against the closed form for Gaussians, with a tolerance from the delta method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewstep.metrics import digits_features, fd, fd_digits, fd_pixels
from fewstep.metrics.frechet import _fd_from_stats
from fewstep.models.digits_data import digits_data

scipy_linalg = pytest.importorskip("scipy.linalg")


def _random_spd(d: int, gen: torch.Generator, rank: int | None = None) -> torch.Tensor:
    a = torch.randn(d, rank or d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + (0 if rank else 0.1) * torch.eye(d, dtype=torch.float64)


def _closed_form(mu1, s1, mu2, s2) -> float:
    """Oracle: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy's general sqrtm."""
    covmean = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * np.trace(covmean))


def test_stats_formula_matches_closed_form():
    gen = torch.Generator().manual_seed(0)
    for d in (1, 2, 5, 16):
        mu1, mu2 = torch.randn(2, d, generator=gen, dtype=torch.float64)
        s1, s2 = _random_spd(d, gen), _random_spd(d, gen)
        expected = _closed_form(mu1, s1, mu2, s2)
        assert _fd_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_singular_commuting_covariances():
    # Diagonal covariances commute, so tr sqrt(S1 S2) = sum sqrt(a_i b_i), even with zero variances.
    a = torch.tensor([0.0, 1.0, 4.0, 0.0], dtype=torch.float64)
    b = torch.tensor([2.0, 0.0, 9.0, 0.0], dtype=torch.float64)
    mu1 = torch.tensor([0.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    mu2 = torch.zeros(4, dtype=torch.float64)
    expected = 10.0 + float((a.sqrt() - b.sqrt()).square().sum())
    assert _fd_from_stats(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)


def _delta_method_sd(mu1, s1, mu2, s2, n1: int, n2: int) -> float:
    """First-order standard deviation of the plug-in FD estimate from Gaussian samples.

    Mean term: with Delta ~ N(delta, C), C = S1/n1 + S2/n2, Var|Delta|^2 = 2 tr C^2 + 4 delta' C delta.
    Covariance term: dB^2 = tr((I - T) dS1) + tr((I - T^-1) dS2) with T the optimal transport map
    S1 -> S2, and Var tr(A S_hat) = 2 tr(A S A S) / (n - 1) for sample covariances.
    """
    s1n, s2n = s1.numpy(), s2.numpy()
    r1 = scipy_linalg.sqrtm(s1n).real
    r1_inv = np.linalg.inv(r1)
    t = r1_inv @ scipy_linalg.sqrtm(r1 @ s2n @ r1).real @ r1_inv
    eye = np.eye(len(t))
    g1, g2 = eye - t, eye - np.linalg.inv(t)
    c = s1n / n1 + s2n / n2
    delta = (mu1 - mu2).numpy()
    var_mean = 2 * np.trace(c @ c) + 4 * delta @ c @ delta
    var_cov = 2 * np.trace(g1 @ s1n @ g1 @ s1n) / (n1 - 1) + 2 * np.trace(g2 @ s2n @ g2 @ s2n) / (n2 - 1)
    return math.sqrt(var_mean + var_cov)


def test_sampled_gaussians_match_closed_form_within_theory():
    gen = torch.Generator().manual_seed(1)
    d, n1, n2 = 4, 20000, 15000
    mu1 = torch.randn(d, generator=gen, dtype=torch.float64)
    mu2 = mu1 + 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
    s1, s2 = _random_spd(d, gen), 2.0 * _random_spd(d, gen)
    x = mu1 + torch.randn(n1, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    y = mu2 + torch.randn(n2, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    true = _closed_form(mu1, s1, mu2, s2)
    bias = float(s1.trace() / n1 + s2.trace() / n2)  # E|mu1_hat - mu2_hat|^2 - |mu1 - mu2|^2
    second_order = d * bias  # covariance-term bias, O(d tr(S) / n)
    sd = _delta_method_sd(mu1, s1, mu2, s2, n1, n2)
    assert abs(fd(x, y) - (true + bias)) <= 5 * sd + second_order
    assert 5 * sd + second_order < 0.1 * true  # the tolerance is tight enough to mean something


def test_identical_sets_give_zero_and_a_shift_gives_its_squared_norm():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(500, 8, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, 8)
    scale = float(x.var(dim=0).sum())
    assert fd(x, x) <= 1e-9 * scale
    shift = torch.randn(8, generator=gen, dtype=torch.float64)
    assert fd(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-8, abs=1e-9 * scale)
    y = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    assert fd(x, y) == pytest.approx(fd(y, x), rel=1e-9)


def test_numpy_float32_and_1d_inputs():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 200, 3, generator=gen)
    assert fd(x.numpy(), y.numpy()) == fd(x, y)
    # 1-D: FD = (m1 - m2)^2 + (s1 - s2)^2 with unbiased standard deviations.
    a, b = x[:, 0].double(), 2 * y[:, 0].double() + 1
    expected = float((a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2)
    assert fd(a, b) == pytest.approx(expected, rel=1e-10)


def test_fd_pixels_flattens_images():
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(2, 100, 1, 3, 2, generator=gen)
    assert fd_pixels(x, y) == pytest.approx(fd(x.reshape(100, 6), y.reshape(100, 6)), rel=1e-12)


def test_fd_digits_tells_digits_from_noise_and_from_one_class():
    held, _ = digits_data("heldout")
    train, train_labels = digits_data("train")
    real = train[: len(held)]
    noise = torch.rand(len(held), 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    ones_only = train[train_labels == 1]
    d_real = fd_digits(real, held)
    assert d_real == pytest.approx(fd(digits_features(real), digits_features(held)), rel=1e-12)
    assert fd_digits(held, held.reshape(-1, 1, 8, 8)) <= 1e-6
    assert 10 * d_real < fd_digits(ones_only, held)
    assert 10 * d_real < fd_digits(noise, held)


@pytest.mark.parametrize(
    ("a", "b", "error", "match"),
    [
        (torch.zeros(10, 2, 2), torch.zeros(10, 2), ValueError, r"\[N\] or \[N, D\]"),
        (torch.zeros(10, 3), torch.zeros(10, 2), ValueError, "same feature dimension"),
        (torch.zeros(1, 3), torch.zeros(10, 3), ValueError, "at least 2 samples, got 1"),
        (torch.zeros(10, 0), torch.zeros(10, 0), ValueError, "zero features"),
        (torch.full((10, 2), float("nan")), torch.zeros(10, 2), ValueError, "NaN"),
        ([[0.0, 1.0], [1.0, 0.0]], torch.zeros(10, 2), TypeError, "got list"),
        (torch.zeros(10, 2, dtype=torch.bool), torch.zeros(10, 2), TypeError, "real numbers"),
    ],
)
def test_bad_input_raises(a, b, error, match):
    with pytest.raises(error, match=match):
        fd(a, b)


def test_fd_pixels_and_digits_bad_input():
    with pytest.raises(ValueError, match="at least 2 samples"):
        fd_pixels(torch.zeros(1, 1, 8, 8), torch.zeros(5, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\[N, 64\] or \[N, 1, 8, 8\]"):
        fd_digits(torch.zeros(5, 1, 28, 28), torch.zeros(5, 64))
