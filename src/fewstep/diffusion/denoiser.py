"""The denoiser contract every diffusion and flow model is converted to (docs/math.md).

A denoiser is ``D(x, sigma, cond=None) -> E[x0 | x]`` in sigma space, where the noisy state is
``x = x0 + sigma * eps``. Solvers only ever see this contract.

Zero terminal SNR: a model may have ``sigma_max = inf``. At ``sigma = inf`` the state itself is
infinite, so the contract says that ``x`` then holds its finite limit ``x / sigma`` (unit noise).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from fewstep.diffusion.processes import VE, NoiseProcess


def as_sigma(sigma: Any, x: torch.Tensor) -> torch.Tensor:
    """Return ``sigma`` as a tensor of shape ``[batch]`` in ``x``'s dtype and device.

    Args:
        sigma: a float, a 0-d tensor, or a tensor of shape ``[batch]``.
        x: the state, shape ``[batch, ...]``.
    """
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        return s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or have shape [batch] = [{x.shape[0]}]; got shape {tuple(s.shape)}"
        )
    return s


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample tensor ``v`` of shape ``[batch]`` so that it broadcasts against ``x``."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


class Denoiser:
    """Base class of the contract ``D(x, sigma, cond=None) -> x0_hat``.

    Attributes:
        process: the model's native noise process (maps sigma to the model's own time).
        prediction: what the underlying model predicts (``eps``, ``x0``, ``v``, ``velocity``,
            ``score``, ``edm`` or ``exact``).
        shape: the per-sample data shape, or ``None`` when the caller must give it.
        name: a short identifier used in reports and recipe hashes.
    """

    prediction: str = "x0"
    shape: tuple[int, ...] | None = None
    name: str = "denoiser"
    weights_sha256: str | None = None  # set by loaders of trained nets; part of the identity

    def __init__(self, process: NoiseProcess | None = None):
        self.process = process if process is not None else VE()

    @property
    def family(self) -> str:
        return self.process.family

    @property
    def sigma_min(self) -> float:
        return self.process.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.process.sigma_max

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The nearest sigma the model accepts (the identity for continuous-time models)."""
        return self.process.round_sigma(torch.as_tensor(sigma, dtype=torch.float64))

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Mapping[str, Any] | None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, sigma: Any, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
        if cond is not None and not isinstance(cond, Mapping):
            raise TypeError(f"cond must be a mapping of model keywords or None; got {type(cond).__name__}")
        return self.denoise(x, as_sigma(sigma, x), cond)

    @property
    def sampling(self) -> dict[str, Any] | None:
        """The ``fewstep.sample`` keywords this model was made to sample with (a distilled student's own solver,
        NFE and grid), which ``sample`` uses when it is given none of its own; ``None`` for a model that samples
        with any solver."""
        return None

    def identity(self) -> dict[str, Any]:
        """A JSON-serialisable description, hashed to tie recipes and caches to this model (and to its
        weights, when a loader set ``weights_sha256``)."""
        d = {"name": self.name, "prediction": self.prediction, "process": self.process.describe()}
        if self.weights_sha256 is not None:
            d["weights_sha256"] = self.weights_sha256
        return d

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, family={self.family!r}, prediction={self.prediction!r}, "
            f"sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g})"
        )


class CountingDenoiser(Denoiser):
    """Wraps a denoiser and counts its evaluations; everything else is delegated.

    ``calls`` counts model calls (what NFE means), ``samples`` the per-sample evaluations.
    """

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.calls = 0
        self.samples = 0

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not found on the wrapper itself.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def process(self) -> NoiseProcess:  # type: ignore[override]
        return self.inner.process

    @property
    def prediction(self) -> str:  # type: ignore[override]
        return self.inner.prediction

    @property
    def shape(self) -> tuple[int, ...] | None:  # type: ignore[override]
        return self.inner.shape

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    def round_sigma(self, sigma):
        return self.inner.round_sigma(sigma)

    @property
    def sampling(self) -> dict[str, Any] | None:
        return self.inner.sampling

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def reset(self) -> None:
        self.calls = 0
        self.samples = 0

    def denoise(self, x, sigma, cond):
        self.calls += 1
        self.samples += x.shape[0]
        return self.inner.denoise(x, sigma, cond)


def model_hash(model: Denoiser) -> str:
    """A short hash of the model's identity (config, and weights digest for trained models)."""
    blob = json.dumps(model.identity(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
