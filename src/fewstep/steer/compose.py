"""Compositional generation with MCMC correctors (Du et al., "Reduce, Reuse, Recycle: Compositional Generation with
Energy-Based Diffusion Models and MCMC", arXiv 2302.11552).

A product of distributions ``q(x) ~ prod_i p_i(x)^{w_i}`` (two classes of digits-cond, a model and a constraint,
two exact mixtures) is sampled from the sum of the factors' scores. The sum is the score of ``prod_i p_{i,sigma}``,
the product of the *noised* factors, which is not the noised product: the reverse process with the summed score
does not end at ``q`` (the paper's Sec. 3). The paper's fix is to treat the noised products as a sequence of
annealed targets and run MCMC at each noise level (Sec. 4): ULA needs only the summed score; MALA and HMC also
need the energy ``-sum_i w_i log p_{i,sigma}(x)`` for their Metropolis-Hastings test. The paper gets it from an
energy-parameterised network; fewstep's trained nets are score (denoiser) parameterised, so here MALA and HMC use
an exact model's log-density (``exact_log_density``: the bundled Gaussian mixtures and Gaussians) or any
``log_density(x, sigma)`` the caller gives, and ULA works with every model.

``Product`` is the summed-score denoiser ``D = x + sum_i w_i (D_i(x, sigma) - x)`` (``score = (D - x) / sigma^2``),
and ``compose_sample`` runs a registered solver on it with ``corrector_steps`` MCMC steps at each grid point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.noise import GaussianNoise
from fewstep.models.exact import GMM, Gauss
from fewstep.steer._particles import Particles, SteerResult

Tensor = torch.Tensor
Corrector = Literal["ula", "mala", "hmc"]
CORRECTORS: tuple[str, ...] = ("ula", "mala", "hmc")
LogDensity = Callable[[Tensor, float], Tensor]

__all__ = ["CORRECTORS", "Product", "compose_sample", "exact_log_density"]


class Product(Denoiser):
    """The summed-score denoiser of ``prod_i p_i(x)^{w_i}`` (Du et al., arXiv 2302.11552, Eq. 4):
    ``D(x, sigma) = x + sum_i w_i (D_i(x, sigma, cond_i) - x)``.

    Args:
        factors: denoisers, or ``(denoiser, cond)`` pairs (e.g. ``(digits_cond, {"class_labels": 3})``: an integer
            class is given to every row). All on one noise process and data shape.
        weights: ``w_i`` (default all 1); a negative weight divides by that factor (the paper's negation).
    """

    def __init__(self, factors: Sequence[Denoiser | tuple[Denoiser, Mapping[str, Any] | None]],
                 weights: Sequence[float] | None = None):
        items = [f if isinstance(f, tuple) else (f, None) for f in factors]
        if len(items) < 1 or not all(len(f) == 2 and isinstance(f[0], Denoiser) for f in items):
            raise TypeError("factors must be a non-empty list of fewstep Denoisers or (denoiser, cond) pairs")
        first = items[0][0]
        for m, _ in items[1:]:
            if m.process.describe() != first.process.describe() or tuple(m.shape or ()) != tuple(first.shape or ()):
                raise ValueError(f"every factor must share one noise process and data shape; {m.name} differs from "
                                 f"{first.name} (compose models of one family, e.g. the exact models or digits-*)")
        w = [1.0] * len(items) if weights is None else [float(v) for v in weights]
        if len(w) != len(items) or not all(math.isfinite(v) for v in w):
            raise ValueError(f"weights must be {len(items)} finite numbers, one per factor; got {weights!r}")
        super().__init__(first.process)
        self.factors, self.weights = items, w
        self.shape, self.prediction = first.shape, first.prediction
        self.name = " * ".join(m.name for m, _ in items)

    def denoise(self, x: Tensor, sigma: Tensor, cond) -> Tensor:
        if cond:
            raise ValueError("a Product takes its factors' model keywords with the factors; call it with cond=None")
        out = x.clone()
        for (m, c), w in zip(self.factors, self.weights, strict=True):
            out = out + w * (m(x, sigma, _rows(c, x.shape[0])) - x)
        return out


def _rows(cond: Mapping[str, Any] | None, B: int) -> dict[str, Any] | None:
    """Model keywords with an integer or 0-d value given to every row."""
    if cond is None:
        return None
    return {k: torch.full((B,), int(v)) if isinstance(v, int) or (torch.is_tensor(v) and v.ndim == 0) else v
            for k, v in cond.items()}


def exact_log_density(model: Denoiser) -> LogDensity:
    """``log p_sigma(x)``, the exact model's data density convolved with ``N(0, sigma^2 I)`` (float64 ``[B]``):
    ``logsumexp_k(log w_k + log N(x; mu_k, C_k + sigma^2 I))`` for a Gaussian mixture, ``log N(x; mu, diag(s^2 +
    sigma^2))`` for ``Gauss``; for a ``Product`` of such models, ``sum_i w_i log p_{i,sigma}``."""
    if isinstance(model, Product):
        parts = [(exact_log_density(m), w) for (m, c), w in zip(model.factors, model.weights, strict=True)]
        return lambda x, sigma: sum(w * f(x, sigma) for f, w in parts)
    if isinstance(model, GMM):
        def gmm(x: Tensor, sigma: float) -> Tensor:
            flat = x.flatten(1).to(torch.float64)
            var = model.lam[None] + float(sigma) ** 2
            z = torch.einsum("kij,bki->bkj", model.U, flat[:, None, :] - model.means[None])
            log_n = -0.5 * ((z**2 / var).sum(-1) + torch.log(var).sum(-1) + flat.shape[1] * math.log(2 * math.pi))
            return torch.logsumexp(model.log_w + log_n, dim=1)
        return gmm
    if isinstance(model, Gauss):
        def gauss(x: Tensor, sigma: float) -> Tensor:
            flat = x.flatten(1).to(torch.float64)
            var = model.std**2 + float(sigma) ** 2
            return -0.5 * (((flat - model.mean) ** 2 / var).sum(1) + torch.log(2 * math.pi * var).sum())
        return gauss
    raise ValueError(f"{getattr(model, 'name', type(model).__name__)} has no closed-form log-density: MALA and HMC "
                     "need one (the exact models gmm2d, digits-gmm and gauss have it, or pass log_density=); use the "
                     "ula corrector, which needs only the score")


def compose_sample(model: Denoiser, *, corrector: Corrector | None = "ula", corrector_steps: int = 2,
                   step_size: float = 0.05, leapfrog: int = 3, log_density: LogDensity | None = None,
                   solver: str = "euler_ancestral", nfe: int | None = None, schedule: str | None = None,
                   solver_options: Mapping[str, Any] | None = None, schedule_options: Mapping[str, Any] | None = None,
                   seeds: Sequence[int] | None = None, batch: int | None = None, seed: int = 0,
                   noise_type: str = "gaussian", dtype: torch.dtype | None = torch.float64) -> SteerResult:
    """Annealed MCMC sampling of a product (Du et al., arXiv 2302.11552, Sec. 4 and Algorithm 1): the base solver
    on ``model`` (typically a ``Product``), and at each grid point ``sigma_j`` after the first, ``corrector_steps``
    steps of an MCMC kernel whose target is ``exp(log_density(x, sigma_j))`` with score ``(D(x, sigma_j) - x) /
    sigma_j^2``; ``corrector=None`` is the uncorrected reverse process.

    - ``ula``: ``x += h s(x) + sqrt(2 h) z``, ``h = step_size sigma_j^2`` (no accept test; biased by ``O(h)``).
    - ``mala``: the same proposal with a Metropolis-Hastings test on ``log_density`` (its stationary law is the
      level's target at any step size).
    - ``hmc``: ``leapfrog`` steps of size ``eps = sqrt(step_size) sigma_j`` with unit mass and a Metropolis-Hastings
      test on the total energy.

    Args:
        model: the denoiser whose score the sampler follows (a ``Product``).
        log_density: ``(x, sigma) -> [B]`` for MALA and HMC; default ``exact_log_density(model)``.
        dtype: the state's dtype (float64 by default: the accept tests compare energies).
        Other arguments: the base sampler, as in ``fewstep.sample``.

    Returns:
        A ``SteerResult`` (rewards: the final ``log_density`` where there is one, else zeros); ``info["accept"]``
        is the mean acceptance rate of MALA/HMC, ``info["corrector_evaluations"]`` the evaluations the corrector
        added per sample.
    """
    if corrector is not None and corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; choose one of {', '.join(CORRECTORS)} or None")
    for what, v, lo in (("corrector_steps", corrector_steps, 1), ("leapfrog", leapfrog, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 1000:
            raise ValueError(f"{what} must be an integer in {lo}..1000; got {v!r}")
    if not 0 < float(step_size) < math.inf:
        raise ValueError(f"step_size must be a positive number (a fraction of sigma^2); got {step_size!r}")
    if log_density is None and corrector in ("mala", "hmc"):
        log_density = exact_log_density(model)
    if log_density is not None and not callable(log_density):
        raise TypeError(f"log_density must be a callable (x, sigma) -> [B]; got {type(log_density).__name__}")
    p = Particles(model, 1, seeds=seeds, batch=batch, seed=seed, cond=None, noise_type=noise_type, dtype=dtype,
                  plan_args=dict(solver=solver, nfe=nfe, schedule=schedule, solver_options=solver_options,
                                 schedule_options=schedule_options))
    shape = tuple(model.shape)
    z_noise = GaussianNoise(p.particle_seeds(offset=1), shape, torch.float64)
    u_noise = GaussianNoise(p.particle_seeds(offset=2), (1,), torch.float64)
    accepted, proposed, rows = [0.0], [0], [0]

    def score(x: Tensor, s: float) -> tuple[Tensor, Tensor]:
        rows[0] += x.shape[0]
        d = p.model(x.to(p.dtype), s, None).to(torch.float64)
        return (d - x) / s**2, d

    def log_u() -> Tensor:
        return torch.log(0.5 * torch.erfc(-u_noise(0.0, 0.0)[:, 0] / math.sqrt(2)))

    def on_point(j: int, x: Tensor, d: Tensor):
        s = p.grid[j]
        if j == 0 or math.isinf(s) or corrector is None:
            return None
        x, d = x.to(torch.float64), d.to(torch.float64)
        g = (d - x) / s**2
        for _ in range(corrector_steps):
            if corrector == "hmc":
                x, g, d = _hmc(x, g, d, s, step_size, leapfrog, score, log_density, z_noise, log_u, accepted,
                               proposed)
                continue
            h = step_size * s**2
            y = x + h * g + math.sqrt(2 * h) * z_noise(s, s)
            if corrector == "ula":
                x = y
                g, d = score(x, s)
                continue
            gy, dy = score(y, s)
            log_q_fwd = -((y - x - h * g) ** 2).flatten(1).sum(1) / (4 * h)
            log_q_bwd = -((x - y - h * gy) ** 2).flatten(1).sum(1) / (4 * h)
            log_a = log_density(y, s) - log_density(x, s) + log_q_bwd - log_q_fwd
            ok = log_u() < log_a
            accepted[0] += float(ok.double().sum())
            proposed[0] += ok.numel()
            x, g, d = (torch.where(bcast(ok, x), new, old) for new, old in ((y, x), (gy, g), (dy, d)))
        return x.to(p.dtype), d.to(p.dtype)

    points = list(range(1, len(p.grid) - 1)) if corrector is not None else []
    x = p.run(p.start(p.particle_seeds()), p.noise(p.particle_seeds()), on_point=on_point, points=points)
    rewards = log_density(x, 0.0) if log_density is not None else torch.zeros(p.B, dtype=torch.float64)
    return SteerResult(x, rewards.to(torch.float64), p.model.calls, p.evaluations,
                       info={"solver": p.plan.solver, "steps": len(p.grid) - 1, "corrector": corrector,
                             "accept": accepted[0] / proposed[0] if proposed[0] else None,
                             "corrector_evaluations": rows[0] / p.B})


def _hmc(x, g, d, s, step_size, leapfrog, score, log_density, z_noise, log_u, accepted, proposed):
    """One HMC transition (Neal 2011, "MCMC using Hamiltonian dynamics", Sec. 5.2) at noise level ``s``: unit mass,
    ``leapfrog`` steps of size ``sqrt(step_size) s``, Metropolis-Hastings on ``H = -log p + |m|^2 / 2``."""
    eps = math.sqrt(step_size) * s
    m0 = z_noise(s, s)
    y, gy, dy = x, g, d
    m = m0 + 0.5 * eps * gy
    for i in range(leapfrog):
        y = y + eps * m
        gy, dy = score(y, s)
        m = m + (eps if i < leapfrog - 1 else 0.5 * eps) * gy
    kinetic = lambda v: 0.5 * (v**2).flatten(1).sum(1)  # noqa: E731
    log_a = log_density(y, s) - kinetic(m) - log_density(x, s) + kinetic(m0)
    ok = log_u() < log_a
    accepted[0] += float(ok.double().sum())
    proposed[0] += ok.numel()
    return tuple(torch.where(bcast(ok, x), new, old) for new, old in ((y, x), (gy, g), (dy, d)))
