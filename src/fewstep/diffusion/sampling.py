"""The driver: ``solve`` runs a registered solver over a grid; ``sample`` is the public entry point."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.noise import NOISE_TYPES, make_noise, seeded_noise
from fewstep.diffusion.recipe import as_recipe
from fewstep.diffusion.schedules import as_list, check_sigmas, get_sigmas
from fewstep.diffusion.solvers import get_solver

Tensor = torch.Tensor


class ModelOutputError(FloatingPointError):
    """The model returned NaN or Inf."""


class Evaluator:
    """``D(x, sigma)`` as the solvers see it: fixed ``cond``, the state's dtype, NaN/Inf checks naming
    the step, and the analytic first step (AFS, Zhou et al., arXiv 2312.00094), which replaces the
    first evaluation by ``eps = x / sqrt(1 + sigma^2)``."""

    def __init__(self, model: Denoiser, sigmas: Sequence[float], cond: Mapping[str, Any] | None, afs: bool):
        self.model, self.sigmas, self.cond, self.afs_pending = model, sigmas, cond, afs
        self.calls = 0

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        if self.afs_pending:
            self.afs_pending = False
            return x - sigma * x / math.sqrt(1 + sigma * sigma)
        self.calls += 1
        out = self.model(x, sigma, self.cond).to(x.dtype)
        if not torch.isfinite(out).all():
            step = next((i for i in range(len(self.sigmas) - 1) if self.sigmas[i + 1] < sigma <= self.sigmas[i]), 0)
            raise ModelOutputError(f"the model returned NaN or Inf at step {step} (sigma = {sigma:.6g}); "
                                   "check the model, its dtype, or the sigma range")
        return out


def solve(model: Denoiser, x: Tensor, sigmas: Any, solver: str = "dpmpp_2m", *, cond: Mapping[str, Any] | None = None,
          afs: bool = False, denoise_to_zero: bool = False, float64: bool = False, callback: Callable | None = None,
          return_trajectory: bool = False, noise_type: str = "gaussian", noise_seeds: Sequence[int] | None = None,
          **options: Any):
    """Integrate the probability-flow ODE of ``model`` from ``x`` (at ``sigmas[0]``) along ``sigmas``
    (or, for a stochastic solver, its reverse SDE).

    Args:
        model: a ``Denoiser``.
        x: the initial state ``[B, ...]``; when ``sigmas[0] = inf`` it holds unit noise.
        sigmas: a strictly decreasing grid, ending at 0 or at a positive sigma.
        solver: a registered solver name; ``options`` are its options (e.g. ``order=3``).
        afs: replace the first evaluation by the analytic first step (saves one NFE).
        denoise_to_zero: when the grid ends above 0, finish with ``x = D(x, sigma_last)`` (+1 NFE).
        float64: keep the state in float64 (the model still computes in its own dtype).
        callback: called after each evaluation with k-diffusion's dict keys.
        return_trajectory: also return the list of states, one per grid point.
        noise_type: the noise of a stochastic solver: ``"gaussian"`` (independent draws) or
            ``"brownian"`` (increments of one Brownian motion in sigma per sample, consistent across grids).
        noise_seeds: one seed per sample for that noise (default ``0..B-1``); a seed's noise does not
            depend on the batch. Deterministic solvers draw no noise.

    Returns:
        The final state, or ``(state, trajectory)``.
    """
    info = get_solver(solver)
    _check_solver_options(info, options)
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"unknown noise_type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")
    grid = as_list(check_sigmas(sigmas))
    if float64:
        x = x.double()
    ev = Evaluator(model, grid, cond, afs)
    traj = [x] if return_trajectory else None
    if math.isinf(grid[0]):  # zero terminal SNR: take the first step in the x0 form
        d = ev(x, grid[0])
        if callback is not None:
            callback({"x": x, "i": 0, "sigma": grid[0], "sigma_hat": grid[0], "denoised": d})
        x = d if grid[1] == 0 else grid[1] * x + d
        grid = grid[1:]
        if traj is not None:
            traj.append(x)
    if len(grid) > 1:
        cb = callback
        if traj is not None:
            def cb(payload, _user=callback):
                if payload["i"] > 0:
                    traj.append(payload["x"])
                if _user is not None:
                    _user(payload)
        if info.stochastic:
            seeds = list(range(x.shape[0])) if noise_seeds is None else list(noise_seeds)
            if len(seeds) != x.shape[0]:
                raise ValueError(f"noise_seeds has {len(seeds)} seeds for a batch of {x.shape[0]}")
            options = {**options, "noise": make_noise(noise_type, seeds, x.shape[1:], x.dtype, x.device)}
        x = info.fn(ev, x, grid, callback=cb, **options)
        if traj is not None:
            traj.append(x)
    if denoise_to_zero and grid[-1] > 0:
        x = ev(x, grid[-1])
    return (x, traj) if return_trajectory else x


def _check_solver_options(info, options: Mapping[str, Any]) -> None:
    allowed = info.options
    if "noise" in options:
        raise ValueError("noise is injected by the driver; choose it with noise_type= and noise_seeds=")
    bad = set(options) - set(allowed)
    if bad:
        valid = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "none"
        raise ValueError(f"unknown option(s) {sorted(bad)} for solver {info.name!r}; valid options: {valid}")


def plan_steps(solver: str, nfe: int, *, final_zero: bool = True, afs: bool = False, denoise_to_zero: bool = False,
               infinite_start: bool = False, options: Mapping[str, Any] | None = None) -> int:
    """The most steps ``solver`` (with ``options``) can take with at most ``nfe`` model evaluations."""
    info = get_solver(solver)
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer; got {nfe!r}")

    def cost(n: int) -> float:
        try:
            c = (1 + info.evals(n - 1, final_zero, options)) if infinite_start else info.evals(n, final_zero, options)
        except ValueError:  # the solver cannot take n steps (Restart needs a point to restart from)
            return math.inf
        return c - int(afs) + int(denoise_to_zero and not final_zero)

    # every step costs at least one evaluation and AFS saves one, so n <= nfe + 1
    n = max((k for k in range(1, nfe + 2) if cost(k) <= nfe), default=0)
    if n == 0:
        fewest = next((c for c in map(cost, range(1, nfe + 4)) if c < math.inf), "more")
        raise ValueError(f"nfe={nfe} is too small for solver {solver!r}: its shortest run costs {fewest} evaluations")
    return n


def sample(model: Denoiser, *, solver: str = "dpmpp_2m", nfe: int | None = None, schedule: str | None = None,
           batch: int | None = None, seed: int = 0, seeds: Sequence[int] | None = None, noise: Tensor | None = None,
           cond: Mapping[str, Any] | None = None, shape: Sequence[int] | None = None,
           solver_options: Mapping[str, Any] | None = None, schedule_options: Mapping[str, Any] | None = None,
           sigma_min: float | None = None, sigma_max: float | None = None, final: str = "zero", afs: bool = False,
           denoise_to_zero: bool = False, float64: bool = False, dtype: torch.dtype = torch.float32,
           callback: Callable | None = None, return_trajectory: bool = False, noise_type: str = "gaussian",
           recipe: Any = None, force: bool = False):
    """Draw samples from ``model`` with ``solver`` using **at most** ``nfe`` model evaluations.

    Args:
        model: a ``Denoiser`` (from ``fewstep.load_model`` or an adapter).
        solver: a name from ``fewstep.list_solvers()``.
        nfe: the evaluation budget (default 10, or the recipe's); the number of steps is the largest that fits it.
        schedule: a name from ``fewstep.list_schedules()``; by default ``karras``, or ``discrete``
            (trailing) for discrete-time models and ``time_uniform`` when ``sigma_max`` is infinite.
        batch, seed, seeds: sample ``i`` uses seed ``seeds[i]`` (default ``seed + i``) with its own
            generator, so a seed's sample is the same at every batch size. A stochastic solver draws
            its noise from the same seeds (in a separate stream).
        noise: standard-normal noise ``[B, *shape]`` to use instead; sampling starts at
            ``x = sigma_max * noise`` (or ``noise`` itself when ``sigma_max = inf``).
        cond: model keywords, passed to every evaluation.
        solver_options, schedule_options: options of the solver and the schedule.
        afs, denoise_to_zero, float64, callback, return_trajectory, noise_type: see ``solve``.
        recipe: a tuned sampler from ``fewstep tune`` (a ``Recipe``, its JSON path or dict): its solver,
            options and sigmas replace ``solver`` and ``schedule``. One made for another model or
            ``nfe`` is refused, unless ``force`` (then it is used as it is, with a warning).

    Returns:
        Samples in data space ``[B, *shape]`` (and the trajectory when asked).
    """
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a fewstep Denoiser (see fewstep.load_model); got {type(model).__name__}")
    if recipe is not None:
        recipe = as_recipe(recipe)
        recipe.check(model, nfe, force)
        solver, nfe, schedule = recipe.solver, recipe.nfe, "explicit"
        final = "zero" if recipe.sigmas[-1] == 0 else "min"
        solver_options = {**recipe.solver_options, **dict(solver_options or {})}
        schedule_options = {"sigmas": list(recipe.sigmas)}
    nfe = 10 if nfe is None else nfe
    if schedule is None:
        if getattr(model.process, "num_train_timesteps", None) is not None:
            schedule = "discrete"
        elif math.isinf(model.sigma_max) and sigma_max is None:
            schedule = "time_uniform"
        else:
            schedule = "karras"
    top = float(model.sigma_max if sigma_max is None else sigma_max)
    if schedule == "discrete":
        top = float(model.sigma_max)
    n_steps = plan_steps(solver, nfe, final_zero=final == "zero", afs=afs, denoise_to_zero=denoise_to_zero,
                         infinite_start=math.isinf(top) and schedule != "explicit", options=solver_options)
    sigmas = get_sigmas(schedule, n_steps, model, final=final, sigma_min=sigma_min, sigma_max=sigma_max,
                        **dict(schedule_options or {}))
    if noise is None:
        shape = tuple(shape or model.shape or ())
        if not shape:
            raise ValueError("this model does not know its data shape; pass shape=(...) or noise=...")
        if seeds is None:
            seeds = range(seed, seed + (batch or 1))
        noise = seeded_noise(list(seeds), shape, dtype=dtype)
    elif not torch.is_tensor(noise):
        raise TypeError("noise must be a tensor of standard-normal values [B, *shape]")
    if seeds is None:
        seeds = range(seed, seed + noise.shape[0])
    s0 = float(sigmas[0])
    x = noise if math.isinf(s0) else s0 * noise
    with torch.no_grad():
        return solve(model, x, sigmas, solver, cond=cond, afs=afs, denoise_to_zero=denoise_to_zero, float64=float64,
                     callback=callback, return_trajectory=return_trajectory, noise_type=noise_type,
                     noise_seeds=list(seeds), **dict(solver_options or {}))
