"""Warm-up adaptation shared by the Metropolis and Hamiltonian samplers, per chain.

- Step size: dual averaging of ``log eps`` towards a target acceptance ``delta`` (Hoffman and Gelman, arXiv
  1111.4246, Sec. 3.2, Alg. 5), with their constants ``gamma = 0.05, t0 = 10, kappa = 0.75`` and
  ``mu = log(10 eps_0)``. After warm-up the step size is the averaged ``eps_bar``.
- Diagonal inverse mass matrix: Stan's windowed scheme (Stan Reference Manual, "HMC algorithm parameters"): a
  fast initial buffer (75 iterations), slow windows of 25, 50, 100, ... iterations (the last one stretched to
  the terminal buffer), and a fast terminal buffer (50); with fewer than 150 warm-up iterations the buffers are
  15 % / 75 % / 10 % of them. At the end of each slow window the inverse mass becomes the window's sample
  variance, regularised as Stan does, ``(n / (n + 5)) var + 1e-3 (5 / (n + 5))``, and dual averaging restarts
  from the window's averaged step size ``eps_bar``, as BlackJAX does (restarting from the last iterate, which dual
  averaging moves by large steps early on, left single chains of ``banana`` with step sizes several times off).
- Random-walk Metropolis runs its mass windows in the first 60 % of warm-up only (``mass_share``): its acceptance
  probability is a noisy signal, and Stan's 50 terminal iterations left its dual averaging far from 0.234
  (0.05-0.21 per chain on ``gaussian:dim=10,condition=100``); 40 % of warm-up at the final mass brings it to
  about 0.2-0.26 (tests/mcmc/test_samplers.py::test_rwm_warmup_reaches_its_acceptance_target).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def mass_windows(warmup: int) -> list[tuple[int, int]]:
    """The slow windows ``[start, end)`` of Stan's warm-up, as iteration indices (none below 20 iterations)."""
    if warmup < 20:
        return []
    init, term, base = 75, 50, 25
    if init + term + base > warmup:
        init, term = int(0.15 * warmup), int(0.1 * warmup)
        base = warmup - init - term
    end_slow = warmup - term
    windows, start, size = [], init, base
    while start < end_slow:
        end = start + size
        if end + 2 * size >= end_slow:  # the next window would not fit: this one takes the rest
            end = end_slow
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


class Adaptation:
    """Dual-averaging step size and windowed diagonal mass for ``chains`` chains in ``dim`` dimensions."""

    gamma, t0, kappa = 0.05, 10.0, 0.75

    def __init__(self, step_size: Tensor, warmup: int, target_accept: float, dim: int, adapt_mass: bool = True,
                 adapt_step: bool = True, mass_share: float = 1.0):
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1); got {target_accept}")
        self.step_size = step_size.clone()
        self.warmup, self.delta = warmup, float(target_accept)
        self.adapt_step = adapt_step
        self.inv_mass = torch.ones(step_size.shape[0], dim, dtype=step_size.dtype)
        # mass_share < 1 ends the mass windows early, leaving the rest of warm-up to the step size alone
        self.windows = mass_windows(int(mass_share * warmup)) if adapt_mass else []
        self._restart()
        self._reset_moments()

    def _restart(self) -> None:
        self.mu = torch.log(10 * self.step_size)
        self.h_bar = torch.zeros_like(self.step_size)
        self.log_eps_bar = torch.zeros_like(self.step_size)
        self.m = 0

    def _reset_moments(self) -> None:
        self.n, self.mean, self.m2 = 0, torch.zeros_like(self.inv_mass), torch.zeros_like(self.inv_mass)

    def update(self, i: int, accept_prob: Tensor, x: Tensor) -> None:
        """After warm-up iteration ``i``: one dual-averaging step, and the mass windows' bookkeeping."""
        if i >= self.warmup:
            return
        if self.adapt_step:
            self.m += 1
            eta = 1.0 / (self.m + self.t0)
            a = torch.nan_to_num(accept_prob, nan=0.0)
            self.h_bar = (1 - eta) * self.h_bar + eta * (self.delta - a)
            log_eps = self.mu - math.sqrt(self.m) / self.gamma * self.h_bar
            w = self.m ** -self.kappa
            self.log_eps_bar = w * log_eps + (1 - w) * self.log_eps_bar
            self.step_size = log_eps.exp()
        for start, end in self.windows:
            if start <= i < end:  # Welford's running variance
                self.n += 1
                delta = x - self.mean
                self.mean += delta / self.n
                self.m2 += delta * (x - self.mean)
                if i == end - 1:
                    var = self.m2 / max(self.n - 1, 1)
                    self.inv_mass = (self.n / (self.n + 5.0)) * var + 1e-3 * (5.0 / (self.n + 5.0))
                    self._reset_moments()
                    if self.adapt_step:
                        if self.m > 0:  # restart from the averaged step size, not the last noisy iterate
                            self.step_size = self.log_eps_bar.exp()
                        self._restart()
        if i == self.warmup - 1 and self.adapt_step:
            self.step_size = self.log_eps_bar.exp()


def initial_step_size(log_accept, step_size: Tensor, max_iter: int = 50) -> Tensor:
    """Hoffman and Gelman's heuristic (arXiv 1111.4246, Alg. 4), per chain: double or halve ``eps`` until the
    acceptance probability of one proposal crosses 1/2. ``log_accept(eps, idx)`` returns the log acceptance
    probabilities of fresh proposals for chains ``idx`` (it draws from their own streams)."""
    eps = step_size.clone()
    chains = list(range(eps.shape[0]))
    log_a = log_accept(eps, chains)
    direction = torch.where(log_a > math.log(0.5), 1.0, -1.0).to(eps.dtype)
    active = torch.ones_like(eps, dtype=torch.bool)
    for _ in range(max_iter):
        # continue while (a)^direction > 2^-direction, i.e. direction * log a > -direction * log 2
        active &= direction * log_a > -direction * math.log(2)
        idx = active.nonzero().flatten().tolist()
        if not idx:
            break
        eps[idx] = eps[idx] * torch.pow(2.0, direction[idx])
        log_a[idx] = log_accept(eps, idx)
    return eps
