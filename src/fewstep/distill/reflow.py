"""ReFlow (rectified flow) on teacher couplings, and the straightness of a model's ODE.

Liu et al., *Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow*, arXiv 2209.03003
(ReFlow; straightness); Kim et al., *Simple ReFlow: Improved Techniques for Fast Flow Models*, arXiv 2410.07815
(the per-sample loss normalisation ``w = 1 / sg(L)`` as an option, and starting the student from the teacher's
weights). Section and equation numbers are not verified against the papers' text.

- Couplings: ``z ~ N(0, I)`` and the teacher's ODE endpoint ``x0 = ODE(T z; T -> 0)`` from the start sigma ``T``
  (a training-free solver with ``teacher_steps`` steps, closed with ``D(x, sigma_min)``, or an exact model's closed
  form), drawn once for a pool of ``pairs`` from the training seed, so a resumed run sees the same pool.
- The straight path between the pair, in sigma space: ``x_s = (1 - s/T) x0 + s z``, from ``x0`` at ``s = 0`` to the
  sampler's start ``T z`` at ``s = T``; in flow time ``t = s / (1 + s)`` (``z_t = x_s / (1 + s)``) it is the straight
  line of rectified flow between ``x0`` and ``z_{t_T}``. Along it the denoiser that makes the PF-ODE follow the path
  is ``D = x0``, so the target is the coupling's endpoint.
- Loss: rectified flow's velocity error with ``t ~ U(0, t_T)``. The flow velocity is ``eps_hat - D`` with
  ``eps_hat = (x - D)/s``, so an error ``dD`` in ``D`` is an error ``dD (1 + s)/s`` in the velocity: the loss is
  ``mean ((1 + s)/s)^2 |D_student(x_s, s) - x0|^2`` per sample; with ``normalize`` each sample's loss is divided by
  its own value without gradient (Simple ReFlow's normalisation). It is off by default: where the optimum fits the
  data exactly (the exact Gaussian of the tests) the normalised gradient grows as ``1/error`` near it and Adam
  stalls 5-30 % away from the optimum in 300 iterations, where the plain loss reaches it to 0.2 %.

After training the student's ODE is straighter, so Euler (= DDIM) with few steps on a grid uniform in ``t`` (the
paper's sampler) lands near where the teacher's ODE does. ``straightness`` measures
``S = (1/t_T) int_0^{t_T} E |(z_{t_T} - z_0)/t_T - dz/dt|^2 dt`` (mean over dimensions) along a model's own ODE.
"""

from __future__ import annotations

import torch

from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.schedules import start_sigma
from fewstep.diffusion.solvers import get_solver
from fewstep.diffusion.solvers._core import ddim_step
from fewstep.distill.sfd import teacher_targets

__all__ = ["ReFlow", "flow_time_grid", "straightness"]

Tensor = torch.Tensor


def flow_time_grid(steps: int, sigma_max: float) -> tuple[float, ...]:
    """``steps`` steps uniform in flow time ``t = s / (1 + s)`` from ``sigma_max`` to 0 (rectified flow's Euler grid),
    as sigmas ``s = t / (1 - t)``."""
    if steps < 1:
        raise ValueError(f"a grid needs at least one step; got {steps}")
    t_max = sigma_max / (1 + sigma_max)
    ts = [t_max * (1 - k / steps) for k in range(steps + 1)]
    return (float(sigma_max), *(t / (1 - t) for t in ts[1:-1]), 0.0)


def straightness(model: Denoiser, noise: Tensor, steps: int = 128, sigma_max: float | None = None) -> float:
    """Liu et al.'s straightness (arXiv 2209.03003) of ``model``'s PF-ODE from ``sigma_max * noise``:
    ``(1/t_T) int |(z_{t_T} - z_0)/t_T - v_t|^2 dt`` in flow time, ``v_t = eps_hat - D``, averaged over samples and
    dimensions; 0 for straight trajectories. Euler on ``steps`` steps uniform in ``t`` (left Riemann sum)."""
    top = start_sigma(model) if sigma_max is None else float(sigma_max)
    grid = flow_time_grid(steps, top)
    t_max = top / (1 + top)
    x = top * noise
    z_start = x / (1 + top)
    velocities = []
    with torch.no_grad():
        for s, s_next in zip(grid[:-1], grid[1:]):
            d = model(x, s).to(x.dtype)
            velocities.append((x - d) / s - d)
            x = ddim_step(x, s, s_next, d)
    chord = (z_start - x) / t_max  # z_0 = x at sigma 0
    dev = torch.stack([(chord - v).pow(2).flatten(1).mean(1) for v in velocities])  # [steps, batch]
    return float(dev.mean())


class ReFlow:
    """One ReFlow iteration per call.

    Args:
        teacher: the frozen teacher whose ODE makes the couplings.
        student: the student ``Denoiser`` (its network trains).
        batch: pairs per iteration.
        pairs: the size of the pool of couplings.
        seed: the pool's seed.
        teacher_solver: the training-free solver of the couplings, or ``"exact"`` for a model with ``ode_solution``.
        teacher_steps: its steps.
        normalize: divide each sample's loss by its value without gradient (Simple ReFlow).
    """

    def __init__(self, teacher: Denoiser, student: Denoiser, *, batch: int, pairs: int, seed: int,
                 teacher_solver: str = "dpmpp_3m", teacher_steps: int = 32, normalize: bool = True):
        if not teacher.shape:
            raise ValueError("the teacher does not know its data shape; give it one (shape=...)")
        if teacher_solver == "exact":
            if not hasattr(teacher, "ode_solution"):
                raise ValueError(f"teacher_solver='exact' needs a teacher with a closed-form ODE (an exact model); "
                                 f"{teacher.name!r} has none: use an ODE solver such as 'dpmpp_3m'")
        elif get_solver(teacher_solver).stochastic:
            raise ValueError(f"the teacher solver must be deterministic (an ODE solver); {teacher_solver!r} is not")
        for key, value in (("pairs", pairs), ("teacher_steps", teacher_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"option {key} must be a positive integer; got {value!r}")
        self.teacher, self.student, self.batch, self.normalize = teacher, student, batch, bool(normalize)
        self.sigma_max = start_sigma(teacher)
        self.z, self.x0 = self._couplings(pairs, seed, teacher_solver, teacher_steps)

    def _couplings(self, pairs: int, seed: int, solver: str, steps: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + 999_983) % (2**63 - 1))
        z = torch.randn(pairs, *self.teacher.shape, generator=gen)
        top = self.sigma_max
        with torch.no_grad():
            if solver == "exact":
                x0 = self.teacher.ode_solution(top * z.double(), top, 0.0).float()
            else:
                x0 = torch.cat([teacher_targets(self.teacher, top * chunk, (top, 0.0), steps, solver)[-1].float()
                                for chunk in z.split(256)])
        return z, x0

    def __call__(self, iteration: int, gen: torch.Generator) -> float:
        """Train on one batch; returns the (unnormalised) mean velocity loss."""
        idx = torch.randint(len(self.z), (self.batch,), generator=gen)
        z, x0 = self.z[idx], self.x0[idx]
        t_max = self.sigma_max / (1 + self.sigma_max)
        t = t_max * (1 - torch.rand(self.batch, generator=gen))  # (0, t_max]
        t = t.clamp_min(1e-5)
        s = t / (1 - t)
        x = (1 - bcast(s, z) / self.sigma_max) * x0 + bcast(s, z) * z
        err = ((self.student(x, s) - x0) * bcast((1 + s) / s, z)).pow(2).flatten(1).mean(1)
        loss = (err / err.detach().clamp_min(1e-12)).mean() if self.normalize else err.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return err.mean().item()
