"""Improved precision and recall by k-NN manifold estimates (Kynkäänniemi et al. 2019, arXiv 1904.06991)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from fewstep.metrics._inputs import as_samples, same_dim

__all__ = ["PrecisionRecall", "precision_recall"]

_MAX_ELEMENTS = 1 << 24  # pairwise distances held at once: 128 MiB of float64


class PrecisionRecall(NamedTuple):
    """``precision``: fraction of fake samples on the real manifold; ``recall``: the converse."""

    precision: float
    recall: float


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[A, B]``; ``b_sq`` is ``|b|^2`` ``[B]``."""
    d = torch.addmm(b_sq.expand(a.shape[0], -1), a, b.T, alpha=-2.0)  # one [A, B] buffer
    return d.add_(a.square().sum(dim=1, keepdim=True)).clamp_min_(0.0)


def _knn_radii_sq(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Squared distance from each row of ``x`` ``[N, D]`` to its k-th nearest other row: ``[N]``."""
    x_sq = x.square().sum(dim=1)
    radii = []
    for start in range(0, x.shape[0], chunk):
        d = _sq_dists(x[start : start + chunk], x, x_sq)
        rows = torch.arange(d.shape[0], device=x.device)
        d[rows, rows + start] = -1.0  # the point itself ranks first and is skipped below
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _inside_any_ball(
    queries: torch.Tensor, centers: torch.Tensor, radii_sq: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Whether each query ``[Q, D]`` lies in at least one closed ball (center, radius): ``[Q]`` bool."""
    c_sq = centers.square().sum(dim=1)
    hits = []
    for q in queries.split(chunk):
        hits.append((_sq_dists(q, centers, c_sq) <= radii_sq).any(dim=1))
    return torch.cat(hits)


def precision_recall(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    k: int = 3,
    chunk_size: int | None = None,
) -> PrecisionRecall:
    """Improved precision and recall of generated samples (Kynkäänniemi et al. 2019, arXiv 1904.06991).

    Each set's manifold is estimated as the union of closed balls around its samples, each with
    radius the distance to that sample's k-th nearest neighbour in the same set (itself excluded):

        precision = (1/M) sum_j 1[fake_j in manifold(real)],
        recall    = (1/N) sum_i 1[real_i in manifold(fake)].

    Pairwise distances are computed in float64 in row blocks of ``chunk_size``, so 10k x 10k sets
    need about 128 MiB at a time. Both sets are centred on the real mean first, which is a
    translation and leaves distances unchanged but keeps ``|a|^2 + |b|^2 - 2 a.b`` accurate.

    Args:
        real: ``[N, D]`` reference features (or ``[N]`` scalars), N > k; tensor or numpy array.
        fake: ``[M, D]`` generated features (or ``[M]``), M > k.
        k: the neighbour that sets each radius, 1 <= k < min(N, M); the paper uses k = 3.
        chunk_size: rows per distance block; ``None`` picks one for ~2^24 entries per block.

    Returns:
        ``PrecisionRecall(precision, recall)``, both in [0, 1].
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    x_real = as_samples(real, "real")
    x_fake = same_dim(x_real, as_samples(fake, "fake"), ("real", "fake"))
    for name, x in (("real", x_real), ("fake", x_fake)):
        if k >= x.shape[0]:
            raise ValueError(
                f"k must be smaller than the number of {name} samples (the k-th neighbour excludes "
                f"the point itself), got k={k} with {x.shape[0]} {name} samples"
            )
    center = x_real.mean(dim=0)
    x_real, x_fake = x_real - center, x_fake - center

    def rows(n_cols: int) -> int:
        return chunk_size if chunk_size is not None else max(1, _MAX_ELEMENTS // n_cols)

    n, m = x_real.shape[0], x_fake.shape[0]
    radii_real = _knn_radii_sq(x_real, k, rows(n))
    radii_fake = _knn_radii_sq(x_fake, k, rows(m))
    precision = _inside_any_ball(x_fake, x_real, radii_real, rows(n)).double().mean()
    recall = _inside_any_ball(x_real, x_fake, radii_fake, rows(m)).double().mean()
    return PrecisionRecall(float(precision), float(recall))
