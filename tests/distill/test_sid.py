"""SiD (Zhou et al., arXiv 2404.04057) on an exact Gaussian, where its fixed point is known: a generator that draws
the data's law, with the fake denoiser of that law, has zero loss and zero gradient, a wrong one is pushed towards
it, and training from a wrong start reaches it; on a digits network the student saves, loads, samples in one
evaluation and resumes exactly (the fake denoiser is in the checkpoint)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fewstep
from fewstep.diffusion.adapters import ModelDenoiser
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.processes import VE
from fewstep.distill import distill
from fewstep.distill._loop import train, trainable_net
from fewstep.distill.sid import SiD
from fewstep.models.exact import Gauss
from fewstep.models.student import load_student

from .conftest import interrupted

STD = torch.tensor([0.5, 2.0])


class ScaleGenerator(nn.Module):
    """``D(x, sigma) = a x / sigma``: at ``sigma_g`` the generator draws ``N(0, diag(a^2))``."""

    def __init__(self, a):
        super().__init__()
        self.log_a = nn.Parameter(torch.log(torch.tensor(a)))

    def forward(self, x, t):
        return self.log_a.exp() * x / t.view(-1, 1)


class GaussDenoiser(nn.Module):
    """The exact denoiser of ``N(0, diag(v))``, ``v / (v + sigma^2) x``, with ``v`` learnable."""

    def __init__(self, v):
        super().__init__()
        self.log_v = nn.Parameter(torch.log(torch.tensor(v)))

    def forward(self, x, t):
        v = self.log_v.exp()
        return v / (v + t.view(-1, 1) ** 2) * x


def _sid(a, v, **kw):
    teacher = Gauss(dim=2, std=STD)
    gen, fake = ScaleGenerator(a), GaussDenoiser(v)
    wrap = [ModelDenoiser(m, VE(teacher.sigma_min, teacher.sigma_max), "x0", shape=(2,), name=n)
            for m, n in ((gen, "generator"), (fake, "fake"))]
    return SiD(teacher, wrap[0], wrap[1], fake, **kw), gen, fake


def _gradient(a, v):
    step, gen, _ = _sid(a, v, batch=4096)
    g = torch.Generator().manual_seed(0)
    x_g = step.generate(torch.randn(4096, 2, generator=g))
    loss = step.generator_loss(x_g, step.loss_sigmas(g), torch.randn(4096, 2, generator=g))
    return loss.detach(), torch.autograd.grad(loss, gen.log_a)[0]


def test_the_data_law_is_a_fixed_point_and_a_wrong_scale_is_pushed_towards_it():
    loss, grad = _gradient([0.5, 2.0], [0.25, 4.0])  # the generator draws N(0, diag(0.25, 4)), the fake is exact
    assert abs(float(loss)) < 1e-9 and grad.abs().max() < 1e-9
    loss, grad = _gradient([1.0, 1.0], [1.0, 1.0])  # N(0, I) with its own exact fake denoiser
    assert grad[0] > 1e-3 and grad[1] < -1e-3  # descent shrinks the first scale (1 > 0.5), grows the second (1 < 2)


def test_sid_training_reaches_the_data_law_from_a_wrong_start():
    step, gen, fake = _sid([1.0, 1.0], [1.0, 1.0], batch=256, lr=3e-3)
    train(gen, step, iterations=1500, seed=0, lr=3e-3, identity={})
    assert gen.log_a.exp().detach() == pytest.approx(STD, rel=0.05)
    assert fake.log_v.exp().detach() == pytest.approx(STD ** 2, rel=0.1)  # the fake follows the generator's law


def test_the_teachers_weights_do_not_move_and_get_no_gradient():
    teacher = fewstep.load_model("digits-flow")
    net = trainable_net(teacher)
    net.requires_grad_(True)  # even a teacher whose weights ask for gradients gets none
    before = {k: v.clone() for k, v in net.state_dict().items()}
    distill(teacher, "sid", nfe=1, iterations=2, batch=4)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_a_sid_student_saves_loads_and_samples_in_one_evaluation_and_resumes_exactly(tmp_path, monkeypatch):
    teacher = fewstep.load_model("digits-flow")
    kw = dict(nfe=1, iterations=4, batch=4, seed=1, checkpoint_every=2, options={"sigma_g": 2.0})
    made = distill(teacher, "sid", out=tmp_path / "a.json", **kw)
    loaded = load_student(tmp_path / "a.json")
    assert loaded.record.method == "sid" and loaded.sigmas == (2.0, 0.0) and loaded.sampling["solver"] == "euler"
    counter = CountingDenoiser(loaded)
    x = fewstep.sample(counter, seeds=[0, 1])
    assert counter.calls == 1
    with torch.no_grad():  # one Euler step from sigma_g to 0 is the generator itself
        expected = made(2.0 * fewstep.diffusion.noise.seeded_noise([0, 1], (1, 8, 8)), 2.0)
    assert torch.allclose(x, expected, atol=1e-6)
    interrupted(monkeypatch, SiD, 3, lambda: distill(teacher, "sid", out=tmp_path / "b.json", **kw))
    resumed = distill(teacher, "sid", out=tmp_path / "b.json", resume=True, **kw)
    assert all(torch.equal(v, resumed.net.state_dict()[k]) for k, v in made.net.state_dict().items())


@pytest.mark.parametrize("kw, message", [
    (dict(nfe=2), "sid trains a one-step generator: nfe must be 1; got 2"),
    (dict(nfe=1, options={"sigma_g": 0.0}), r"option sigma_g must lie in the teacher's sigma range"),
    (dict(nfe=1, options={"t_max": 2}), r"option t_max must be in \(0, 1\]"),
    (dict(nfe=1, options={"beta": 1}), r"unknown option\(s\) \['beta'\] for method 'sid'"),
])
def test_bad_sid_settings_get_one_clear_error(kw, message):
    with pytest.raises(ValueError, match=message):
        distill(fewstep.load_model("digits-flow"), "sid", iterations=1, batch=2, **kw)


def test_the_command_line_trains_a_one_step_sid_student_by_default_and_samples_it(tmp_path):
    from fewstep.cli import main

    out = tmp_path / "sid.json"
    assert main(["distill", "--teacher", "digits-flow", "--method", "sid", "--steps", "1", "--batch", "2",
                 "--out", str(out), "--no-progress"]) == 0
    assert load_student(out).record.nfe == 1
    assert main(["sample", "--model", str(out), "--seeds", "0-1", "--out", str(tmp_path / "x"), "--no-progress"]) == 0
