"""Shortcut models (Frans et al., arXiv 2410.12557) on an exact Gaussian model: the self-consistency target makes
the one-step shortcut the teacher's many-step Euler flow, which tends to the exact ODE map."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fewstep
from fewstep.diffusion.adapters import ModelDenoiser
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.noise import seeded_noise
from fewstep.diffusion.processes import VE
from fewstep.distill import distill, flow_time_grid
from fewstep.distill.shortcut import levels
from fewstep.models.exact import Gauss

T = 80.0


class StepTable(nn.Module):
    """``D(x, s; steps) = c[steps, s] x``: one learnable ``log c`` per coordinate for each step count and each sigma
    of a list, starting at the exact Gaussian denoiser for every step count. For mean-0 Gaussian data every target
    of the method is linear per coordinate, so the family holds the exact answer."""

    def __init__(self, std, sigmas, counts):
        super().__init__()
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float64))
        self.counts = list(counts)
        c = std.double() ** 2 / (std.double() ** 2 + self.sigmas[:, None] ** 2)
        self.log_c = nn.Parameter(torch.log(c).float()[None].repeat(len(self.counts), 1, 1))

    def forward(self, x, t, steps):
        idx = (torch.log(t.double())[:, None] - torch.log(self.sigmas)[None]).abs().argmin(1)
        return self.log_c[self.counts.index(int(steps)), idx].exp().to(x.dtype) * x


def _euler(model, grid, noise):
    return fewstep.sample(model, solver="euler", nfe=len(grid) - 1, schedule="explicit",
                          schedule_options={"sigmas": list(grid)}, noise=noise).double()


def test_the_one_step_shortcut_becomes_the_teachers_many_step_flow():
    teacher = Gauss(dim=2, std=torch.tensor([0.5, 2.0]))
    m = 8
    fine = flow_time_grid(m, T)
    net = StepTable(teacher.std, fine[:-1], levels(m))
    student = ModelDenoiser(net, VE(teacher.sigma_min, teacher.sigma_max), "x0", shape=(2,), name="table")
    data = teacher.sample_data(4096, torch.Generator().manual_seed(0), dtype=torch.float32)
    noise = seeded_noise(range(64), (2,), dtype=torch.float32)
    flow = _euler(teacher, fine, noise)  # the teacher's 8 Euler steps, uniform in flow time
    exact = teacher.ode_solution(T * noise.double(), T, 0.0)
    before = (_euler(teacher, (T, 0.0), noise) - flow).abs().max().item()  # a fresh student is the teacher
    # the table starts at the teacher, log c about 3.7 below the one-step answer at sigma 80: a large lr gets there
    trained = distill(teacher, "shortcut", nfe=1, iterations=600, batch=128, lr=0.1, student=student, data=data,
                      options={"max_steps": m})
    assert sorted(trained.record.grids) == [1, 2, 4] and trained.record.step_condition
    for n in (1, 2, 4):
        one = fewstep.models.student.Student(trained.inner, trained.net, trained.record, n)
        counter = CountingDenoiser(one)
        x = fewstep.sample(counter, **one.sampling, noise=noise).double()
        assert counter.calls == n and one.sigmas == flow_time_grid(n, T)
        err = (x - flow).abs().max().item()
        assert err < 0.01 * before, (n, before, err)
    # the self-consistency target is the 8-step Euler flow, not the exact ODE map: M sets the bias, which shrinks
    # as M grows
    bias = (flow - exact).abs().max().item()
    assert bias > 0.05 and (_euler(teacher, flow_time_grid(64, T), noise) - exact).abs().max().item() < 0.2 * bias


def test_shortcut_inputs_are_checked(gauss_pair):
    with pytest.raises(ValueError, match="max_steps must be a power of two"):
        levels(6)
    edm = fewstep.load_model("digits-edm")
    with pytest.raises(ValueError, match=r"samples at the trained step counts \[1, 2, 4, 8\]; got nfe=3"):
        distill(edm, "shortcut", nfe=3, iterations=1, batch=2, options={"max_steps": 8})
    with pytest.raises(ValueError, match="shortcut needs a network with a step input"):
        distill(gauss_pair([1.0])[1], "shortcut", nfe=1, iterations=1, batch=2)  # a network without a step input


def test_a_shortcut_student_of_a_digits_model_starts_as_its_teacher_and_round_trips(tmp_path):
    teacher = fewstep.load_model("digits-flow")
    path = tmp_path / "sc.json"
    made = distill(teacher, "shortcut", nfe=2, iterations=1, batch=2, lr=1e-30, out=path,
                   options={"max_steps": 8})
    x = seeded_noise(range(2), (1, 8, 8)) * 3.0
    assert torch.allclose(made(x, 3.0), teacher(x, 3.0), atol=1e-5)  # the step branch starts at zero
    loaded = fewstep.load_model(str(path), nfe=4)
    assert loaded.sampling["nfe"] == 4 and loaded.sigmas == flow_time_grid(4, 80.0)
