"""Resampling of weighted particles and the effective sample size (Doucet & Johansen, "A Tutorial on Particle
Filtering and Smoothing", 2009, Sec. 3.4; systematic resampling: Kitagawa 1996).

A resampler maps normalised weights ``w [K]`` (float64, summing to 1) and a ``torch.Generator`` to ``K``
ancestor indices ``[K]``; it is unbiased when each index ``k`` appears ``K w_k`` times in expectation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor
Resampler = Callable[[Tensor, torch.Generator], Tensor]

__all__ = ["RESAMPLERS", "ess", "get_resampler", "multinomial", "systematic"]


def multinomial(w: Tensor, generator: torch.Generator) -> Tensor:
    """``K`` independent draws from ``Categorical(w)``."""
    return torch.multinomial(w, w.shape[0], replacement=True, generator=generator)


def systematic(w: Tensor, generator: torch.Generator) -> Tensor:
    """One uniform ``u ~ U[0, 1)``; ancestor ``j`` of slot ``k`` is where ``(u + k) / K`` falls in the cumulative
    weights. Lower variance than multinomial, and still unbiased."""
    K = w.shape[0]
    u = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(K, dtype=torch.float64)) / K
    c = torch.cumsum(w.to(torch.float64), 0)
    c[-1] = 1.0  # a sum of K weights may round just below 1
    return torch.searchsorted(c, u, right=True).clamp_max(K - 1)


RESAMPLERS: dict[str, Resampler] = {"multinomial": multinomial, "systematic": systematic}


def get_resampler(resampler: str | Resampler) -> Resampler:
    """A resampler by name (``multinomial``, ``systematic``) or a callable ``(w [K], generator) -> indices [K]``."""
    if callable(resampler):
        return resampler
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler {resampler!r}; choose one of {', '.join(RESAMPLERS)} or pass a callable "
                         "(weights [K], generator) -> indices [K]")
    return RESAMPLERS[resampler]


def ess(log_w: Tensor) -> Tensor:
    """Effective sample size ``(sum w)^2 / sum w^2`` of each row of log-weights ``[..., K]`` (Kong 1992)."""
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))
