"""SiD: Score identity Distillation (Zhou, Zheng, Wang, Yin and Huang, arXiv 2404.04057), a one-step generator.

Data-free: nothing but the teacher and the generator's own samples is used.

- Generator: ``x_g = D_theta(sigma_g z, sigma_g)``, one evaluation of the student's denoiser at ``sigma_g``
  (the paper's ``sigma_init = 2.5``), so the student samples with one Euler (= DDIM) step on the grid
  ``(sigma_g, 0)``.
- Fake denoiser ``D_psi`` (a copy of the teacher at the start), trained on the generator's samples with EDM's
  denoising loss: ``sigma = exp(N(p_mean, p_std^2))``, weight ``(sigma^2 + sd^2) / (sigma sd)^2``,
  ``|D_psi(x_g + sigma n, sigma) - x_g|^2`` with ``x_g`` held fixed. At its optimum ``D_psi`` is the denoiser of the
  generator's law, as the teacher's ``D_phi`` is of the data's.
- Generator loss (the paper's score-identity loss in x0 space): with ``x_t = x_g + sigma n`` and
  ``sigma`` on EDM's rho = 7 polynomial from ``sigma_min`` at ``u = 0`` to ``sigma_max`` at ``u = 1``, ``u`` uniform in
  ``(0, t_max)``,
  ``L = (D_phi - D_psi) . ((D_phi - x_g) - alpha (D_phi - D_psi)) / w``, ``w = mean |x_g - D_phi|`` per sample
  (no gradient), ``alpha = 1.2``. The gradient reaches ``theta`` through ``x_g`` and through ``x_t`` in both
  denoisers, whose own weights do not move in this step. When the generator draws the data's law the fake
  denoiser equals the teacher's, so the loss and its gradient vanish (tested on an exact Gaussian).
- One update of ``D_psi`` then one of the generator per iteration, both with Adam with ``beta_1 = 0`` (our reading of
  the official code's settings, not checked against the paper's text).
"""

from __future__ import annotations

import torch

from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.schedules import start_sigma

__all__ = ["SiD"]

Tensor = torch.Tensor


class SiD:
    """One SiD iteration per call: a fake-denoiser update, then a generator update.

    Args:
        teacher: the frozen teacher ``D_phi``.
        student: the generator ``D_theta`` (its network trains through the loop's optimizer).
        fake: the fake denoiser ``D_psi`` (its network trains here, with its own Adam).
        fake_net: ``fake``'s ``torch.nn.Module``.
        batch: generator samples per iteration.
        sigma_g: the generator's sigma (``sigma_init``).
        alpha: the weight of the paper's second term.
        t_max: the generator loss's sigmas run over ``u`` in ``(0, t_max)`` of the polynomial grid.
        lr: the fake denoiser's learning rate (the generator's is the loop's).
        p_mean, p_std, sigma_data: EDM's noise distribution and weight for the fake denoiser's loss.
        rho: the polynomial's exponent.
    """

    betas = (0.0, 0.999)  # Adam's, for both networks (the training loop reads it for the generator's)

    def __init__(self, teacher: Denoiser, student: Denoiser, fake: Denoiser, fake_net: torch.nn.Module, *,
                 batch: int, sigma_g: float = 2.5, alpha: float = 1.2, t_max: float = 0.8, lr: float = 1e-4,
                 p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5, rho: float = 7.0):
        if not teacher.shape:
            raise ValueError("the teacher does not know its data shape; give it one (shape=...)")
        lo, hi = float(teacher.sigma_min), float(start_sigma(teacher))
        if isinstance(sigma_g, bool) or not isinstance(sigma_g, (int, float)) or not lo < sigma_g <= hi:
            raise ValueError(f"option sigma_g must lie in the teacher's sigma range ({lo:g}, {hi:g}]; got {sigma_g!r}")
        if isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or not 0 < t_max <= 1:
            raise ValueError(f"option t_max must be in (0, 1]; got {t_max!r}")
        self.teacher, self.student, self.fake, self.fake_net = teacher, student, fake, fake_net
        self.batch, self.sigma_g, self.alpha, self.t_max = batch, float(sigma_g), float(alpha), float(t_max)
        self.p_mean, self.p_std, self.sigma_data, self.rho = p_mean, p_std, sigma_data, rho
        self.lo, self.hi = lo, hi
        self.fake_optimizer = torch.optim.Adam(fake_net.parameters(), lr=lr, betas=self.betas)

    def generate(self, z: Tensor) -> Tensor:
        """The generator's samples for standard-normal ``z``."""
        return self.student(self.sigma_g * z, self.sigma_g)

    def loss_sigmas(self, gen: torch.Generator) -> Tensor:
        """The generator loss's sigmas: EDM's polynomial at ``u`` uniform in ``(0, t_max)``."""
        u = self.t_max * torch.rand(self.batch, generator=gen, dtype=torch.float64)
        a, b = self.hi ** (1 / self.rho), self.lo ** (1 / self.rho)
        return (b + u * (a - b)) ** self.rho

    def fake_loss(self, x_g: Tensor, gen: torch.Generator) -> Tensor:
        """EDM's denoising loss of the fake denoiser on the generator's samples ``x_g`` (held fixed)."""
        sigma = torch.exp(self.p_mean + self.p_std * torch.randn(len(x_g), generator=gen, dtype=torch.float64))
        noise = torch.randn(x_g.shape, generator=gen, dtype=x_g.dtype)
        weight = ((sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2).to(x_g.dtype)
        err = (self.fake(x_g + bcast(sigma, x_g).to(x_g.dtype) * noise, sigma) - x_g).pow(2).flatten(1).mean(1)
        return (weight * err).mean()

    def generator_loss(self, x_g: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
        """The score-identity loss of samples ``x_g`` (with their graph) at ``sigma`` with ``noise``."""
        x_t = x_g + bcast(sigma, x_g).to(x_g.dtype) * noise
        real, fake = self.teacher(x_t, sigma).to(x_g.dtype), self.fake(x_t, sigma)
        with torch.no_grad():
            w = (x_g - real).abs().flatten(1).mean(1).clamp_min(1e-5)
        per = ((real - fake) * ((real - x_g) - self.alpha * (real - fake))).flatten(1).mean(1)
        return (per / w).mean()

    def extra_state(self) -> dict:
        """The fake denoiser and its optimizer, for the checkpoint."""
        return {"fake": self.fake_net.state_dict(), "fake_optimizer": self.fake_optimizer.state_dict()}

    def load_extra(self, state: dict) -> None:
        self.fake_net.load_state_dict(state["fake"])
        self.fake_optimizer.load_state_dict(state["fake_optimizer"])

    def __call__(self, iteration: int, gen: torch.Generator) -> float:
        """Train on one batch; returns the generator loss."""
        optimizer = self.optimizer  # set by the training loop (fewstep.distill._loop.train)
        z = torch.randn(self.batch, *self.teacher.shape, generator=gen)
        x_g = self.generate(z)
        fake_loss = self.fake_loss(x_g.detach(), gen)
        self.fake_optimizer.zero_grad(set_to_none=True)
        fake_loss.backward(inputs=list(self.fake_net.parameters()))
        self.fake_optimizer.step()
        sigma = self.loss_sigmas(gen)
        noise = torch.randn(x_g.shape, generator=gen, dtype=x_g.dtype)
        loss = self.generator_loss(x_g, sigma, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=[p for group in optimizer.param_groups for p in group["params"]])
        optimizer.step()
        return loss.item()
