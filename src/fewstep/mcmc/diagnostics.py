"""Convergence diagnostics: rank-normalised split R-hat and bulk / tail effective sample size.

Vehtari, Gelman, Simpson, Carpenter and Bürkner, arXiv 1903.08008 (the definitions Stan, ArviZ and posterior use):

- split: each chain's first and last ``n // 2`` draws become two chains (the middle draw of an odd ``n`` is
  dropped);
- rank normalisation: ``z = Phi^-1((r - 3/8) / (S - 1/4 + 1))`` with ``r`` the average rank over all ``S``
  draws;
- ``R-hat = sqrt(((n - 1)/n W + B/n) / W)`` (``W`` the mean within-chain variance, ``B / n`` the variance of the
  chain means); the reported R-hat is the larger of the bulk one (on ``z``) and the tail one (on the ranks of
  ``|x - median|``);
- ESS: ``S / tau`` with ``tau = -1 + 2 sum_t rho_t``, the autocorrelations ``rho_t`` combined over chains,
  summed in pairs while positive (Geyer's initial positive sequence) and made monotone; ``tau`` is floored at
  ``1 / log10(S)``. Bulk ESS is that of ``z``; tail ESS the smaller of the ESS of the indicators ``x <= q_05``
  and ``x <= q_95``.

Inputs are ``[chains, draws]`` or ``[chains, draws, dim]`` (numpy or torch); outputs are float or ``[dim]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["rhat", "ess_bulk", "ess_tail", "ess_mean"]


def _as_array(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(np.float64)
    if a.ndim not in (2, 3):
        raise ValueError(f"draws must be [chains, draws] or [chains, draws, dim]; got shape {list(a.shape)}")
    if a.shape[1] < 4:
        raise ValueError(f"diagnostics need at least 4 draws per chain; got {a.shape[1]}")
    if not np.isfinite(a).all():
        raise ValueError("draws contain NaN or infinite values")
    return a


def _per_dim(fn, x):
    a = _as_array(x)
    if a.ndim == 2:
        return float(fn(a))
    return np.array([fn(a[:, :, k]) for k in range(a.shape[2])])


def _split(a: np.ndarray) -> np.ndarray:
    half = a.shape[1] // 2
    return np.concatenate([a[:, :half], a[:, a.shape[1] - half:]], axis=0)


def _z_scale(a: np.ndarray) -> np.ndarray:
    flat = a.ravel()
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average rank of ties, from 1
    u = (rank - 3 / 8) / (flat.size - 2 * 3 / 8 + 1)
    return torch.special.ndtri(torch.from_numpy(u)).numpy().reshape(a.shape)


def _rhat_basic(a: np.ndarray) -> float:
    n = a.shape[1]
    between = n * np.var(a.mean(axis=1), ddof=1)
    within = np.mean(np.var(a, axis=1, ddof=1))
    if within == 0:
        return math.nan
    return float(np.sqrt((between / within + n - 1) / n))


def _autocov(a: np.ndarray) -> np.ndarray:
    """Biased autocovariance of each row, by FFT with zero padding."""
    n = a.shape[1]
    centred = a - a.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def _ess_basic(a: np.ndarray) -> float:
    m, n = a.shape
    if np.ptp(a) < np.finfo(float).resolution:
        return float(a.size)
    acov = _autocov(a)
    mean_var = acov[:, 0].mean() * n / (n - 1)
    var_plus = mean_var * (n - 1) / n + (np.var(a.mean(axis=1), ddof=1) if m > 1 else 0.0)
    rho = np.zeros(n)
    rho[0], even, odd = 1.0, 1.0, 1.0 - (mean_var - acov[:, 1].mean()) / var_plus
    rho[1] = odd
    t = 1
    while t < n - 3 and even + odd > 0:  # initial positive sequence of pair sums
        even = 1.0 - (mean_var - acov[:, t + 1].mean()) / var_plus
        odd = 1.0 - (mean_var - acov[:, t + 2].mean()) / var_plus
        if even + odd >= 0:
            rho[t + 1], rho[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        rho[max_t + 1] = even
    t = 1
    while t <= max_t - 2:  # initial monotone sequence
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2
        t += 2
    tau = -1.0 + 2.0 * rho[:max_t + 1].sum() + rho[max_t + 1:max_t + 2].sum()
    tau = max(tau, 1 / np.log10(a.size))
    return float(a.size / tau)


def rhat(draws):
    """Rank-normalised split R-hat (max of bulk and tail; arXiv 1903.08008, Sec. 4.3). Needs 2+ chains after
    the split, i.e. any chain count."""
    def one(a):
        s = _split(a)
        return max(_rhat_basic(_z_scale(s)), _rhat_basic(_z_scale(np.abs(s - np.median(s)))))

    return _per_dim(one, draws)


def ess_bulk(draws):
    """Bulk ESS: the ESS of the rank-normalised split chains (arXiv 1903.08008, Sec. 4.2)."""
    return _per_dim(lambda a: _ess_basic(_z_scale(_split(a))), draws)


def ess_tail(draws):
    """Tail ESS: the smaller ESS of the 5 % and 95 % quantile indicators (arXiv 1903.08008, Sec. 4.3)."""
    def one(a):
        return min(_ess_basic(_split((a <= np.quantile(a, q)).astype(np.float64))) for q in (0.05, 0.95))

    return _per_dim(one, draws)


def ess_mean(draws):
    """ESS of the mean (split chains, no rank normalisation): the one that sets the Monte Carlo error of a mean."""
    return _per_dim(lambda a: _ess_basic(_split(a)), draws)
