"""Shared machinery of the samplers: per-chain random streams, a counting log-density, and the run record.

Every chain owns a ``torch.Generator`` seeded from its own seed, and a sampler draws from a chain's generator only
for that chain's own needs, so a chain's path is the same whichever other chains run beside it. The log-density is
evaluated through ``Density``, which counts density and gradient evaluations per chain (a gradient by autograd
also yields the density: it counts as one of each) and refuses NaN and +inf. ``Run`` holds the draws; a NaN met
mid-run becomes ``NonFiniteDensityError`` carrying the draws made before it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fewstep.limits import check_count

Tensor = torch.Tensor

MAX_CHAINS = 65_536
MAX_DRAWS = 10_000_000


class NonFiniteDensityError(ArithmeticError):
    """The log-density or its gradient was NaN or +inf during a run.

    ``step`` is the iteration (warm-up counted, from 0) where it happened, ``chains`` the chains concerned and
    ``result`` a ``Result`` holding every draw recorded before that step (``result.draws[:, :result.n_recorded]``;
    ``None`` from ``smc``, whose particles are not draws of the target until the last step).
    """

    def __init__(self, message: str, step: int, chains: list[int], result: Result):
        super().__init__(message)
        self.step, self.chains, self.result = step, chains, result


class _NonFinite(Exception):
    """Raised by ``Density`` and turned into ``NonFiniteDensityError`` (with the draws) by ``Run``."""

    def __init__(self, chains: list[int], what: str):
        super().__init__(what)
        self.chains, self.what = chains, what


def chain_seeds(seed: int | Sequence[int] | torch.Generator, chains: int) -> list[int]:
    """One seed per chain: ``seed`` an int (chain c gets ``seed + c``), a list of ``chains`` ints, or a generator
    (the chains' seeds are drawn from it)."""
    if isinstance(seed, torch.Generator):
        return [int(s) for s in torch.randint(0, 2**62, (chains,), generator=seed, device=seed.device)]
    if isinstance(seed, bool):
        raise TypeError("seed must be an int, a list of ints or a torch.Generator; got a bool")
    if isinstance(seed, int):
        seeds = [seed + c for c in range(chains)]
    elif isinstance(seed, Sequence) and all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
        seeds = list(seed)
        if len(seeds) != chains:
            raise ValueError(f"give one seed per chain: {len(seeds)} seeds for {chains} chains")
    else:
        raise TypeError(f"seed must be an int, a list of ints or a torch.Generator; got {type(seed).__name__}")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise ValueError(f"seeds must be integers in 0..2^63-1; got {seeds[:4]}{'...' if len(seeds) > 4 else ''}")
    return seeds


class ChainRNG:
    """Independent random streams, one per chain. ``idx`` lists the chains that draw (their rows, in order)."""

    def __init__(self, seeds: list[int], dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
        self.gens = [torch.Generator(device).manual_seed(s) for s in seeds]
        self.dtype, self.device = dtype, torch.device(device)

    def _each(self, fn, idx, shape) -> Tensor:
        idx = range(len(self.gens)) if idx is None else idx
        out = [fn(shape, generator=self.gens[c], dtype=self.dtype, device=self.device) for c in idx]
        return torch.stack(out) if out else torch.empty((0, *shape), dtype=self.dtype, device=self.device)

    def normal(self, idx: Sequence[int] | None, *shape: int) -> Tensor:
        return self._each(torch.randn, idx, shape)

    def uniform(self, idx: Sequence[int] | None, *shape: int) -> Tensor:
        return self._each(torch.rand, idx, shape)

    def exponential(self, idx: Sequence[int] | None) -> Tensor:
        return -torch.log1p(-self.uniform(idx))


def log_acceptance(log_new: Tensor, log_old: Tensor, log_q_back: Tensor | float = 0.0,
                   log_q_forward: Tensor | float = 0.0) -> Tensor:
    """Metropolis-Hastings: ``log min(1, pi(y) q(x|y) / (pi(x) q(y|x)))``; a proposal at -inf is refused (-inf)."""
    ratio = log_new - log_old + log_q_back - log_q_forward
    return torch.where(torch.isneginf(log_new), torch.full_like(ratio, -math.inf), ratio.clamp(max=0.0))


def accept_gradient_step(run, adapt, i: int, log_a: Tensor, state: tuple, proposal: tuple) -> tuple:
    """The Metropolis-Hastings decision of MALA and HMC: draw, keep each chain's ``(x, grad, log p)`` or take the
    proposal's, feed the acceptance probability to the warm-up ``adapt`` and record draw ``i``. Returns the state."""
    accept = run.rng.uniform(None).log() < log_a
    x, g, lp = (torch.where(accept[:, None] if old.ndim > 1 else accept, new, old) for old, new in zip(state, proposal))
    adapt.update(i, log_a.exp(), x)
    run.record(i, x, lp, accept.to(run.dtype))
    return x, g, lp


class Density:
    """A target's log-density over rows of chains, counted per chain and checked for NaN and +inf."""

    def __init__(self, target, chains: int):
        self.target = target
        self._n_density = np.zeros(chains, dtype=np.int64)
        self._n_grad = np.zeros(chains, dtype=np.int64)

    @property
    def n_density(self) -> Tensor:
        return torch.from_numpy(self._n_density.copy())

    @property
    def n_grad(self) -> Tensor:
        return torch.from_numpy(self._n_grad.copy())

    def _count(self, counts: np.ndarray, idx, n: int) -> None:
        if idx is None:
            counts += 1
        else:
            np.add.at(counts, np.asarray(idx, dtype=np.int64), 1)

    def log_prob(self, x: Tensor, idx: Sequence[int] | None = None) -> Tensor:
        """``[n]`` log-densities of the rows ``x`` ``[n, dim]`` belonging to chains ``idx`` (all when None)."""
        if x.shape[0] == 0:
            return x.new_zeros(0)
        self._count(self._n_density, idx, x.shape[0])
        with torch.no_grad():
            lp = self.target.log_prob(x)
        self._check(lp, None, idx)
        return lp

    def log_prob_grad(self, x: Tensor, idx: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """Log-densities and their gradients (autograd); the gradient at a -inf point is set to 0."""
        if x.shape[0] == 0:
            return x.new_zeros(0), torch.zeros_like(x)
        self._count(self._n_density, idx, x.shape[0])
        self._count(self._n_grad, idx, x.shape[0])
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = self.target.log_prob(xg)
            if lp.requires_grad:
                (grad,) = torch.autograd.grad(lp.sum(), xg, allow_unused=True)
            else:  # a density that does not depend on x (or is a constant NaN)
                grad = None
            grad = torch.zeros_like(xg) if grad is None else grad
        lp = lp.detach()
        if bool(torch.isneginf(lp).any()):
            grad = torch.where(torch.isneginf(lp)[:, None], torch.zeros_like(grad), grad)
        self._check(lp, grad, idx)
        return lp, grad

    def _check(self, lp: Tensor, grad: Tensor | None, idx) -> None:
        bad = ~(lp < math.inf)  # NaN or +inf
        if grad is not None:
            bad = bad | ~torch.isfinite(grad.sum(1))
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            first = rows[0]
            what = ("NaN" if torch.isnan(lp[first]) else "+inf" if torch.isposinf(lp[first])
                    else "a NaN or infinite gradient")
            chains = rows if idx is None else [list(idx)[r] for r in rows]
            raise _NonFinite(chains, what)


@dataclass
class Result:
    """What a sampler returns.

    ``draws`` ``[chains, draws, dim]`` and ``log_prob`` ``[chains, draws]`` after warm-up; ``accept``
    ``[chains, draws]`` the acceptance statistic of each transition (a probability for HMC/NUTS, 0/1 for
    Metropolis, 1 for slice samplers); ``n_density`` and ``n_grad`` ``[chains]`` evaluations per chain over the
    whole run, warm-up included (``*_warmup`` the part spent in warm-up); ``stats`` sampler-specific ``[chains]``
    or ``[chains, draws]`` tensors (step size, tree depth, divergences, proposals per draw, ...).
    """

    sampler: str
    target: str
    draws: Tensor
    log_prob: Tensor
    accept: Tensor
    n_density: Tensor
    n_grad: Tensor
    n_density_warmup: Tensor
    n_grad_warmup: Tensor
    seeds: list[int]
    warmup: int
    n_recorded: int
    stats: dict[str, Tensor] = field(default_factory=dict)

    @property
    def accept_rate(self) -> Tensor:
        """Mean acceptance statistic per chain over the recorded draws."""
        return self.accept[:, :self.n_recorded].mean(dim=1)


class Run:
    """The bookkeeping of one run: seeds, the counting density, the initial points and the recorded draws.

    Use as ``with run:`` around the iterations; ``step`` is the current iteration, set by ``iterations()``.
    """

    def __init__(self, sampler: str, target, chains: int, draws: int, warmup: int, seed, init: Tensor | None,
                 min_warmup: int = 0):
        self.chains = check_count("chains", chains, 1, MAX_CHAINS)
        self.n_draws = check_count("draws", draws, 1, MAX_DRAWS)
        self.warmup = check_count("warmup", warmup, min_warmup, MAX_DRAWS)
        self.sampler, self.target = sampler, target
        self.dim, self.dtype = target.dim, target.dtype
        self.seeds = chain_seeds(seed, chains)
        self.rng = ChainRNG(self.seeds, self.dtype)
        self.density = Density(target, chains)
        if init is None:  # Stan's default: uniform on (-2, 2) in every coordinate
            init = 4 * self.rng.uniform(None, self.dim) - 2
        init = torch.as_tensor(init, dtype=self.dtype)
        if init.shape != (chains, self.dim):
            raise ValueError(f"init must have shape [chains, dim] = [{chains}, {self.dim}]; got {list(init.shape)}")
        if not bool(torch.isfinite(init).all()):
            raise ValueError("init holds NaN or infinite coordinates")
        self.init = init
        self.draws = torch.full((chains, draws, self.dim), math.nan, dtype=self.dtype)
        self.log_probs = torch.full((chains, draws), math.nan, dtype=self.dtype)
        self.accept = torch.full((chains, draws), math.nan, dtype=self.dtype)
        self.traces: dict[str, Tensor] = {}
        self.step = -1
        self.n_recorded = 0
        self._warm_counts = (self.density.n_density.clone(), self.density.n_grad.clone())

    def start(self, grad: bool = False):
        """The initial points' log-densities (and gradients); a NaN, +inf or -inf there is a ``ValueError``."""
        try:
            out = self.density.log_prob_grad(self.init) if grad else (self.density.log_prob(self.init),)
        except _NonFinite as exc:
            raise ValueError(f"the log-density of target {self.target.name!r} is {exc.what} at the initial point of "
                             f"chain(s) {exc.chains[:8]}; give an init where it is finite") from None
        lp = out[0]
        if bool(torch.isneginf(lp).any()):
            bad = torch.isneginf(lp).nonzero().flatten().tolist()
            raise ValueError(f"the log-density of target {self.target.name!r} is -inf (zero density) at the initial "
                             f"point of chain(s) {bad[:8]}; give an init inside the support")
        return (self.init.clone(), *out)

    def iterations(self):
        """The iteration indices, warm-up first; ``self.step`` follows them."""
        for i in range(self.warmup + self.n_draws):
            self.step = i
            if i == self.warmup:
                self._warm_counts = (self.density.n_density.clone(), self.density.n_grad.clone())
            yield i

    def record(self, i: int, x: Tensor, lp: Tensor, accept: Tensor, **trace: Tensor) -> None:
        """Keep the state after iteration ``i`` when it is past warm-up; ``trace`` are per-draw statistics."""
        if i < self.warmup:
            return
        k = i - self.warmup
        self.draws[:, k], self.log_probs[:, k], self.accept[:, k] = x, lp, accept
        for key, value in trace.items():
            if key not in self.traces:
                self.traces[key] = torch.zeros((self.chains, self.n_draws), dtype=value.dtype)
            self.traces[key][:, k] = value
        self.n_recorded = k + 1

    def result(self, **stats: Tensor) -> Result:
        if self.step < self.warmup:  # stopped in warm-up: the warm-up counts are everything so far
            self._warm_counts = (self.density.n_density.clone(), self.density.n_grad.clone())
        return Result(sampler=self.sampler, target=self.target.name, draws=self.draws, log_prob=self.log_probs,
                      accept=self.accept, n_density=self.density.n_density.clone(),
                      n_grad=self.density.n_grad.clone(), n_density_warmup=self._warm_counts[0],
                      n_grad_warmup=self._warm_counts[1], seeds=self.seeds, warmup=self.warmup,
                      n_recorded=self.n_recorded, stats={**stats, **self.traces})

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, _NonFinite):
            result = self.result()
            raise NonFiniteDensityError(
                f"the log-density of target {self.target.name!r} returned {exc.what} for chain(s) {exc.chains[:8]} "
                f"at iteration {self.step} (warm-up {self.warmup}); the {self.n_recorded} draws before it are kept "
                "in the error's result", self.step, exc.chains, result) from None
        return False


def active_list(mask: Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()
