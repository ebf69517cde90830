"""Forward noise processes: how a model's own time and scaling map to sigma space (docs/math.md, table).

A process writes the model-space state as ``x_t = a(t) x0 + b(t) eps`` and defines
``sigma = b / a``; the sigma-space state is ``x = x_t / a``. Every process here gives

- ``coeffs(sigma) -> (a, b)``, stable at ``sigma = 0`` and ``sigma = inf``;
- ``sigma_to_t`` / ``t_to_sigma`` for the model's native time;
- ``dcoeffs_dt(t) -> (da/dt, db/dt)``, needed to convert a flow velocity;
- ``sigma_min``, ``sigma_max``, ``round_sigma`` and ``family``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

Tensor = torch.Tensor


def _t(v: Any, like: Tensor | None = None) -> Tensor:
    dtype = like.dtype if like is not None else torch.float64
    device = like.device if like is not None else None
    return torch.as_tensor(v, dtype=dtype, device=device)


def vp_coeffs(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``a = 1/sqrt(1+sigma^2)``, ``b = sigma a``, written so that sigma = 0 and inf are exact."""
    a = torch.rsqrt(1 + sigma**2)
    b = torch.rsqrt(1 + sigma.reciprocal() ** 2)
    return a, b


class NoiseProcess:
    family: str = "ve"
    sigma_min: float
    sigma_max: float

    def coeffs(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def t_to_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def dcoeffs_dt(self, t: Tensor) -> tuple[Tensor, Tensor]:
        raise ValueError(f"the {self.family} process has no time derivative; flow velocity needs an affine path")

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return sigma

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


@dataclass(frozen=True)
class VE(NoiseProcess):
    """Variance exploding: ``x_t = x0 + sigma eps``; native time is sigma itself (EDM, NCSN++)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    family: str = field(default="ve", init=False)

    def coeffs(self, sigma):
        return torch.ones_like(sigma), sigma

    def sigma_to_t(self, sigma):
        return sigma

    def t_to_sigma(self, t):
        return t


BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]


def make_betas(kind: BetaSchedule, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> np.ndarray:
    """The beta schedules of DDPM (linear), Stable Diffusion (scaled_linear) and iDDPM (cosine)."""
    T = num_train_timesteps
    if kind == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if kind == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    if kind == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731 (Nichol & Dhariwal 2021)
        return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=np.float64)
    raise ValueError(f"unknown beta schedule {kind!r}; choose one of 'linear', 'scaled_linear', 'squaredcos_cap_v2'")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Algorithm 1 of Lin et al., arXiv 2305.08891: shift and scale sqrt(alpha_bar) so the last is 0."""
    s = np.sqrt(np.cumprod(1 - betas))
    s0, sT = s[0], s[-1]
    s = (s - sT) * s0 / (s0 - sT)
    abar = s**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


@dataclass(frozen=True, eq=False)
class VPDiscrete(NoiseProcess):
    """Discrete-time VP (DDPM, Stable Diffusion, ADM): timesteps ``0 .. T-1`` with ``alphas_cumprod``.

    ``sigma_t = sqrt((1 - abar_t) / abar_t)``. A sigma between two training steps maps to a
    fractional timestep by interpolating in log sigma. With ``fractional=False`` the model is only
    given integer timesteps (``round_sigma`` snaps to the nearest one in log sigma).
    A zero-terminal-SNR schedule has ``abar_{T-1} = 0`` and ``sigma_max = inf``.
    """

    alphas_cumprod: np.ndarray
    fractional: bool = True
    family: str = field(default="vp_discrete", init=False)

    def __post_init__(self):
        ac = np.asarray(self.alphas_cumprod, dtype=np.float64)
        if ac.ndim != 1 or ac.size < 2 or np.any(np.diff(ac) >= 0) or ac[0] > 1 or ac[-1] < 0:
            raise ValueError("alphas_cumprod must be a strictly decreasing 1-D array in [0, 1] with >= 2 entries")
        object.__setattr__(self, "alphas_cumprod", ac)
        with np.errstate(divide="ignore"):
            log_sigmas = 0.5 * (np.log1p(-ac) - np.log(ac))
        object.__setattr__(self, "_log_sigmas", log_sigmas)

    @classmethod
    def from_betas(cls, betas: BetaSchedule | np.ndarray | list[float] = "linear", num_train_timesteps: int = 1000,
                   beta_start: float = 1e-4, beta_end: float = 0.02, rescale_betas_zero_snr: bool = False,
                   fractional: bool = True) -> VPDiscrete:
        if isinstance(betas, str):
            b = make_betas(betas, num_train_timesteps, beta_start, beta_end)
        else:
            b = np.asarray(betas, dtype=np.float64)
            if b.ndim != 1 or np.any(b <= 0) or np.any(b > 1):
                raise ValueError("custom betas must be a 1-D array with values in (0, 1]")
        if rescale_betas_zero_snr:
            b = rescale_zero_terminal_snr(b)
        return cls(np.cumprod(1 - b), fractional=fractional)

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.size

    @property
    def sigma_min(self) -> float:  # type: ignore[override]
        return float(math.exp(self._log_sigmas[0]))

    @property
    def sigma_max(self) -> float:  # type: ignore[override]
        return float(math.exp(self._log_sigmas[-1]))

    @property
    def sigmas(self) -> Tensor:
        """The sigma of every integer timestep, ``[T]``, increasing."""
        return torch.from_numpy(np.exp(self._log_sigmas))

    def coeffs(self, sigma):
        return vp_coeffs(sigma)

    def sigma_to_t(self, sigma):
        ls = self._log_sigmas
        finite = ls[np.isfinite(ls)]
        log_s = torch.log(sigma.detach().double()).cpu().numpy()
        t = np.interp(log_s, finite, np.arange(finite.size, dtype=np.float64))
        t = np.where(np.isposinf(log_s), ls.size - 1, t)
        if not self.fractional:
            t = np.round(t)
        out = torch.from_numpy(t).to(sigma.device, sigma.dtype)
        if sigma.requires_grad and self.fractional:  # the interpolation's slope, for gradients in sigma
            i = np.clip(np.searchsorted(finite, log_s), 1, finite.size - 1)
            slope = torch.from_numpy(1.0 / (finite[i] - finite[i - 1])).to(sigma.device, sigma.dtype)
            log_sigma = torch.log(sigma)
            out = out + (log_sigma - log_sigma.detach()) * slope
        return out

    def t_to_sigma(self, t):
        tt = t.double().cpu().numpy()
        if np.any(tt < 0) or np.any(tt > self.num_train_timesteps - 1):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}]")
        lo = np.floor(tt).astype(int)
        hi = np.minimum(lo + 1, self.num_train_timesteps - 1)
        w = tt - lo
        ls_lo, ls_hi = self._log_sigmas[lo], self._log_sigmas[hi]
        with np.errstate(invalid="ignore"):
            ls = np.where(w == 0, ls_lo, np.where(w == 1, ls_hi, (1 - w) * ls_lo + w * ls_hi))
        return torch.from_numpy(np.exp(ls)).to(t.device, t.dtype if t.is_floating_point() else torch.float64)

    def round_sigma(self, sigma):
        if self.fractional:
            return sigma
        return self.t_to_sigma(torch.round(self.sigma_to_t(sigma)))

    def describe(self):
        return {"family": self.family, "fractional": self.fractional,
                "alphas_cumprod_sha": _array_digest(self.alphas_cumprod)}


def _array_digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class VPContinuous(NoiseProcess):
    """Continuous-time VP SDE (Song et al., arXiv 2011.13456): ``linear`` betas or iDDPM ``cosine``.

    linear: ``log abar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)``;
    cosine: ``abar(t) = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2)`` (arXiv 2102.09672).
    """

    kind: Literal["linear", "cosine"] = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008
    t_min: float = 1e-3
    t_max: float = 1.0
    family: str = field(default="vp_continuous", init=False)

    def __post_init__(self):
        if self.kind not in ("linear", "cosine"):
            raise ValueError(f"unknown continuous VP kind {self.kind!r}; choose 'linear' or 'cosine'")
        if not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1; got t_min={self.t_min}, t_max={self.t_max}")

    def _neg_log_abar(self, t: Tensor) -> Tensor:
        if self.kind == "linear":
            return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        s = self.cosine_s
        c0 = math.log(math.cos(s / (1 + s) * math.pi / 2))
        return -2 * (torch.log(torch.cos((t + s) / (1 + s) * math.pi / 2)) - c0)

    def t_to_sigma(self, t):
        return torch.sqrt(torch.expm1(self._neg_log_abar(_t(t))))

    def sigma_to_t(self, sigma):
        L = torch.log1p(sigma.double() ** 2)  # = -log abar
        if self.kind == "linear":
            db = self.beta_max - self.beta_min
            t = 2 * L / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * db * L))
        else:
            s = self.cosine_s
            c0 = math.log(math.cos(s / (1 + s) * math.pi / 2))
            t = torch.acos(torch.exp(c0 - L / 2)) * 2 * (1 + s) / math.pi - s
        return t.to(sigma.dtype)

    @property
    def sigma_min(self) -> float:  # type: ignore[override]
        return float(self.t_to_sigma(_t(self.t_min)))

    @property
    def sigma_max(self) -> float:  # type: ignore[override]
        return float(self.t_to_sigma(_t(self.t_max)))

    def coeffs(self, sigma):
        return vp_coeffs(sigma)


@dataclass(frozen=True)
class Flow(NoiseProcess):
    """Rectified flow / flow matching with the linear path ``x_t = (1 - t) x0 + t eps``.

    ``sigma = t / (1 - t)``; ``t = 1`` is pure noise (``sigma = inf``), so flow models start from
    zero terminal SNR by construction.
    """

    t_min: float = 1e-3
    t_max: float = 1.0
    family: str = field(default="flow", init=False)

    def __post_init__(self):
        if not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1; got t_min={self.t_min}, t_max={self.t_max}")

    def coeffs(self, sigma):
        a = (1 + sigma).reciprocal()
        b = (1 + sigma.reciprocal()).reciprocal()
        return a, b

    def sigma_to_t(self, sigma):
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))

    def t_to_sigma(self, t):
        t = _t(t)
        return t / (1 - t)

    def dcoeffs_dt(self, t):
        return -torch.ones_like(t), torch.ones_like(t)

    @property
    def sigma_min(self) -> float:  # type: ignore[override]
        return float(self.t_to_sigma(_t(self.t_min)))

    @property
    def sigma_max(self) -> float:  # type: ignore[override]
        return float(self.t_to_sigma(_t(self.t_max)))


@dataclass(frozen=True, eq=False)
class Affine(NoiseProcess):
    """A general affine interpolant ``x_t = alpha(t) x0 + beta(t) eps`` with ``beta/alpha`` increasing.

    ``alpha`` and ``beta`` map a float64 tensor of times to a tensor; their derivatives are taken
    with autograd unless given. ``sigma_to_t`` inverts ``beta/alpha`` by bisection.
    """

    alpha: Callable[[Tensor], Tensor]
    beta: Callable[[Tensor], Tensor]
    t_min: float = 0.0
    t_max: float = 1.0
    d_alpha: Callable[[Tensor], Tensor] | None = None
    d_beta: Callable[[Tensor], Tensor] | None = None
    label: str = "affine"
    family: str = field(default="affine", init=False)

    def _ab(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.alpha(t), self.beta(t)

    def t_to_sigma(self, t):
        a, b = self._ab(_t(t))
        return torch.where(a == 0, torch.full_like(a, math.inf), b / a)

    def sigma_to_t(self, sigma):
        lo = torch.full_like(sigma, self.t_min, dtype=torch.float64)
        hi = torch.full_like(sigma, self.t_max, dtype=torch.float64)
        s = sigma.double()
        for _ in range(64):
            mid = (lo + hi) / 2
            below = self.t_to_sigma(mid) < s
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return ((lo + hi) / 2).to(sigma.dtype)

    def coeffs(self, sigma):
        t = self.sigma_to_t(sigma.double())
        a, b = self._ab(t)
        return a.to(sigma.dtype), b.to(sigma.dtype)

    def dcoeffs_dt(self, t):
        if self.d_alpha is not None and self.d_beta is not None:
            return self.d_alpha(t), self.d_beta(t)
        with torch.enable_grad():
            tt = t.detach().double().requires_grad_(True)
            da = torch.autograd.grad(self.alpha(tt).sum(), tt)[0]
            db = torch.autograd.grad(self.beta(tt).sum(), tt)[0]
        return da.to(t.dtype), db.to(t.dtype)

    @property
    def sigma_min(self) -> float:  # type: ignore[override]
        return float(self.t_to_sigma(_t(self.t_min)))

    @property
    def sigma_max(self) -> float:  # type: ignore[override]
        return float(self.t_to_sigma(_t(self.t_max)))

    def describe(self):
        return {"family": self.family, "label": self.label, "t_min": self.t_min, "t_max": self.t_max}
