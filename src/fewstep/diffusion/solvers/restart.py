"""Stochastic samplers (3 of 3): Restart sampling (Xu et al., arXiv 2306.14878).

The main pass is EDM's Heun on the given grid. On reaching a restart interval's lower end, the
state is sent back up to ``t_max`` with fresh forward noise and brought down again by Heun on a
Karras grid of ``N_r`` points, ``K`` times. Its cost is therefore not a per-step count:
``evals = (2N - 1 or 2N) + sum_i K_i * 2 (N_r,i - 1)`` (every restart step ends above 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fewstep.diffusion.schedules import as_list, karras
from fewstep.diffusion.solvers._core import check_nonnegative, register
from fewstep.diffusion.solvers.basic import heun

DEFAULT_RESTARTS = ((3, 2, 0.06, 0.30),)  # the README's example: [N_restart, K, t_min, t_max]


def restart_intervals(restarts: Any) -> list[tuple[int, int, float, float]]:
    """Validate ``restarts``: a sequence of ``(N_r, K, t_min, t_max)``, ``N_r >= 2``, ``K >= 1``,
    ``0 < t_min < t_max``."""
    out = []
    for item in restarts if isinstance(restarts, Sequence) and not isinstance(restarts, str) else [restarts]:
        ok = isinstance(item, Sequence) and len(item) == 4
        if ok:
            N_r, K, t_min, t_max = item
            ok = (isinstance(N_r, int) and isinstance(K, int) and N_r >= 2 and K >= 1
                  and all(isinstance(t, (int, float)) for t in (t_min, t_max)) and 0 < t_min < t_max < math.inf)
        if not ok:
            raise ValueError(f"each restart must be (N_restart >= 2, K >= 1, t_min, t_max) with 0 < t_min < t_max; "
                             f"got {item!r} in restarts={restarts!r}")
        out.append((int(N_r), int(K), float(t_min), float(t_max)))
    return out


def restart_cost(n_steps: int, final_zero: bool, options: Mapping[str, Any]) -> int:
    """Model calls of ``restart``: Heun's ``2N - 1`` (``2N`` if the grid ends above 0) plus
    ``K * 2 (N_r - 1)`` per restart interval."""
    intervals = restart_intervals(options["restarts"])
    if intervals and final_zero and n_steps < 2:
        raise ValueError("restart needs a grid point between sigma_max and 0 to restart from; a final-zero grid "
                         f"needs >= 2 steps, got {n_steps}")
    return 2 * n_steps - int(final_zero) + sum(K * 2 * (N_r - 1) for N_r, K, _, _ in intervals)


@register("restart", order=2, kind="singlestep", evals_per_step=2, final_evals=1, stochastic=True, cost=restart_cost,
          paper="Xu et al., Restart Sampling for Improving Generative Processes, arXiv 2306.14878",
          notes="NFE = main Heun + sum K_i * 2 (N_r,i - 1); t_min snaps to the nearest main-grid sigma")
def restart(D, x, sigmas, *, callback=None, noise=None, restarts=DEFAULT_RESTARTS, restart_gamma: float = 0.05,
            S_min: float = 0.01, S_max: float = 1.0, S_noise: float = 1.0):
    """Restart sampling with ``restarts = ((N_r, K, t_min, t_max), ...)``.

    Each ``t_min`` snaps to the nearest positive main-grid sigma after ``sigmas[0]``, where the
    restarts run in the order given: ``K`` times, ``x += S_noise sqrt(t_max^2 - t_min^2) z`` and then
    Heun from ``t_max`` to ``t_min`` over ``N_r`` Karras points (rho = 7), with churn
    ``gamma = restart_gamma`` in ``[S_min, S_max]``. Every restart draws from its own noise stream
    (``noise.spawn``), so Brownian noise is never reused. Defaults: the README's ImageNet-64 settings
    except ``S_noise = 1`` (its 1.003 offsets an imperfect denoiser); the official CLI's default
    ``S_noise = 0`` would switch restarts off.
    """
    intervals = restart_intervals(restarts)
    check_nonnegative("restart", restart_gamma=restart_gamma, S_noise=S_noise)
    if restart_gamma > math.sqrt(2) - 1 or not S_min <= S_max:
        raise ValueError(f"solver 'restart' needs 0 <= restart_gamma <= sqrt(2) - 1 and S_min <= S_max; got "
                         f"restart_gamma={restart_gamma!r}, S_min={S_min!r}, S_max={S_max!r}")
    n = len(sigmas) - 1
    candidates = [j for j in range(1, n + 1) if sigmas[j] > 0]
    if intervals and not candidates:
        raise ValueError(f"restart needs a grid point between sigma_max and 0 to restart from; got sigmas={sigmas}")
    at: dict[int, list[tuple[int, int, float]]] = {}
    for N_r, K, t_min, t_max in intervals:
        j = min(candidates, key=lambda k: abs(sigmas[k] - t_min))
        if not t_max > sigmas[j]:
            raise ValueError(f"restart interval (t_min={t_min}, t_max={t_max}) snaps t_min to the grid's "
                             f"sigma {sigmas[j]:.6g}, which is not below t_max")
        at.setdefault(j, []).append((N_r, K, t_max))
    start, drawn = 0, 0
    for j in sorted(set(at) | {n}):
        x = heun(D, x, sigmas[start:j + 1], callback=_offset(callback, start))  # the main pass, up to sigmas[j]
        for N_r, K, t_max in at.get(j, []):
            t_min = sigmas[j]
            inner = as_list(karras(N_r, t_min, t_max))
            for _ in range(K):
                jump, churn = noise.spawn(2 * drawn), noise.spawn(2 * drawn + 1)
                drawn += 1
                x = x + S_noise * math.sqrt(t_max**2 - t_min**2) * jump(t_max, t_min)
                x = heun(D, x, inner, noise=churn, S_churn=restart_gamma * (N_r - 1), S_min=S_min, S_max=S_max,
                         S_noise=S_noise)
        start = j
    return x


def _offset(callback, start: int):
    if callback is None or start == 0:
        return callback
    return lambda payload: callback({**payload, "i": payload["i"] + start})
