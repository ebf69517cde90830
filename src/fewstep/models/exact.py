"""Exact reference models: data distributions whose optimal denoiser is known in closed form.

They are the ground truth of fewstep's tests and benchmarks (docs/math.md, "Exact models"). All are
vectorised and compute in the dtype of the state (float32 or float64); parameters are kept in
float64 and cast on use. They evaluate blocks of exactly ``chunk`` rows (``MIN_BATCH``, padded; see
``fewstep.diffusion.adapters.call_net``), because a matrix product rounds a row differently at other row counts:
so a seed's sample is the same, bitwise, at every batch size, as with the bundled networks.
"""

from __future__ import annotations

import math

import torch

from fewstep.diffusion.adapters import call_net
from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.processes import VE
from fewstep.models._registry import register_model
from fewstep.models.nets import MIN_BATCH

Tensor = torch.Tensor


class ExactDenoiser(Denoiser):
    """A denoiser with a known data distribution, which it can also sample."""

    prediction = "exact"

    def __init__(self, shape: tuple[int, ...], name: str, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 chunk: int = MIN_BATCH):
        super().__init__(VE(sigma_min, sigma_max))
        self.shape = tuple(shape)
        self.name = name
        self.chunk = int(chunk)  # rows per evaluation (see the module docstring)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def sample_data(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """Draw ``n`` samples of the data distribution, shape ``[n, *shape]``."""
        raise NotImplementedError

    def denoise(self, x, sigma, cond):
        if cond:
            raise ValueError(f"the exact model {self.name!r} is unconditional; got cond keys {sorted(cond)}")
        flat = x.reshape(x.shape[0], self.dim)
        inf = torch.isinf(sigma)
        safe = torch.where(inf, torch.ones_like(sigma), sigma)
        out = call_net(self._denoise_flat, flat, safe, None, x.dtype, chunk=self.chunk)
        if inf.any():  # x holds unit noise there; the posterior mean at zero SNR is the data mean
            out = torch.where(inf[:, None], self.data_mean().to(x)[None], out)
        return out.reshape(x.shape)

    def data_mean(self) -> Tensor:
        """The mean of the data distribution, flat ``[dim]`` (float64)."""
        raise NotImplementedError

    def _denoise_flat(self, x: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError


class Gauss(ExactDenoiser):
    """Gaussian data ``N(mu, diag(s^2))``: ``D = mu + s^2 / (s^2 + sigma^2) (x - mu)``."""

    def __init__(self, dim: int = 2, mean: Tensor | float = 0.0, std: Tensor | float = 1.0,
                 name: str | None = None, **kw):
        if dim < 1:
            raise ValueError(f"dim must be >= 1; got {dim}")
        super().__init__((dim,), name or f"gauss{dim}", **kw)
        self.mean = torch.as_tensor(mean, dtype=torch.float64).expand(dim).clone()
        self.std = torch.as_tensor(std, dtype=torch.float64).expand(dim).clone()
        if (self.std <= 0).any():
            raise ValueError("std must be positive")

    def _denoise_flat(self, x, sigma):
        mu, s2 = self.mean.to(x), (self.std**2).to(x)
        return mu + s2 / (s2 + bcast(sigma, x) ** 2) * (x - mu)

    def data_mean(self):
        return self.mean

    def ode_solution(self, x: Tensor, sigma_from: float | Tensor, sigma_to: float | Tensor) -> Tensor:
        """The exact PF-ODE flow: ``x(sigma_to) = mu + sqrt((s^2+sigma_to^2)/(s^2+sigma_from^2)) (x - mu)``."""
        mu, s2 = self.mean.to(x), (self.std**2).to(x)
        sf = torch.as_tensor(sigma_from, dtype=x.dtype, device=x.device)
        st = torch.as_tensor(sigma_to, dtype=x.dtype, device=x.device)
        if sf.ndim == 1:
            sf = bcast(sf, x)
        if st.ndim == 1:
            st = bcast(st, x)
        return mu + torch.sqrt((s2 + st**2) / (s2 + sf**2)) * (x - mu)

    def sample_data(self, n, generator=None, dtype=torch.float64):
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.mean + self.std * z).to(dtype)

    def identity(self):
        d = super().identity()
        d.update(mean=self.mean.tolist(), std=self.std.tolist())
        return d


class GMM(ExactDenoiser):
    """A Gaussian mixture with full covariances; ``D`` is the posterior-weighted mixture of the
    per-component Gaussian denoisers, with weights from ``N(x; mu_k, C_k + sigma^2 I)``.

    Each covariance is diagonalised once, ``C_k = U_k diag(l_k) U_k^T``, so that
    ``D_k = mu_k + U_k diag(l_k / (l_k + sigma^2)) U_k^T (x - mu_k)``.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor, shape: tuple[int, ...] | None = None,
                 name: str = "gmm", **kw):
        means = torch.as_tensor(means, dtype=torch.float64)
        K, d = means.shape
        super().__init__(shape or (d,), name, **kw)
        w = torch.as_tensor(weights, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if w.shape != (K,) or covs.shape != (K, d, d) or (w < 0).any():
            raise ValueError("GMM needs weights [K] >= 0, means [K, d] and covariances [K, d, d]")
        if math.prod(self.shape) != d:
            raise ValueError(f"shape {self.shape} does not hold {d} values")
        self.log_w = torch.log(w / w.sum())
        self.means = means
        lam, U = torch.linalg.eigh((covs + covs.transpose(1, 2)) / 2)
        if (lam < -1e-9).any():
            raise ValueError("GMM covariances must be positive semi-definite")
        self.lam, self.U = lam.clamp_min(0), U

    def _denoise_flat(self, x, sigma):
        U, lam, mu = self.U.to(x), self.lam.to(x), self.means.to(x)
        s2 = (sigma**2)[:, None, None]  # [B,1,1]
        z = torch.einsum("kij,bki->bkj", U, x[:, None, :] - mu[None])  # coordinates in each eigenbasis
        var = lam[None] + s2  # [B,K,d]
        logp = -0.5 * (z**2 / var + torch.log(var)).sum(-1) + self.log_w.to(x)  # [B,K], up to a constant
        post = torch.softmax(logp, dim=1)
        shrunk = torch.einsum("kij,bkj->bki", U, z * lam[None] / var)  # U diag(l/(l+s^2)) U^T (x - mu)
        return torch.einsum("bk,bki->bi", post, mu[None] + shrunk)

    def data_mean(self):
        return self.log_w.exp() @ self.means

    def sample_data(self, n, generator=None, dtype=torch.float64):
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nij,nj->ni", self.U[k], z * self.lam[k].sqrt())
        return x.reshape(n, *self.shape).to(dtype)


class Empirical(ExactDenoiser):
    """The optimal denoiser of a finite set ``y_i``: ``D = sum_i softmax_i(-|x - y_i|^2 / (2 sigma^2)) y_i``.

    Exact for the empirical distribution, so it memorises the set (Karras et al. 2022, Sec. 3).
    """

    def __init__(self, data: Tensor, shape: tuple[int, ...] | None = None, name: str = "empirical", **kw):
        data = torch.as_tensor(data, dtype=torch.float64)
        super().__init__(shape or tuple(data.shape[1:]), name, **kw)
        self.data = data.reshape(data.shape[0], -1)

    def _denoise_flat(self, x, sigma):
        y = self.data.to(x)
        d2 = (x**2).sum(1, keepdim=True) - 2 * x @ y.T + (y**2).sum(1)[None]
        w = torch.softmax(-d2 / (2 * sigma[:, None] ** 2), dim=1)
        return w @ y

    def data_mean(self):
        return self.data.mean(0)

    def sample_data(self, n, generator=None, dtype=torch.float64):
        idx = torch.randint(self.data.shape[0], (n,), generator=generator)
        return self.data[idx].reshape(n, *self.shape).to(dtype)


def ring_gmm(n: int = 8, radius: float = 2.0, std: float = 0.1, **kw) -> GMM:
    """``n`` equal-weight isotropic Gaussians evenly spaced on a circle (the ``gmm2d`` model)."""
    ang = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)
    covs = (std**2) * torch.eye(2, dtype=torch.float64).expand(n, 2, 2)
    return GMM(torch.ones(n), means, covs, name="gmm2d", **kw)


def _gauss(dim: int = 2, mean: float = 0.0, std: float = 1.0, **kw) -> Gauss:
    return Gauss(dim=dim, mean=mean, std=std, **kw)


register_model("gauss", "exact", "Gaussian data N(mean, std^2 I) in any dimension, with the closed-form ODE solution",
               _gauss)
register_model("gmm2d", "exact", "8 Gaussians on a ring of radius 2 (std 0.1), exact posterior-mean denoiser", ring_gmm)
