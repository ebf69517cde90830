"""Fitting DC-Solver (Zhao et al., arXiv 2409.03755): the per-step compensation ratios and the cascade
polynomial regression (CPR) over them. The compensated solvers live in ``fewstep.diffusion.solvers.dc``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from fewstep.diffusion.sampling import solve
from fewstep.diffusion.solvers.dc import BASES, cpr_features
from fewstep.diffusion.tune import _measure as M
from fewstep.diffusion.tune import _tuning as T
from fewstep.seeds import EVAL_SEEDS, TUNE_SEEDS

__all__ = ["fit_cpr", "fit_ratios", "tune"]


def fit_cpr(runs: Iterable[tuple[int, float, Sequence[float]]]) -> list[float]:
    """Fit the 27 CPR coefficients to fitted ratios.

    ``rho_i`` is quadratic in ``i / N``, its coefficients quadratic in ``cfg / 12``, theirs quadratic in
    ``N / 50`` (the paper's cascade, with ``N`` the number of steps = NFE for these solvers); the model is
    linear in the 27 coefficients, so this is one least-squares solve (minimum norm: with a single
    guidance scale the ``cfg`` terms are not identified).

    Args:
        runs: ``(n_steps, guidance_scale, ratios)`` per fitted run; ``ratios[i]`` for ``i >= 2`` are used.
    """
    rows, target = [], []
    for n, g, r in runs:
        if len(r) != n:
            raise ValueError(f"a run with {n} steps needs {n} ratios; got {len(r)}")
        for i in range(2, n):
            rows.append(cpr_features(i, n, g))
            target.append(float(r[i]))
    if not rows:
        raise ValueError("fit_cpr needs runs with at least 3 steps")
    coef = np.linalg.lstsq(np.array(rows), np.array(target), rcond=None)[0]
    return coef.tolist()


# ----------------------------------------------------------------------------------------------
# fitting
# ----------------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _state_after(model, x, sigmas, solver, options, ratios, i: int):
    """The solver's state at grid point ``i + 1`` with ``ratios`` (stops the run there)."""
    if i + 1 == len(sigmas) - 1:
        return solve(model, x, sigmas, solver, float64=True, dc_ratios=ratios, **options)

    def grab(payload):
        if payload["i"] == i + 1:
            raise _Stop(payload["x"])

    try:
        solve(model, x, sigmas, solver, float64=True, dc_ratios=ratios, callback=grab, **options)
    except _Stop as stop:
        return stop.args[0]
    raise RuntimeError(f"the solver never reached grid point {i + 1}")


def fit_ratios(model, x, sigmas: list[float], ref: list, solver: str = "unipc_dc", options=None,
               bounds: tuple[float, float] = (0.0, 2.0), n_scan: int = 21, n_golden: int = 14,
               max_shift: int = 3, progress: bool = False) -> list[float]:
    """Fit ``rho_i`` step by step (earlier ones fixed) to minimise the MSE of the state at ``i + 1``
    against ``ref[i + 1]``: a scan of ``n_scan`` values over ``bounds`` (moved up to ``max_shift`` times
    by half its width while the best value lies on its edge), then golden-section search around the
    best. The paper uses AdamW; a 1-D search needs no gradients through the model."""
    if solver not in BASES:
        raise ValueError(f"dynamic compensation is available for {sorted(BASES)}; got {solver!r}")
    lo, hi = (float(b) for b in bounds)
    if not lo < 1.0 < hi:
        raise ValueError(f"bounds must contain 1 (no compensation); got {bounds!r}")
    options = dict(options or {})
    ratios = [1.0] * (len(sigmas) - 1)
    for i in tqdm(range(2, len(ratios)), disable=not progress, desc="DC ratios", unit="step"):
        def loss(rho):
            trial = ratios[:i] + [float(rho)] + ratios[i + 1:]
            return float((_state_after(model, x, sigmas, solver, options, trial, i) - ref[i + 1]).pow(2).mean())

        scanned = {float(r): loss(r) for r in np.linspace(lo, hi, n_scan)}
        for _ in range(max_shift):
            pts = sorted(scanned)
            k = int(np.argmin([scanned[p] for p in pts]))
            if 0 < k < len(pts) - 1:
                break
            half = (hi - lo) / 2
            new = np.linspace(pts[0] - half, pts[0], n_scan // 2 + 1)[:-1] if k == 0 else \
                np.linspace(pts[-1], pts[-1] + half, n_scan // 2 + 1)[1:]
            scanned.update({float(r): loss(r) for r in new})
        pts = sorted(scanned)
        k = int(np.argmin([scanned[p] for p in pts]))
        a, b = pts[max(k - 1, 0)], pts[min(k + 1, len(pts) - 1)]
        g = (math.sqrt(5) - 1) / 2
        c, d = b - g * (b - a), a + g * (b - a)
        fc, fd = loss(c), loss(d)
        for _ in range(n_golden):
            if fc < fd:
                b, d, fd = d, c, fc
                c = b - g * (b - a)
                fc = loss(c)
            else:
                a, c, fc = c, d, fd
                d = a + g * (b - a)
                fd = loss(d)
        ratios[i] = float(min((scanned[pts[k]], pts[k]), (fc, c), (fd, d), (loss(1.0), 1.0))[1])
    return ratios


def tune(model, *, solver: str = "unipc_dc", nfe: int, seeds=TUNE_SEEDS, eval_seeds=EVAL_SEEDS,
         progress: bool = True, trajectories: int = 10, schedule: str = "karras", sigmas=None, fit_rtol: float = 1e-5,
         bounds: tuple[float, float] = (0.0, 2.0), cpr_nfes: Sequence[int] | None = None,
         guidance_scale: float = 1.0, solver_options: dict | None = None):
    """Fit DC ratios for ``solver`` at ``nfe`` on the first ``trajectories`` tuning seeds (about 10, as
    in the paper) against adaptive reference states (``fit_rtol``) at every grid point.

    ``solver`` is ``unipc_dc``, ``dpmpp_2m_dc`` or ``ipndm_dc`` (or their base solvers' names);
    ``solver_options`` are the base solver's (``order``, ``variant``, ...); ``sigmas`` replaces the
    ``schedule`` grid (for example a tuned schedule). With ``cpr_nfes`` the ratios are fitted at each
    of those NFEs, CPR is fitted to them, and the recipe stores the CPR coefficients, which predict
    the ratios at ``nfe`` (seen or not). Quality compares the fitted solver with its base solver.
    """
    t0 = time.perf_counter()
    solver = {v: k for k, v in BASES.items()}.get(solver, solver)
    if solver not in BASES:
        raise ValueError(f"the dc method tunes {sorted(BASES)} (or their bases {sorted(BASES.values())}); "
                         f"got {solver!r}")
    base_opts = dict(solver_options or {})
    T.check_args(model, solver, nfe)
    tune_seeds = M.trajectories(T.seed_list(seeds, "seeds"), trajectories)
    M.disjoint(tune_seeds, eval_seeds)
    fitted, before, after = {}, {}, {}
    for n in sorted(set(cpr_nfes or [nfe])):
        sig = M.grid(model, solver, n, schedule, base_opts, sigmas if n == nfe else None)
        x = M.start(model, tune_seeds, sig[0])
        ref = M.reference_states(model, x, sig, fit_rtol)
        fitted[n] = fit_ratios(model, x, sig, ref, solver, base_opts, bounds, progress=progress)
        before[n] = M.rmse(M.run(model, tune_seeds, sig, solver, base_opts), ref[-1])
        after[n] = M.rmse(M.run(model, tune_seeds, sig, solver, {**base_opts, "dc_ratios": fitted[n]}), ref[-1])
    grid = M.grid(model, solver, nfe, schedule, base_opts, sigmas)
    if cpr_nfes:
        coef = fit_cpr([(len(r), guidance_scale, r) for r in fitted.values()])
        opts = {**base_opts, "cpr": coef, "guidance_scale": guidance_scale}
    else:
        opts = {**base_opts, "dc_ratios": fitted[nfe]}
    objective = {"final_rmse_tune_seeds": {str(n): [before[n], after[n]] for n in fitted},
                 "fitted_ratios": {str(n): r for n, r in fitted.items()}}
    return T.make_recipe(model, "dc", solver, nfe, grid, t_start=t0, solver_options=opts, objective=objective,
                         options={"fit_rtol": fit_rtol, "bounds": list(bounds), "schedule": schedule,
                                  "cpr_nfes": list(cpr_nfes or [])},
                         tune_seeds=tune_seeds, eval_seeds=eval_seeds, baseline=(BASES[solver], base_opts),
                         progress=progress)
