"""Distances between paired sample sets (sample i of one set belongs with sample i of the other)."""

from __future__ import annotations

import numpy as np
import torch

from fewstep.metrics._inputs import as_float64

__all__ = ["rmse"]


def rmse(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Root-mean-square error between paired samples.

    For ``N`` pairs of samples with ``D`` values each (``D`` = product of the trailing dims),

        rmse(a, b) = sqrt( (1/N) sum_i (1/D) sum_j (a_ij - b_ij)^2 ),

    i.e. the square root of the mean over samples of the per-sample mean squared coordinate error
    (equal to the RMS over all N*D values). Typical use: a few-step sample against the sample of a
    reference solver started from the same noise. Computed in float64.

    Args:
        a: ``[N, ...]``, N >= 1; tensor or numpy array.
        b: the same shape as ``a``.

    Returns:
        The RMSE, in the units of the samples, >= 0.
    """
    xa = as_float64(a, "a")
    xb = as_float64(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must have the same shape, got {list(xa.shape)} and {list(xb.shape)}")
    if xa.ndim == 0 or xa.shape[0] == 0 or xa.numel() == 0:
        raise ValueError(f"a and b must be shaped [N, ...] with N >= 1 and values, got {list(xa.shape)}")
    per_sample = (xa - xb.to(xa.device)).square().reshape(xa.shape[0], -1).mean(dim=1)
    return float(per_sample.mean().sqrt())
