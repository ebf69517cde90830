"""Tuned sampling: schedules, solver schedules and coefficients fitted to one model, saved as recipes.

This package fits only; the solvers it fits (``usf``, ``learned``, ``iia_*``, ``*_dc``, ``dpm_solver_v3``)
live in ``fewstep.diffusion.solvers`` and the ``Recipe`` type in ``fewstep.diffusion.recipe``.

Each method module provides ``tune(model, *, solver, nfe, **options) -> Recipe``; ``METHOD_MODULES``
maps the CLI's method names to them.
"""

from fewstep.diffusion.recipe import METHODS, Recipe, as_recipe
from fewstep.diffusion.tune._tuning import REF_BLOCK, TUNE_CHECK, TUNE_RTOL, tuning_references

METHOD_MODULES = {
    "ays": "fewstep.diffusion.tune.ays",
    "gits": "fewstep.diffusion.tune.gits",
    "s3": "fewstep.diffusion.tune.s3",
    "dc": "fewstep.diffusion.tune.dc",
    "iia": "fewstep.diffusion.tune.iia",
    "ems": "fewstep.diffusion.tune.ems",
    "ld3": "fewstep.diffusion.tune.ld3",
}

__all__ = ["METHODS", "METHOD_MODULES", "REF_BLOCK", "Recipe", "TUNE_CHECK", "TUNE_RTOL", "as_recipe",
           "tuning_references"]
