"""Slice samplers, batched over chains: elliptical slice sampling and Gibbsian polar slice sampling.

Neither needs gradients nor a step size. Each iteration draws a slice level ``log t = log f(x) - E``,
``E ~ Exp(1)``, then shrinks a bracket until a proposal lies above it; chains that are done wait while the others
keep shrinking, and each chain counts only its own density evaluations. Every transition moves, so ``accept``
is 1; ``stats["evals_per_draw"]`` is the cost.
"""

from __future__ import annotations

import math

import torch

from fewstep.mcmc._core import Result, Run, active_list
from fewstep.mcmc.targets import GaussianPrior

Tensor = torch.Tensor
MAX_SHRINK = 10_000  # proposals per bracket before a chain is declared stuck


def _stuck(what: str) -> RuntimeError:
    return RuntimeError(f"{what} found no point above the slice in {MAX_SHRINK} proposals; the log-density is "
                        "probably not continuous at the current point")


def elliptical_slice(target, chains: int = 4, draws: int = 1000, warmup: int = 0, seed=0,
                     init: Tensor | None = None, prior: GaussianPrior | None = None) -> Result:
    """Elliptical slice sampling (Murray, Adams and MacKay, arXiv 1001.0175, Fig. 2) for ``pi = N(mu, S) L``.

    Draw ``nu ~ N(0, S)``, a level ``log y = log L(x) + log u``, an angle ``theta ~ U[0, 2 pi]`` and the
    bracket ``[theta - 2 pi, theta]``; propose ``mu + (x - mu) cos theta + nu sin theta``, and on refusal
    shrink the bracket towards 0 and draw ``theta`` in it again. ``prior`` defaults to ``target.prior``;
    ``L = pi / N(mu, S)`` is evaluated as ``target.log_prob - prior.log_prob`` (one density evaluation).
    """
    prior = target.prior if prior is None else prior
    if prior is None:
        raise ValueError(f"elliptical slice sampling needs a Gaussian prior; target {target.name!r} has none "
                         "(bundled targets with one: logistic; or pass prior=GaussianPrior(mean, chol))")
    run = Run("elliptical_slice", target, chains, draws, warmup, seed, init)
    evals = torch.zeros(chains, dtype=run.dtype)
    with run:
        x, lp = run.start()
        ll = lp - prior.log_prob(x)
        for i in run.iterations():
            nu = run.rng.normal(None, run.dim) @ prior.chol.T
            log_y = ll - run.rng.exponential(None)
            theta = 2 * math.pi * run.rng.uniform(None)
            lo, hi = theta - 2 * math.pi, theta.clone()
            pending = torch.ones(chains, dtype=torch.bool)
            n = torch.zeros(chains, dtype=run.dtype)
            for _ in range(MAX_SHRINK):
                idx = active_list(pending)
                if not idx:
                    break
                th = theta[idx][:, None]
                y = prior.mean + (x[idx] - prior.mean) * torch.cos(th) + nu[idx] * torch.sin(th)
                lp_y = run.density.log_prob(y, idx)
                ll_y = lp_y - prior.log_prob(y)
                n[idx] += 1
                ok = ll_y > log_y[idx]
                rows = torch.as_tensor(idx)
                x[rows[ok]], lp[rows[ok]], ll[rows[ok]] = y[ok], lp_y[ok], ll_y[ok]
                pending[rows[ok]] = False
                rest = rows[~ok]
                neg = theta[rest] < 0
                lo[rest[neg]], hi[rest[~neg]] = theta[rest[neg]], theta[rest[~neg]]
                theta[rest] = lo[rest] + (hi[rest] - lo[rest]) * run.rng.uniform(rest.tolist())
            else:
                raise _stuck("elliptical slice sampling")
            evals = evals + n if i >= warmup else evals
            run.record(i, x, lp, torch.ones(chains, dtype=run.dtype))
    return run.result(evals_per_draw=evals / max(run.n_recorded, 1))


def polar_slice(target, chains: int = 4, draws: int = 1000, warmup: int = 0, seed=0, init: Tensor | None = None,
                window: float | None = None, center: Tensor | None = None) -> Result:
    """Gibbsian polar slice sampling (Schär, Habeck and Rudolf, arXiv 2302.03945, Sec. 3).

    In polar coordinates ``x - center = r theta`` the density splits as ``p0(x) p1(x)`` with
    ``p0 = |x|^{1-d}`` and ``p1 = |x|^{d-1} pi(x)``; a slice level is drawn under ``p1``. The direction moves on
    the great circle ``theta cos w + y sin w`` through a random ``y`` orthogonal to ``theta``, with ``w`` shrunk
    from ``[w_max - 2 pi, w_max]``, ``w_max ~ U[0, 2 pi]``, towards 0 (geodesic shrinkage); then the radius by
    stepping out with ``window`` on ``r >= 0`` and shrinkage towards the current ``r``. ``window`` defaults to
    ``sqrt(dim)``. Needs ``dim >= 2``.
    """
    if target.dim < 2:
        raise ValueError("polar slice sampling needs dim >= 2")
    run = Run("polar_slice", target, chains, draws, warmup, seed, init)
    d = run.dim
    w = math.sqrt(d) if window is None else float(window)
    if not (math.isfinite(w) and w > 0):
        raise ValueError(f"window must be a positive number; got {window!r}")
    c = torch.zeros(d, dtype=run.dtype) if center is None else torch.as_tensor(center, dtype=run.dtype)
    evals = torch.zeros(chains, dtype=run.dtype)

    def log_p1(r, theta, idx):  # log of |x|^{d-1} pi(x) at x = center + r theta, r >= 0
        lp = run.density.log_prob(c + r[:, None] * theta, idx)
        return torch.where(r > 0, (d - 1) * torch.log(r) + lp, torch.full_like(lp, -math.inf)), lp

    with run:
        x, lp = run.start()
        for i in run.iterations():
            everyone = list(range(chains))
            r = (x - c).norm(dim=1)
            theta = (x - c) / r[:, None]
            log_t = (d - 1) * torch.log(r) + lp - run.rng.exponential(everyone)
            n = torch.zeros(chains, dtype=run.dtype)
            # direction: geodesic shrinkage on the great circle through theta and y
            y = run.rng.normal(everyone, d)
            y = y - (y * theta).sum(1, keepdim=True) * theta
            y = y / y.norm(dim=1, keepdim=True)
            w_hi = 2 * math.pi * run.rng.uniform(everyone)
            w_lo = w_hi - 2 * math.pi
            omega = w_lo + (w_hi - w_lo) * run.rng.uniform(everyone)
            pending = torch.ones(chains, dtype=torch.bool)
            for _ in range(MAX_SHRINK):
                idx = active_list(pending)
                if not idx:
                    break
                rows = torch.as_tensor(idx)
                om = omega[rows][:, None]
                th = theta[rows] * torch.cos(om) + y[rows] * torch.sin(om)
                lp1, _ = log_p1(r[rows], th, idx)
                n[rows] += 1
                ok = lp1 > log_t[rows]
                theta[rows[ok]] = th[ok]
                pending[rows[ok]] = False
                rest = rows[~ok]
                neg = omega[rest] < 0
                w_lo[rest[neg]], w_hi[rest[~neg]] = omega[rest[neg]], omega[rest[~neg]]
                omega[rest] = w_lo[rest] + (w_hi[rest] - w_lo[rest]) * run.rng.uniform(rest.tolist())
            else:
                raise _stuck("polar slice sampling (direction)")
            theta = theta / theta.norm(dim=1, keepdim=True)  # against drift off the sphere
            # radius: stepping out on r >= 0, then shrinkage towards r
            u = run.rng.uniform(everyone)
            r_lo, r_hi = (r - u * w).clamp(min=0), r + (1 - u) * w
            for bound, step in ((r_lo, -w), (r_hi, w)):
                out = torch.ones(chains, dtype=torch.bool)
                for _ in range(MAX_SHRINK):
                    out &= bound > 0
                    idx = active_list(out)
                    if not idx:
                        break
                    rows = torch.as_tensor(idx)
                    lp1, _ = log_p1(bound[rows], theta[rows], idx)
                    n[rows] += 1
                    more = lp1 > log_t[rows]
                    bound[rows[more]] = (bound[rows[more]] + step).clamp(min=0)
                    out[rows[~more]] = False
                else:
                    raise _stuck("polar slice sampling (stepping out)")
            pending = torch.ones(chains, dtype=torch.bool)
            for _ in range(MAX_SHRINK):
                idx = active_list(pending)
                if not idx:
                    break
                rows = torch.as_tensor(idx)
                r_new = r_lo[rows] + (r_hi[rows] - r_lo[rows]) * run.rng.uniform(idx)
                lp1, lp_new = log_p1(r_new, theta[rows], idx)
                n[rows] += 1
                ok = lp1 > log_t[rows]
                done = rows[ok]
                x[done], lp[done] = c + r_new[ok, None] * theta[done], lp_new[ok]
                pending[done] = False
                below = r_new < r[rows]
                r_lo[rows[~ok & below]] = r_new[~ok & below]
                r_hi[rows[~ok & ~below]] = r_new[~ok & ~below]
            else:
                raise _stuck("polar slice sampling (radius)")
            evals = evals + n if i >= warmup else evals
            run.record(i, x, lp, torch.ones(chains, dtype=run.dtype))
    return run.result(evals_per_draw=evals / max(run.n_recorded, 1), window=torch.full((chains,), w))
