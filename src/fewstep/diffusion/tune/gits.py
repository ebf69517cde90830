"""GITS: a time schedule found by dynamic programming over a fine teacher grid.

Chen et al., *On the Trajectory Regularity of ODE-based Diffusion Sampling*, arXiv 2405.11326 (code:
zju-pi/diff-sampler, ``gits-main``). A teacher (a third-order solver on a fine Karras grid, 60 steps
by default) gives states ``x_i`` at every fine point ``sigma_i`` for a batch of tuning seeds. The cost
``c[i][j]`` is the mean per-sample RMS distance between one step of the chosen solver from the
teacher's ``x_i`` to ``sigma_j`` and the teacher's ``x_j``. With ``K`` the solver's number of steps,

    V[i][1] = c[i][last],   V[i][k] = min_{j > i} c[i][j] + coeff * V[j][k - 1]   (coeff = 1.15),

and the schedule is the minimiser of ``V[0][K]``, backtracked from the first fine point. A multistep
solver's one step is its first-order start, whose model value at ``x_i`` is computed once per row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.sampling import seeded_noise, solve
from fewstep.diffusion.tune import _tuning as T
from fewstep.seeds import EVAL_SEEDS, TUNE_SEEDS

Tensor = torch.Tensor
MAX_FINE_STEPS = 500  # the cost matrix takes fine_steps^2 / 2 solver steps (docs/tuning.md, "Limits")


class _RowCache(Denoiser):
    """Evaluates ``inner``, computing the value at the row's anchor state ``x_i`` once, so the one-step
    costs of a row share it."""

    def __init__(self, inner: Denoiser):
        super().__init__(inner.process)
        self.inner, self.shape, self.name = inner, inner.shape, inner.name
        self.anchor: Tensor | None = None
        self._saved: tuple[Tensor, Tensor] | None = None

    def set_anchor(self, x: Tensor) -> None:
        self.anchor, self._saved = x, None

    def denoise(self, x, sigma, cond):
        if x is not self.anchor:
            return self.inner(x, sigma, cond)
        if self._saved is None or not torch.equal(self._saved[0], sigma):
            self._saved = (sigma.clone(), self.inner(x, sigma, cond))
        return self._saved[1]


def teacher_states(model: Denoiser, noise: Tensor, fine: Tensor, teacher: str) -> list[Tensor]:
    """The teacher's state at every point of the fine grid (``len(fine)`` tensors)."""
    with torch.no_grad():
        _, traj = solve(model, float(fine[0]) * noise, fine, teacher, return_trajectory=True)
    return traj


def cost_matrix(model: Denoiser, states: Sequence[Tensor], fine: Sequence[float], solver: str, bar=None) -> Tensor:
    """``c[i][j]`` (``i < j``, ``inf`` elsewhere): one ``solver`` step from ``states[i]`` to ``fine[j]``
    against ``states[j]``, as the mean over samples of the per-sample RMS error."""
    m = len(fine)
    c = torch.full((m, m), math.inf, dtype=torch.float64)
    memo = _RowCache(model)
    with torch.no_grad():
        for i in range(m - 1):
            memo.set_anchor(states[i])
            for j in range(i + 1, m):
                x = solve(memo, states[i], [fine[i], fine[j]], solver).double()
                c[i, j] = (x - states[j].double()).pow(2).flatten(1).mean(1).sqrt().mean()
            if bar is not None:
                bar.update()
    return c


def dp_schedule(cost: Tensor, n_steps: int, coeff: float = 1.15) -> tuple[list[int], float]:
    """The fine-grid indices ``0 = i_0 < ... < i_K = last`` minimising
    ``sum_k coeff^k c[i_k][i_{k+1}]`` over ``K = n_steps`` segments, and that minimum."""
    m = cost.shape[0]
    if not 1 <= n_steps <= m - 1:
        raise ValueError(f"a fine grid of {m} points has room for 1..{m - 1} steps; got {n_steps}")
    last = m - 1
    V = torch.full((n_steps + 1, m), math.inf, dtype=torch.float64)
    nxt = torch.full((n_steps + 1, m), -1, dtype=torch.long)
    V[1] = cost[:, last]
    nxt[1] = last
    for k in range(2, n_steps + 1):
        for i in range(m - 1):
            total = cost[i, i + 1:] + coeff * V[k - 1, i + 1:]
            j = int(torch.argmin(total))
            V[k, i], nxt[k, i] = total[j], i + 1 + j
    path, i = [0], 0
    for k in range(n_steps, 0, -1):
        i = int(nxt[k, i])
        path.append(i)
    return path, float(V[n_steps, 0])


def path_cost(cost: Tensor, path: Sequence[int], coeff: float = 1.15) -> float:
    """The DP objective of a path of fine-grid indices (the quantity ``dp_schedule`` minimises)."""
    return float(sum(coeff**k * cost[a, b] for k, (a, b) in enumerate(zip(path[:-1], path[1:]))))


def tune(model, *, solver: str = "ipndm", nfe: int = 10, seeds: Sequence[int] = TUNE_SEEDS,
         eval_seeds: Sequence[int] | None = EVAL_SEEDS, progress: bool = True, fine_steps: int = 60,
         teacher: str = "dpmpp_3m", coeff: float = 1.15):
    """Fit a GITS schedule for ``solver`` at ``nfe`` evaluations on ``model``; returns a ``Recipe``.

    Args:
        seeds: tuning seeds (the teacher trajectories; GITS uses a few hundred).
        eval_seeds: held-out seeds for the recipe's quality (``None``: do not measure).
        fine_steps: steps of the fine Karras teacher grid (``fine_steps + 1`` points, the last 0), at least the
            steps to choose and at most ``MAX_FINE_STEPS`` (500).
        teacher: the deterministic solver that integrates the fine grid.
        coeff: the DP's weight of the remaining cost (the paper's 1.15).
    """
    t_start = time.perf_counter()
    n_steps = T.check_args(model, solver, nfe)
    T.check_args(model, teacher, 1)
    seeds = T.seed_list(seeds, "seeds", minimum=1)
    if n_steps > MAX_FINE_STEPS:
        raise ValueError(f"gits chooses at most {MAX_FINE_STEPS} steps of its fine grid; nfe={nfe} with {solver!r} "
                         f"takes {n_steps}")
    T.check_sizes(fine_steps=(fine_steps, max(n_steps, 2), MAX_FINE_STEPS))  # at least the steps to choose
    if not coeff > 0:
        raise ValueError(f"coeff must be > 0; got {coeff!r}")
    fine = T.untuned_grid(model, fine_steps)
    with T.progress_bar(fine_steps + 1, "gits", progress) as bar:
        states = teacher_states(model, seeded_noise(seeds, model.shape), fine, teacher)
        bar.update()
        cost = cost_matrix(model, states, fine.tolist(), solver, bar)
    path, best = dp_schedule(cost, n_steps, coeff)
    base = _nearest_path(fine, T.untuned_grid(model, n_steps))
    objective = {"name": "gits_dp", "initial": path_cost(cost, base, coeff), "final": best,
                 "note": "initial: the fine-grid points nearest the untuned Karras grid", "path": path}
    options = {"fine_steps": fine_steps, "teacher": teacher, "coeff": coeff}
    return T.make_recipe(model, "gits", solver, nfe, fine[path], t_start=t_start, objective=objective,
                         options=options, tune_seeds=seeds, eval_seeds=eval_seeds, progress=progress)


def _nearest_path(fine: Tensor, grid: Tensor) -> list[int]:
    """Fine-grid indices nearest (in log sigma) to each point of ``grid``, kept strictly increasing."""
    last = len(fine) - 1
    logf = torch.log(fine[:-1])
    out = [0]
    for s in grid[1:-1]:
        i = int(torch.argmin((logf - math.log(float(s))).abs()))
        out.append(min(max(i, out[-1] + 1), last - (len(grid) - 1 - len(out))))
    return out + [last]
