"""Particles over the base sampler: every steering method runs a registered solver through ``solve``.

``Particles`` holds ``B`` groups of ``K`` particles (rows ``g K .. g K + K - 1`` belong to output sample ``g``),
started from the seeds ``seed K + k`` (so ``K = 1`` starts from the seed itself, as ``fewstep.sample`` does), with
one stochastic-noise stream per particle. ``run`` integrates the grid with ``solve`` and reports every grid
point it was asked about to ``on_point(j, x_j, D(x_j))``; when that returns a new state (the particles resampled)
the solver is stopped there and restarted from the new state at grid point ``j``. The evaluation at the restart
point is answered from the stored ``D`` (``_Cached``), so a restart costs no model evaluation for solvers whose
step starts by evaluating ``D`` at the state; a multistep solver's history starts anew there (its warm-up order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fewstep.diffusion.denoiser import CountingDenoiser, Denoiser
from fewstep.diffusion.noise import make_noise, seeded_noise
from fewstep.diffusion.sampling import SamplingPlan, plan, seed_list, solve
from fewstep.diffusion.schedules import as_list
from fewstep.diffusion.solvers import SOLVERS, get_solver
from fewstep.limits import MAX_SEEDS, check_count

Tensor = torch.Tensor
MAX_PARTICLES = 4096
_GOLDEN = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class SteerResult:
    """What a steering method returns.

    Attributes:
        samples: one sample per seed, ``[B, *shape]``.
        rewards: the reward of each sample, float64 ``[B]``.
        nfe: model calls (each call evaluates all particles of the batch at once).
        evaluations: model evaluations per returned sample: rows evaluated / ``B`` (``K x NFE`` for ``K`` particles).
        particles: the final particles ``[B, K, *shape]`` and their log-weights ``[B, K]`` where the method has them.
        info: method-specific counts (resampling events, ESS at the resampling points, iterations, ...).
    """

    samples: Tensor
    rewards: Tensor
    nfe: int
    evaluations: float
    particles: Tensor | None = None
    log_weights: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class _Restart(Exception):
    def __init__(self, index: int, x: Tensor, d: Tensor):
        super().__init__(index)
        self.index, self.x, self.d = index, x, d


class _Cached(CountingDenoiser):
    """Counts evaluations, and answers one stored ``(x, sigma) -> D`` without calling the model (the evaluation
    that the stopped solver already made at the restart point)."""

    def __init__(self, inner: Denoiser):
        super().__init__(inner)
        self.stored: tuple[Tensor, float, Tensor] | None = None

    def __call__(self, x, sigma, cond=None):
        stored, self.stored = self.stored, None
        if stored is not None and x is stored[0] and isinstance(sigma, float) and sigma == stored[1]:
            return stored[2]
        return super().__call__(x, sigma, cond)


def group_generator(seed: int, tag: int) -> torch.Generator:
    """The generator of one output sample's resampling or search draws: a function of its seed and a tag only."""
    return torch.Generator().manual_seed((seed * _GOLDEN + tag * 0xBF58476D1CE4E5B9) % 2**63)


def check_particles(name: str, k: int) -> int:
    check_count(name, k, 1, MAX_PARTICLES)
    return k


class Particles:
    """``B x K`` particles of ``model`` on one sampling plan (see the module docstring)."""

    def __init__(self, model: Denoiser, K: int, *, seeds: Sequence[int] | None, batch: int | None, seed: int,
                 cond: Mapping[str, Any] | None, noise_type: str, dtype: torch.dtype | None, plan_args: dict,
                 need_stochastic: str | None = None):
        """``need_stochastic``: why the method needs a stochastic solver (the start of the error for a
        deterministic one), or ``None`` when any solver will do."""
        if not isinstance(model, Denoiser):
            raise TypeError(f"model must be a fewstep Denoiser (see fewstep.load_model); got {type(model).__name__}")
        if not model.shape:
            raise ValueError("this model does not know its data shape; steering needs model.shape")
        self.K = K
        self.seeds = seed_list(seeds, batch, seed)
        self.B = len(self.seeds)
        check_count("particles x seeds", self.B * K, 1, MAX_SEEDS)
        self.plan: SamplingPlan = plan(model, **plan_args)
        self.info = get_solver(self.plan.solver)
        if need_stochastic and not self.info.stochastic:
            names = sorted(n for n, i in SOLVERS.items() if i.stochastic and n != "restart")
            raise ValueError(f"{need_stochastic}; {self.plan.solver!r} is deterministic: choose one of "
                             f"{', '.join(names)}")
        self.grid = as_list(self.plan.sigmas)
        self.index = {s: j for j, s in enumerate(self.grid)}
        self.model = _Cached(model)
        self.dtype = torch.float32 if dtype is None else dtype
        self._cond = cond
        self.cond = _repeat_cond(cond, self.B, K)
        self.noise_type = noise_type

    def particle_seeds(self, offset: int = 0, k: int | None = None) -> list[int]:
        """Seed ``s K + i`` for particle ``i < k`` (default ``K``) of the output sample with seed ``s``; ``offset``
        gives the seeds of a later round (``offset MAX_SEEDS K`` further on)."""
        k = self.K if k is None else k
        return [(s + offset * MAX_SEEDS) * self.K + i for s in self.seeds for i in range(k)]

    def cond_for(self, k: int) -> dict[str, Any] | None:
        """The model keywords for ``k`` rows per output sample."""
        return self.cond if k == self.K else _repeat_cond(self._cond, self.B, k)

    def eps(self, seeds: Sequence[int]) -> Tensor:
        """Standard-normal starting noise, one generator per seed (as ``fewstep.sample``)."""
        return seeded_noise(seeds, self.model.shape, dtype=self.dtype)

    def from_eps(self, eps: Tensor) -> Tensor:
        """The starting state ``sigma_0 eps`` (or ``eps`` itself at ``sigma_0 = inf``)."""
        return eps if math.isinf(self.grid[0]) else self.grid[0] * eps

    def start(self, seeds: Sequence[int]) -> Tensor:
        """The starting states of particles with these seeds."""
        return self.from_eps(self.eps(seeds))

    def noise(self, seeds: Sequence[int]):
        return make_noise(self.noise_type, seeds, self.model.shape, self.dtype) if self.info.stochastic else None

    @property
    def evaluations(self) -> float:
        return self.model.samples / self.B

    def run(self, x: Tensor, noise, *, start: int = 0, stop: int | None = None,
            on_point: Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor] | None] | None = None,
            points: Sequence[int] = (), k: int | None = None) -> Tensor:
        """Integrate from grid point ``start`` (state ``x``) to grid point ``stop`` (default: the end), calling
        ``on_point`` at the grid points ``points`` (each once); a returned ``(x, D)`` restarts the solver there.
        ``k``: rows per output sample in ``x`` (default ``K``), for the model keywords."""
        cond = self.cond_for(self.K if k is None else k)
        stop = len(self.grid) - 1 if stop is None else stop
        if self.plan.solver == "restart" and (start > 0 or stop < len(self.grid) - 1 or (on_point and points)):
            raise ValueError("solver 'restart' climbs back up its grid between grid points, so it cannot stop and "
                             "restart at one; steer with another solver (heun_churn is EDM's stochastic sampler)")
        pending = sorted(set(points))
        afs = self.plan.afs and start == 0
        last = [start - 1]

        def callback(payload):
            j = self.index.get(payload["sigma"])
            if j is None:
                return
            if j <= last[0]:
                raise ValueError(f"solver {self.plan.solver!r} returns to a grid point it has passed (sigma = "
                                 f"{payload['sigma']:.4g}); steering needs a solver that passes each grid point once")
            last[0] = j
            while pending and pending[0] < j:
                pending.pop(0)
            if pending and pending[0] == j:
                pending.pop(0)
                new = on_point(j, payload["x"], payload["denoised"])
                if new is not None:
                    raise _Restart(j, *new)

        while pending and pending[0] < start:
            pending.pop(0)
        while True:
            try:
                with torch.no_grad():
                    return solve(self.model, x, self.grid[start:stop + 1], self.plan.solver, cond=cond, afs=afs,
                                 callback=callback if on_point is not None and pending else None, noise=noise,
                                 **self.plan.solver_options)
            except _Restart as r:
                start, x, afs = r.index, r.x, False
                last[0] = start - 1
                self.model.stored = (x, self.grid[start], r.d)


def _repeat_cond(cond: Mapping[str, Any] | None, B: int, K: int) -> dict[str, Any] | None:
    """Model keywords with each per-sample tensor (first dimension ``B``) repeated for the ``K`` particles."""
    if cond is None:
        return None
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a mapping of model keywords or None; got {type(cond).__name__}")
    return {k: v.repeat_interleave(K, dim=0) if torch.is_tensor(v) and v.ndim and v.shape[0] == B else v
            for k, v in cond.items()}
