"""Shared pieces of the distillation tests: a Gaussian student whose optimum is known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewstep.diffusion.adapters import ModelDenoiser
from fewstep.diffusion.processes import VE
from fewstep.models.exact import Gauss


class LinearGauss(nn.Module):
    """``D(x, sigma) = mu + c(sigma) (x - mu)``, one learnable ``log c`` per coordinate for each sigma of a fixed
    list: a student family that holds the exact answer of every linear distillation target on Gaussian data.
    Starts at the exact Gaussian denoiser, ``c = s^2 / (s^2 + sigma^2)``."""

    def __init__(self, gauss: Gauss, sigmas):
        super().__init__()
        self.register_buffer("mu", gauss.mean.float())
        sig = torch.tensor([s for s in sigmas if s > 0], dtype=torch.float64)
        self.register_buffer("sigmas", sig)
        s2 = gauss.std.double() ** 2
        self.log_c = nn.Parameter(torch.log(s2[None] / (s2[None] + sig[:, None] ** 2)).float())

    def forward(self, x, t):
        idx = (torch.log(t.double())[:, None] - torch.log(self.sigmas)[None]).abs().argmin(1)
        return self.mu + self.log_c[idx].exp().to(x.dtype) * (x - self.mu)


def gauss_pair(sigmas, dim: int = 2):
    """The exact Gaussian teacher (``std = [0.5, 2]``) and a ``LinearGauss`` student on ``sigmas``."""
    teacher = Gauss(dim=dim, std=torch.tensor([0.5, 2.0][:dim]))
    net = LinearGauss(teacher, sigmas)
    student = ModelDenoiser(net, VE(teacher.sigma_min, teacher.sigma_max), "x0", shape=(dim,), name="gauss-student")
    return teacher, student, net


def interrupted(monkeypatch, step_class, at: int, run) -> None:
    """Run ``run()`` with ``step_class.__call__`` raising ``KeyboardInterrupt`` at iteration ``at`` (a killed
    training), check that it was interrupted, and restore the step."""
    call = step_class.__call__

    def killed(self, i, gen):
        if i == at:
            raise KeyboardInterrupt
        return call(self, i, gen)

    monkeypatch.setattr(step_class, "__call__", killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(step_class, "__call__", call)


@pytest.fixture(name="gauss_pair")
def gauss_pair_fixture():
    return gauss_pair


@pytest.fixture(autouse=True)
def _one_thread_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
