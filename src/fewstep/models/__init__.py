"""The bundled model zoo: exact reference models and small trained networks.

``load_model(name, **options)`` returns a ``Denoiser``; ``list_models()`` describes each entry. A path ending in
``.json`` names a distilled student (``fewstep.models.student``) instead of a bundled model.
"""

from fewstep.models import cond, digits, exact, student, trained  # noqa: F401  (each registers its models)
from fewstep.models._registry import ModelInfo, list_models, register_model
from fewstep.models._registry import load_model as _load_registered

__all__ = ["ModelInfo", "list_models", "load_model", "register_model"]


def load_model(name, **options):
    """Load a bundled model by name, e.g. ``load_model("gauss", dim=8)``, or a distilled student from its JSON
    record, ``load_model("student.json", nfe=2)``."""
    if student.is_student_path(name):
        return student.load_student(name, **options)
    return _load_registered(name, **options)
