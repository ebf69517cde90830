"""Shortcut models: one network conditioned on the step size, trained by self-consistency.

Frans et al., *One Step Diffusion via Shortcut Models*, arXiv 2410.12557. A shortcut ``s(x_t, t, d)`` is the
average velocity of the flow over the next step of size ``d``, so ``x_{t-d} = x_t - d s`` lands where the ODE does.
Its training ties the step sizes together: at the smallest step ``d_0 = t_T / M`` the shortcut is the flow's own
velocity (flow matching; here the teacher's velocity, so the method distills a teacher), and a step of ``2d`` is
two steps of ``d`` (the self-consistency target ``s(x_t, t, 2d) = (s(x_t, t, d) + s(x_{t-d}, t-d, d)) / 2`` with
``x_{t-d} = x_t - d s(x_t, t, d)``, without gradient).

In sigma space with flow time ``t = s / (1 + s)``: an Euler step of the flow from ``t`` to ``t - d`` is a DDIM step
from ``s`` to ``s'`` (the flow velocity is ``eps_hat - D``), so a shortcut of step ``d`` is a denoiser
``D(x, s; steps = t_T / d)`` whose DDIM step lands where the shortcut does. Step sizes are the powers of two
``d = t_T / n`` with ``n = M, M/2, ..., 1`` steps, the network takes ``n`` as its step-count condition
(``StepDigitsUNet``, as SFD-v), and the sampler is Euler on the grid uniform in ``t`` (``flow_time_grid(n)``). Each
iteration trains one level, drawn uniformly (the paper splits each batch instead), at times on that level's grid:

- ``n = M``: ``D(x, s; M) = D_teacher(x, s)`` for ``x = x0 + s z`` from data;
- ``n < M``: the target is the ``x0`` that makes one DDIM step from ``s`` to ``s''`` land where two steps of the
  student at ``2n`` land (through the midpoint ``s'``): ``(x'' - (s''/s) x) / (1 - s''/s)``, or ``x''`` at
  ``s'' = 0``; this is the self-consistency target written for a denoiser;
- the loss is the velocity error, ``((1 + s)/s)^2 |D - target|^2`` per sample.
"""

from __future__ import annotations

import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.schedules import start_sigma
from fewstep.diffusion.solvers._core import ddim_step
from fewstep.distill.reflow import flow_time_grid

__all__ = ["Shortcut", "levels"]

Tensor = torch.Tensor


def levels(max_steps: int) -> tuple[int, ...]:
    """The step counts a shortcut model trains, ``max_steps, max_steps/2, ..., 1`` (``max_steps`` a power of 2)."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1 or max_steps & (max_steps - 1):
        raise ValueError(f"max_steps must be a power of two (the smallest step is t_T / max_steps); got {max_steps!r}")
    out, n = [], max_steps
    while n >= 1:
        out.append(n)
        n //= 2
    return tuple(out)


class Shortcut:
    """One shortcut-model iteration per call.

    Args:
        teacher: the frozen teacher (the velocity at the smallest step).
        student: the step-conditioned student ``Denoiser`` (its network takes ``steps``).
        data: training data ``[N, *shape]`` (the ``x0`` of the inputs at the smallest step).
        batch: inputs per iteration.
        max_steps: ``M``, the step count of the smallest step.
    """

    def __init__(self, teacher: Denoiser, student: Denoiser, *, data: Tensor, batch: int, max_steps: int):
        if data is None or not torch.is_tensor(data) or data.ndim < 2 or tuple(data.shape[1:]) != tuple(teacher.shape):
            shape = tuple(getattr(data, "shape", ()))
            raise ValueError(f"shortcut models train on data [N, {', '.join(map(str, teacher.shape))}]; "
                             f"got {type(data).__name__} of shape {shape}")
        self.teacher, self.student, self.data, self.batch = teacher, student, data.float(), batch
        self.levels = levels(max_steps)
        self.sigma_max = start_sigma(teacher)
        self.grids = {n: flow_time_grid(n, self.sigma_max) for n in self.levels}

    def target(self, n: int, x: Tensor, k: int) -> Tensor:
        """The denoiser target of step ``k`` of the ``n``-step grid at ``x``: the teacher's ``D`` at ``n = M``,
        else two student steps on the ``2n``-step grid, written as one DDIM step's ``x0``."""
        grid = self.grids[n]
        s, s_end = grid[k], grid[k + 1]
        with torch.no_grad():
            if n == self.levels[0]:
                return self.teacher(x, s).to(x.dtype)
            fine, cond = self.grids[2 * n], {"steps": 2 * n}
            s_mid = fine[2 * k + 1]
            x_mid = ddim_step(x, s, s_mid, self.student(x, s, cond))
            x_end = ddim_step(x_mid, s_mid, s_end, self.student(x_mid, s_mid, cond))
            if s_end == 0:
                return x_end
            r = s_end / s
            return (x_end - r * x) / (1 - r)

    def __call__(self, iteration: int, gen: torch.Generator) -> float:
        """Train one level on one batch; returns the loss."""
        n = self.levels[int(torch.randint(len(self.levels), (1,), generator=gen))]
        grid = self.grids[n]
        k = torch.randint(n, (self.batch,), generator=gen)
        x0 = self.data[torch.randint(len(self.data), (self.batch,), generator=gen)]
        z = torch.randn(x0.shape, generator=gen)
        loss = 0.0
        for j in torch.unique(k).tolist():  # rows on the same step share its sigmas
            rows = k == j
            s = grid[j]
            x = x0[rows] + s * z[rows]
            target = self.target(n, x, j)
            err = (self.student(x, s, {"steps": n}) - target).pow(2).flatten(1).mean(1)
            loss = loss + ((1 + s) / s) ** 2 * err.sum() / self.batch
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()
