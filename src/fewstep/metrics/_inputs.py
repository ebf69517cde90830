"""Input checks shared by the metrics: tensors or numpy arrays in, float64 tensors out."""

from __future__ import annotations

import numpy as np
import torch


def as_float64(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Converts a real tensor or numpy array to a float64 tensor (same device), rejecting NaN/inf."""
    if isinstance(x, np.ndarray):
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) and np.isrealobj(x)):
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def as_samples(
    x: torch.Tensor | np.ndarray, name: str, min_n: int = 1, flatten: bool = False
) -> torch.Tensor:
    """A set of N samples as float64 ``[N, D]``.

    Args:
        x: ``[N, D]`` feature vectors, or ``[N]`` scalars (taken as ``D = 1``). With
            ``flatten=True`` any ``[N, ...]`` is accepted and flattened to ``[N, prod(...)]``.
        name: the argument name, for error messages.
        min_n: the fewest samples the caller can use.
        flatten: flatten trailing dimensions instead of requiring ``[N]`` or ``[N, D]``.
    """
    x = as_float64(x, name)
    if flatten and x.ndim >= 2:
        x = x.reshape(x.shape[0], -1)
    elif x.ndim == 1:
        x = x[:, None]
    elif x.ndim != 2:
        allowed = "[N, ...]" if flatten else "[N] or [N, D]"
        raise ValueError(f"{name} must be shaped {allowed}, got {list(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero features per sample (shape {list(x.shape)})")
    if x.shape[0] < min_n:
        plural = "s" if min_n != 1 else ""
        raise ValueError(f"{name} needs at least {min_n} sample{plural}, got {x.shape[0]}")
    return x


def same_dim(x: torch.Tensor, y: torch.Tensor, names: tuple[str, str]) -> torch.Tensor:
    """Checks that two ``[N, D]`` sets share ``D``; returns ``y`` on the device of ``x``."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same feature dimension, "
            f"got {x.shape[1]} and {y.shape[1]}"
        )
    return y.to(x.device)
