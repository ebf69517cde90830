"""Particle methods: Feynman-Kac steering (Singhal et al., arXiv 2501.06848) and SVDD (Li et al., arXiv 2408.08252).

Both target the tilted distribution ``p(x) exp(r(x) / temperature)`` with the base sampler as proposal, and
score intermediate states by the reward of their x0-prediction ``D(x_t, sigma_t)`` (docs/steering.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from fewstep.diffusion.denoiser import Denoiser
from fewstep.steer._particles import Particles, SteerResult, check_particles, group_generator
from fewstep.steer.resampling import Resampler, ess, get_resampler
from fewstep.steer.rewards import Reward, as_reward

Tensor = torch.Tensor
Potential = Literal["difference", "max", "sum"]
POTENTIALS: tuple[str, ...] = ("difference", "max", "sum")
_TAG_RESAMPLE, _TAG_SELECT = 1, 2


def _where(p: Particles, j: int) -> str:
    return f"step {j} (sigma = {p.grid[j]:.4g}, on the x0-prediction)"


def _plan_args(solver, nfe, schedule, solver_options, schedule_options) -> dict[str, Any]:
    return dict(solver=solver, nfe=nfe, schedule=schedule, solver_options=solver_options,
                schedule_options=schedule_options)


def _check_temperature(name: str, temperature: float, zero_ok: bool) -> float:
    t = float(temperature)
    if not (t > 0 or (zero_ok and t == 0)) or t != t or t == float("inf"):
        allowed = ">= 0 (0: argmax)" if zero_ok else "> 0"
        raise ValueError(f"{name} needs a finite temperature {allowed}; got {temperature!r}")
    return t


def fk_steer(model: Denoiser, reward: Reward | Callable[[Tensor], Tensor], *, particles: int = 4,
             temperature: float = 1.0, potential: Potential = "difference", every: int = 1,
             ess_threshold: float = 0.5, resampler: str | Resampler = "multinomial",
             solver: str = "euler_ancestral", nfe: int | None = None, schedule: str | None = None,
             solver_options: Mapping[str, Any] | None = None, schedule_options: Mapping[str, Any] | None = None,
             seeds: Sequence[int] | None = None, batch: int | None = None, seed: int = 0,
             cond: Mapping[str, Any] | None = None, noise_type: str = "gaussian",
             dtype: torch.dtype | None = None) -> SteerResult:
    """Feynman-Kac steering (Singhal et al., arXiv 2501.06848, Sec. 3, with the potentials of Sec. 3.1): ``K``
    particles of the base sampler, weighted by potentials ``G_j`` at every ``every``-th grid point and resampled
    within each sample's group when its ESS falls below ``ess_threshold K``; the final potential makes the product
    along each path ``exp(r(x_0) / temperature)``, so the weighted particles target ``p(x) exp(r(x)/temperature)``.

    Potentials on ``r_j = r(D(x_j, sigma_j))`` (``tau`` = temperature): ``difference``
    ``log G_j = (r_j - r_{j'}) / tau`` (``r`` of the previous point, 0 before the first), ``max``
    ``log G_j = max_{i <= j} r_i / tau``, ``sum`` ``log G_j = sum_{i <= j} r_i / tau``; the final
    ``log G = r(x_0) / tau - sum_j log G_j`` along the particle's ancestry. One sample per seed is then drawn from
    its group in proportion to the final weights.

    Args:
        model, solver, nfe, schedule, solver_options, schedule_options, seeds, batch, seed, cond, noise_type,
            dtype: the base sampler, as in ``fewstep.sample``; with ``particles > 1`` the solver must be stochastic
            (Singhal et al. use SDE samplers: resampled copies must be able to part). The solver is restarted at
            each resampling point when ``particles > 1`` (a multistep solver then restarts its history there);
            ``particles = 1`` is the base sampler itself, bitwise.
        reward: a ``Reward`` or a callable ``[B, *shape] -> [B]``.
        particles: ``K``, particles per sample; the cost is ``K`` times the base sampler's evaluations.
        temperature: ``tau > 0``; the paper's ``lambda`` is ``1 / tau``.
        potential: ``difference``, ``max`` or ``sum``.
        every: potentials at grid points ``0, every, 2 every, ...`` before the last step.
        ess_threshold: resample a group when ``ESS < ess_threshold K`` (1: at every point unless the weights are equal).
        resampler: ``multinomial``, ``systematic``, or a callable ``(w [K], generator) -> indices [K]``.

    Returns:
        A ``SteerResult`` with the final particles and log-weights; ``info["resampled"]`` counts resampling events
        per sample, ``info["ess"]`` lists ``(grid point, ESS [B])``.
    """
    K = check_particles("particles", particles)
    tau = _check_temperature("fk_steer", temperature, zero_ok=False)
    if potential not in POTENTIALS:
        raise ValueError(f"unknown potential {potential!r}; choose one of {', '.join(POTENTIALS)}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive integer (grid points between potentials); got {every!r}")
    if not 0 <= float(ess_threshold) <= 1:
        raise ValueError(f"ess_threshold must be in [0, 1] (a fraction of the particles); got {ess_threshold!r}")
    resample = get_resampler(resampler)
    r_fn = as_reward(reward)
    p = Particles(model, K, seeds=seeds, batch=batch, seed=seed, cond=cond, noise_type=noise_type, dtype=dtype,
                  plan_args=_plan_args(solver, nfe, schedule, solver_options, schedule_options),
                  need_stochastic=None if K == 1 else "fk_steer with more than one particle needs a stochastic solver "
                  "(under a deterministic one the copies that resampling makes follow one path)")
    B = p.B
    gens = [group_generator(s, _TAG_RESAMPLE) for s in p.seeds]
    log_w = torch.zeros(B, K, dtype=torch.float64)
    log_prod = torch.zeros(B, K, dtype=torch.float64)  # sum of log G along each particle's ancestry
    carry = torch.full((B, K), -torch.inf if potential == "max" else 0.0, dtype=torch.float64)
    resampled = torch.zeros(B, dtype=torch.int64)
    ess_trace: list[tuple[int, Tensor]] = []

    def on_point(j: int, x: Tensor, d: Tensor):
        nonlocal log_w, log_prod, carry
        r = r_fn(d, _where(p, j)).view(B, K)
        if potential == "difference":
            log_g, carry = (r - carry) / tau, r
        elif potential == "max":
            carry = torch.maximum(carry, r)
            log_g = carry / tau
        else:
            carry = carry + r
            log_g = carry / tau
        log_prod, log_w = log_prod + log_g, log_w + log_g
        e = ess(log_w)
        ess_trace.append((j, e))
        rows = torch.arange(B * K).view(B, K)
        for g in range(B):
            if e[g] < ess_threshold * K:
                w = torch.softmax(log_w[g], 0)
                rows[g] = g * K + resample(w, gens[g])
                log_w[g] = 0.0
                resampled[g] += 1
        if K == 1:
            return None
        flat = rows.flatten()
        local = rows - torch.arange(B)[:, None] * K
        log_prod, carry = log_prod.gather(1, local), carry.gather(1, local)
        return x[flat], d[flat]

    last = len(p.grid) - 2
    points = [j for j in range(0, last + 1, every)] if K > 1 else []  # one particle: nothing to resample
    x = p.run(p.start(p.particle_seeds()), p.noise(p.particle_seeds()), on_point=on_point, points=points)
    r_final = r_fn(x, "the final samples").view(B, K)
    log_w = log_w + r_final / tau - log_prod
    pick = torch.stack([torch.multinomial(torch.softmax(log_w[g], 0), 1, generator=gens[g])[0] for g in range(B)])
    rows = torch.arange(B) * K + pick
    return SteerResult(x[rows], r_final[torch.arange(B), pick], p.model.calls, p.evaluations,
                       particles=x.view(B, K, *x.shape[1:]), log_weights=log_w,
                       info={"resampled": resampled, "ess": ess_trace, "solver": p.plan.solver,
                             "steps": len(p.grid) - 1})


def svdd(model: Denoiser, reward: Reward | Callable[[Tensor], Tensor], *, particles: int = 4,
         temperature: float = 0.0, value: Callable[[Tensor, Tensor, float], Tensor] | None = None,
         solver: str = "euler_ancestral", nfe: int | None = None, schedule: str | None = None,
         solver_options: Mapping[str, Any] | None = None, schedule_options: Mapping[str, Any] | None = None,
         seeds: Sequence[int] | None = None, batch: int | None = None, seed: int = 0,
         cond: Mapping[str, Any] | None = None, noise_type: str = "gaussian",
         dtype: torch.dtype | None = None) -> SteerResult:
    """SVDD, soft value-based decoding (Li et al., arXiv 2408.08252, Algorithm 1): at every step draw ``M``
    candidates ``x_{t-1} ~ p(x_{t-1} | x_t)`` from the stochastic base sampler and keep one with probability
    ``softmax(v(x_{t-1}) / alpha)`` (``alpha = 0``: the argmax), ``v`` the soft value. With the exact soft value
    ``v_t(x) = alpha log E[exp(r(x_0)/alpha) | x_t = x]`` the samples follow ``p(x) exp(r(x)/alpha)`` as ``M``
    grows; the default ``value`` is SVDD-PM's ``r(D(x_t, sigma_t))``, the reward of the x0-prediction.

    Args:
        particles: ``M``, candidates per step; the cost is ``M`` times the base sampler's evaluations.
        temperature: ``alpha >= 0``.
        value: ``value(x_t [B M, ...], x0_hat [B M, ...], sigma) -> [B M]`` in place of ``r(x0_hat)`` (e.g. the
            exact soft value of ``fewstep.steer.exact.soft_value_linear``); the final choice always uses ``r``.
        Other arguments: the base sampler, as in ``fk_steer``; the solver must be stochastic.

    Returns:
        A ``SteerResult``; ``particles`` holds the last step's ``M`` candidates.
    """
    M = check_particles("particles", particles)
    alpha = _check_temperature("svdd", temperature, zero_ok=True)
    r_fn = as_reward(reward)
    if value is not None and not callable(value):
        raise TypeError(f"value must be a callable (x_t, x0_hat, sigma) -> [B]; got {type(value).__name__}")
    p = Particles(model, M, seeds=seeds, batch=batch, seed=seed, cond=cond, noise_type=noise_type, dtype=dtype,
                  plan_args=_plan_args(solver, nfe, schedule, solver_options, schedule_options),
                  need_stochastic="svdd needs a stochastic solver (its candidates are the sampler's random "
                  "transitions)")
    B = p.B
    gens = [group_generator(s, _TAG_SELECT) for s in p.seeds]

    def choose(v: Tensor) -> Tensor:
        v = v.view(B, M)
        if alpha == 0:
            return v.argmax(1)
        return torch.stack([torch.multinomial(torch.softmax(v[g] / alpha, 0), 1, generator=gens[g])[0]
                            for g in range(B)])

    def on_point(j: int, x: Tensor, d: Tensor):
        if value is None:
            v = r_fn(d, _where(p, j))
        else:
            v = as_reward(lambda _: value(x, d, p.grid[j]), "value")(d, f"step {j} (sigma = {p.grid[j]:.4g})")
        if M == 1:
            return None
        rows = (torch.arange(B) * M + choose(v)).repeat_interleave(M)
        return x[rows], d[rows]

    points = list(range(len(p.grid) - 1)) if M > 1 else []
    x = p.run(p.start(p.particle_seeds()), p.noise(p.particle_seeds()), on_point=on_point, points=points)
    r = r_fn(x, "the final samples")
    pick = choose(r) if M > 1 else torch.zeros(B, dtype=torch.int64)
    rows = torch.arange(B) * M + pick
    return SteerResult(x[rows], r[rows], p.model.calls, p.evaluations, particles=x.view(B, M, *x.shape[1:]),
                       info={"solver": p.plan.solver, "steps": len(p.grid) - 1})
