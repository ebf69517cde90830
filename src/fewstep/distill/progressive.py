"""Progressive distillation (Salimans & Ho, arXiv 2202.00512, Algorithm 2), in sigma space.

Each round halves the step count: a student with ``N`` DDIM steps learns to do in one step what its teacher does
in two. With the student's step from ``s`` to ``s''`` and the teacher's midpoint ``s'`` (the finer grid's point in
between):

- a training input is data noised to a student sigma, ``z = x0 + s eps`` (``s`` a point of the student's grid,
  drawn uniformly);
- the teacher takes two DDIM steps, ``z' = (s'/s) z + (1 - s'/s) D_T(z, s)`` and ``z'' = (s''/s') z' +
  (1 - s''/s') D_T(z', s')``;
- the target is the ``x0`` that makes one student DDIM step land on ``z''``:
  ``x_tilde = (z'' - (s''/s) z) / (1 - s''/s)`` (``= z''`` when ``s'' = 0``), the paper's
  ``(z'' - (sigma''/sigma) z) / (alpha'' - (sigma''/sigma) alpha)`` with ``alpha = 1`` in sigma space;
- the loss is the paper's truncated-SNR weighting, ``max(SNR, 1) |D_S(z, s) - x_tilde|^2`` with ``SNR = 1/s^2``.

The first round's teacher is the model itself with ``N_0 = nfe * 2^rounds`` steps; each later round's teacher is the
previous round's student, frozen. All grids are EDM's polynomial grid ending in 0 (``fewstep.distill.grids``), whose
``2N``-step version holds the ``N``-step one at every other point.
"""

from __future__ import annotations

import copy

import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.solvers._core import ddim_step
from fewstep.distill.grids import student_grid

__all__ = ["Progressive"]

Tensor = torch.Tensor


class Progressive:
    """One progressive-distillation iteration per call.

    Args:
        teacher: the model (the first round's teacher).
        student: the student ``Denoiser``; its network trains.
        student_net: the student's trainable network (copied to freeze each round's teacher).
        nfe: the final student's steps.
        rounds: halvings; the first teacher takes ``nfe * 2**rounds`` steps.
        iterations: the run's iterations, split evenly over the rounds.
        batch: training inputs per iteration.
        data: training data ``[N, *shape]`` (``x0`` of the inputs).
    """

    def __init__(self, teacher: Denoiser, student: Denoiser, student_net: torch.nn.Module, *, nfe: int, rounds: int,
                 iterations: int, batch: int, data: Tensor):
        if rounds < 1:
            raise ValueError(f"progressive distillation needs at least one round; got rounds={rounds}")
        if iterations < rounds:
            raise ValueError(f"{iterations} iterations cannot be split over {rounds} rounds")
        if data is None or not torch.is_tensor(data) or data.ndim < 2 or tuple(data.shape[1:]) != tuple(teacher.shape):
            shape = tuple(getattr(data, "shape", ()))
            raise ValueError(f"progressive distillation trains on data [N, {', '.join(map(str, teacher.shape))}]; "
                             f"got {type(data).__name__} of shape {shape}")
        self.teacher, self.student, self.net = teacher, student, student_net
        self.nfe, self.rounds, self.iterations, self.batch = nfe, rounds, iterations, batch
        self.data = data.float()
        self.round = -1
        self.round_teacher: Denoiser = teacher

    def steps_of(self, round_: int) -> int:
        """The student's steps in round ``round_`` (0-based): ``nfe * 2**(rounds - 1 - round_)``."""
        return self.nfe * 2 ** (self.rounds - 1 - round_)

    def round_of(self, iteration: int) -> int:
        return iteration * self.rounds // self.iterations

    def _start_round(self, r: int, teacher_state: dict | None = None) -> None:
        self.round = r
        if r == 0:
            self.round_teacher = self.teacher
            return
        frozen = copy.deepcopy(self.student)
        net = next(getattr(frozen, a) for a in ("net", "model") if isinstance(getattr(frozen, a, None),
                                                                              torch.nn.Module))
        if teacher_state is not None:
            net.load_state_dict(teacher_state)
        net.requires_grad_(False)
        self.round_teacher = frozen
        self._teacher_net = net

    def extra_state(self) -> dict:
        return {"round": self.round, "teacher": self._teacher_net.state_dict() if self.round > 0 else {}}

    def load_extra(self, state: dict) -> None:
        if int(state["round"]) >= 0:
            self._start_round(int(state["round"]), state["teacher"] or None)

    def __call__(self, iteration: int, gen: torch.Generator) -> float:
        """Train on one batch; returns the weighted loss."""
        r = self.round_of(iteration)
        if r != self.round:
            self._start_round(r)
        n = self.steps_of(r)
        grid, fine = student_grid(self.teacher, n), student_grid(self.teacher, 2 * n)
        x0 = self.data[torch.randint(len(self.data), (self.batch,), generator=gen)]
        j = torch.randint(n, (self.batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        loss = 0.0
        for k in torch.unique(j).tolist():  # rows that share a student step share its three sigmas
            rows = j == k
            s, s_mid, s_next = grid[k], fine[2 * k + 1], grid[k + 1]
            z = x0[rows] + s * eps[rows]
            with torch.no_grad():
                z_mid = ddim_step(z, s, s_mid, self.round_teacher(z, s))
                z_next = ddim_step(z_mid, s_mid, s_next, self.round_teacher(z_mid, s_mid))
                r_ = s_next / s
                target = z_next if s_next == 0 else (z_next - r_ * z) / (1 - r_)
            weight = max(1.0 / s**2, 1.0)
            err = (self.student(z, s) - target).pow(2).flatten(1).mean(1)
            loss = loss + weight * err.sum() / self.batch
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()
