"""Exact answers for steering a Gaussian mixture (docs/math.md, "Steering: exact tilts of a Gaussian mixture").

For data ``p(x) = sum_k w_k N(x; mu_k, C_k)`` and the linear reward ``r(x) = a . x``, the tilt
``p(x) exp(r(x) / tau)`` is again a mixture: ``w_k' ~ w_k exp(a.mu_k / tau + a C_k a / (2 tau^2))``,
``mu_k' = mu_k + C_k a / tau``, ``C_k' = C_k``. The reward ``log p(k | x)`` at ``tau = 1`` tilts the mixture
into its component ``k``. Best-of-n with ``r = a . x`` has reward CDF ``F(y)^n``, ``F`` the mixture of the 1-D
normals ``N(a.mu_k, a C_k a)``. These are the ground truth of the tests and the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from fewstep.models.exact import GMM

Tensor = torch.Tensor

__all__ = ["best_of_n_reward_cdf", "best_of_n_reward_mean", "product", "soft_value_linear", "tilt_component",
           "tilt_linear"]


def _covs(gmm: GMM) -> Tensor:
    return gmm.U @ torch.diag_embed(gmm.lam) @ gmm.U.transpose(1, 2)


def _vector(gmm: GMM, a: Sequence[float] | Tensor) -> Tensor:
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    if a.numel() != gmm.means.shape[1]:
        raise ValueError(f"a has {a.numel()} entries for a mixture in {gmm.means.shape[1]} dimensions")
    return a


def _check_tau(temperature: float) -> float:
    if not 0 < float(temperature) < math.inf:
        raise ValueError(f"temperature must be a positive number; got {temperature!r}")
    return float(temperature)


def tilt_linear(gmm: GMM, a: Sequence[float] | Tensor, temperature: float = 1.0) -> GMM:
    """The mixture ``p(x) exp(a.x / tau) / Z``: weights times ``exp(a.mu_k/tau + a C_k a/(2 tau^2))``, renormalised,
    means ``mu_k + C_k a / tau``, covariances unchanged."""
    a, tau = _vector(gmm, a), _check_tau(temperature)
    C = _covs(gmm)
    Ca = C @ a
    log_w = gmm.log_w + gmm.means @ a / tau + (Ca @ a) / (2 * tau**2)
    return GMM(torch.softmax(log_w, 0), gmm.means + Ca / tau, C, shape=gmm.shape, name=f"{gmm.name}-tilted")


def tilt_component(gmm: GMM, k: int) -> GMM:
    """``p(x) p(k | x) = w_k N(x; mu_k, C_k)``: the tilt by the reward ``log p(k | x)`` at temperature 1."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < gmm.means.shape[0]:
        raise ValueError(f"component must be an integer 0..{gmm.means.shape[0] - 1}; got {k!r}")
    return GMM(torch.ones(1), gmm.means[k:k + 1], _covs(gmm)[k:k + 1], shape=gmm.shape, name=f"{gmm.name}-c{k}")


def best_of_n_reward_cdf(gmm: GMM, a: Sequence[float] | Tensor, n: int) -> Callable[[Tensor], Tensor]:
    """The CDF ``F(y)^n`` of the reward ``a . x`` of the best of ``n`` independent samples of the mixture."""
    a = _vector(gmm, a)
    loc = gmm.means @ a
    scale = torch.sqrt(torch.einsum("i,kij,j->k", a, _covs(gmm), a)).clamp_min(1e-300)
    w = gmm.log_w.exp()

    def cdf(y: Tensor) -> Tensor:
        y = torch.as_tensor(y, dtype=torch.float64)
        F = (w * 0.5 * torch.erfc(-(y[..., None] - loc) / (scale * math.sqrt(2)))).sum(-1)
        return F.clamp(0, 1) ** n

    return cdf


def best_of_n_reward_mean(gmm: GMM, a: Sequence[float] | Tensor, n: int, points: int = 20001) -> float:
    """``E[max of n rewards] = hi - int_lo^hi F(y)^n dy`` (trapezoid on ``points`` nodes covering +-10 sd)."""
    a = _vector(gmm, a)
    loc = gmm.means @ a
    sd = torch.sqrt(torch.einsum("i,kij,j->k", a, _covs(gmm), a))
    lo, hi = float((loc - 10 * sd).min()) - 1e-9, float((loc + 10 * sd).max()) + 1e-9
    y = torch.linspace(lo, hi, points, dtype=torch.float64)
    return hi - float(torch.trapezoid(best_of_n_reward_cdf(gmm, a, n)(y), y))


def soft_value_linear(gmm: GMM, a: Sequence[float] | Tensor, temperature: float) -> Callable[[Tensor, Tensor, float],
                                                                                             Tensor]:
    """The exact soft value ``v(x_t) = tau log E[exp(a.x_0 / tau) | x_t]`` of the linear reward (Li et al., arXiv
    2408.08252, Eq. 2), for ``svdd(value=...)``: the posterior of ``x_0`` given ``x_t = x_0 + sigma eps`` is the
    mixture of ``N(m_k, S_k)`` with weights ``~ w_k N(x_t; mu_k, C_k + sigma^2 I)``,
    ``m_k = mu_k + C_k (C_k + sigma^2 I)^-1 (x_t - mu_k)``, ``S_k = sigma^2 C_k (C_k + sigma^2 I)^-1``, so
    ``v = tau logsumexp_k(log pi_k + a.m_k / tau + a S_k a / (2 tau^2))``."""
    a, tau = _vector(gmm, a), _check_tau(temperature)
    U, lam, mu = gmm.U, gmm.lam, gmm.means
    ua = torch.einsum("kij,i->kj", U, a)  # a in each component's eigenbasis

    def value(x_t: Tensor, x0_hat: Tensor, sigma: float) -> Tensor:
        x = x_t.flatten(1).to(torch.float64)
        s2 = float(sigma) ** 2
        z = torch.einsum("kij,bki->bkj", U, x[:, None, :] - mu[None])
        var = lam[None] + s2
        log_pi = torch.log_softmax(gmm.log_w - 0.5 * (z**2 / var + torch.log(var)).sum(-1), dim=1)
        a_m = mu @ a + (ua[None] * z * lam[None] / var).sum(-1)
        a_S_a = (ua**2 * lam * s2 / (lam + s2)).sum(-1)
        return tau * torch.logsumexp(log_pi + a_m / tau + a_S_a / (2 * tau**2), dim=1)

    return value


def product(g1: GMM, g2: GMM) -> GMM:
    """The normalised product ``p_1(x) p_2(x) / Z`` of two Gaussian mixtures, again a mixture (the ground truth of
    compositional sampling, Du et al., arXiv 2302.11552): component ``(i, j)`` has covariance
    ``C_ij = (C_i^-1 + C_j^-1)^-1``, mean ``C_ij (C_i^-1 mu_i + C_j^-1 mu_j)`` and weight
    ``~ w_i w_j N(mu_i; mu_j, C_i + C_j)``. Both mixtures need positive-definite covariances."""
    if g1.means.shape[1] != g2.means.shape[1]:
        raise ValueError(f"the mixtures live in {g1.means.shape[1]} and {g2.means.shape[1]} dimensions")
    C1, C2 = _covs(g1), _covs(g2)
    if min(float(g1.lam.min()), float(g2.lam.min())) <= 0:
        raise ValueError("product needs positive-definite covariances (a degenerate component has no inverse)")
    P1, P2 = torch.linalg.inv(C1), torch.linalg.inv(C2)
    C = torch.linalg.inv(P1[:, None] + P2[None])  # [I, J, d, d]
    eta1, eta2 = torch.einsum("iab,ib->ia", P1, g1.means), torch.einsum("jab,jb->ja", P2, g2.means)
    mean = torch.einsum("ijab,ijb->ija", C, eta1[:, None] + eta2[None])
    S = C1[:, None] + C2[None]
    diff = g1.means[:, None] - g2.means[None]
    quad = torch.einsum("ija,ija->ij", diff, torch.linalg.solve(S, diff[..., None])[..., 0])
    d = g1.means.shape[1]
    log_w = g1.log_w[:, None] + g2.log_w[None] - 0.5 * (quad + torch.logdet(S) + d * math.log(2 * math.pi))
    return GMM(torch.softmax(log_w.flatten(), 0), mean.reshape(-1, d), C.reshape(-1, d, d), shape=g1.shape,
               name=f"{g1.name}*{g2.name}")
