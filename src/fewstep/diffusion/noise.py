"""Noise for stochastic samplers: ``noise(sigma, sigma_next) -> Tensor``, standard normal, shaped like the state.

Randomness is injected. Every sample owns one counter-based generator
(SplitMix64, Steele, Lea & Flood, OOPSLA 2014) keyed by its seed, so a seed's noise is the same
at every batch size and on every number of processes. Draw ``n`` of a stream is a pure function of
``(seed, n)``; this is what lets a Brownian tree regenerate any of its nodes on demand.

- ``seeded_noise``: the starting noise of ``fewstep.sample``, one generator per sample (torch's own).
- ``GaussianNoise``: fresh independent noise at every call.
- ``BrownianNoise``: the normalised increment ``(W(hi) - W(lo)) / sqrt(hi - lo)`` of a per-sample
  Brownian motion ``W`` in sigma (as k-diffusion's ``BrownianTreeNoiseSampler``). Increments over
  nested grids add up exactly, so samples stay close when the number of steps changes.

``spawn(i)`` gives an independent sampler of the same kind and seeds (Restart draws each restart
from its own, so that a Brownian path is never traversed twice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

Tensor = torch.Tensor
NoiseType = Literal["gaussian", "brownian"]
NOISE_TYPES: tuple[str, ...] = ("gaussian", "brownian")

_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (the golden ratio in 64 bits)
_TAG_GAUSSIAN, _TAG_BROWNIAN = 0x6761757373, 0x62726F776E  # separate streams from one seed


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (a bijection of uint64 with good avalanche)."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


def _child(keys: np.ndarray, counter: int) -> np.ndarray:
    """The key of sub-stream ``counter`` of each key (a new, independent SplitMix64 seed)."""
    return _mix(keys ^ _mix(np.array([counter % 2**64], dtype=np.uint64) + _GAMMA))


def _normals(keys: np.ndarray, n: int) -> np.ndarray:
    """``[len(keys), n]`` standard normals from draws ``1, 2, ...`` of each key's stream; each pair of
    draws gives two normals by Box-Muller (``R cos theta``, ``R sin theta``)."""
    j = np.arange((n + 1) // 2, dtype=np.uint64)
    a = _mix(keys[:, None] + (2 * j + 1) * _GAMMA)
    b = _mix(keys[:, None] + (2 * j + 2) * _GAMMA)
    radius = np.sqrt(-2.0 * np.log(((a >> 11) + 1).astype(np.float64) * 2.0**-53))  # uniform in (0, 1]
    theta = (b >> 11).astype(np.float64) * (2.0 * math.pi * 2.0**-53)  # uniform in [0, 2 pi)
    return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=2).reshape(len(keys), -1)[:, :n]


def _seed_keys(seeds: Sequence[int], tag: int) -> np.ndarray:
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"noise seeds must be a non-empty sequence of integers; got {seeds!r}")
    return _mix(_mix(np.array([int(s) % 2**64 for s in seeds], dtype=np.uint64)) ^ np.uint64(tag))


class _Noise:
    def __init__(self, seeds: Sequence[int], shape: Sequence[int], dtype: torch.dtype, device, tag: int):
        self.keys = _seed_keys(seeds, tag)
        self.shape = tuple(int(d) for d in shape)
        self.size = math.prod(self.shape)
        self.dtype, self.device = dtype, device

    def _tensor(self, z: np.ndarray) -> Tensor:
        return torch.from_numpy(z).reshape(len(self.keys), *self.shape).to(dtype=self.dtype, device=self.device)

    def spawn(self, index: int):
        """An independent sampler of the same kind and seeds (Restart draws each restart from its own)."""
        child = type(self).__new__(type(self))
        child.__dict__.update(self.__dict__)
        child.keys = _child(self.keys, 2**48 + int(index))
        child._reset()
        return child


class GaussianNoise(_Noise):
    """Independent standard-normal noise ``[B, *shape]`` at each call; call ``k`` of sample ``i`` depends
    only on ``(seeds[i], k)``. The sigmas are accepted for the common signature and not used."""

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], dtype: torch.dtype = torch.float32, device=None):
        super().__init__(seeds, shape, dtype, device, _TAG_GAUSSIAN)
        self._reset()

    def _reset(self) -> None:
        self.calls = 0

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        z = _normals(_child(self.keys, self.calls), self.size)
        self.calls += 1
        return self._tensor(z)


class BrownianNoise(_Noise):
    """Normalised increments of one Brownian motion ``W(t)``, ``t = sigma >= 0``, per sample.

    ``W`` is fixed by the seed alone, on all of ``[0, 2^40]``: ``W(1) = 0``; the anchors ``W(2^k)``
    are a random walk with independent ``N(0, 2^k)`` increments (``k = -30..39``) and
    ``W(0) = W(2^-30) - N(0, 2^-30)``. Between two known points ``W`` is refined by Brownian-bridge
    bisection, at the geometric midpoint ``sqrt(l r)`` (the arithmetic one on ``[0, 2^-30]``), so
    that small sigmas are resolved as finely as large ones. Each node draws from its own sub-stream,
    so any ``W(t)`` can be regenerated without storing the tree. Bisection stops when the bracket is
    narrower than ``rtol * t`` and interpolates linearly inside it (the bridge's conditional mean;
    the neglected standard deviation is ``sqrt(rtol t) / 2``). The path of the last query is kept
    (an interval cache), so consecutive queries share their common ancestors.
    """

    K_LO, K_HI = -30, 40

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], dtype: torch.dtype = torch.float32, device=None,
                 rtol: float = 1e-7):
        super().__init__(seeds, shape, dtype, device, _TAG_BROWNIAN)
        if not 0 < rtol < 1:
            raise ValueError(f"rtol must be in (0, 1); got {rtol!r}")
        self.rtol = rtol
        self._reset()

    def _reset(self) -> None:
        self._anchors: dict[int, np.ndarray] = {0: np.zeros((len(self.keys), self.size))}
        self._path: list[tuple[float, float, np.ndarray, np.ndarray, np.ndarray]] = []
        self._memo: dict[float, np.ndarray] = {}

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        lo, hi = sorted((float(sigma), float(sigma_next)))
        if not hi > lo:
            raise ValueError(f"a Brownian increment needs two different sigmas; got {sigma!r} and {sigma_next!r}")
        return self._tensor((self.W(hi) - self.W(lo)) / math.sqrt(hi - lo))

    def W(self, t: float) -> np.ndarray:
        """The Brownian motion at ``t``, ``[B, prod(shape)]`` (float64)."""
        t = float(t)
        if not 0 <= t <= 2.0**self.K_HI:
            raise ValueError(f"the Brownian noise is defined for sigma in [0, 2^{self.K_HI}]; got {t!r}")
        if t not in self._memo:
            if len(self._memo) >= 8:
                self._memo.pop(next(iter(self._memo)))
            self._memo[t] = self._value(t)
        return self._memo[t]

    def _anchor(self, k: int) -> np.ndarray:
        """``W(2^k)``; ``k = K_LO - 1`` stands for ``W(0)``."""
        if k not in self._anchors:
            if k > 0:
                step = _normals(_child(self.keys, 2 * k), self.size) * math.sqrt(2.0 ** (k - 1))
                self._anchors[k] = self._anchor(k - 1) + step
            else:
                width = 2.0 ** (k if k >= self.K_LO else self.K_LO)
                step = _normals(_child(self.keys, 2 * abs(k) + 1), self.size) * math.sqrt(width)
                self._anchors[k] = self._anchor(k + 1) - step
        return self._anchors[k]

    def _value(self, t: float) -> np.ndarray:
        if t == 0:
            return self._anchor(self.K_LO - 1)
        k = math.floor(math.log2(t))
        k -= 2.0**k > t  # log2 may round up just below a power of two
        if k < self.K_LO:
            l, r, k_key = 0.0, 2.0**self.K_LO, self.K_LO - 1
        else:
            l, r, k_key = 2.0**k, 2.0 ** (k + 1), k
        if t == l:
            return self._anchor(k_key if l > 0 else self.K_LO - 1)
        # resume from the deepest cached bracket that contains t
        while self._path and not (self._path[-1][0] <= t <= self._path[-1][1]):
            self._path.pop()
        if self._path and self._path[0][:2] == (l, r):
            l, r, Wl, Wr, key = self._path[-1]
        else:
            Wl = self._anchor(k_key) if l > 0 else self._anchor(self.K_LO - 1)
            Wr = self._anchor(k_key + 1) if l > 0 else self._anchor(self.K_LO)
            key = _child(self.keys, 2**40 + k_key)
            self._path = [(l, r, Wl, Wr, key)]
        while r - l > self.rtol * t:
            m = math.sqrt(l * r) if l > 0 else 0.5 * r
            if not l < m < r:  # floating-point floor of the bisection
                break
            z = _normals(key, self.size)
            Wm = Wl + (m - l) / (r - l) * (Wr - Wl) + math.sqrt((m - l) * (r - m) / (r - l)) * z
            if t == m:
                return Wm
            if t < m:
                r, Wr, key = m, Wm, _child(key, 1)
            else:
                l, Wl, key = m, Wm, _child(key, 2)
            self._path.append((l, r, Wl, Wr, key))
        if t == r:
            return Wr
        return Wl + (t - l) / (r - l) * (Wr - Wl)


def make_noise(noise_type: str, seeds: Sequence[int], shape: Sequence[int], dtype: torch.dtype = torch.float32,
               device=None) -> GaussianNoise | BrownianNoise:
    """The noise sampler ``noise_type`` ("gaussian" or "brownian") for samples with these seeds."""
    if noise_type == "gaussian":
        return GaussianNoise(seeds, shape, dtype, device)
    if noise_type == "brownian":
        return BrownianNoise(seeds, shape, dtype, device)
    raise ValueError(f"unknown noise_type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")


def seeded_noise(seeds: Sequence[int], shape: Sequence[int], dtype=torch.float32, device=None) -> Tensor:
    """Standard-normal noise with one generator per sample, so a seed's noise never depends on the batch."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
            for s in seeds]
    return torch.stack(rows).to(dtype=dtype, device=device)
