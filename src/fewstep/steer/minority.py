"""Minority guidance (Um, Lee & Ye, "Don't Play Favorites: Minority Guidance for Diffusion Models", arXiv 2301.12334).

Tweedie's denoiser reconstructs majority samples better than minority ones: a sample in a low-density region,
noised and denoised, comes back pulled towards the nearby high-density regions. The paper's minority score is that
reconstruction loss (Sec. 3.1),

    l(x0; s) = E_{x_s ~ q(x_s | x0)} d(x0, x0_hat(x_s)),   x0_hat(x_s) = D(x_s, sigma_s)  (Tweedie),

with ``d`` LPIPS for images; here ``d`` is the squared Euclidean distance (no image network is needed, and it is
what the exact models' tests can check). Minority guidance (Sec. 3.2) quantises the scores of the training data
into ``L`` levels, trains a noise-conditioned classifier ``p_psi(l | x_t, sigma)`` on them, and samples with the
classifier-guided score ``s(x_t) + w grad log p_psi(l_target | x_t, sigma)``; ``l_target = L - 1`` (the least
likely data) asks for minority samples, and ``w = 0`` is the base model. In the denoiser contract
``score = (D - x) / sigma^2``, so the guided denoiser is ``D + w sigma^2 grad log p_psi`` and every registered
solver samples it (``MinorityGuidance`` is a model wrapper).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fewstep.diffusion.adapters import call_net
from fewstep.diffusion.corrections import Wrapper, check_number
from fewstep.diffusion.denoiser import Denoiser, bcast

Tensor = torch.Tensor
_BLOCK = 16  # rows per classifier call: a row's gradient then rounds the same at every batch size

__all__ = ["MinorityClassifier", "MinorityGuidance", "fit_minority_classifier", "minority_score"]


def minority_score(model: Denoiser, x0: Tensor, *, sigma: float, draws: int = 4, seed: int = 0,
                   cond: dict[str, Any] | None = None) -> Tensor:
    """The minority score ``l(x0; s) = E ||x0 - D(x0 + sigma_s eps, sigma_s)||^2`` (Um et al., arXiv 2301.12334,
    Eq. 6, with the squared Euclidean distance in place of LPIPS), averaged over ``draws`` noises from one
    generator seeded by ``seed``; float64 ``[B]``, summed over the sample's values."""
    s = check_number("sigma", sigma)
    if not 0 < s < math.inf:
        raise ValueError(f"sigma must be a positive, finite noise level; got {sigma!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= 1024:
        raise ValueError(f"draws must be an integer in 1..1024; got {draws!r}")
    gen = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for _ in range(draws):
            eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(x0)
            d = model(x0 + s * eps, s, cond)
            total += ((d - x0).flatten(1).to(torch.float64) ** 2).sum(1).cpu()
    return total / draws


class MinorityClassifier(torch.nn.Module):
    """``p_psi(l | x_t, sigma)`` over ``levels`` minority levels: an MLP on the flattened, unit-variance input
    ``x_t / sqrt(sigma_data^2 + sigma^2)`` and ``log(sigma) / 4`` (the EDM preconditioning's scalings). ``thresholds``
    are the score quantiles between the levels, ``score_sigma`` the noise level of the scores it was trained on."""

    def __init__(self, dim: int, levels: int, *, hidden: int = 128, sigma_data: float = 1.0):
        super().__init__()
        self.dim, self.levels, self.sigma_data = int(dim), int(levels), float(sigma_data)
        self.net = torch.nn.Sequential(torch.nn.Linear(self.dim + 1, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, self.levels))
        self.register_buffer("thresholds", torch.zeros(self.levels - 1, dtype=torch.float64))
        self.score_sigma = 1.0

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Logits ``[B, levels]`` of ``x_t`` ``[B, *shape]`` at noise levels ``sigma`` ``[B]``."""
        flat = x.reshape(x.shape[0], -1).to(torch.float32)
        s = sigma.to(torch.float32).reshape(-1, 1).expand(flat.shape[0], 1)
        scale = torch.rsqrt(self.sigma_data**2 + s**2)
        return self.net(torch.cat([flat * scale, torch.log(s) / 4], 1))


def fit_minority_classifier(model: Denoiser, data: Tensor, *, levels: int = 10, score_sigma: float | None = None,
                            draws: int = 4, steps: int = 2000, batch: int = 512, lr: float = 2e-3, hidden: int = 128,
                            seed: int = 0) -> MinorityClassifier:
    """Train the minority classifier of Um et al. (arXiv 2301.12334, Sec. 3.2) on ``data`` ``[N, *shape]``.

    The minority scores of ``data`` at ``score_sigma`` (default: the data's per-value standard deviation) are cut
    at their ``1/levels, 2/levels, ...`` quantiles into ``levels`` equally full classes (level ``levels - 1`` holds
    the highest scores: the minority); then the classifier learns ``p(level | x0 + sigma eps, sigma)`` by
    cross-entropy, with ``log sigma`` uniform between the model's ``sigma_min`` and ``sigma_max`` so that it also
    learns to say nothing (the prior) where the noise hides the level. Seeded, on the CPU; ``steps`` Adam steps.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 1000:
        raise ValueError(f"levels must be an integer in 2..1000; got {levels!r}")
    for what, v, hi in (("steps", steps, 10**6), ("batch", batch, 1 << 16), ("hidden", hidden, 1 << 14)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"{what} must be an integer in 1..{hi:,}; got {v!r}")
    if not torch.is_tensor(data) or data.ndim < 2 or data.shape[0] < 2 * levels:
        raise ValueError(f"data must be a tensor [N, *shape] with N >= 2 x levels = {2 * levels}")
    if model.shape and tuple(data.shape[1:]) != tuple(model.shape):
        raise ValueError(f"data has samples of shape {tuple(data.shape[1:])}; the model's are {tuple(model.shape)}")
    data = data.to(torch.float64)
    sigma_data = float(data.flatten(1).std(0).pow(2).mean().sqrt())
    s_score = sigma_data if score_sigma is None else check_number("score_sigma", score_sigma)
    scores = minority_score(model, data, sigma=s_score, draws=draws, seed=seed)
    cuts = torch.quantile(scores, torch.arange(1, levels, dtype=torch.float64) / levels)
    labels = torch.bucketize(scores, cuts, right=True)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    torch.manual_seed(int(seed))  # the layers' initial weights
    clf = MinorityClassifier(math.prod(data.shape[1:]), levels, hidden=hidden, sigma_data=sigma_data)
    clf.thresholds.copy_(cuts)
    clf.score_sigma = s_score
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    lo, hi = math.log(model.sigma_min), math.log(model.sigma_max)
    for _ in range(steps):
        idx = torch.randint(data.shape[0], (batch,), generator=gen)
        sigma = torch.exp(lo + (hi - lo) * torch.rand(batch, generator=gen, dtype=torch.float64))
        x_t = data[idx] + bcast(sigma, data[idx]) * torch.randn(data[idx].shape, generator=gen, dtype=torch.float64)
        loss = torch.nn.functional.cross_entropy(clf(x_t, sigma), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


class MinorityGuidance(Wrapper):
    """The minority-guided denoiser ``D + w sigma^2 grad_x log p_psi(level | x, sigma)`` (Um et al., arXiv 2301.12334,
    Eq. 8, in the denoiser contract): sample it with ``fewstep.sample`` or any steering method.

    Args:
        model: the base denoiser.
        classifier: ``(x [B, *shape], sigma [B]) -> logits [B, L]``, e.g. ``fit_minority_classifier``'s.
        scale: ``w >= 0``; 0 returns the base model's output unchanged.
        level: the target level (default ``L - 1``, the highest minority scores); lower levels ask for majority
            samples.
    """

    tag = "minority"

    def __init__(self, model: Denoiser, classifier: torch.nn.Module, scale: float, *, level: int | None = None):
        super().__init__(model)
        if not callable(classifier):
            raise TypeError(f"classifier must be a callable (x, sigma) -> logits; got {type(classifier).__name__}")
        self.scale = check_number("the minority guidance scale", scale, strict=False)
        levels = getattr(classifier, "levels", None)
        self.level = (levels - 1 if levels is not None else -1) if level is None else level
        if isinstance(self.level, bool) or not isinstance(self.level, int) or (
                levels is not None and not 0 <= self.level < levels):
            raise ValueError(f"level must be an integer 0..{'L - 1' if levels is None else levels - 1}; got {level!r}")
        self.classifier = classifier

    def settings(self) -> dict[str, Any]:
        return {"scale": self.scale, "level": self.level}

    def _grad_log_p(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``grad_x log p_psi(level | x, sigma)`` of one block of rows."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(self.classifier(xg, sigma), dim=1)[:, self.level].sum()
            (grad,) = torch.autograd.grad(log_p, xg)
        return grad

    def denoise(self, x: Tensor, sigma: Tensor, cond) -> Tensor:
        d = self.model(x, sigma, cond)
        if self.scale == 0:
            return d
        finite = torch.isfinite(sigma)
        s = torch.where(finite, sigma, torch.ones_like(sigma))
        if isinstance(self.classifier, torch.nn.Module):
            self.classifier.to(x.device)
        grad = call_net(self._grad_log_p, x, s, None, x.dtype, chunk=_BLOCK)
        step = self.scale * bcast(s**2, x) * grad.to(x.dtype)
        return d + torch.where(bcast(finite, x), step, torch.zeros_like(step))
