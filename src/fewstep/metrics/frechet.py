"""Fréchet distance between Gaussian fits of two sample sets (FID, Heusel et al. 2017, arXiv 1706.08500)."""

from __future__ import annotations

import numpy as np
import torch

from fewstep.metrics._inputs import as_samples, same_dim
from fewstep.metrics.features import digits_features

__all__ = ["fd", "fd_pixels", "fd_digits"]


def _gaussian_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``x`` ``[N, D]`` (N >= 2), in float64."""
    mu = x.mean(dim=0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix by eigendecomposition (round-off negatives -> 0)."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _fd_from_stats(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` for float64 moments.

    ``tr sqrt(S1 S2)`` is taken as ``sum sqrt(eig(S1^1/2 S2 S1^1/2))``: the matrix is symmetric PSD
    and similar to ``S1 S2``, so ``eigvalsh`` is stable where a general ``sqrtm(S1 S2)`` is not.
    """
    root1 = _sqrtm_psd(sigma1)
    m = root1 @ sigma2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt
    return max(float(d2), 0.0)  # >= 0 exactly; only round-off can push it below


def fd(samples: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two sets of feature vectors.

    Fits ``N(mu1, S1)`` to ``samples`` and ``N(mu2, S2)`` to ``reference`` (sample mean and unbiased
    covariance) and returns

        FD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}),

    the squared 2-Wasserstein distance between the two Gaussians (Dowson & Landau 1982). With
    Inception features this is FID (Heusel et al. 2017, arXiv 1706.08500). Computed in float64
    with eigendecompositions of symmetric matrices, so it is stable for singular covariances.

    The estimate is biased upwards by about ``tr(S1)/N1 + tr(S2)/N2`` plus a covariance term that
    also shrinks with N; compare values only at equal sample sizes, and use N well above D.

    Args:
        samples: ``[N1, D]`` features (or ``[N1]`` scalars), N1 >= 2; tensor or numpy array.
        reference: ``[N2, D]`` features (or ``[N2]``), N2 >= 2.

    Returns:
        The Fréchet distance (a squared distance, in squared feature units), >= 0.
    """
    x = as_samples(samples, "samples", min_n=2)
    y = same_dim(x, as_samples(reference, "reference", min_n=2), ("samples", "reference"))
    return _fd_from_stats(*_gaussian_fit(x), *_gaussian_fit(y))


def fd_pixels(samples: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance in pixel space: ``fd`` of the flattened samples.

    Args:
        samples: ``[N1, ...]`` (e.g. images ``[N1, C, H, W]``), N1 >= 2.
        reference: ``[N2, ...]`` with the same number of values per sample.

    Returns:
        ``fd(samples.reshape(N1, -1), reference.reshape(N2, -1))``.
    """
    x = as_samples(samples, "samples", min_n=2, flatten=True)
    y = as_samples(reference, "reference", min_n=2, flatten=True)
    return fd(x, y)


def fd_digits(samples: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance in the feature space of the bundled digits classifier ("FID for digits").

    Both sets go through ``digits_features`` (64-d penultimate layer), then ``fd``.

    Args:
        samples: digits scaled to [-1, 1] (``p / 8 - 1``), ``[N1, 64]`` or ``[N1, 1, 8, 8]``.
        reference: the same for the reference set, e.g. ``digits_data("heldout")[0]``.

    Returns:
        The Fréchet distance between the Gaussian fits of the two feature sets.
    """
    return fd(digits_features(samples), digits_features(reference))
