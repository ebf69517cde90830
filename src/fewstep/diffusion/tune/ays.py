"""Align Your Steps: a schedule that minimises the KL upper bound (KLUB) of the discretised sampler.

Sabour, Fidler & Kreis, *Align Your Steps: Optimizing Sampling Schedules in Diffusion Models*,
arXiv 2404.14507. In sigma space (``sigma(t) = t``) the true reverse SDE and its linearisation on
``t_0 > t_1 > ... > t_{N-1}``, which freezes ``D`` at the start of each interval, differ in KL by at most

    KLUB = sum_j int_{t_{j+1}}^{t_j} t^-3 E || D(x_t, t) - D(x_{t_j}, t_j) ||^2 dt,

the ``t^-3`` weight coming from Girsanov's theorem for ``dx = -2t (D - x)/t^2 dt + sqrt(2t) dW``. The
pairs ``(x_t, x_{t_j})`` are drawn from the forward process, whose paths the true reverse SDE
retraces: ``x_t = x0 + t eps1``, ``x_{t_j} = x_t + sqrt(t_j^2 - t^2) eps2``, with ``x0`` from the model
itself (exact data, or reference ODE samples) and ``t`` importance-sampled with density ``~ t^-3``.
Common random numbers make the estimate a smooth deterministic function of the schedule, so each
interior ``t_i`` is updated in turn with its neighbours fixed (a shrinking log-spaced line search),
until a sweep improves the KLUB by less than ``tol`` (early stopping). The ends stay at the model's
``sigma_max`` (capped at 80 when infinite) and ``sigma_min``; the last step goes to 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fewstep.diffusion.schedules import check_sigmas
from fewstep.diffusion.tune import _tuning as T
from fewstep.seeds import EVAL_SEEDS, TUNE_SEEDS

Tensor = torch.Tensor


def loglinear_interp(sigmas: Any, n_steps: int) -> Tensor:
    """AYS's interpolation of a schedule to ``n_steps`` steps, linear in ``log sigma`` over a uniform
    index (the NVIDIA project page's ``loglinear_interp``). A grid ending in 0 keeps its final 0: the
    positive part is interpolated to ``n_steps`` points and 0 appended; otherwise to ``n_steps + 1``."""
    s = check_sigmas(sigmas)
    zero = bool(s[-1] == 0)
    pos = s[:-1] if zero else s
    n_points = n_steps if zero else n_steps + 1
    if not isinstance(n_steps, int) or n_points < 2:
        raise ValueError(f"n_steps must be an integer >= {2 if zero else 1} for this grid; got {n_steps!r}")
    if pos.numel() < 2:
        raise ValueError(f"loglinear_interp needs at least 2 positive sigmas; got {s.tolist()}")
    xs = np.linspace(0, 1, pos.numel())
    ys = np.log(pos.numpy())
    out = torch.from_numpy(np.exp(np.interp(np.linspace(0, 1, n_points), xs, ys)))
    out[0], out[-1] = pos[0], pos[-1]  # exact ends despite exp(log(.))
    return torch.cat([out, out.new_zeros(1)]) if zero else out


class KLUB:
    """Monte Carlo KLUB with common random numbers: ``x0 [M, ...]``, fixed ``eps1``, ``eps2`` and, for
    each interval index, fixed uniforms that place ``t`` by inverting the ``t^-3`` density."""

    def __init__(self, model, x0: Tensor, n_intervals: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.model = model
        self.x0 = x0.float()
        self.eps1 = torch.randn(x0.shape, generator=g)
        self.eps2 = torch.randn(x0.shape, generator=g)
        self.u = torch.rand(n_intervals, x0.shape[0], generator=g, dtype=torch.float64)
        self.evals = 0

    def interval(self, j: int, a: float, b: float) -> float:
        """``int_a^b t^-3 E||D(x_t, t) - D(x_b, b)||^2 dt`` for ``a < b``, with interval ``j``'s uniforms."""
        inv_a, inv_b = a**-2, b**-2
        t = (inv_a - self.u[j] * (inv_a - inv_b)) ** -0.5  # density ~ t^-3 on [a, b]
        tb = t.float().reshape(-1, *([1] * (self.x0.ndim - 1)))
        x_t = self.x0 + tb * self.eps1
        x_b = x_t + (b * b - tb * tb).clamp_min(0).sqrt() * self.eps2
        sig = torch.cat([t.float(), torch.full_like(t, b).float()])
        with torch.no_grad():
            d = self.model(torch.cat([x_t, x_b]), sig).double()
        self.evals += 1
        m = self.x0.shape[0]
        sq = (d[:m] - d[m:]).pow(2).flatten(1).sum(1)
        return float(0.5 * (inv_a - inv_b) * sq.mean())

    def terms(self, t: Sequence[float]) -> list[float]:
        return [self.interval(j, t[j + 1], t[j]) for j in range(len(t) - 1)]


def optimise(klub: KLUB, t: list[float], *, candidates: int = 6, max_sweeps: int = 8, tol: float = 1e-3,
             bar=None) -> tuple[list[float], list[float]]:
    """Coordinate-wise minimisation of the KLUB over the interior ``t[1:-1]`` (neighbours fixed).

    Sweep ``k`` tries ``candidates`` points, log-spaced over a window that starts as the whole gap
    between the neighbours and halves every sweep; stops early when a sweep gains less than ``tol``
    (relative). Returns the schedule and the KLUB after each sweep (the first entry: before)."""
    t = list(t)
    terms = klub.terms(t)
    history = [sum(terms)]
    for sweep in range(max_sweeps):
        for i in range(1, len(t) - 1):
            lo, hi = math.log(t[i + 1]), math.log(t[i - 1])
            half = 0.5 * (hi - lo) * 0.5**sweep
            c = math.log(t[i])
            grid = np.linspace(max(lo, c - half), min(hi, c + half), candidates + 2)[1:-1]
            best = (terms[i - 1] + terms[i], t[i], terms[i - 1], terms[i])
            for v in np.exp(grid):
                left, right = klub.interval(i - 1, v, t[i - 1]), klub.interval(i, t[i + 1], v)
                if left + right < best[0]:
                    best = (left + right, float(v), left, right)
            t[i], terms[i - 1], terms[i] = best[1], best[2], best[3]
            if bar is not None:
                bar.update()
        history.append(sum(terms))
        if history[-2] - history[-1] < tol * history[-2]:
            break
    return t, history


def model_samples(model, seeds: Sequence[int], n: int, stream: int = 0, progress: bool = False) -> Tensor:
    """``n`` samples of the model's own distribution: exact data when the model has it (drawn from
    generator ``seeds[0] + stream``), otherwise the reference ODE solutions from ``seeds`` (cycled to ``n``)."""
    if hasattr(model, "sample_data"):
        return model.sample_data(n, torch.Generator().manual_seed(int(seeds[0]) + stream))
    ref = T.tuning_references(model, seeds, progress=progress)
    return ref[torch.arange(n) % ref.shape[0]]


def tune(model, *, solver: str = "dpmpp_2m", nfe: int = 10, seeds: Sequence[int] = TUNE_SEEDS,
         eval_seeds: Sequence[int] | None = EVAL_SEEDS, progress: bool = True, mc_samples: int = 256,
         candidates: int = 6, max_sweeps: int = 6, tol: float = 1e-2, ref_steps: int = 10):
    """Fit an AYS schedule for ``solver`` at ``nfe`` evaluations on ``model``; returns a ``Recipe``.

    As in the paper, the schedule is optimised at ``ref_steps`` steps (10) and brought to fewer steps by
    ``loglinear_interp``; with more steps than that it is optimised directly. Minimised at very few
    steps, the KLUB, which models no solver's error, drives the points towards ``sigma_min``.

    Args:
        seeds: tuning seeds (the Monte Carlo draws and, for non-exact models, the reference samples).
        eval_seeds: held-out seeds for the recipe's quality (``None``: do not measure).
        mc_samples: Monte Carlo samples per interval (a few hundred, as in the paper).
        candidates, max_sweeps, tol: the coordinate search (see ``optimise``).
        ref_steps: the number of steps at which the KLUB is optimised.
    """
    t_start = time.perf_counter()
    n_steps = T.check_args(model, solver, nfe)
    seeds = T.seed_list(seeds, "seeds", minimum=1)
    T.check_sizes(mc_samples=(mc_samples, 8, T.MAX_DRAWS), candidates=(candidates, 2, T.MAX_SEARCH),
                  max_sweeps=(max_sweeps, 1, T.MAX_SEARCH), ref_steps=(ref_steps, 2, T.MAX_SEARCH))
    if n_steps > T.MAX_SEARCH:
        raise ValueError(f"ays optimises at most {T.MAX_SEARCH} steps; nfe={nfe} with {solver!r} takes {n_steps}")
    grid = T.untuned_grid(model, max(n_steps, ref_steps))
    t0 = [float(v) for v in grid[:-1]]
    x0 = model_samples(model, seeds, mc_samples, progress=progress)
    klub = KLUB(model, x0, len(t0) - 1, seed=seeds[0])
    with T.progress_bar(max_sweeps * max(len(t0) - 2, 0), "ays", progress) as bar:
        t, history = optimise(klub, t0, candidates=candidates, max_sweeps=max_sweeps, tol=tol, bar=bar)
    # fresh noise (and, for exact models, fresh data) for an honest before/after comparison
    fresh = KLUB(model, model_samples(model, seeds, mc_samples, stream=1), len(t0) - 1, seed=seeds[0] + 1)
    objective = {"name": "klub", "steps": len(t0), "initial": sum(fresh.terms(t0)), "final": sum(fresh.terms(t)),
                 "sweeps": len(history) - 1, "fit_history": history,
                 "note": "KLUB of the Karras and the fitted grids at `steps` steps, on fresh Monte Carlo draws"}
    options = {"mc_samples": mc_samples, "candidates": candidates, "max_sweeps": max_sweeps, "tol": tol,
               "ref_steps": ref_steps}
    sigmas = loglinear_interp(t + [0.0], n_steps)
    return T.make_recipe(model, "ays", solver, nfe, sigmas, t_start=t_start, objective=objective,
                         options=options, tune_seeds=seeds, eval_seeds=eval_seeds, progress=progress)
