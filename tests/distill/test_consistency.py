"""Consistency distillation and training (Song et al., arXiv 2303.01469; Song & Dhariwal, arXiv 2310.14189) on an
exact Gaussian model, whose consistency function is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep
from fewstep.diffusion.denoiser import CountingDenoiser
from fewstep.diffusion.noise import seeded_noise
from fewstep.distill import METHODS, distill, student_grid
from fewstep.distill.consistency import (
    Consistency,
    consistency_sigmas,
    curriculum_n,
    exact_consistency_gauss,
    interval_weights,
    pseudo_huber,
)
from fewstep.models.student import consistency_function

SIGMA_DATA = 0.5


def _options(**kw):
    return {**METHODS["cd"].options, **METHODS["ct"].options, **kw}


def _set_exact(net, teacher, a_of=None):
    """Set the linear student so that its consistency function is ``f = a(s) x`` (default: the exact one, mean 0):
    that needs ``c = (a - c_skip) / r + c_skip_edm`` with ``r = (s - eps) / s``; at ``s = eps`` any ``c`` does."""
    eps, s2 = teacher.sigma_min, teacher.std.double() ** 2
    with torch.no_grad():
        for k, s in enumerate(net.sigmas.tolist()):
            if s <= eps * (1 + 1e-9):
                continue
            a = torch.sqrt((s2 + eps**2) / (s2 + s**2)) if a_of is None else a_of(s)
            c_skip = SIGMA_DATA**2 / ((s - eps) ** 2 + SIGMA_DATA**2)
            c = (a - c_skip) / ((s - eps) / s) + SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
            net.log_c[k] = torch.log(c).float()


def _euler_chain(teacher, sigmas):
    """CT's optimum for the linear student under the L2 loss: its target ``f(x0 + s_i z, s_i)`` regresses on
    ``x_{i+1} = x0 + s_{i+1} z``, so ``a_{i+1} = a_i (std^2 + s_i s_{i+1}) / (std^2 + s_{i+1}^2)``, which is also CD's
    fixed point with one Euler (DDIM) step of the exact denoiser (Song et al., arXiv 2303.01469, Theorem 2)."""
    s2, a, out = teacher.std.double() ** 2, torch.ones(2, dtype=torch.float64), {}
    out[sigmas[0].item()] = a
    for lo, hi in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        a = a * (s2 + lo * hi) / (s2 + hi**2)
        out[hi] = a
    chain = lambda x, s: out[s] * x  # noqa: E731
    chain.a = out
    return chain


def _f_error(step, teacher, sigmas, reference=None):
    """The largest distance of the student's consistency function to ``reference`` (default: the exact one)."""
    z = seeded_noise(range(64), (2,), dtype=torch.float32)
    worst = 0.0
    for s in sigmas.tolist():
        x = z * torch.sqrt(teacher.std.float() ** 2 + s**2)
        s_row = torch.full((len(z),), s)
        if reference is None:
            exact = exact_consistency_gauss(teacher.mean, teacher.std, x.double(), s_row.double(), teacher.sigma_min)
        else:
            exact = reference(x.double(), s)
        worst = max(worst, (step.f(x, s_row).double() - exact).abs().max().item())
    return worst


@pytest.fixture(name="cm")
def cm_fixture(gauss_pair):
    def make(mode="cd", n=18, extra=(), **kw):
        sigmas = consistency_sigmas(n, 0.002, 80.0)
        teacher, student, net = gauss_pair(sorted({*sigmas.tolist(), *extra}))
        data = teacher.sample_data(4096, torch.Generator().manual_seed(0), dtype=torch.float32)
        step = Consistency(teacher, student, mode=mode, data=data, batch=256, iterations=100,
                           options=_options(n=n, **kw))
        return teacher, student, net, data, step, sigmas
    return make


def test_the_boundary_condition_holds_for_any_network():
    x, d = torch.randn(3, 4), torch.randn(3, 4)
    eps = 0.002
    assert torch.equal(consistency_function(d, x, torch.full((3,), eps), eps, 0.5), x)
    big = consistency_function(d, x, torch.full((3,), 1e4), eps, 0.5)
    assert torch.allclose(big, d, atol=1e-4)  # c_skip -> 0, c_out F -> D at large sigma


def test_the_exact_consistency_function_has_zero_cd_loss_and_a_perturbed_one_does_not(cm):
    teacher, student, net, data, step, sigmas = cm(teacher_step="exact")
    _set_exact(net, teacher)
    gen = torch.Generator().manual_seed(1)
    pairs = step.pairs(0, gen)
    exact_loss = step.loss(*pairs).item()
    assert _f_error(step, teacher, sigmas) < 1e-5
    assert exact_loss < 1e-6, exact_loss
    with torch.no_grad():
        net.log_c.add_(0.05 * torch.randn(net.log_c.shape, generator=torch.Generator().manual_seed(2)))
    assert step.loss(*pairs).item() > 1e3 * max(exact_loss, 1e-9)
    # with the paper's Heun step the exact function's loss is the Heun step's local error, small but not zero
    _set_exact(net, teacher)
    heun = Consistency(teacher, student, mode="cd", data=data, batch=256, iterations=100,
                       options=_options(teacher_step="heun"))
    euler = Consistency(teacher, student, mode="cd", data=data, batch=256, iterations=100,
                        options=_options(teacher_step="euler"))
    h = heun.loss(*heun.pairs(0, torch.Generator().manual_seed(1))).item()
    e = euler.loss(*euler.pairs(0, torch.Generator().manual_seed(1))).item()
    assert exact_loss < h < e, (exact_loss, h, e)


def test_cd_training_from_a_perturbed_init_returns_to_the_exact_consistency_function(cm):
    # 6 sigmas: the loss ties each sigma to the one below, so the error leaves the grid from the boundary upwards,
    # one interval after the other; a short chain converges in a test's time
    teacher, student, net, data, step, sigmas = cm(n=6, teacher_step="exact")
    _set_exact(net, teacher)
    with torch.no_grad():
        net.log_c.add_(0.2 * torch.randn(net.log_c.shape, generator=torch.Generator().manual_seed(2)))
    pairs = step.pairs(0, torch.Generator().manual_seed(1))
    before, loss_before = _f_error(step, teacher, sigmas), step.loss(*pairs).item()
    distill(teacher, "cd", nfe=1, iterations=300, batch=64, lr=0.02, student=student, data=data,
            options={"teacher_step": "exact", "n": 6})
    after, loss_after = _f_error(step, teacher, sigmas), step.loss(*pairs).item()
    assert after < 0.03 * before and loss_after < 1e-3 * loss_before, (before, after, loss_before, loss_after)


def test_ct_reaches_its_own_optimum_the_euler_chain_which_tends_to_the_exact_function(cm):
    teacher, student, net, data, step, sigmas = cm("ct", n=6, s0=5, s1=5, loss="l2")
    chain = _euler_chain(teacher, sigmas)
    _set_exact(net, teacher, lambda s: chain.a[s])
    assert _f_error(step, teacher, sigmas, chain) < 1e-5
    with torch.no_grad():
        net.log_c.add_(0.2 * torch.randn(net.log_c.shape, generator=torch.Generator().manual_seed(2)))
    gap = _f_error(step, teacher, sigmas, chain)
    bias = max((chain(torch.ones(1, 2, dtype=torch.float64), s) - exact_consistency_gauss(
        teacher.mean, teacher.std, torch.ones(1, 2, dtype=torch.float64), s, teacher.sigma_min)).abs().max().item()
        for s in sigmas.tolist())
    fine = consistency_sigmas(641, 0.002, 80.0)
    fine_bias = (_euler_chain(teacher, fine)(torch.ones(1, 2, dtype=torch.float64), 80.0)
                 - exact_consistency_gauss(teacher.mean, teacher.std, torch.ones(1, 2, dtype=torch.float64), 80.0,
                                           teacher.sigma_min)).abs().max().item()
    assert fine_bias < 0.02 * bias  # CT's bias vanishes as the curriculum refines the grid
    distill(teacher, "ct", nfe=1, iterations=300, batch=1024, lr=0.02, student=student, data=data,
            options={"s0": 5, "s1": 5, "loss": "l2"})
    after = _f_error(step, teacher, sigmas, chain)
    assert after < 0.05 * gap and after < 0.2 * bias, (gap, after, bias)  # near its optimum, not the exact one


def test_multistep_sampling_through_the_driver_draws_the_exact_law(cm, tmp_path):
    # with the exact consistency function, one step maps noise exactly onto the data (to sigma_min), and each
    # further step re-noises to the next sigma and maps back: every NFE gives N(0, std^2 + eps^2) exactly
    teacher, student, net, data, step, sigmas = cm(n=18, teacher_step="exact",
                                                   extra=student_grid(fewstep.load_model("gauss"), 3)[:-1])
    trained = distill(teacher, "cd", nfe=3, iterations=1, batch=2, lr=1e-30, student=student, data=data,
                      options={"teacher_step": "exact"})
    _set_exact(net, teacher)
    assert trained.sampling["solver"] == "euler_ancestral" and trained.sampling["solver_options"]["eta"] == math.inf
    noise = seeded_noise(range(64), (2,), dtype=torch.float32)
    one = fewstep.models.student.Student(trained.inner, trained.net, trained.record)
    exact_map = teacher.ode_solution(80.0 * noise.double(), 80.0, teacher.sigma_min)
    grid = trained.sigmas
    assert len(grid) == 4 and grid[0] == 80.0 and grid[-1] == 0.0
    first = step.f(80.0 * noise, torch.full((64,), 80.0)).double()
    assert torch.allclose(first, exact_map, atol=1e-4)
    counter = CountingDenoiser(one)
    x = fewstep.sample(counter, **one.sampling, seeds=list(range(4000))).double()
    assert counter.calls == 3
    std = torch.sqrt(teacher.std.double() ** 2 + teacher.sigma_min**2)
    assert torch.allclose(x.std(0), std, rtol=0.05) and x.mean(0).abs().max() < 0.1, (x.std(0), std)
    single = fewstep.models.student.Student(trained.inner, trained.net, trained.record, 1)
    assert single.sigmas == (80.0, 0.0)
    one_step = fewstep.sample(single, **single.sampling, noise=noise)
    assert torch.allclose(one_step.double(), exact_map, atol=1e-4)


def test_the_discretisation_curriculum_and_the_lognormal_schedule():
    assert [curriculum_n(k, 800) for k in (0, 99, 100, 699, 700, 799)] == [11, 11, 21, 641, 1281, 1281]
    sigmas = consistency_sigmas(1281, 0.002, 80.0)
    assert sigmas[0] == pytest.approx(0.002) and sigmas[-1] == pytest.approx(80.0) and (sigmas.diff() > 0).all()
    w = interval_weights(sigmas, "lognormal")
    assert w.sum().item() == pytest.approx(1.0)
    # log sigma ~ N(-1.1, 2^2) cut to [0.002, 80]: one standard deviation around P_mean holds 0.6827 / 0.9917
    inside = (sigmas[:-1] >= math.exp(-3.1)) & (sigmas[1:] <= math.exp(0.9))
    assert w[inside].sum().item() == pytest.approx(0.6827 / 0.9917, abs=0.01)
    assert torch.allclose(interval_weights(sigmas, "uniform"), torch.full((1280,), 1 / 1280, dtype=torch.float64))
    a, b = torch.zeros(2, 64), torch.zeros(2, 64)
    b[0, 0] = 3.0
    c = 0.00054 * 8
    assert torch.allclose(pseudo_huber(a, b, c), torch.tensor([math.sqrt(9 + c * c) - c, 0.0]))


def test_a_consistency_student_of_a_digits_model_saves_loads_and_samples(tmp_path):
    teacher = fewstep.load_model("digits-flow")
    path = tmp_path / "cd.json"
    made = distill(teacher, "cd", nfe=2, iterations=2, batch=4, out=path)
    loaded = fewstep.load_model(str(path))
    assert loaded.record.consistency == {"sigma_min": teacher.sigma_min, "sigma_data": 0.5}
    assert loaded.record.solver == "consistency" and not loaded.record.afs
    assert sorted(loaded.record.grids) == [1, 2, 3, 4]
    assert fewstep.load_model(str(path), nfe=4).sampling["nfe"] == 4
    noise = seeded_noise(range(3), (1, 8, 8))
    a = fewstep.sample(made, **made.sampling, noise=noise, seeds=[0, 1, 2])
    b = fewstep.sample(loaded, **loaded.sampling, noise=noise, seeds=[0, 1, 2])
    assert torch.equal(a, b)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x, teacher.sigma_min), x)  # the boundary condition


@pytest.mark.parametrize("options, message", [
    ({"teacher_step": "exact"}, "teacher_step='exact' needs a teacher with a closed-form ODE"),
    ({"schedule": "cosine"}, "option schedule='cosine' is not one of uniform, lognormal"),
    ({"n": 1}, "option n must be an integer >= 2"),
])
def test_bad_consistency_options_get_one_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        distill(fewstep.load_model("digits-edm"), "cd", iterations=1, batch=2, options=options)
