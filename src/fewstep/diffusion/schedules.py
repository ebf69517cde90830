"""Noise schedules: pure functions returning a decreasing sigma tensor (float64).

Low-level functions take explicit ranges and return ``n`` sigmas from ``sigma_max`` down to
``sigma_min``. ``get_sigmas(name, n_steps, model)`` builds a full grid of ``n_steps`` steps for a
model: ``n_steps + 1`` sigmas, ending in 0 (``final="zero"``, the default) or at ``sigma_min``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor
SIGMA_CAP = 80.0  # where sigma-space grids start for a model whose sigma_max is infinite (zero terminal SNR)


def start_sigma(model) -> float:
    """Where the benchmark's and the tuners' sigma-space grids start: the model's ``sigma_max``, or ``SIGMA_CAP``
    when it is infinite."""
    return float(model.sigma_max) if math.isfinite(model.sigma_max) else SIGMA_CAP


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al., arXiv 2206.00364, Eq. 5: uniform in ``sigma^(1/rho)``."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def logsnr(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in log-SNR ``lambda = -log sigma`` (DPM-Solver's ``logSNR`` grid, arXiv 2206.00927)."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))


def exponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """Polyexponential (k-diffusion): ``log sigma`` follows ``ramp^rho``; ``rho = 1`` equals ``logsnr``."""
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))


def time_power(n: int, process, sigma_min: float, sigma_max: float, power: float = 1.0) -> Tensor:
    """Uniform in ``t^(1/power)`` of the model's native time ``t`` (power 1: time-uniform, 2: time-quadratic,
    as in DPM-Solver's ``time_uniform`` / ``time_quadratic``)."""
    t_hi = float(process.sigma_to_t(torch.tensor(sigma_max, dtype=torch.float64)))
    t_lo = float(process.sigma_to_t(torch.tensor(sigma_min, dtype=torch.float64)))
    t = torch.linspace(t_hi ** (1 / power), t_lo ** (1 / power), n, dtype=torch.float64) ** power
    s = process.t_to_sigma(t).double()
    s[0] = sigma_max  # exact endpoints despite round trips through t
    s[-1] = sigma_min
    return s


def flow_shift(n: int, t_min: float, t_max: float = 1.0, shift: float = 1.0) -> Tensor:
    """diffusers' ``FlowMatchEulerDiscreteScheduler`` grid in flow time ``t``: ``linspace(t_max, s(t_min), n)``
    mapped through ``s(t) = shift t / (1 + (shift - 1) t)`` (Esser et al., arXiv 2403.03206, Eq. 23).

    The low end is shifted twice, as diffusers does (its ``sigma_min`` is already shifted); ``shift = 1`` is the
    plain linspace grid. Returns ``n`` flow times, decreasing.
    """
    if not shift > 0:
        raise ValueError(f"shift must be > 0; got {shift!r}")

    def s(t):
        return shift * t / (1 + (shift - 1) * t)

    return s(torch.linspace(t_max, s(t_min), n, dtype=torch.float64))


def flow_sigmas(n: int, t_max: float, shift: float = 1.0) -> Tensor:
    """diffusers' ``use_flow_sigmas`` grid of ``DPMSolverMultistepScheduler`` (its UniPC spaces differently):
    ``n + 1`` flow times ``linspace(t_max, 0, n + 1)`` mapped through the shift ``s`` of ``flow_shift``, the last
    (``t = 0``) dropped. Unlike ``flow_shift`` the spacing runs to ``t = 0``, so the last step before sigma = 0
    starts at ``s(t_max / n)`` rather than at ``t_min``. Returns ``n`` flow times, decreasing."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0; got {shift!r}")
    t = torch.linspace(t_max, 0, n + 1, dtype=torch.float64)[:-1]
    return shift * t / (1 + (shift - 1) * t)


def flow_dynamic(n: int, t_min: float, t_max: float = 1.0, mu: float = 0.0) -> Tensor:
    """diffusers' dynamic shifting (``use_dynamic_shifting``, ``time_shift_type="exponential"``):
    ``s(t) = e^mu / (e^mu + 1/t - 1)`` over ``linspace(t_max, t_min, n)`` (FLUX's resolution shift ``mu``).
    ``mu = 0`` is the plain linspace grid. Returns ``n`` flow times, decreasing."""
    t = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def discrete_timesteps(n: int, num_train_timesteps: int, spacing: str = "trailing",
                       steps_offset: int = 0) -> np.ndarray:
    """Integer timesteps, decreasing, as diffusers spaces them; ``trailing`` starts at ``T - 1``
    (Lin et al., arXiv 2305.08891, Table 2)."""
    T = num_train_timesteps
    if not 1 <= n <= T:
        raise ValueError(f"need 1 <= steps <= {T} for a discrete model; got {n}")
    if spacing == "linspace":
        t = np.linspace(0, T - 1, n).round()[::-1]
    elif spacing == "leading":
        t = (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        t = np.round(np.arange(T, 0, -T / n)) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of 'leading', 'trailing', 'linspace'")
    return t.astype(np.float64).copy()


_SCHEDULES = {
    "karras": "Karras et al. 2022 (rho = 7): uniform in sigma^(1/rho)",
    "logsnr": "uniform in log-SNR (lambda = -log sigma)",
    "exponential": "polyexponential in log sigma (rho = 1 equals logsnr)",
    "time_uniform": "uniform in the model's native time",
    "time_quadratic": "uniform in the square root of the model's native time",
    "discrete": "integer timesteps of a discrete model, spacing leading / trailing (default) / linspace",
    "flow_shift": "diffusers' flow-matching grid in flow time t = sigma / (1 + sigma), option shift (default 1.0)",
    "flow_sigmas": "diffusers' use_flow_sigmas grid (DPM-Solver++): t = linspace(1 - 1/1000, 0, n + 1), "
                   "shifted, the 0 dropped; option shift (default 1.0)",
    "flow_dynamic": "diffusers' flow-matching grid with dynamic (exponential) shifting, option mu (default 0.0)",
    "explicit": "an explicit list of sigmas (option sigmas=[...])",
}


def list_schedules() -> dict[str, str]:
    """Every schedule name with a one-line description."""
    return dict(_SCHEDULES)


def check_sigmas(sigmas: Any) -> Tensor:
    """Validate a grid: 1-D, at least 2 entries, no NaN, strictly decreasing, ending at >= 0."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() < 2:
        raise ValueError(f"a sigma schedule needs at least 2 entries; got {s.numel()}")
    if torch.isnan(s).any():
        raise ValueError(f"the sigma schedule contains NaN: {s.tolist()}")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"the sigma schedule must be strictly decreasing; got {s.tolist()}")
    if s[-1] < 0:
        raise ValueError(f"sigmas must be >= 0; the schedule ends at {float(s[-1])}")
    return s


def get_sigmas(name: str, n_steps: int, model, *, final: str = "zero", sigma_min: float | None = None,
               sigma_max: float | None = None, **options: Any) -> Tensor:
    """A full grid of ``n_steps`` steps for ``model`` (``n_steps + 1`` sigmas).

    Args:
        name: a name from ``list_schedules()``.
        n_steps: number of solver steps, >= 1.
        model: a ``Denoiser`` (gives ``sigma_min``, ``sigma_max`` and its native time).
        final: ``"zero"`` appends sigma = 0; ``"min"`` ends the grid at ``sigma_min``.
        sigma_min, sigma_max: override the model's range.
        options: schedule options (``rho``, ``spacing``, ``steps_offset``, ``shift``, ``mu``, ``sigmas``).

    The flow grids live in flow time ``t = sigma / (1 + sigma)`` (the flow's ``sigma = t / (1 - t)``); they start
    at ``t = 1`` (``sigma = inf``) unless ``sigma_max`` is finite.
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(_SCHEDULES)}")
    if final not in ("zero", "min"):
        raise ValueError(f"final must be 'zero' or 'min'; got {final!r}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}")
    if name == "explicit":
        return _explicit(options, n_steps)
    process = model.process
    lo = float(model.sigma_min if sigma_min is None else sigma_min)
    hi = float(model.sigma_max if sigma_max is None else sigma_max)
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < sigma_min < sigma_max; got sigma_min={lo}, sigma_max={hi}")
    n = n_steps if final == "zero" else n_steps + 1
    if name == "discrete":
        allowed = {"spacing", "steps_offset"}
        _check_opts(name, options, allowed)
        T = getattr(process, "num_train_timesteps", None)
        if T is None:
            raise ValueError(f"the discrete schedule needs a discrete-time model; this one is {process.family}")
        t = discrete_timesteps(n, T, **options)
        s = process.t_to_sigma(torch.from_numpy(t)).double()
    elif name in ("flow_shift", "flow_dynamic"):
        key = "shift" if name == "flow_shift" else "mu"
        _check_opts(name, options, {key})
        fn = flow_shift if name == "flow_shift" else flow_dynamic
        t = fn(n, lo / (1 + lo), 1.0 if math.isinf(hi) else hi / (1 + hi), **options)
        s = torch.where(t >= 1, torch.full_like(t, math.inf), t / (1 - t))
    elif name == "flow_sigmas":
        _check_opts(name, options, {"shift"})
        if final != "zero":
            raise ValueError("the flow_sigmas grid runs to sigma = 0 by construction; final='min' is not available "
                             "with it (use flow_shift)")
        # diffusers starts at t = 1 - 1/num_train_timesteps (1000 for every flow config it ships).
        t = flow_sigmas(n, 1 - 1 / 1000 if math.isinf(hi) else hi / (1 + hi), **options)
        s = t / (1 - t)
    elif name in ("karras", "logsnr", "exponential"):
        if math.isinf(hi):
            raise ValueError(f"the {name} schedule needs a finite sigma_max, and this model's is inf (zero "
                             "terminal SNR); pass sigma_max=..., or use time_uniform or discrete")
        _check_opts(name, options, {"rho"} if name != "logsnr" else set())
        s = {"karras": karras, "logsnr": logsnr, "exponential": exponential}[name](n, lo, hi, **options)
    else:
        _check_opts(name, options, set())
        s = time_power(n, process, lo, hi, power=1.0 if name == "time_uniform" else 2.0)
    if final == "zero":
        s = torch.cat([s, s.new_zeros(1)])
    return check_sigmas(s)


def _explicit(options: dict, n_steps: int) -> Tensor:
    _check_opts("explicit", options, {"sigmas"})
    if "sigmas" not in options:
        raise ValueError("the explicit schedule needs sigmas=[...]")
    s = check_sigmas(options["sigmas"])
    if s.numel() != n_steps + 1:
        raise ValueError(f"the explicit schedule has {s.numel() - 1} steps but {n_steps} were asked for")
    return s


def _check_opts(name: str, options: dict, allowed: set[str]) -> None:
    bad = set(options) - allowed
    if bad:
        raise ValueError(f"unknown option(s) {sorted(bad)} for schedule {name!r}; allowed: {sorted(allowed) or 'none'}")


def as_list(sigmas: Tensor | Sequence[float]) -> list[float]:
    return [float(v) for v in torch.as_tensor(sigmas, dtype=torch.float64)]
