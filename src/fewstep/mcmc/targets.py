"""Targets: unnormalised log-densities batched over chains, with an exact sampler where one exists.

A target maps ``x`` ``[n, dim]`` to ``log pi(x)`` ``[n]`` in torch (gradients by autograd). ``sample(n, generator)``
draws exact samples when ``has_exact``; ``log_normalizer`` is ``log int exp(log_prob)`` when known (0 for the
normalised densities below), ``None`` otherwise; ``prior`` is a ``GaussianPrior`` when the target is a Gaussian
prior times a likelihood (what elliptical slice sampling needs). Everything is float64 unless asked otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class GaussianPrior:
    """``N(mean, cov)`` with ``chol`` its lower Cholesky factor."""

    mean: Tensor
    chol: Tensor

    def log_prob(self, x: Tensor) -> Tensor:
        z = torch.linalg.solve_triangular(self.chol, (x - self.mean).T, upper=False).T
        return -0.5 * (z.square().sum(1) + x.shape[1] * LOG_2PI) - self.chol.diagonal().log().sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.mean.shape[0], dtype=self.mean.dtype, generator=generator)
        return self.mean + z @ self.chol.T


class Target:
    """Base class: subclasses set ``name``, ``dim``, ``dtype`` and define ``log_prob`` (and ``_sample``)."""

    name: str = "target"
    dim: int
    dtype: torch.dtype = torch.float64
    has_exact: bool = False
    log_normalizer: float | None = None
    prior: GaussianPrior | None = None

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, dim]`` exact samples (``ValueError`` for a target without an exact sampler)."""
        if not self.has_exact:
            raise ValueError(f"target {self.name!r} has no exact sampler; compare to a long reference run instead")
        return self._sample(n, generator)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def info(self) -> dict:
        return {"name": self.name, "dim": self.dim, "exact_sampler": self.has_exact,
                "log_normalizer": self.log_normalizer, "gaussian_prior": self.prior is not None}


class Gaussian(Target):
    """``N(mean, cov)``, normalised."""

    has_exact = True
    log_normalizer = 0.0

    def __init__(self, mean: Tensor, cov: Tensor, name: str = "gaussian"):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        self.dim, self.name = self.mean.shape[0], name
        self.dist = GaussianPrior(self.mean, torch.linalg.cholesky(self.cov))

    def log_prob(self, x):
        return self.dist.log_prob(x)

    def _sample(self, n, generator):
        return self.dist.sample(n, generator)


def ill_conditioned_gaussian(dim: int = 10, condition: float = 100.0, seed: int = 0) -> Gaussian:
    """A centred Gaussian whose covariance has eigenvalues log-spaced from 1/condition to 1, in a random basis
    (fixed by ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))
    eig = torch.logspace(-math.log10(condition), 0, dim, dtype=torch.float64)
    cov = (q * eig) @ q.T
    return Gaussian(torch.zeros(dim, dtype=torch.float64), 0.5 * (cov + cov.T), name="gaussian")


class GaussianMixture(Target):
    """``sum_k w_k N(mu_k, s_k^2 I)``, normalised; ``assign`` gives each point its most probable mode."""

    has_exact = True
    log_normalizer = 0.0

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor, name: str = "mixture"):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.dim, self.name = self.means.shape[1], name

    def _log_joint(self, x: Tensor) -> Tensor:
        """``[n, K]``: ``log w_k + log N(x; mu_k, s_k^2 I)``."""
        d2 = (x[:, None, :] - self.means).square().sum(-1)
        s2 = self.stds.square()
        return self.weights.log() - 0.5 * (d2 / s2 + self.dim * (LOG_2PI + s2.log()))

    def log_prob(self, x):
        return torch.logsumexp(self._log_joint(x), dim=1)

    def assign(self, x: Tensor) -> Tensor:
        """``[n]`` index of the mode with the largest posterior responsibility."""
        return self._log_joint(torch.as_tensor(x, dtype=torch.float64)).argmax(dim=1)

    def _sample(self, n, generator):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[k] + self.stds[k, None] * z


def separated_mixture(dim: int = 2, modes: int = 4, separation: float = 8.0, seed: int = 0) -> GaussianMixture:
    """Unit-variance modes at least ``separation`` standard deviations apart, with unequal weights 1:2:...:K.

    Mode k sits at ``a e_k`` (then ``-a e_(k-dim)``) in a random basis, with ``a = separation / sqrt 2``, so any
    two modes are ``separation`` (or ``2a``) apart; hence at most ``2 dim`` modes.
    """
    if not 2 <= dim <= 64:
        raise ValueError(f"mixture dim must be in 2..64; got {dim}")
    if not 2 <= modes <= 2 * dim:
        raise ValueError(f"mixture modes must be in 2..2*dim = {2 * dim}; got {modes}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))
    a = separation / math.sqrt(2)
    means = torch.stack([a * q[:, k] if k < dim else -a * q[:, k - dim] for k in range(modes)])
    weights = torch.arange(1, modes + 1, dtype=torch.float64)
    return GaussianMixture(means, torch.ones(modes, dtype=torch.float64), weights, name="mixture")


class Funnel(Target):
    """Neal's funnel (Neal 2003, Slice sampling, doi:10.1214/aos/1056562461): ``v ~ N(0, scale^2)``,
    ``x_i | v ~ N(0, e^v)`` for i = 1..dim-1; normalised, exact by sampling v then x."""

    has_exact = True
    log_normalizer = 0.0

    def __init__(self, dim: int = 10, scale: float = 3.0):
        if dim < 2:
            raise ValueError(f"funnel dim must be at least 2; got {dim}")
        self.dim, self.scale, self.name = dim, float(scale), "funnel"

    def log_prob(self, x):
        v, rest = x[:, 0], x[:, 1:]
        n = self.dim - 1
        ss = rest.square().sum(1)
        # |x|^2 e^-v as exp(log |x|^2 - v): +inf rather than NaN (inf * 0) far down the funnel's neck
        scaled = torch.where(ss > 0, torch.exp(torch.log(torch.where(ss > 0, ss, 1.0)) - v), 0.0)
        return (-0.5 * (v / self.scale).square() - math.log(self.scale) - 0.5 * LOG_2PI
                - 0.5 * scaled - 0.5 * n * (v + LOG_2PI))

    def _sample(self, n, generator):
        v = self.scale * torch.randn(n, 1, dtype=torch.float64, generator=generator)
        rest = torch.exp(v / 2) * torch.randn(n, self.dim - 1, dtype=torch.float64, generator=generator)
        return torch.cat([v, rest], dim=1)


class Banana(Target):
    """The Rosenbrock density of Goodman and Weare (2010, doi:10.2140/camcos.2010.5.65), in ``dim`` dimensions:
    ``log pi = -[b sum_{i>1} (x_i - x_1^2)^2 + (a - x_1)^2] / scale``. A triangular change of variables makes it
    exact: ``x_1 ~ N(a, scale/2)`` and each ``x_i | x_1 ~ N(x_1^2, scale/(2b))``; normalised."""

    has_exact = True
    log_normalizer = 0.0

    def __init__(self, dim: int = 2, a: float = 1.0, b: float = 100.0, scale: float = 20.0):
        if dim < 2:
            raise ValueError(f"banana dim must be at least 2; got {dim}")
        self.dim, self.a, self.b, self.scale, self.name = dim, float(a), float(b), float(scale), "banana"
        self.var1, self.var2 = self.scale / 2, self.scale / (2 * self.b)

    def log_prob(self, x):
        x1, rest = x[:, 0], x[:, 1:]
        n = self.dim - 1
        return (-0.5 * (x1 - self.a).square() / self.var1 - 0.5 * math.log(2 * math.pi * self.var1)
                - 0.5 * (rest - x1[:, None].square()).square().sum(1) / self.var2
                - 0.5 * n * math.log(2 * math.pi * self.var2))

    def _sample(self, n, generator):
        x1 = self.a + math.sqrt(self.var1) * torch.randn(n, 1, dtype=torch.float64, generator=generator)
        rest = x1.square() + math.sqrt(self.var2) * torch.randn(n, self.dim - 1, dtype=torch.float64,
                                                                generator=generator)
        return torch.cat([x1, rest], dim=1)


class StudentT(Target):
    """Multivariate Student-t with ``df`` degrees of freedom, location 0 and scale matrix I; normalised.
    Exact: ``z / sqrt(u / df)`` with ``z ~ N(0, I)`` and ``u ~ chi^2_df``."""

    has_exact = True
    log_normalizer = 0.0

    def __init__(self, dim: int = 10, df: float = 3.0):
        if not df > 0:
            raise ValueError(f"student_t df must be positive; got {df}")
        self.dim, self.df, self.name = dim, float(df), "student_t"
        self._const = (math.lgamma((df + dim) / 2) - math.lgamma(df / 2) - 0.5 * dim * math.log(df * math.pi))

    def log_prob(self, x):
        return self._const - 0.5 * (self.df + self.dim) * torch.log1p(x.square().sum(1) / self.df)

    def _sample(self, n, generator):
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))  # torch draws no chi^2 from a generator
        u = torch.from_numpy(np.random.default_rng(seed).chisquare(self.df, n))
        return z / torch.sqrt(u / self.df)[:, None]


class LogisticRegression(Target):
    """Bayesian logistic regression: ``beta ~ N(0, prior_scale^2 I)``, ``y_i ~ Bernoulli(sigmoid(x_i . beta))``
    on scikit-learn's breast-cancer data (569 x 30, standardised, plus an intercept column: dim 31).
    No exact sampler and no known normaliser: compare to a long NUTS reference run."""

    def __init__(self, prior_scale: float = 1.0):
        try:
            from sklearn.datasets import load_breast_cancer
        except ImportError:
            raise ValueError("the logistic target needs scikit-learn (pip install scikit-learn)") from None
        data = load_breast_cancer()
        X = torch.as_tensor(data.data, dtype=torch.float64)
        X = (X - X.mean(0)) / X.std(0)
        self.X = torch.cat([torch.ones(X.shape[0], 1, dtype=torch.float64), X], dim=1)
        self.y = torch.as_tensor(data.target, dtype=torch.float64)
        self.dim, self.name = self.X.shape[1], "logistic"
        self.prior = GaussianPrior(torch.zeros(self.dim, dtype=torch.float64),
                                   float(prior_scale) * torch.eye(self.dim, dtype=torch.float64))

    def log_likelihood(self, beta: Tensor) -> Tensor:
        logits = beta @ self.X.T
        return (self.y * logits - torch.nn.functional.softplus(logits)).sum(1)

    def log_prob(self, x):
        return self.prior.log_prob(x) + self.log_likelihood(x)
