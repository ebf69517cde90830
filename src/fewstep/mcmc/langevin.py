"""Langevin dynamics started from data: the data-based initialisation of Koehler and Vuong (arXiv 2310.01762).

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
from fewstep.mcmc._core import Result
from fewstep.mcmc.diffusion_mc import _finish, independent_run

Tensor = torch.Tensor


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
