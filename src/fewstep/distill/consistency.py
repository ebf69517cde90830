"""Consistency distillation (CD) and consistency training (CT) with the improved techniques.

Song et al., *Consistency Models*, arXiv 2303.01469 (Algorithms 2 and 3); Song & Dhariwal, *Improved Techniques for
Training Consistency Models*, arXiv 2310.14189 (iCT). A consistency function maps every point of a PF-ODE
trajectory to its end at ``eps = sigma_min``: ``f(x_s, s) = x_eps``. In sigma space (``x = x0 + s z``):

- Parameterisation (boundary condition, arXiv 2303.01469 Eq. 5): ``f = c_skip(s) x + c_out(s) F`` with
  ``c_skip = sd^2 / ((s - eps)^2 + sd^2)``, ``c_out = sd (s - eps) / sqrt(sd^2 + s^2)``, ``sd = 0.5``
  (``fewstep.models.student.consistency_function``; ``F`` is the EDM raw output the student's denoiser implies).
- Discretisation: ``N`` sigmas on EDM's polynomial grid (``rho = 7``) from ``eps`` to ``T`` (the start sigma),
  ``s_1 = eps < ... < s_N = T``. CD keeps ``N`` fixed (``n``, 18 as the paper's CIFAR-10 runs); CT follows iCT's
  curriculum ``N(k) = min(s0 2^floor(k / K'), s1) + 1`` with ``K' = floor(K / (log2 floor(s1/s0) + 1))``,
  ``s0 = 10``, ``s1 = 1280`` (iCT Sec. 3.4, Eq. 11).
- Noise schedule: which interval ``(s_i, s_{i+1})`` a sample trains on: uniform (CD's) or iCT's lognormal,
  ``p(i) ~ erf((log s_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log s_i - P_mean) / (sqrt 2 P_std))`` with
  ``P_mean = -1.1``, ``P_std = 2`` (iCT Sec. 3.5).
- Pairs: ``x_{i+1} = x0 + s_{i+1} z`` from a data point ``x0``; CD's partner is one teacher ODE step from
  ``s_{i+1}`` back to ``s_i`` (Heun as the paper, Euler, or the closed form of an exact model); CT's is
  ``x_i = x0 + s_i z`` with the same ``z`` (the one-sample estimate of the score).
- Loss (iCT Sec. 3.2-3.3): ``lambda(s_i) d(f_theta(x_{i+1}, s_{i+1}), sg f_theta(x_i, s_i))`` with
  ``lambda = 1 / (s_{i+1} - s_i)`` and the pseudo-Huber metric ``d(a, b) = sqrt(|a - b|^2 + c^2) - c``,
  ``c = 0.00054 sqrt(dim)``; the target network is the student itself without gradient (iCT's ``mu = 0``, no EMA).

The student starts as a copy of the teacher (the paper initialises CD from the pre-trained model; iCT trains from
scratch, which does not fit a CPU-minute budget). It samples in one step, ``f(T z, T)``, or in several: the
multistep consistency sampler jumps to the data and noises it again at the next sigma
(``fewstep.models.student.SOLVERS["consistency"]``), on the student's grid (``fewstep.distill.grids``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.schedules import karras, start_sigma
from fewstep.models.student import consistency_function

__all__ = ["Consistency", "consistency_sigmas", "curriculum_n", "interval_weights", "pseudo_huber",
           "exact_consistency_gauss"]

Tensor = torch.Tensor

TEACHER_STEPS = ("heun", "euler", "exact")
NOISE_SCHEDULES = ("uniform", "lognormal")
LOSSES = ("pseudo_huber", "l2")


def consistency_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``n`` sigmas ``eps = s_1 < ... < s_n = T`` on EDM's polynomial grid (float64, ascending)."""
    if n < 2:
        raise ValueError(f"a consistency discretisation needs at least 2 sigmas; got {n}")
    return karras(n, sigma_min, sigma_max).flip(0)


def curriculum_n(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's exponential discretisation curriculum (arXiv 2310.14189, Eq. 11): the number of sigmas at iteration
    ``k`` of ``total``, ``min(s0 2^floor(k / K'), s1) + 1``, ``K' = floor(total / (log2 floor(s1/s0) + 1))``."""
    stages = math.floor(math.log2(math.floor(s1 / s0))) + 1 if s1 >= s0 else 1
    k_prime = max(1, math.floor(total / stages))
    return int(min(s0 * 2 ** math.floor(k / k_prime), s1)) + 1


def interval_weights(sigmas: Tensor, schedule: str, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """The probability of training on each interval ``(s_i, s_{i+1})``: uniform, or iCT's lognormal
    (arXiv 2310.14189, Sec. 3.5), the mass of ``log s ~ N(p_mean, p_std^2)`` between the interval's ends."""
    if schedule == "uniform":
        return torch.full((len(sigmas) - 1,), 1.0 / (len(sigmas) - 1), dtype=torch.float64)
    cdf = torch.erf((torch.log(sigmas) - p_mean) / (math.sqrt(2) * p_std))
    w = (cdf[1:] - cdf[:-1]).clamp_min(0)
    return w / w.sum()


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """iCT's pseudo-Huber metric per sample: ``sqrt(|a - b|^2 + c^2) - c`` (arXiv 2310.14189, Sec. 3.3)."""
    sq = (a - b).pow(2).flatten(1).sum(1)
    return torch.sqrt(sq + c * c) - c


def exact_consistency_gauss(mean: Tensor, std: Tensor, x: Tensor, sigma: Tensor | float, sigma_min: float) -> Tensor:
    """The consistency function of Gaussian data ``N(mean, diag(std^2))`` in closed form: the PF-ODE's flow to
    ``sigma_min``, ``mean + sqrt((std^2 + eps^2) / (std^2 + s^2)) (x - mean)`` (docs/math.md)."""
    s = torch.as_tensor(sigma, dtype=x.dtype)
    s = bcast(s, x) if s.ndim == 1 else s
    mu, s2 = mean.to(x), std.to(x) ** 2
    return mu + torch.sqrt((s2 + sigma_min**2) / (s2 + s**2)) * (x - mu)


class Consistency:
    """One consistency-distillation (``mode="cd"``) or consistency-training (``mode="ct"``) iteration per call.

    Args:
        teacher: the frozen teacher (CD's ODE steps; for CT only its sigma range).
        student: the student ``Denoiser`` (its network trains); its consistency function is
            ``consistency_function(student(x, s), x, s, sigma_min, sigma_data)``.
        mode: ``"cd"`` or ``"ct"``.
        data: training data ``[N, *shape]``.
        batch: samples per iteration.
        iterations: the run's iterations (CT's curriculum spreads over them).
        options: ``n`` (CD's number of sigmas), ``s0``, ``s1`` (CT's curriculum), ``schedule`` (``uniform`` or
            ``lognormal``), ``p_mean``, ``p_std``, ``teacher_step`` (``heun``, ``euler``, ``exact``), ``loss``
            (``pseudo_huber`` or ``l2``), ``sigma_data``.
    """

    def __init__(self, teacher: Denoiser, student: Denoiser, *, mode: str, data: Tensor, batch: int, iterations: int,
                 options: Mapping[str, Any]):
        if mode not in ("cd", "ct"):
            raise ValueError(f"mode must be 'cd' or 'ct'; got {mode!r}")
        if data is None or not torch.is_tensor(data) or data.ndim < 2 or tuple(data.shape[1:]) != tuple(teacher.shape):
            shape = tuple(getattr(data, "shape", ()))
            raise ValueError(f"consistency {'distillation' if mode == 'cd' else 'training'} trains on data "
                             f"[N, {', '.join(map(str, teacher.shape))}]; got {type(data).__name__} of shape {shape}")
        for key, allowed in (("teacher_step", TEACHER_STEPS), ("schedule", NOISE_SCHEDULES), ("loss", LOSSES)):
            if options[key] not in allowed:
                raise ValueError(f"option {key}={options[key]!r} is not one of {', '.join(allowed)}")
        if options["teacher_step"] == "exact" and not hasattr(teacher, "ode_solution"):
            raise ValueError(f"teacher_step='exact' needs a teacher with a closed-form ODE (an exact model); "
                             f"{teacher.name!r} has none: use 'heun' or 'euler'")
        for key in ("n", "s0", "s1"):
            if isinstance(options[key], bool) or not isinstance(options[key], int) or options[key] < 2:
                raise ValueError(f"option {key} must be an integer >= 2; got {options[key]!r}")
        if options["s1"] < options["s0"]:
            raise ValueError(f"option s1={options['s1']} must be >= s0={options['s0']}")
        if not (float(options["p_std"]) > 0 and float(options["sigma_data"]) > 0):
            raise ValueError("options p_std and sigma_data must be positive")
        self.teacher, self.student, self.mode = teacher, student, mode
        self.data, self.batch, self.iterations = data.float(), batch, iterations
        self.options = dict(options)
        self.sigma_min, self.sigma_max = float(teacher.sigma_min), start_sigma(teacher)
        self.sigma_data = float(options["sigma_data"])
        self.c = 0.00054 * math.sqrt(math.prod(teacher.shape))

    def n_of(self, iteration: int) -> int:
        """The number of sigmas at ``iteration``: CD's fixed ``n``, CT's curriculum."""
        if self.mode == "cd":
            return int(self.options["n"])
        return curriculum_n(iteration, self.iterations, int(self.options["s0"]), int(self.options["s1"]))

    def f(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The student's consistency function at per-sample sigmas ``[B]``."""
        return consistency_function(self.student(x, sigma), x, sigma, self.sigma_min, self.sigma_data)

    def teacher_step(self, x: Tensor, s: Tensor, s_prev: Tensor) -> Tensor:
        """One teacher PF-ODE step from ``s`` down to ``s_prev`` (per-sample sigmas), CD's ``x_hat``."""
        how = self.options["teacher_step"]
        if how == "exact":
            return self.teacher.ode_solution(x.double(), s.double(), s_prev.double()).to(x.dtype)
        sb, pb = bcast(s, x), bcast(s_prev, x)
        d = (x - self.teacher(x, s).to(x.dtype)) / sb
        x_next = x + (pb - sb) * d
        if how == "euler":
            return x_next
        d_next = (x_next - self.teacher(x_next, s_prev).to(x.dtype)) / pb  # Heun (s_prev >= eps > 0)
        return x + (pb - sb) * (d + d_next) / 2

    def pairs(self, iteration: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_{i+1}, s_{i+1}, x_i, s_i)`` for one batch: the loss's two points and their sigmas."""
        sigmas = consistency_sigmas(self.n_of(iteration), self.sigma_min, self.sigma_max)
        w = interval_weights(sigmas, self.options["schedule"], float(self.options["p_mean"]),
                             float(self.options["p_std"]))
        i = torch.multinomial(w, self.batch, replacement=True, generator=gen)
        x0 = self.data[torch.randint(len(self.data), (self.batch,), generator=gen)]
        z = torch.randn(x0.shape, generator=gen)
        s_cur, s_next = sigmas[i].float(), sigmas[i + 1].float()
        x_next = x0 + bcast(s_next, x0) * z
        with torch.no_grad():
            if self.mode == "cd":
                x_cur = self.teacher_step(x_next, s_next, s_cur)
            else:
                x_cur = x0 + bcast(s_cur, x0) * z
        return x_next, s_next, x_cur, s_cur

    def loss(self, x_next: Tensor, s_next: Tensor, x_cur: Tensor, s_cur: Tensor) -> Tensor:
        """``mean lambda(s_i) d(f(x_{i+1}, s_{i+1}), sg f(x_i, s_i))``, ``lambda = 1 / (s_{i+1} - s_i)``."""
        with torch.no_grad():
            target = self.f(x_cur, s_cur)
        pred = self.f(x_next, s_next)
        if self.options["loss"] == "pseudo_huber":
            dist = pseudo_huber(pred, target, self.c)
        else:
            dist = (pred - target).pow(2).flatten(1).mean(1)
        return (dist / (s_next - s_cur)).mean()

    def __call__(self, iteration: int, gen: torch.Generator) -> float:
        """Train on one batch; returns the loss."""
        loss = self.loss(*self.pairs(iteration, gen))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()
