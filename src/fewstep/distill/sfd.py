"""SFD and SFD-v: Simple and Fast Distillation (Zhou et al., arXiv 2409.19681).

The student is fine-tuned only at the sigmas its sampler visits, against whole teacher trajectories:

- Teacher trajectories (Sec. 4.1): from ``x_0 = sigma_0 eps`` a training-free solver (DPM-Solver++(3M) by default)
  takes ``K`` steps inside each student step, on the polynomial grid that contains the student's
  (``fewstep.distill.grids``); its states at the student's sigmas are the targets ``x^tea_{i+1}``, and at the end
  ``D(x, sigma_min)`` is the target for sigma = 0. The paper's settings give ``K = M + 1 = 4``; our default is 8,
  because the targets bound the student: at NFE 2 on the digits models the teacher's own rmse to the exact ODE
  solution is 0.07-0.09 at ``K = 4`` and 0.010-0.015 at ``K = 8`` (``benchmarks/distill_sfd_targets.py``).
- Global trajectory loss (Sec. 4.2): the student runs its own sampler, Euler in sigma (= DDIM),
  ``x_{i+1} = (s_{i+1}/s_i) x_i + (1 - s_{i+1}/s_i) D_student(x_i, s_i)``, starting each step from its *own* previous
  state (detached), so it learns to repair the error it accumulated; each step's loss is the L1 distance
  ``|x_{i+1} - x^tea_{i+1}|`` (mean over the pixels) and is followed by one Adam update, as the official code does.
  ``loss="l2"`` takes the mean squared distance instead (ours: it weighs the few trajectories the student misses
  by much more, as rmse_ref does).
- Analytical first step (Sec. 4.2, AFS of Zhou et al., arXiv 2312.00094): the first step takes
  ``eps_hat = x / sqrt(1 + s_0^2)`` instead of a model evaluation and is not trained, so NFE ``n`` runs ``n + 1``
  steps.
- SFD-v (Sec. 4.3): the network also takes the step count (``StepDigitsUNet``), and each iteration trains on the
  grid of an NFE drawn uniformly from the trained range; one student then samples at any of them.
- Trajectory pool (ours, for CPU budgets): with ``pool = P > 0`` the teacher draws ``P`` trajectories once per
  NFE (from a generator seeded by the training seed) and each iteration trains on ``batch`` of them drawn at
  random; with ``refresh = R > 0`` each iteration first replaces the ``R`` oldest with fresh ones (a replay buffer:
  a trajectory serves about ``batch / R`` times, and ``P / R`` iterations later it is gone, so the student sees
  new trajectories all along instead of memorising a fixed set). The pool is part of the checkpoint, so a resumed
  run continues exactly. ``pool = 0`` draws fresh trajectories every iteration, as the paper. The teacher's ``K``
  steps per student step cost far more than the student's few (at ``K = 8`` on the digits models about 80 % of an
  iteration), so a pool buys several times the iterations for the same CPU time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.sampling import solve
from fewstep.diffusion.solvers import get_solver
from fewstep.diffusion.solvers._core import ddim_step
from fewstep.distill.grids import student_grid, teacher_grid

__all__ = ["SFD", "afs_denoised", "teacher_targets"]

Tensor = torch.Tensor


def afs_denoised(x: Tensor, sigma: float) -> Tensor:
    """The analytical first step's stand-in for ``D``: ``x - sigma x / sqrt(1 + sigma^2)`` (so that
    ``eps_hat = x / sqrt(1 + sigma^2)``), exactly as the driver's ``Evaluator`` takes it."""
    return x - sigma * x / math.sqrt(1 + sigma * sigma)


def teacher_targets(teacher: Denoiser, x: Tensor, grid: Sequence[float], substeps: int, solver: str = "dpmpp_3m",
                    cond=None) -> list[Tensor]:
    """The teacher's states at the student's sigmas ``grid[1:]`` (``grid`` ends in 0), from ``x`` at ``grid[0]``."""
    fine = teacher_grid(teacher, len(grid) - 1, substeps, sigma_max=grid[0])
    with torch.no_grad():
        _, traj = solve(teacher, x, fine, solver, cond=cond, return_trajectory=True)
        if len(traj) != len(fine):
            raise RuntimeError(f"the teacher solver {solver!r} returned {len(traj)} states for {len(fine)} sigmas")
        out = [traj[substeps * i] for i in range(1, len(grid) - 1)]
        out.append(teacher(traj[-1], fine[-1], cond).to(x.dtype))  # sigma_min -> 0: the reference's final step
    return out


class SFD:
    """One SFD iteration per call: a batch of teacher trajectories, then the student's steps, each trained.

    Args:
        teacher: the frozen teacher.
        student: the student ``Denoiser`` (its network trains); for SFD-v a step-conditioned one.
        nfes: the NFEs to train (one for SFD; SFD-v draws one per iteration).
        batch: trajectories per iteration.
        afs: take the analytical first step (it saves one evaluation).
        substeps: teacher steps per student step (the paper's ``K = M + 1``, 4 there; 8 here by default).
        teacher_solver: the training-free solver that draws the teacher trajectories.
        step_condition: pass ``steps = NFE`` to the student's network (SFD-v).
        pool: teacher trajectories kept per NFE and reused (0: fresh ones every iteration, as the paper).
        refresh: trajectories of the pool replaced by fresh ones each iteration, oldest first (0: a fixed pool).
        seed: the seed of the pool's first noise.
        loss: ``"l1"`` (the paper's) or ``"l2"``, the distance of each step's states to the teacher's.
    """

    def __init__(self, teacher: Denoiser, student: Denoiser, *, nfes: Sequence[int], batch: int, afs: bool = True,
                 substeps: int = 8, teacher_solver: str = "dpmpp_3m", step_condition: bool = False,
                 pool: int = 0, refresh: int = 0, seed: int = 0, loss: str = "l1"):
        if get_solver(teacher_solver).stochastic:
            raise ValueError(f"the teacher solver must be deterministic (an ODE solver); {teacher_solver!r} is not")
        self.teacher, self.student, self.batch, self.afs = teacher, student, batch, afs
        self.substeps, self.teacher_solver, self.step_condition = substeps, teacher_solver, step_condition
        self.nfes = tuple(nfes)
        self.grids = {n: student_grid(teacher, n + int(afs)) for n in self.nfes}
        if not teacher.shape:
            raise ValueError("the teacher does not know its data shape; give it one (shape=...)")
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
            raise ValueError(f"pool must be a non-negative integer (0: fresh trajectories every iteration); "
                             f"got {pool!r}")
        if 0 < pool < batch:
            raise ValueError(f"pool ({pool}) must hold at least one batch ({batch}) of trajectories, or be 0")
        if isinstance(refresh, bool) or not isinstance(refresh, int) or not 0 <= refresh <= pool:
            raise ValueError(f"refresh must be an integer from 0 to the pool's size ({pool}); got {refresh!r}")
        if loss not in ("l1", "l2"):
            raise ValueError(f"option loss must be 'l1' or 'l2'; got {loss!r}")
        self.pool, self.refresh, self.seed, self.loss = pool, refresh, seed, loss
        self._pools: dict[int, dict] = {}  # NFE -> {"x", "targets", "next"}: the slot the next refresh starts at

    def trajectories(self, n: int, gen: torch.Generator) -> tuple[Tensor, list[Tensor]]:
        """A batch of starting points and the teacher's states at the student's sigmas, for NFE ``n``."""
        grid, shape = self.grids[n], self.teacher.shape
        if not self.pool:
            x = grid[0] * torch.randn(self.batch, *shape, generator=gen)
            return x, teacher_targets(self.teacher, x, grid, self.substeps, self.teacher_solver)
        if n not in self._pools:
            pool_gen = torch.Generator().manual_seed(int(self.seed) * 7919 + n)
            x = grid[0] * torch.randn(self.pool, *shape, generator=pool_gen)
            chunks = [teacher_targets(self.teacher, part, grid, self.substeps, self.teacher_solver)
                      for part in x.split(max(self.batch, 256))]
            self._pools[n] = {"x": x, "targets": [torch.cat(states) for states in zip(*chunks)], "next": 0}
        pool = self._pools[n]
        if self.refresh:
            slots = (pool["next"] + torch.arange(self.refresh)) % self.pool
            fresh = grid[0] * torch.randn(self.refresh, *shape, generator=gen)
            pool["x"][slots] = fresh
            for old, new in zip(pool["targets"], teacher_targets(self.teacher, fresh, grid, self.substeps,
                                                                 self.teacher_solver)):
                old[slots] = new
            pool["next"] = int(slots[-1] + 1) % self.pool
        pick = torch.randint(self.pool, (self.batch,), generator=gen)
        return pool["x"][pick], [t[pick] for t in pool["targets"]]

    def extra_state(self) -> dict:
        """The pools, for the checkpoint (so that a resumed run trains on the same trajectories)."""
        return {"pools": {str(n): pool for n, pool in self._pools.items()}}

    def load_extra(self, state: dict) -> None:
        self._pools = {int(n): pool for n, pool in state.get("pools", {}).items()}

    def __call__(self, iteration: int, gen: torch.Generator) -> float:
        """Train on one batch; returns the last step's loss (the distance of the final samples)."""
        optimizer = self.optimizer  # set by the training loop (fewstep.distill._loop.train)
        n = self.nfes[int(torch.randint(len(self.nfes), (1,), generator=gen))] if len(self.nfes) > 1 else self.nfes[0]
        grid = self.grids[n]
        cond = {"steps": n} if self.step_condition else None
        x, targets = self.trajectories(n, gen)
        losses = []
        for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
            if self.afs and i == 0:
                x = ddim_step(x, s, s_next, afs_denoised(x, s))
                continue
            x_next = ddim_step(x, s, s_next, self.student(x, s, cond))
            diff = x_next - targets[i]
            loss = diff.abs().mean() if self.loss == "l1" else diff.pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            x = x_next.detach()
        return losses[-1]
