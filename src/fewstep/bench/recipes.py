"""Benchmark rows for tuned recipes, beside the untuned solvers: same seeds, noise, metrics and references.

A recipe runs at its own NFE on the model it was made for (a mismatching hash is refused, unless ``force``). Its
``rmse_ref`` is measured against the reference ODE solutions from the model's own start (``sigma_max``,
or ``SIGMA_CAP`` when that is infinite), the same target as the untuned rows, even when the recipe
starts lower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fewstep.bench.distributed import is_main
from fewstep.bench.harness import device_name, run_seeds, versions
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.recipe import Recipe
from fewstep.diffusion.sampling import sample
from fewstep.diffusion.schedules import SIGMA_CAP
from fewstep.evaluation import DataReference, compute_metrics
from fewstep.evaluation.references import reference_samples
from fewstep.models import load_model


def recipe_rows(paths: Sequence[str | Path], spec, progress: bool = True, log: Callable[[str], None] = print,
                batch: int | None = None, force: bool = False) -> list[dict[str, Any]]:
    """One row per recipe, with the keys of ``run_bench``'s rows; ``label`` is the recipe's method. ``batch``
    seeds run together (as in ``run_bench``; NFE is per sample); ``force`` uses a recipe made for another model
    as it is, with a warning."""
    from tqdm import tqdm

    recipes = [(str(p), Recipe.load(p)) for p in paths]  # every file is checked before anything runs
    main = is_main()
    common = {"device": device_name(), "versions": versions(), "seeds": len(spec.seeds)}
    loaded: dict[str, tuple] = {}
    rows: list[dict[str, Any]] = []
    for path, recipe in tqdm(recipes, disable=not (progress and main), desc="recipes", unit="recipe"):
        if recipe.model not in loaded:
            m = CountingDenoiser(load_model(recipe.model))
            loaded[recipe.model] = (m, DataReference(m.inner) if main else None, {})
        model, data, refs = loaded[recipe.model]
        recipe.check(model, force=force)
        row = {"model": recipe.model, "solver": recipe.solver, "label": recipe.method, "schedule": "tuned",
               "nfe_budget": recipe.nfe, "source": "fewstep-recipe", "recipe": path,
               "tune_seconds": recipe.info.get("tune_seconds"), **common}
        sample(model, recipe=recipe, seeds=spec.seeds[:2], force=force)  # warm-up pass
        x, row["nfe"], row["wall_s"] = run_seeds(
            model, lambda ids, recipe=recipe: sample(model, recipe=recipe, seeds=ids, force=force), spec.seeds, batch)
        if not main:
            continue
        top = model.sigma_max if math.isfinite(model.sigma_max) else SIGMA_CAP
        if "rmse_ref" in spec.metrics and top not in refs:
            rtol = spec.extra.get("rtol", 1e-6)
            refs[top], tol = reference_samples(model.inner, spec.seeds, sigma_max=top, rtol=rtol)
            log(f"reference for {recipe.model} from sigma {top:g}: tolerance check {tol:.2e}")
        row.update(compute_metrics(spec.metrics, x.to(torch.float64), refs.get(top), data))
        rows.append(row)
    return rows
