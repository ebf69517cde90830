"""Empirical model statistics (EMS) of DPM-Solver-v3 (Zheng et al., arXiv 2310.13268) for any ``Denoiser``.

The official code ships EMS for a few checkpoints but no way to compute them; this module does it
from data (or teacher) samples ``x0``. In sigma space (``alpha = 1``, ``lambda = -log sigma``), at each
point of a uniform lambda grid, with ``x = x0 + sigma z`` drawn from the marginal at that sigma:

- ``l = E[diag(sigma d eps/dx)]`` minimises ``E||sigma grad_x eps - diag(l)||_F^2`` per dimension. As
  ``sigma eps = x - D``, ``l = 1 - E[diag grad_x D]``, estimated with Hutchinson's identity
  ``diag J = E_v[v * (J v)]`` (Rademacher ``v``), ``J v`` by central differences or forward-mode autodiff.
- ``f = sigma eps - l x = (1 - l) x - D``; ``(s, b)`` minimise ``E||f' - s f - b||^2`` per dimension, where
  ``f'`` is the total lambda-derivative along the ODE ``dx/dlambda = D - x``:
  ``f' = (1 - l)(D - x) - l' x - dD``, with ``dD`` the derivative of ``D(x, e^-lambda)`` along
  ``(D - x, 1)`` and ``l'`` from the grid of ``l`` (second-order differences). Ordinary least
  squares gives ``s = Cov(f', f) / Var(f)`` and ``b = E f' - s E f``, with a ridge: ``Var f + 0.01 Var f'``
  in the denominator bounds ``|s| <= 5`` (``1 / (2 sqrt(0.01))``) and shrinks ``s`` to 0 where ``f`` barely
  varies and ``s`` is not identified (large sigma, where ``f`` is mostly estimation noise; Gaussian data).

Only first and second moments are accumulated, so memory does not grow with the number of samples.

**Closed form for Gaussian data** ``N(mu, diag(c))`` (the ``gauss`` model), ``D = mu + c/(c + sigma^2)(x - mu)``:
``grad_x D = diag(c / (c + sigma^2))`` is constant, so ``l = sigma^2 / (c + sigma^2) = 1 / (1 + c e^{2 lambda})``
exactly (and every Rademacher probe gives it exactly). Then ``f = (1 - l) x - D = -l mu`` does not depend
on ``x``: ``Var(f) = 0``, ``s`` is not identified and the minimum-norm solution is ``s = 0``. From
``dl/dlambda = -2 c e^{2 lambda} / (1 + c e^{2 lambda})^2 = -2 l (1 - l)``, ``f' = -mu l' = 2 l (1 - l) mu = b``.
With these, ``g`` is constant and the first-order v3 step is exact for this model.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewstep.cache import atomic_write_bytes, cache_dir, put_blob
from fewstep.diffusion.denoiser import model_hash
from fewstep.diffusion.recipe import Recipe
from fewstep.diffusion.sampling import sample
from fewstep.diffusion.solvers.dpm_v3 import EMS
from fewstep.diffusion.tune import _measure as M
from fewstep.diffusion.tune import _tuning as T
from fewstep.limits import MAX_SEEDS
from fewstep.models.digits_data import digits_data
from fewstep.seeds import EVAL_SEEDS, TUNE_SEEDS

__all__ = ["EMS", "compute_ems", "gauss_ems", "keep", "tune"]

DATA_SOURCES = ("auto", "model", "digits", "teacher")
DERIVATIVES = ("fd", "autograd")
KAPPA = 1e-2  # |s| <= 5
RIDGE = 1e-6
INLINE_LIMIT = 3000  # EMS with at most this many numbers are stored inside the recipe
STATISTICS = ("lsb", "ls", "l")  # which of the EMS a recipe keeps (the others are set to 0)
CONFIGS = ({"order": 3}, {"order": 2}, {"order": 3, "corrector": False}, {"order": 3, "predictor_pseudo": True},
           {"order": 2, "corrector_pseudo": True})


def compute_ems(model, *, data: str | torch.Tensor = "auto", n_samples: int = 512, n_grid: int = 60,
                sigma_min: float | None = None, sigma_max: float | None = None, derivative: str = "fd",
                fd_step: float = 1e-3, batch: int = 512, pooled: bool = False, seed: int = 0,
                cond: Mapping[str, Any] | None = None, progress: bool = False) -> EMS:
    """Estimate ``l, s, b`` of ``model`` on ``n_grid + 1`` uniform lambda points.

    Args:
        model: a ``Denoiser``.
        data: ``x0`` samples ``[N, *shape]``, or where to get them: ``"model"`` (its ``sample_data``),
            ``"digits"`` (the digits training split), ``"teacher"`` (UniPC at 32 NFE from fresh noise)
            or ``"auto"`` (the first of these that applies).
        n_samples: samples per grid point (each gets fresh noise ``z``).
        sigma_min, sigma_max: the range (default: the model's, with sigma_max = inf capped at 80).
        derivative: ``"fd"`` (central differences, any model) or ``"autograd"`` (forward-mode JVPs).
        fd_step: relative step of the differences: ``fd_step * sigma`` in x, ``fd_step`` in lambda.
        pooled: one scalar ``l, s, b`` per lambda (moments pooled over dimensions) instead of per dimension.
    """
    if derivative not in DERIVATIVES:
        raise ValueError(f"derivative must be one of {DERIVATIVES}; got {derivative!r}")
    T.check_sizes(n_samples=(n_samples, 2, T.MAX_DRAWS), n_grid=(n_grid, 2, T.MAX_SEARCH), batch=(batch, 1, MAX_SEEDS))
    if not 0 < fd_step < 0.5:
        raise ValueError(f"fd_step must lie in (0, 0.5); got {fd_step!r}")
    lo = float(model.sigma_min if sigma_min is None else sigma_min)
    hi = float(T.start_sigma(model) if sigma_max is None else sigma_max)
    if not 0 < lo < hi < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf; got {lo}, {hi}")
    x0 = _x0(model, data, n_samples, seed)
    lam = np.linspace(-math.log(hi), -math.log(lo), n_grid + 1)
    gen = torch.Generator().manual_seed(seed + 1)
    stats = np.zeros((lam.size, 11, math.prod(x0.shape[1:])))
    from tqdm import tqdm

    for k in tqdm(range(lam.size), disable=not progress, desc="EMS", unit="lambda"):
        sigma = math.exp(-lam[k])
        for i in range(0, x0.shape[0], batch):
            stats[k] += _moments(model, x0[i:i + batch], sigma, derivative, fd_step, gen, cond)
    return _solve(lam, stats / x0.shape[0], pooled, meta={"n_samples": str(x0.shape[0]), "derivative": derivative,
                                                          "model": getattr(model, "name", "?")})


def _x0(model, data, n: int, seed: int) -> torch.Tensor:
    shape = tuple(model.shape or ())
    if torch.is_tensor(data):
        x = data.detach().double()
        if tuple(x.shape[1:]) != shape and x[0].numel() == math.prod(shape):
            x = x.reshape(-1, *shape)
        if tuple(x.shape[1:]) != shape or x.shape[0] < 2:
            raise ValueError(f"data must be [N >= 2, *{shape}]; got {tuple(data.shape)}")
        return x
    if data not in DATA_SOURCES:
        raise ValueError(f"data must be a tensor or one of {DATA_SOURCES}; got {data!r}")
    if data == "auto":
        data = "model" if hasattr(model, "sample_data") else "digits" if shape == (1, 8, 8) else "teacher"
    gen = torch.Generator().manual_seed(seed)
    if data == "model":
        return model.sample_data(n, gen, dtype=torch.float64)
    if data == "digits":
        pool = digits_data("train")[0].double().reshape(-1, 1, 8, 8)
        if n <= len(pool):
            return pool[torch.randperm(len(pool), generator=gen)[:n]]
        return pool[torch.randint(len(pool), (n,), generator=gen)]

    with torch.no_grad():
        return sample(model, solver="unipc", nfe=32, seeds=range(10**7 + seed, 10**7 + seed + n), dtype=torch.float64)


def _moments(model, x0, sigma, derivative, fd_step, gen, cond) -> np.ndarray:
    """Sums over the batch of ``x, e, dD, x^2, x e, e^2, x dD, e dD, dD^2, v*Jv`` (``e = x - D``) and the
    count, per dimension."""
    x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    v = torch.randint(0, 2, x0.shape, generator=gen, dtype=torch.float64) * 2 - 1

    def den(y, lam_):
        return model(y, math.exp(-lam_), cond).double()

    lam_ = -math.log(sigma)
    with torch.no_grad():
        d = den(x, lam_)
        if derivative == "fd":
            ex, el = fd_step * sigma, fd_step
            jv = (den(x + ex * v, lam_) - den(x - ex * v, lam_)) / (2 * ex)
            dd = (den(x + el * (d - x), lam_ + el) - den(x - el * (d - x), lam_ - el)) / (2 * el)
    if derivative == "autograd":
        from torch.func import jvp

        try:
            jv = jvp(lambda y: model(y, sigma, cond).double(), (x,), (v,))[1]
            dd = jvp(lambda y, t: model(y, torch.exp(-t).expand(y.shape[0]), cond).double(),
                     (x, torch.tensor(lam_, dtype=torch.float64)), (d - x, torch.tensor(1.0, dtype=torch.float64)))[1]
        except RuntimeError as exc:
            raise ValueError(f"forward-mode autodiff failed for this model ({exc}); use derivative='fd'") from None
    xf, ef, ddf, vj = (t.reshape(t.shape[0], -1) for t in (x, x - d, dd, v * jv))  # e = x - D = sigma eps
    rows = [xf, ef, ddf, xf * xf, xf * ef, ef * ef, xf * ddf, ef * ddf, ddf * ddf, vj, torch.ones_like(xf)]
    return torch.stack([r.sum(0) for r in rows]).numpy()


def _solve(lam: np.ndarray, m: np.ndarray, pooled: bool, meta: dict[str, str]) -> EMS:
    """``l, s, b`` from the mean moments ``m`` ``[G, 11, D]`` (rows as in ``_moments``).

    With ``e = x - D``, ``a = 1 - l`` and ``c = l'``: ``f = e - l x`` and ``f' = -c x - a e - dD``. Working
    with ``e`` rather than ``D`` avoids cancelling ``(1 - l) x`` against ``D`` at small sigma.
    """
    if pooled:
        m = m.mean(2, keepdims=True)
    Ex, Ee, EdD, Exx, Exe, Eee, ExdD, EedD, EdDdD, EvJv = (m[:, j] for j in range(10))
    l = 1.0 - EvJv
    a, c = 1.0 - l, np.gradient(l, lam, axis=0, edge_order=2)
    Ef, Efp = Ee - l * Ex, -c * Ex - a * Ee - EdD
    var_x, cov_xe, var_e = Exx - Ex * Ex, Exe - Ex * Ee, Eee - Ee * Ee
    cov_xdD, cov_edD, var_dD = ExdD - Ex * EdD, EedD - Ee * EdD, EdDdD - EdD * EdD
    var_f = var_e - 2 * l * cov_xe + l * l * var_x
    var_fp = c * c * var_x + a * a * var_e + var_dD + 2 * c * a * cov_xe + 2 * c * cov_xdD + 2 * a * cov_edD
    cov = l * c * var_x + (l * a - c) * cov_xe - a * var_e - cov_edD + l * cov_xdD
    # ridge: KAPPA Var f' bounds |s| by 1 / (2 sqrt(KAPPA)) and shrinks s where f hardly varies (there s is
    # not identified); the other terms keep round-off (Var f ~ 0 on Gaussian data) from dividing by 0
    ridge = KAPPA * np.maximum(var_fp, 0.0) + RIDGE * (np.maximum(var_f, 0.0) + Ef * Ef) \
        + 1e-13 * (var_e + l * l * var_x) + 1e-300
    s = cov / (np.maximum(var_f, 0.0) + ridge)
    return EMS(lam, l, s, Efp - s * Ef, meta=meta)


def gauss_ems(model, lam: np.ndarray) -> EMS:
    """The closed-form EMS of a ``Gauss`` model (see the module docstring) on the grid ``lam``."""
    c = (model.std**2).numpy()[None]
    mu = model.mean.numpy()[None]
    l = 1.0 / (1.0 + c * np.exp(2 * np.asarray(lam))[:, None])
    return EMS(lam, l, np.zeros_like(l), 2 * l * (1 - l) * mu, meta={"kind": "gauss closed form"})


def tune(model, *, solver: str = "dpm_solver_v3", nfe: int, seeds=TUNE_SEEDS, eval_seeds=EVAL_SEEDS,
         progress: bool = True, ems: EMS | str | Path | None = None, ems_path: str | Path | None = None,
         schedules: Sequence[str] | None = None, sigmas=None, trajectories: int = 128, data: str = "auto",
         n_samples: int = 512, n_grid: int = 60, derivative: str = "fd", pooled: bool = False,
         statistics: Sequence[str] = STATISTICS) -> Recipe:
    """Compute (or reuse) EMS, then pick the grid, the statistics kept and the v3 configuration with the
    lowest error on the tuning seeds, and record held-out quality.

    Every schedule in ``schedules`` (default: ``model_schedules``, i.e. karras, logsnr, time_uniform and
    discrete for a discrete-time model; or the explicit ``sigmas``, e.g. a tuned schedule) is tried with
    every configuration in ``CONFIGS`` (order 2/3, corrector, pseudo-orders) and every entry of
    ``statistics``: ``"lsb"`` (all of the EMS), ``"ls"`` (``b = 0``) and ``"l"`` (``s = b = 0``, the
    paper's optimal linear part alone), ranked by RMSE to the reference on the first ``trajectories``
    tuning seeds. The second-order statistics ``s, b`` come from regressing a lambda-derivative on
    ``f``; at large sigma, where ``x`` is huge and ``l`` nearly 1, that regression is noisy (the
    derivative of the estimated ``l`` multiplies ``x``), and on the trained digits models ``b`` and ``s``
    can hurt more than they help (docs/benchmarks.md), so the tuning seeds decide. The recipe's solver is
    ``dpm_solver_v3``; ``solver`` names the untuned sampler it is compared with on ``eval_seeds`` (on
    Karras; for ``dpm_solver_v3`` itself the chosen configuration on ``l = 1, s = b = 0``, i.e.
    DPM-Solver++, on the chosen schedule (Karras for explicit ``sigmas``), so the comparison shows what
    the statistics add).

    Args:
        ems: precomputed statistics (an ``EMS`` or a path); otherwise ``compute_ems`` with ``data``,
            ``n_samples``, ``n_grid``, ``derivative``, ``pooled`` over the grids' sigma range, cached
            under ``$FEWSTEP_CACHE/ems`` so that other NFEs reuse it.
        ems_path: where to save a copy of the EMS the recipe uses. EMS of at most ``INLINE_LIMIT`` numbers are
            stored in the recipe (unless ``ems_path`` is given); larger ones in fewstep's cache, named in the
            recipe by the SHA-256 of their bytes (``"sha256:<hex>"``), never by a path.
        statistics: which of the EMS the candidates keep (see above).
    """
    t0 = time.perf_counter()
    T.check_args(model, "dpm_solver_v3", nfe)
    T.check_args(model, solver, nfe)
    seeds = T.seed_list(seeds, "seeds")
    tune_seeds = M.trajectories(seeds, trajectories)
    M.disjoint(tune_seeds, eval_seeds)
    T.check_sizes(n_samples=(n_samples, 2, T.MAX_DRAWS), n_grid=(n_grid, 2, T.MAX_SEARCH))  # before any reference
    if isinstance(statistics, str) or not statistics or set(statistics) - set(STATISTICS):
        raise ValueError(f"statistics must be a non-empty list drawn from {list(STATISTICS)}; got {statistics!r}")
    if sigmas is not None:
        grids = {"explicit": M.grid(model, "dpm_solver_v3", nfe, sigmas=sigmas)}
    else:
        schedules = T.model_schedules(model) if schedules is None else schedules
        if isinstance(schedules, str) or not schedules:
            raise ValueError(f"schedules must be a non-empty list of schedule names; got {schedules!r}")
        grids = {s: M.grid(model, "dpm_solver_v3", nfe, s) for s in schedules}
    lo = min(v for g in grids.values() for v in g if v > 0)
    hi = max(g[0] for g in grids.values())
    if ems is None:
        opts = {"data": data, "n_samples": n_samples, "n_grid": n_grid, "derivative": derivative, "pooled": pooled}
        stats, cached = _cached(model, lo, hi, progress, opts)
    else:
        stats, cached = (ems, None) if isinstance(ems, EMS) else (EMS.load(ems), Path(ems))
    t_ems = time.perf_counter() - t0
    if any(abs(g[0] - hi) > 1e-9 * hi for g in grids.values()):
        raise ValueError(f"the candidate schedules must start at the same sigma; got {[g[0] for g in grids.values()]}")
    variants = {k: keep(stats, k) for k in statistics}
    ref = T.tuning_references(model, seeds, hi, len(tune_seeds), progress)
    trials = [(name, k, dict(c)) for name in grids for k in statistics for c in CONFIGS]
    errs = [M.rmse(M.run(model, tune_seeds, grids[name], "dpm_solver_v3", {"ems": variants[k], **c}), ref)
            for name, k, c in trials]
    name, kept, best = trials[int(np.argmin(errs))]
    chosen = variants[kept]
    if ems_path is not None:
        chosen.save(ems_path)  # a copy for the user; the recipe names the statistics by content, never by path
    if ems_path is None and 3 * chosen.l.numel() + chosen.lam.numel() <= INLINE_LIMIT:
        ems_opt = chosen.to_dict()
    else:
        ems_opt = put_blob("ems", chosen.to_bytes())
    baseline = ("dpm_solver_v3", best) if solver == "dpm_solver_v3" else (solver, {})
    objective = {"rmse_tune_seeds": [[n, k, c, e] for (n, k, c), e in zip(trials, errs)], "chosen": best,
                 "statistics": kept, "schedule": name, "ems_seconds": round(t_ems, 2), "ems_meta": stats.meta}
    return T.make_recipe(model, "ems", "dpm_solver_v3", nfe, grids[name], t_start=t0,
                         solver_options={"ems": ems_opt, **best}, objective=objective,
                         options={"schedules": list(grids), "statistics": list(statistics),
                                  "n_grid": stats.lam.numel() - 1},
                         tune_seeds=tune_seeds, eval_seeds=eval_seeds, baseline=baseline,
                         baseline_schedule=name if solver == "dpm_solver_v3" and name != "explicit" else "karras",
                         progress=progress)


def keep(stats: EMS, which: str) -> EMS:
    """``stats`` with only the statistics named in ``which`` (``"lsb"``, ``"ls"`` or ``"l"``; the others 0)."""
    if which == "lsb":
        return stats
    return EMS(stats.lam, stats.l, stats.s if "s" in which else torch.zeros_like(stats.s),
               torch.zeros_like(stats.b), meta={**stats.meta, "kept": which})


def _cache_path(model, key: str) -> Path:
    digest = hashlib.sha256(f"{model_hash(model)}|{key}".encode()).hexdigest()[:16]
    return cache_dir() / "ems" / f"{model_hash(model)}-{digest}.safetensors"


def _arrays_digest(stats: EMS) -> str:
    return hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for v in (stats.lam, stats.l, stats.s, stats.b))
                          ).hexdigest()


def _cached(model, lo: float, hi: float, progress: bool, options: dict) -> tuple[EMS, Path | None]:
    """``compute_ems`` over ``[lo, hi]``, cached on disk by model and options (not for tensor data). An entry
    stores its key and a checksum of its arrays; one that is unreadable, for other arguments or edited is
    recomputed with a warning, and entries are written atomically."""
    if torch.is_tensor(options.get("data")):
        return compute_ems(model, sigma_min=lo, sigma_max=hi, progress=progress, **options), None
    key = json.dumps([model_hash(model), lo, hi, sorted((k, repr(v)) for k, v in options.items())])
    path = _cache_path(model, key)
    if path.is_file():
        try:
            stats = EMS.from_bytes(path.read_bytes())
            ok = stats.meta.get("cache_key") == key and stats.meta.get("digest") == _arrays_digest(stats)
        except Exception:  # truncated, empty or not safetensors: recompute
            ok = False
        if ok:
            return stats, path
        warnings.warn(f"the cached EMS {path} is not usable (damaged, edited or for other arguments); "
                      "recomputing it", stacklevel=3)
    stats = compute_ems(model, sigma_min=lo, sigma_max=hi, progress=progress, **options)
    stats = EMS(stats.lam, stats.l, stats.s, stats.b,
                meta={**stats.meta, "cache_key": key, "digest": _arrays_digest(stats)})
    atomic_write_bytes(path, stats.to_bytes())
    return stats, path
