"""The bundled model zoo: exact reference models and small trained networks.

``load_model(name, **options)`` returns a ``Denoiser``; ``list_models()`` describes each entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # "exact" or "trained"
    description: str
    loader: Callable[..., Any]


def _gauss(dim: int = 2, mean: float = 0.0, std: float = 1.0, **kw):
    from fewstep.models.exact import Gauss

    return Gauss(dim=dim, mean=mean, std=std, **kw)


def _gmm2d(n: int = 8, radius: float = 2.0, std: float = 0.1, **kw):
    from fewstep.models.exact import ring_gmm

    return ring_gmm(n=n, radius=radius, std=std, **kw)


def _digits_gmm(**kw):
    from fewstep.models.digits import digits_gmm

    return digits_gmm(**kw)


def _digits_empirical(**kw):
    from fewstep.models.digits import digits_empirical

    return digits_empirical(**kw)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, kind: str, description: str, loader: Callable[..., Any]) -> None:
    _REGISTRY[name] = ModelInfo(name, kind, description, loader)


register_model("gauss", "exact", "Gaussian data N(mean, std^2 I) in any dimension, with the closed-form ODE solution", _gauss)
register_model("gmm2d", "exact", "8 Gaussians on a ring of radius 2 (std 0.1), exact posterior-mean denoiser", _gmm2d)
register_model("digits-gmm", "exact", "Gaussian mixture (16 full-covariance components) fitted to sklearn's 8x8 digits in [-1, 1]", _digits_gmm)
register_model("digits-empirical", "exact", "the optimal denoiser of the 1,797 sklearn digits in [-1, 1] (memorises the set)", _digits_empirical)


def list_models() -> dict[str, ModelInfo]:
    """Every bundled model by name."""
    return dict(_REGISTRY)


def load_model(name: str, **options: Any):
    """Load a bundled model by name, e.g. ``load_model("gauss", dim=8)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name].loader(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for model {name!r}: {exc}") from None
from fewstep.models import cond as _cond  # noqa: E402,F401
from fewstep.models import trained as _trained  # noqa: E402,F401  (registers the bundled networks)
