"""What the tuning methods share: argument checks, grids, the rmse predictor, held-out quality, recipes.

Tuning seeds and held-out seeds are disjoint by default: methods fit on ``TUNE_SEEDS`` and measure the
quality they store in the recipe on ``EVAL_SEEDS``, the seeds ``fewstep bench`` uses by default.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm import tqdm

from fewstep._version import __version__
from fewstep.diffusion.denoiser import Denoiser, model_hash
from fewstep.diffusion.noise import seeded_noise
from fewstep.diffusion.recipe import Recipe
from fewstep.diffusion.sampling import plan_steps, sample, solve
from fewstep.diffusion.schedules import check_sigmas, get_sigmas, karras, start_sigma
from fewstep.diffusion.solvers import get_solver
from fewstep.evaluation import DataReference, compute_metrics, reference_samples
from fewstep.limits import check_count
from fewstep.seeds import EVAL_SEEDS, seed_text

REF_BLOCK = 128  # tuning seeds per cached block of reference solutions
# Tolerance of the tuning seeds' reference solutions: they differ from the benchmark's (rtol 1e-6) by
# 2e-5 to 4e-5 RMS on the bundled trained models, a thousandth of the few-step errors tuning compares,
# at a third of the model calls; the first TUNE_CHECK seeds of each block are solved again at half the
# tolerance for the check (``benchmarks/tuning_references.py`` measures both).
TUNE_RTOL = 1e-4
TUNE_CHECK = 16
# Upper bounds of the methods' integer options (docs/tuning.md, "Limits"): past them a fit would run for days or
# exhaust memory, so a typo fails at once. gits and iia bound their fine grids themselves.
MAX_SEARCH = 1_000  # sweeps, candidates, generations, population sizes, grid steps searched over
MAX_DRAWS = 65_536  # Monte Carlo draws and data samples held at once
MAX_ITERATIONS = 100_000  # optimiser iterations (ld3)


def tuning_references(model: Denoiser, seeds: Sequence[int], sigma0: float | None = None,
                      n: int | None = None, progress: bool = False) -> torch.Tensor:
    """The reference ODE solutions of the first ``n`` (default all) tuning ``seeds`` from ``sigma0`` (default
    ``start_sigma``), at the tuning tolerance. They are computed and cached in whole blocks of
    ``REF_BLOCK`` consecutive seeds of ``seeds``, so a method that uses a few of the seeds and one that
    uses more share them. ``progress`` shows a bar while a block is computed."""
    seeds = list(seeds)
    n = len(seeds) if n is None else n
    top = start_sigma(model) if sigma0 is None else float(sigma0)
    cover = seeds[:-(-n // REF_BLOCK) * REF_BLOCK]
    return torch.cat([reference_samples(model, cover[i:i + REF_BLOCK], sigma_max=top, rtol=TUNE_RTOL,
                                        check=TUNE_CHECK, progress=progress)[0]
                      for i in range(0, len(cover), REF_BLOCK)])[:n]


def model_schedules(model: Denoiser) -> list[str]:
    """The schedules tuning methods search over: karras, logsnr, time_uniform, and discrete for a
    discrete-time model (its training timesteps)."""
    out = ["karras", "logsnr", "time_uniform"]
    if getattr(model.process, "num_train_timesteps", None) is not None:
        out.append("discrete")
    return out


def check_args(model: Any, solver: str, nfe: Any) -> int:
    """Validate the common arguments; returns the number of steps ``solver`` takes within ``nfe``."""
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a fewstep Denoiser (see fewstep.load_model); got {type(model).__name__}")
    if model.shape is None:
        raise ValueError("tuning needs a model that knows its data shape (model.shape is None)")
    info = get_solver(solver)
    if info.stochastic:
        raise ValueError(f"solver {solver!r} is stochastic; tuning fits deterministic solvers only")
    return plan_steps(solver, nfe)


def check_sizes(**sizes: tuple[Any, int, int]) -> None:
    """Each ``name=(value, low, high)`` must be an int in ``[low, high]`` (``fewstep.limits.check_count``)."""
    for name, (value, low, high) in sizes.items():
        check_count(name, value, low, high)


def seed_list(seeds: Sequence[int], what: str, minimum: int = 2) -> list[int]:
    out = [int(s) for s in seeds]
    if len(out) < minimum or len(set(out)) != len(out) or min(out) < 0:
        raise ValueError(f"{what} must be at least {minimum} distinct non-negative seeds; got {len(out)} "
                         f"({len(set(out))} distinct)")
    return out


def karras_grid(n_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """``n_steps`` Karras steps from ``sigma_max`` to ``sigma_min``, then the step to 0."""
    return torch.cat([karras(n_steps, sigma_min, sigma_max, rho), torch.zeros(1, dtype=torch.float64)])


def untuned_grid(model: Denoiser, n_steps: int) -> torch.Tensor:
    """The untuned reference point of every method: a Karras grid (rho = 7) over the model's range."""
    return get_sigmas("karras", n_steps, model, sigma_max=start_sigma(model))


class Predictor:
    """RMSE against the reference ODE solutions of a fixed batch of tuning seeds (the cheap
    predictor of final quality), from ``tuning_references``."""

    def __init__(self, model: Denoiser, seeds: Sequence[int], progress: bool = False):
        self.model, self.seeds = model, list(seeds)
        self.noise = seeded_noise(self.seeds, model.shape, dtype=torch.float32)
        self.ref = tuning_references(model, self.seeds, progress=progress)
        self.calls = 0

    def head(self, n: int) -> Predictor:
        """The same predictor on the first ``n`` seeds only (the references are shared, not recomputed)."""
        out = object.__new__(Predictor)
        out.model, out.seeds, out.calls = self.model, self.seeds[:n], 0
        out.noise, out.ref = self.noise[:n], self.ref[:n]
        return out

    def samples(self, sigmas: Any, solver: str, options: Mapping[str, Any] | None = None) -> torch.Tensor:
        sigmas = check_sigmas(sigmas)
        with torch.no_grad():
            return solve(self.model, float(sigmas[0]) * self.noise, sigmas, solver, **dict(options or {}))

    def __call__(self, sigmas: Any, solver: str, options: Mapping[str, Any] | None = None) -> float:
        """The RMSE of ``solver`` on ``sigmas``; ``inf`` for a candidate that makes the model diverge."""
        self.calls += 1
        try:
            x = self.samples(sigmas, solver, options).double()
        except FloatingPointError:  # ModelOutputError: NaN or Inf from an unstable candidate
            return math.inf
        err = float((x - self.ref).pow(2).mean().sqrt())
        return err if math.isfinite(err) else math.inf


def held_out_quality(model: Denoiser, recipe: Recipe, eval_seeds: Sequence[int],
                     baseline: tuple[str, Mapping[str, Any]] | None = None,
                     baseline_schedule: str = "karras", progress: bool = False) -> dict[str, Any]:
    """``rmse_ref`` and ``fd`` of the recipe and of the untuned baseline (``(solver, options)`` on
    ``baseline_schedule``; default the recipe's own solver) on held-out seeds, measured as ``fewstep bench``
    does."""
    seeds = seed_list(eval_seeds, "eval_seeds")
    ref = reference_samples(model, seeds, sigma_max=start_sigma(model), progress=progress)[0]
    data = DataReference(model)
    names = ["rmse_ref"] + (["fd"] if data.data is not None else [])
    b_solver, b_opts = baseline or (recipe.solver, {})
    tuned = sample(model, recipe=recipe, seeds=seeds)
    untuned = sample(model, solver=b_solver, nfe=recipe.nfe, schedule=baseline_schedule,
                     schedule_options={"sigma_max": start_sigma(model)}, seeds=seeds,
                     solver_options=dict(b_opts))
    out: dict[str, Any] = compute_metrics(names, tuned, ref, data)
    out["untuned"] = {"solver": b_solver, "solver_options": dict(b_opts), "schedule": baseline_schedule,
                      **compute_metrics(names, untuned, ref, data)}
    out["eval_seeds"] = seed_text(seeds)
    return out


def make_recipe(model: Denoiser, method: str, solver: str, nfe: int, sigmas: Any, *, t_start: float,
                solver_options: Mapping[str, Any] | None = None, objective: Mapping[str, Any] | None = None,
                options: Mapping[str, Any] | None = None, tune_seeds: Sequence[int] = (),
                eval_seeds: Sequence[int] | None = EVAL_SEEDS,
                baseline: tuple[str, Mapping[str, Any]] | None = None,
                baseline_schedule: str = "karras", progress: bool = False) -> Recipe:
    """Build the recipe, then measure its held-out quality (unless ``eval_seeds`` is None)."""
    info = {"tune_seconds": round(time.perf_counter() - t_start, 2), "tune_seeds": seed_text(tune_seeds),
            "options": dict(options or {}), "objective": dict(objective or {}), "fewstep": __version__}
    recipe = Recipe(model=model.name, model_hash=model_hash(model), solver=solver, nfe=nfe,
                    sigmas=tuple(float(v) for v in check_sigmas(sigmas)), method=method,
                    solver_options=dict(solver_options or {}), info=info)
    if eval_seeds is None:
        return recipe
    quality = held_out_quality(model, recipe, eval_seeds, baseline, baseline_schedule, progress)
    return dataclasses.replace(recipe, quality=quality)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar (it shows the time left) that is silent when ``enabled`` is false."""
    return tqdm(total=total, desc=desc, disable=not enabled, unit="it", leave=False)
