"""Unadjusted Langevin dynamics: the plain Langevin Monte Carlo chain (``ula``), and the data-based
initialisation of Koehler and Vuong (arXiv 2310.01762).

With samples of the target at hand (a data set), the Langevin diffusion with the vanilla score
``grad log pi``, started at the empirical distribution and stopped early, samples a mixture of log-concave
components with the right weights (their Theorem 1): the weights come from the data, and the short run only has
to mix inside each component, which it does fast. Without data (started anywhere else) the same dynamics keeps
whatever weights its start had, for an exponentially long time when the modes are far apart.
"""

from __future__ import annotations

import math

import torch

from fewstep.limits import check_count
from fewstep.mcmc._core import Result, Run, _NonFinite
from fewstep.mcmc.diffusion_mc import _finish, independent_run

Tensor = torch.Tensor


def ula(target, chains: int = 4, draws: int = 1000, warmup: int = 1000, seed=0, init: Tensor | None = None,
        step_size: float = 0.01) -> Result:
    """The unadjusted Langevin algorithm (Langevin Monte Carlo; Roberts and Tweedie 1996, doi:10.2307/3318418):
    ``x <- x + h grad log pi(x) + sqrt(2h) xi`` with a fixed step ``h = step_size`` and no accept step.

    It is biased: its stationary law is not ``pi``. On ``N(m, S)`` it is the Gaussian with the same mean and
    covariance ``S (I - h S^-1 / 2)^-1`` (each eigenvalue ``l`` becomes ``l / (1 - h / (2 l))``; stable for
    ``h < 2 l_min``), so its W2 distance to ``pi`` grows like ``sqrt(d) h`` in dimension ``d``: the ``sqrt(d)``
    dimension dependence of Li, Zha and Tao (arXiv 2109.03839), measured in ``benchmarks/mcmc_lmc.py``. A fixed
    step (no warm-up adaptation); one density and gradient evaluation per iteration. A chain that leaves the
    support or diverges stops the run with ``NonFiniteDensityError`` (its draws so far kept).
    """
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number; got {step_size!r}")
    run = Run("ula", target, chains, draws, warmup, seed, init)
    h = float(step_size)
    everyone = list(range(run.chains))
    ones = torch.ones(run.chains, dtype=run.dtype)
    with run:
        x, lp, g = run.start(grad=True)
        for i in run.iterations():
            x = x + h * g + math.sqrt(2 * h) * run.rng.normal(everyone, run.dim)
            lp, g = run.density.log_prob_grad(x, everyone)
            gone = torch.isneginf(lp) | ~torch.isfinite(x).all(1)
            if bool(gone.any()):  # no accept step to refuse the move: an unstable h ends up here
                raise _NonFinite(gone.nonzero().flatten().tolist(),
                                 f"-inf or an infinite point (the chain left the support or diverged: step_size {h:g} "
                                 "is too large)")
            run.record(i, x, lp, ones)
    return run.result(step_size=torch.full((run.chains,), h, dtype=run.dtype))


def data_init(target, chains: int = 4, draws: int = 100, warmup: int = 0, seed=0, init: Tensor | None = None,
              data: Tensor | None = None, n_data: int = 256, data_seed: int = 0, steps: int = 50,
              step_size: float = 0.05) -> Result:
    """Langevin from data with the vanilla score (Koehler and Vuong, arXiv 2310.01762, Sec. 1.1): each draw picks a
    data point ``X_i`` uniformly and runs ``steps`` steps of the unadjusted Langevin algorithm
    ``x <- x + h grad log pi(x) + sqrt(2h) xi`` (``h = step_size``), i.e. the diffusion stopped at time
    ``steps * h``.

    ``data`` ``[n, dim]`` are the samples; without it the target's exact sampler draws ``n_data`` of them with
    ``data_seed`` (the same data for every chain, so a chain still depends on its own seed only). One density and
    gradient evaluation per step and draw.
    """
    n_steps = check_count("steps", steps, 0, 10_000_000)
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number; got {step_size!r}")
    if data is None:
        if not target.has_exact:
            raise ValueError(f"data_init needs data: target {target.name!r} has no exact sampler, so pass "
                             "data=[n, dim] samples of it")
        check_count("n_data", n_data, 1, 10_000_000)
        data = target.sample(n_data, torch.Generator().manual_seed(int(data_seed)))
    data = torch.as_tensor(data, dtype=target.dtype)
    if data.ndim != 2 or data.shape[1] != target.dim or data.shape[0] < 1:
        raise ValueError(f"data must be [n, dim] = [n, {target.dim}] with n >= 1; got {list(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("data holds NaN or infinite coordinates")
    run = independent_run("data_init", target, chains, draws, warmup, seed, init)
    owners = [c for c in range(chains) for _ in range(draws)]
    with run:
        pick = torch.stack([torch.randint(0, data.shape[0], (draws,), generator=g) for g in run.rng.gens])
        x = data[pick]
        for i in range(n_steps):
            run.step = i
            _, g = run.density.log_prob_grad(x.reshape(-1, run.dim), owners)
            x = (x + step_size * g.reshape(x.shape)
                 + math.sqrt(2 * step_size) * run.rng.normal(None, draws, run.dim))
        return _finish(run, x, data_points=pick)
