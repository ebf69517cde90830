"""The driver: ``solve`` runs a registered solver over a grid; ``sample`` is the public entry point."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fewstep.diffusion.defaults import default_choice
from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.noise import NOISE_TYPES, make_noise, seeded_noise
from fewstep.diffusion.recipe import as_recipe
from fewstep.diffusion.schedules import as_list, check_sigmas, get_sigmas
from fewstep.diffusion.solvers import get_solver
from fewstep.limits import MAX_NFE, MAX_SEEDS, check_count

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
            if math.isinf(sigma):  # the limit of x - sigma x / sqrt(1 + sigma^2) for the state x = sigma eps
                return torch.zeros_like(x)
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
          noise: Callable[[float, float], Tensor] | None = None, **options: Any):
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
        noise: the stochastic solver's noise itself, ``noise(sigma, sigma_next) -> [B, ...]`` unit normals, in
            place of ``noise_type`` and ``noise_seeds`` (e.g. drawn from a pipeline's own generator).

    Returns:
        The final state, or ``(state, trajectory)``.
    """
    info = get_solver(solver)
    _check_solver_options(info, options)
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"unknown noise_type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")
    if noise is not None and (not callable(noise) or noise_seeds is not None or noise_type != "gaussian"):
        raise ValueError("noise must be a callable noise(sigma, sigma_next), given without noise_seeds or "
                         f"noise_type; got {type(noise).__name__}")
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
        if info.stochastic and noise is None:
            seeds = list(range(x.shape[0])) if noise_seeds is None else list(noise_seeds)
            if len(seeds) != x.shape[0]:
                raise ValueError(f"noise_seeds has {len(seeds)} seeds for a batch of {x.shape[0]}")
            noise = make_noise(noise_type, seeds, x.shape[1:], x.dtype, x.device)
        if info.stochastic:
            options = {**options, "noise": noise}
        x = info.fn(ev, x, grid, callback=cb, **options)
        if traj is not None:
            traj.append(x)
    if denoise_to_zero and grid[-1] > 0:
        x = ev(x, grid[-1])
    return (x, traj) if return_trajectory else x


def _check_solver_options(info, options: Mapping[str, Any]) -> None:
    allowed = info.options
    if "noise" in options:
        raise ValueError("noise is not a solver option: give solve(..., noise=) or noise_type= and noise_seeds=")
    bad = set(options) - set(allowed)
    if bad:
        valid = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "none"
        raise ValueError(f"unknown option(s) {sorted(bad)} for solver {info.name!r}; valid options: {valid}")


def plan_steps(solver: str, nfe: int, *, final_zero: bool = True, afs: bool = False, denoise_to_zero: bool = False,
               infinite_start: bool = False, options: Mapping[str, Any] | None = None) -> int:
    """The most steps ``solver`` (with ``options``) can take with at most ``nfe`` model evaluations.

    The cost of ``n`` steps never decreases with ``n`` once it is finite, so the answer is found by bisection
    (``O(log nfe)`` cost evaluations) between the first feasible number of steps and ``nfe + 2``.
    """
    info = get_solver(solver)
    check_count("nfe", nfe, 1, MAX_NFE)

    def cost(n: int) -> float:
        try:
            c = (1 + info.evals(n - 1, final_zero, options)) if infinite_start else info.evals(n, final_zero, options)
        except ValueError:  # the solver cannot take n steps (Restart needs a point to restart from)
            return math.inf
        return c - int(afs) + int(denoise_to_zero and not final_zero)

    # Every step after the first costs at least one evaluation, and AFS or a stored first output saves at most
    # two, so n <= nfe + 2. Some solvers cannot take one step (Restart): the first feasible n is among 1..3.
    first = next((k for k in (1, 2, 3) if cost(k) < math.inf), None)
    if first is None or cost(first) > nfe:
        fewest = "more than 3 steps" if first is None else f"{cost(first):g} evaluations"
        raise ValueError(f"nfe={nfe} is too small for solver {solver!r}: its shortest run costs {fewest}")
    lo, hi = first, nfe + 2  # cost(lo) <= nfe; find the largest such n in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= nfe:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class SamplingPlan:
    """What ``sample`` runs, resolved once from its arguments or a recipe: the solver, its options, the grid, and
    whether the first evaluation is the analytic first step."""

    solver: str
    solver_options: dict[str, Any]
    sigmas: Tensor
    afs: bool = False


DEFAULT_SOLVER = "dpmpp_2m"
DEFAULT_NFE = 10


def plan(model: Denoiser, *, solver: str | None = None, nfe: int | None = None, schedule: str | None = None,
         solver_options: Mapping[str, Any] | None = None, schedule_options: Mapping[str, Any] | None = None,
         recipe: Any = None, force: bool = False, afs: bool | None = None,
         denoise_to_zero: bool = False) -> SamplingPlan:
    """Resolve the solver, its options and the sigma grid that ``sample`` uses (arguments as in ``sample``).

    A recipe fixes the solver, its fitted options and the sigmas, so a ``schedule`` or ``schedule_options``
    beside it, another ``solver``, or a ``solver_options`` value that differs from the recipe's is refused.
    A model with a sampler of its own (``model.sampling``: a distilled student) gets it when none of ``solver``,
    ``schedule``, their options, ``afs`` or ``recipe`` is given; an ``nfe`` other than its own is then refused.
    """
    own = model.sampling
    if own is not None and recipe is None and solver is None and schedule is None and afs is None \
            and not solver_options and not schedule_options:  # the model's own sampler (a distilled student)
        if nfe not in (None, own["nfe"]):
            raise ValueError(f"{model.name} samples with its own sampler at NFE {own['nfe']}; for another NFE load "
                             f"it with fewstep.load_model(..., nfe=...) if it was trained for that NFE, or give "
                             f"solver= and schedule= to sample it with another sampler")
        return plan(model, **own, denoise_to_zero=denoise_to_zero)
    schedule_options = dict(schedule_options or {})
    solver_options = dict(solver_options or {})
    if recipe is not None:
        recipe = as_recipe(recipe)
        conflicts = []
        if solver not in (None, recipe.solver):
            conflicts.append(f"solver={solver!r} (the recipe's is {recipe.solver!r})")
        if schedule is not None or schedule_options:
            conflicts.append("schedule/schedule_options (the recipe fixes the sigmas)")
        clash = sorted(k for k, v in solver_options.items()
                       if k in recipe.solver_options and recipe.solver_options[k] != v)
        if clash:
            conflicts.append(f"solver_options {clash} (the recipe fitted them)")
        if conflicts:
            raise ValueError("a recipe cannot be combined with " + "; ".join(conflicts) + "; leave them out")
        recipe.check(model, nfe, force)
        options = {**recipe.solver_options, **solver_options}
        n_steps = plan_steps(recipe.solver, recipe.nfe, final_zero=recipe.sigmas[-1] == 0, afs=bool(afs),
                             denoise_to_zero=denoise_to_zero, options=options)
        return SamplingPlan(recipe.solver, options, get_sigmas("explicit", n_steps, model, sigmas=list(recipe.sigmas)),
                            bool(afs))
    nfe = DEFAULT_NFE if nfe is None else nfe
    if schedule is None:  # the measured default for the model's family and NFE (fewstep.diffusion.defaults)
        chosen = default_choice(getattr(model.process, "family", None), nfe, solver, schedule_options,
                                solver_options)
        if chosen is not None:
            solver, solver_options, schedule, schedule_options = chosen[:4]
            afs = chosen.afs if afs is None else afs
    solver = DEFAULT_SOLVER if solver is None else solver
    afs = bool(afs)
    if schedule is None:
        if getattr(model.process, "num_train_timesteps", None) is not None:
            schedule = "discrete"
        elif math.isinf(model.sigma_max) and "sigma_max" not in schedule_options:
            schedule = "time_uniform"
        else:
            schedule = "karras"
    top = float(schedule_options.get("sigma_max", model.sigma_max))
    if schedule == "discrete":
        top = float(model.sigma_max)
    final = schedule_options.get("final", "zero")
    n_steps = plan_steps(solver, nfe, final_zero=final == "zero", afs=afs, denoise_to_zero=denoise_to_zero,
                         infinite_start=math.isinf(top) and schedule != "explicit", options=solver_options)
    return SamplingPlan(solver, solver_options, get_sigmas(schedule, n_steps, model, **schedule_options), afs)


def sample(model: Denoiser, *, solver: str | None = None, nfe: int | None = None, schedule: str | None = None,
           solver_options: Mapping[str, Any] | None = None, schedule_options: Mapping[str, Any] | None = None,
           recipe: Any = None, force: bool = False, seeds: Sequence[int] | None = None, batch: int | None = None,
           seed: int = 0, noise: Tensor | None = None, cond: Mapping[str, Any] | None = None, afs: bool | None = None,
           denoise_to_zero: bool = False, dtype: torch.dtype | None = None, noise_type: str = "gaussian",
           callback: Callable | None = None, return_trajectory: bool = False):
    """Draw samples from ``model`` with ``solver`` using **at most** ``nfe`` model evaluations.

    Args:
        model: a ``Denoiser`` (from ``fewstep.load_model`` or an adapter).
        solver: a name from ``fewstep.list_solvers()`` (default: the measured choice for the model's family
            and ``nfe`` in ``fewstep.diffusion.defaults``, else ``dpmpp_2m``; or the recipe's). A model with a
            sampler of its own (``model.sampling``, a distilled student) uses it when ``solver``, ``schedule``,
            their options, ``afs`` and ``recipe`` are all left out.
        nfe: the evaluation budget (default 10, or the recipe's); the number of steps is the largest that fits it.
        schedule: a name from ``fewstep.list_schedules()``; by default the measured choice (with ``solver``
            when that is the measured solver), else ``karras``, or ``discrete`` (trailing) for discrete-time
            models and ``time_uniform`` when ``sigma_max`` is infinite.
        solver_options: options of the solver (``fewstep.list_solvers()[name]["options"]``).
        schedule_options: options of the schedule, and ``sigma_min``, ``sigma_max`` (override the model's
            range) and ``final`` (``"zero"``, the default, or ``"min"``: end the grid at ``sigma_min``).
        recipe: a tuned sampler from ``fewstep tune`` (a ``Recipe``, its JSON path or dict): it fixes the
            solver, its options and the sigmas. One made for another model or ``nfe`` is refused, unless
            ``force`` (then it is used as it is, with a warning).
        seeds: sample ``i`` starts from noise drawn with seed ``seeds[i]`` by its own generator, so a seed's
            sample is the same at every batch size; a stochastic solver draws its noise from the same seeds
            (in a separate stream). ``batch`` and ``seed`` are the shorthand ``seeds = seed .. seed + batch - 1``
            (default: one sample, seed 0).
        noise: standard-normal noise ``[B, *model.shape]`` to start from instead (``seeds``, if given, then only
            seed a stochastic solver's noise); sampling starts at ``x = sigma_max * noise`` (or ``noise`` itself
            when ``sigma_max = inf``).
        cond: model keywords, passed to every evaluation.
        dtype: the state's dtype (default float32, or the dtype of ``noise``); the model computes in its own.
        afs: replace the first evaluation by the analytic first step (``solve``); default: the measured choice
            when the solver and schedule are (``fewstep.diffusion.defaults``), else no.
        denoise_to_zero, callback, return_trajectory, noise_type: see ``solve``.

    Returns:
        Samples in data space ``[B, *shape]`` (and the trajectory when asked).
    """
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a fewstep Denoiser (see fewstep.load_model); got {type(model).__name__}")
    chosen = plan(model, solver=solver, nfe=nfe, schedule=schedule, solver_options=solver_options,
                  schedule_options=schedule_options, recipe=recipe, force=force, afs=afs,
                  denoise_to_zero=denoise_to_zero)
    seeds = seed_list(seeds, batch, seed, noise)
    if noise is None:
        if not model.shape:
            raise ValueError("this model does not know its data shape; pass noise=... of shape [B, *data shape]")
        noise = seeded_noise(seeds, model.shape, dtype=torch.float32 if dtype is None else dtype)
    else:
        if not torch.is_tensor(noise) or noise.ndim < 1 or noise.shape[0] < 1:
            raise TypeError("noise must be a tensor of standard-normal values [B, *shape] with B >= 1")
        if model.shape and tuple(noise.shape[1:]) != tuple(model.shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, but this model's samples have shape "
                             f"{tuple(model.shape)}: give [B, {', '.join(map(str, model.shape))}]")
        if dtype is not None:
            noise = noise.to(dtype)
    s0 = float(chosen.sigmas[0])
    x = noise if math.isinf(s0) else s0 * noise
    with torch.no_grad():
        return solve(model, x, chosen.sigmas, chosen.solver, cond=cond, afs=chosen.afs, denoise_to_zero=denoise_to_zero,
                     callback=callback, return_trajectory=return_trajectory, noise_type=noise_type,
                     noise_seeds=seeds, **chosen.solver_options)


def seed_list(seeds, batch, seed, noise=None) -> list[int]:
    """The per-sample seeds from ``seeds``, or ``batch`` and ``seed``, checked against each other and ``noise``."""
    n = None if noise is None or not torch.is_tensor(noise) or noise.ndim < 1 else int(noise.shape[0])
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer; got {batch!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    if batch is not None:
        check_count("batch", batch, 1, MAX_SEEDS)
    if seeds is not None:
        if batch is not None or seed != 0:
            raise ValueError("give seeds=[...] or batch= and seed=, not both")
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence | range):
            raise TypeError(f"seeds must be a sequence of non-negative integers; got {type(seeds).__name__}")
        out = list(seeds)
        if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in out):
            raise ValueError(f"seeds must be a non-empty sequence of non-negative integers; got {out[:8]!r}")
    else:
        count = batch if batch is not None else (n or 1)
        out = list(range(seed, seed + count))
    if n is not None and len(out) != n:
        raise ValueError(f"{len(out)} seeds for noise with a batch of {n}: give one seed per noise row")
    return out
