"""The sigma grids of distillation: the student's few steps and the teacher's finer grid that contains them.

Both are EDM's polynomial grid (Karras et al., arXiv 2206.00364, Eq. 5) between the start sigma and the model's
``sigma_min``, as SFD uses (Zhou et al., arXiv 2409.19681): ``n + 1`` points uniform in ``sigma^(1/7)``. A grid of
``K n + 1`` points holds the ``n + 1``-point grid at every ``K``-th point, so a teacher with ``K`` steps per student
step passes through every point the student lands on. The student's last point, ``sigma_min``, becomes 0: its last
Euler step returns ``D`` there, the same final step the reference solutions take (``fewstep.evaluation``).
"""

from __future__ import annotations

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.schedules import karras, start_sigma

__all__ = ["student_grid", "teacher_grid"]


def student_grid(model: Denoiser, steps: int, sigma_max: float | None = None) -> tuple[float, ...]:
    """``steps`` Euler steps: ``steps + 1`` sigmas from ``sigma_max`` (default: ``start_sigma(model)``) to 0."""
    if steps < 1:
        raise ValueError(f"a student grid needs at least one step; got {steps}")
    top = start_sigma(model) if sigma_max is None else float(sigma_max)
    s = karras(steps + 1, float(model.sigma_min), top).tolist()
    return (*s[:-1], 0.0)


def teacher_grid(model: Denoiser, steps: int, substeps: int, sigma_max: float | None = None) -> tuple[float, ...]:
    """``substeps`` teacher steps inside each of ``steps`` student steps: ``steps * substeps + 1`` sigmas ending at
    ``sigma_min`` (the caller closes it with ``D(x, sigma_min)``); entry ``substeps * i`` is the student's ``i``."""
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1; got {substeps}")
    top = start_sigma(model) if sigma_max is None else float(sigma_max)
    return tuple(karras(steps * substeps + 1, float(model.sigma_min), top).tolist())
