"""The invariance check shared by the sampler tests: long-run mean and covariance against the exact ones, each
compared in units of its Monte Carlo standard error, with the ESS of that very statistic."""

from __future__ import annotations

import numpy as np

from fewstep.mcmc import ess_mean


def z_scores(draws, mean, cov) -> np.ndarray:
    """``|estimate - truth| / (sd / sqrt(ESS))`` for every mean and every covariance entry."""
    x = np.asarray(draws, dtype=np.float64)  # [chains, n, dim]
    mean, cov = np.asarray(mean), np.asarray(cov)
    c = x - mean
    d = x.shape[2]
    stats = [(x[:, :, i], mean[i]) for i in range(d)]
    stats += [(c[:, :, i] * c[:, :, j], cov[i, j]) for i in range(d) for j in range(i, d)]
    out = []
    for f, truth in stats:
        ess = ess_mean(f)
        out.append(abs(f.mean() - truth) / (f.std() / np.sqrt(ess)))
    return np.array(out)


def invariant(draws, mean, cov, tolerance: float = 4.5) -> bool:
    """True when every statistic is within ``tolerance`` standard errors (a Bonferroni-style bound: with 9
    statistics, a correct sampler fails with probability about 6e-5)."""
    return bool(z_scores(draws, mean, cov).max() < tolerance)
