"""ReFlow (Liu et al., arXiv 2209.03003; Kim et al., arXiv 2410.07815) on an exact Gaussian model, where the
reflowed ODE is known in closed form, and Liu et al.'s straightness."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fewstep
from fewstep.diffusion.adapters import ModelDenoiser
from fewstep.diffusion.noise import seeded_noise
from fewstep.diffusion.processes import VE
from fewstep.distill import distill, flow_time_grid, straightness
from fewstep.models.exact import Gauss

T = 80.0


class LineDenoiser(nn.Module):
    """``D(x, s) = a x / ((1 - s/T) a + s)``, one learnable ``log a`` per coordinate: for Gaussian data coupled to
    its noise by the exact ODE map ``x0 = a* z`` (mean 0), the straight path ``x_s = (1 - s/T) x0 + s z`` gives
    ``E[x0 | x_s] = a* x_s / ((1 - s/T) a* + s)``, so the family holds ReFlow's optimum ``a = a*``."""

    def __init__(self, a):
        super().__init__()
        self.log_a = nn.Parameter(torch.log(torch.as_tensor(a, dtype=torch.float32)))

    def forward(self, x, t):
        a, s = self.log_a.exp(), t[:, None]
        return a * x / ((1 - s / T) * a + s)


def test_straightness_is_zero_for_straight_paths_and_positive_for_curved_ones():
    noise = seeded_noise(range(32), (2,), dtype=torch.float64)
    point = Gauss(dim=2, mean=torch.tensor([1.0, -2.0]), std=1e-6)  # D = mean: x = mean + s z, a straight line
    assert straightness(point, noise) < 1e-9
    assert straightness(Gauss(dim=2, std=torch.tensor([0.5, 2.0])), noise) > 0.05


def test_reflow_of_the_gaussian_straightens_it_and_its_one_step_map_is_the_exact_ode_map():
    teacher = Gauss(dim=2, std=torch.tensor([0.5, 2.0]))
    a_star = T * teacher.std / torch.sqrt(teacher.std**2 + T**2)  # the exact ODE map from T z to sigma 0
    net = LineDenoiser(a_star.float() * torch.tensor([1.6, 0.5]))  # a perturbed start
    student = ModelDenoiser(net, VE(teacher.sigma_min, teacher.sigma_max), "x0", shape=(2,), name="line")
    noise = seeded_noise(range(64), (2,), dtype=torch.float32)
    exact = teacher.ode_solution(T * noise.double(), T, 0.0)
    one_step = {"solver": "euler", "nfe": 1, "schedule": "explicit", "schedule_options": {"sigmas": [T, 0.0]}}
    before = (fewstep.sample(student, **one_step, noise=noise).double() - exact).abs().max().item()
    curved = straightness(teacher, noise.double())
    trained = distill(teacher, "reflow", nfe=1, iterations=300, batch=256, lr=0.05, student=student,
                      options={"teacher_solver": "exact", "pairs": 4096})
    assert torch.allclose(net.log_a.exp().double(), a_star, rtol=2e-3), (net.log_a.exp(), a_star)
    after = (fewstep.sample(trained, **trained.sampling, noise=noise).double() - exact).abs().max().item()
    assert after < 0.01 * before, (before, after)
    straight = straightness(trained, noise)
    assert straight < 1e-4 * curved, (curved, straight)
    assert trained.sigmas == (T, 0.0) and sorted(trained.record.grids) == [1, 2, 3, 4]


def test_flow_time_grids_are_uniform_in_t():
    grid = flow_time_grid(4, T)
    t = [s / (1 + s) for s in grid]
    assert grid[0] == T and grid[-1] == 0.0
    assert max(abs((a - b) - (t[0] - t[1])) for a, b in zip(t[:-1], t[1:])) < 1e-12
    with pytest.raises(ValueError, match="at least one step"):
        flow_time_grid(0, T)


def test_a_reflow_student_of_a_digits_model_saves_and_loads(tmp_path):
    teacher = fewstep.load_model("digits-edm")
    path = tmp_path / "rf.json"
    made = distill(teacher, "reflow", nfe=2, iterations=2, batch=4, out=path,
                   options={"pairs": 8, "teacher_steps": 2})
    loaded = fewstep.load_model(str(path), nfe=3)
    assert loaded.record.method == "reflow" and loaded.sigmas == flow_time_grid(3, 80.0)
    noise = seeded_noise(range(3), (1, 8, 8))
    assert torch.equal(fewstep.sample(made, **made.sampling, noise=noise),
                       fewstep.sample(fewstep.load_model(str(path)), **made.sampling, noise=noise))
    with pytest.raises(ValueError, match="teacher_solver='exact' needs a teacher with a closed-form ODE"):
        distill(teacher, "reflow", iterations=1, batch=2, options={"teacher_solver": "exact"})
