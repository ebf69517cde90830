"""The bundled model zoo: exact reference models and small trained networks.

``load_model(name, **options)`` returns a ``Denoiser``; ``list_models()`` describes each entry.
"""

from fewstep.models import cond, digits, exact, trained  # noqa: F401  (each registers its models)
from fewstep.models._registry import ModelInfo, list_models, load_model, register_model

__all__ = ["ModelInfo", "list_models", "load_model", "register_model"]
