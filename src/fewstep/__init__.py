"""fewstep: high-quality samples from generative models with as few model evaluations as possible.

The public API is re-exported here; everything else is private. Heavy optional libraries
(diffusers, transformers) are imported lazily, so ``import fewstep`` stays fast.
"""

from __future__ import annotations

from fewstep._version import __version__

__all__ = [
    "__version__",
    "sample",
    "load_model",
    "list_models",
    "list_solvers",
    "list_schedules",
]


def __getattr__(name: str):
    # Lazy re-exports: torch is imported on first use, not by `import fewstep`.
    if name == "sample":
        from fewstep.diffusion.sampling import sample

        return sample
    if name in ("load_model", "list_models"):
        from fewstep import models

        return getattr(models, name)
    if name == "list_solvers":
        from fewstep.diffusion.solvers import list_solvers

        return list_solvers
    if name == "list_schedules":
        from fewstep.diffusion.schedules import list_schedules

        return list_schedules
    raise AttributeError(f"module 'fewstep' has no attribute {name!r}")
