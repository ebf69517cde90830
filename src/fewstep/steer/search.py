"""Search with a verifier: best-of-n, zero-order noise search and search over paths (Ma et al., "Inference-Time
Scaling for Diffusion Models beyond Scaling Denoising Steps", arXiv 2501.09732, Sec. 3.2).

These keep the best candidates by the reward; they do not target the tilted distribution. Best-of-n with a reward
``r`` draws from the distribution of the best of ``n`` independent samples (docs/math.md, "Steering").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.steer._particles import Particles, SteerResult, check_particles, group_generator
from fewstep.steer.rewards import Reward, as_reward

Tensor = torch.Tensor
_TAG_NEIGHBOURS, _TAG_RENOISE = 3, 4


def _plan_args(solver, nfe, schedule, solver_options, schedule_options) -> dict[str, Any]:
    return dict(solver=solver, nfe=nfe, schedule=schedule, solver_options=solver_options,
                schedule_options=schedule_options)


def _best(r: Tensor, B: int, k: int) -> Tensor:
    """Rows of the best of each group of ``k`` (the first on ties)."""
    return torch.arange(B) * k + r.view(B, k).argmax(1)


def best_of_n(model: Denoiser, reward: Reward | Callable[[Tensor], Tensor], *, n: int = 4, solver: str | None = None,
              nfe: int | None = None, schedule: str | None = None, solver_options: Mapping[str, Any] | None = None,
              schedule_options: Mapping[str, Any] | None = None, seeds: Sequence[int] | None = None,
              batch: int | None = None, seed: int = 0, cond: Mapping[str, Any] | None = None,
              noise_type: str = "gaussian", dtype: torch.dtype | None = None) -> SteerResult:
    """Best-of-n, the random search of Ma et al. (arXiv 2501.09732, Sec. 3.2): ``n`` independent samples of the base
    sampler (seeds ``s n .. s n + n - 1``), keep the one with the highest reward. Costs ``n`` times the base
    sampler's evaluations; ``n = 1`` is ``fewstep.sample`` with seed ``s``."""
    n = check_particles("n", n)
    r_fn = as_reward(reward)
    p = Particles(model, n, seeds=seeds, batch=batch, seed=seed, cond=cond, noise_type=noise_type, dtype=dtype,
                  plan_args=_plan_args(solver, nfe, schedule, solver_options, schedule_options))
    x = p.run(p.start(p.particle_seeds()), p.noise(p.particle_seeds()))
    r = r_fn(x, "the final samples")
    rows = _best(r, p.B, n)
    return SteerResult(x[rows], r[rows], p.model.calls, p.evaluations, particles=x.view(p.B, n, *x.shape[1:]),
                       info={"solver": p.plan.solver, "steps": len(p.grid) - 1, "all_rewards": r.view(p.B, n)})


def noise_search(model: Denoiser, reward: Reward | Callable[[Tensor], Tensor], *, candidates: int = 4,
                 iterations: int = 3, radius: float = 0.5, solver: str | None = None, nfe: int | None = None,
                 schedule: str | None = None, solver_options: Mapping[str, Any] | None = None,
                 schedule_options: Mapping[str, Any] | None = None, seeds: Sequence[int] | None = None,
                 batch: int | None = None, seed: int = 0, cond: Mapping[str, Any] | None = None,
                 noise_type: str = "gaussian", dtype: torch.dtype | None = None) -> SteerResult:
    """Zero-order search over the starting noise (Ma et al., arXiv 2501.09732, Sec. 3.2): start from a pivot noise
    ``n`` (seed ``s``'s first particle), then ``iterations`` times sample ``candidates`` neighbours of the pivot,
    run the sampler from each, and move the pivot to the best of them when it beats the pivot.

    The paper's neighbourhood is ``{y : d(y, n) = lambda}``; here a neighbour is ``y = (n + radius z) /
    sqrt(1 + radius^2)``, ``z ~ N(0, I)``, which is a standard normal vector whenever ``n`` is, so every candidate
    stays on the Gaussian shell the model was trained on. Costs ``1 + iterations x candidates`` base runs.
    """
    N = check_particles("candidates", candidates)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 0 <= iterations <= 1000:
        raise ValueError(f"iterations must be an integer in 0..1000; got {iterations!r}")
    if not 0 < float(radius) < math.inf:
        raise ValueError(f"radius must be a positive number (the neighbourhood's noise scale); got {radius!r}")
    r_fn = as_reward(reward)
    p = Particles(model, N, seeds=seeds, batch=batch, seed=seed, cond=cond, noise_type=noise_type, dtype=dtype,
                  plan_args=_plan_args(solver, nfe, schedule, solver_options, schedule_options))
    B = p.B
    gens = [group_generator(s, _TAG_NEIGHBOURS) for s in p.seeds]
    first = p.particle_seeds(k=1)
    pivot = p.eps(first)
    x_best = p.run(p.from_eps(pivot), p.noise(first), k=1)
    r_best = r_fn(x_best, "the first pivot's sample")
    history = [r_best.clone()]
    for it in range(1, iterations + 1):
        z = torch.cat([torch.randn((N, *pivot.shape[1:]), generator=g, dtype=torch.float64) for g in gens])
        cand = ((pivot.repeat_interleave(N, 0).to(torch.float64) + radius * z) / math.sqrt(1 + radius**2)).to(p.dtype)
        x = p.run(p.from_eps(cand), p.noise(p.particle_seeds(offset=it)))
        r = r_fn(x, f"the candidates of iteration {it}")
        rows = _best(r, B, N)
        better = r[rows] > r_best
        pivot = torch.where(better.view(-1, *[1] * (pivot.ndim - 1)), cand[rows], pivot)
        x_best = torch.where(better.view(-1, *[1] * (x.ndim - 1)), x[rows], x_best)
        r_best = torch.where(better, r[rows], r_best)
        history.append(r_best.clone())
    return SteerResult(x_best, r_best, p.model.calls, p.evaluations,
                       info={"solver": p.plan.solver, "steps": len(p.grid) - 1, "reward_history": torch.stack(history)})


def path_search(model: Denoiser, reward: Reward | Callable[[Tensor], Tensor], *, width: int = 2, branches: int = 2,
                start: int | None = None, back: int = 1, forward: int = 2, solver: str | None = None,
                nfe: int | None = None, schedule: str | None = None, solver_options: Mapping[str, Any] | None = None,
                schedule_options: Mapping[str, Any] | None = None, seeds: Sequence[int] | None = None,
                batch: int | None = None, seed: int = 0, cond: Mapping[str, Any] | None = None,
                noise_type: str = "gaussian", dtype: torch.dtype | None = None) -> SteerResult:
    """Search over paths (Ma et al., arXiv 2501.09732, Sec. 3.2), on the sampler's grid ``sigma_0 > ... > sigma_n``:

    1. run ``width`` (``N``) independent samples to grid point ``start`` (default ``n // 2``);
    2. give each ``branches`` (``M``) copies fresh forward noise up to ``back`` grid points earlier,
       ``x' = x_j + sqrt(sigma_{j-back}^2 - sigma_j^2) z`` (the paper's ``Delta_f``);
    3. run all ``N M`` from there to ``forward`` points past ``j`` (the paper's ``Delta_b = back + forward``), score
       each by the reward of its x0-prediction (of the sample itself at the end), keep the best ``N``, repeat from 2
       until the grid ends; 4. return the best of the last ``N``.

    Each round costs ``N M (back + forward + 1)`` evaluations of a one-evaluation-per-step solver.
    """
    N, M = check_particles("width", width), check_particles("branches", branches)
    r_fn = as_reward(reward)
    p = Particles(model, N * M, seeds=seeds, batch=batch, seed=seed, cond=cond, noise_type=noise_type, dtype=dtype,
                  plan_args=_plan_args(solver, nfe, schedule, solver_options, schedule_options))
    n, B = len(p.grid) - 1, p.B
    j = n // 2 if start is None else start
    for name, v, lo, hi in (("start", j, 1, n - 1), ("back", back, 1, n), ("forward", forward, 1, n)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"path_search: {name} must be an integer in {lo}..{hi} for this {n}-step grid; got {v!r}")
    if back > j:
        raise ValueError(f"path_search: back={back} goes above the first grid point from start={j}")
    gens = [group_generator(s, _TAG_RENOISE) for s in p.seeds]
    first = p.particle_seeds(k=N)
    x = p.run(p.start(first), p.noise(first), stop=j, k=N)
    rounds = 0
    while j < n:
        rounds += 1
        hi, j_next = j - back, min(j + forward, n)
        z = torch.cat([torch.randn((N * M, *x.shape[1:]), generator=g, dtype=torch.float64) for g in gens])
        lift = math.sqrt(p.grid[hi] ** 2 - p.grid[j] ** 2)
        x_up = (x.repeat_interleave(M, 0).to(torch.float64) + lift * z).to(x.dtype)
        x_new = p.run(x_up, p.noise(p.particle_seeds(offset=rounds)), start=hi, stop=j_next)
        if j_next == n:
            r = r_fn(x_new, "the final samples")
        else:
            with torch.no_grad():
                d = p.model(x_new, p.grid[j_next], p.cond)
            r = r_fn(d, f"step {j_next} (sigma = {p.grid[j_next]:.4g}, on the x0-prediction)")
        keep = torch.topk(r.view(B, N * M), N, dim=1).indices + torch.arange(B)[:, None] * N * M
        x, r_kept, j = x_new[keep.flatten()], r[keep.flatten()], j_next
    rows = _best(r_kept, B, N)
    return SteerResult(x[rows], r_kept[rows], p.model.calls, p.evaluations,
                       info={"solver": p.plan.solver, "steps": n, "rounds": rounds})
