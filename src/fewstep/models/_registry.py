"""The model registry: name -> loader, with a description. Each model module registers its own entries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelInfo", "register_model", "list_models", "load_model"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # "exact", "trained" or "student"
    description: str
    loader: Callable[..., Any]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, kind: str, description: str, loader: Callable[..., Any]) -> None:
    _REGISTRY[name] = ModelInfo(name, kind, description, loader)


def list_models() -> dict[str, ModelInfo]:
    """Every bundled model by name: the exact models first, then the trained ones, then the distilled students,
    each in registration order."""
    order = {"exact": 0, "trained": 1}
    return dict(sorted(_REGISTRY.items(), key=lambda item: order.get(item[1].kind, 2)))


def load_model(name: str, **options: Any):
    """Load a bundled model by name, e.g. ``load_model("gauss", dim=8)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name].loader(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for model {name!r}: {exc}") from None
