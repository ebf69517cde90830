"""Distances from a sampler's draws to exact samples of the target.

- ``mmd2``: the unbiased squared maximum mean discrepancy with a Gaussian kernel (Gretton et al., JMLR 13,
  2012, Lemma 6), bandwidth by the median heuristic on the pooled points;
- ``sliced_wasserstein``: ``fewstep.metrics.sw`` (sliced W2);
- ``mode_weights`` / ``mode_weight_error``: for a mixture, the share of draws nearest (by responsibility) to each
  mode, and its largest absolute difference from the true weights.
"""

from __future__ import annotations

import numpy as np
import torch

from fewstep.metrics import sw

Tensor = torch.Tensor
MAX_POINTS = 4000  # per set, for the O(n^2) kernel sums


def _flat(x) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(torch.float64)
    return x.reshape(-1, x.shape[-1])


def _thin(x: Tensor, n: int) -> Tensor:
    return x if x.shape[0] <= n else x[torch.linspace(0, x.shape[0] - 1, n).round().long()]


def mmd2(x, y, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 between point sets ``x`` and ``y`` (``[..., dim]``; draws of all chains are pooled, evenly
    thinned to ``MAX_POINTS``) with ``k(a, b) = exp(-|a - b|^2 / (2 h^2))``; ``h`` is the median pooled distance
    unless given. Near 0 (it can be slightly negative) when the sets come from one distribution."""
    x, y = _thin(_flat(x), MAX_POINTS), _thin(_flat(y), MAX_POINTS)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("mmd2 needs at least 2 points in each set")
    if bandwidth is None:
        pool = _thin(torch.cat([x, y]), 1000)
        d = torch.cdist(pool, pool)
        bandwidth = float(d[d > 0].median()) if bool((d > 0).any()) else 1.0
    gamma = 1.0 / (2 * bandwidth**2)

    def mean_k(a, b, same):
        k = torch.exp(-gamma * torch.cdist(a, b).square())
        if same:
            n = a.shape[0]
            return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
        return k.mean()

    return float(mean_k(x, x, True) + mean_k(y, y, True) - 2 * mean_k(x, y, False))


def sliced_wasserstein(x, y, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 between the pooled draws and the exact samples (``fewstep.metrics.sw``)."""
    return sw(_flat(x), _flat(y), n_projections=n_projections, generator=torch.Generator().manual_seed(seed))


def mode_weights(target, x) -> Tensor:
    """``[K]``: the share of draws that ``target.assign`` puts in each mode."""
    k = target.assign(_flat(x))
    return torch.bincount(k, minlength=target.weights.shape[0]).to(torch.float64) / k.shape[0]


def mode_weight_error(target, x) -> float:
    """``max_k |w_hat_k - w_k|``."""
    return float((mode_weights(target, x) - target.weights).abs().max())
