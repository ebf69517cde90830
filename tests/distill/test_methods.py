"""Each distillation objective on a case with a known answer."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep.diffusion.noise import seeded_noise
from fewstep.distill import distill, student_grid
from fewstep.distill.sfd import SFD, teacher_targets


def _rollout(model, grid, noise, afs):
    return fewstep.sample(model, solver="euler", nfe=len(grid) - 1 - int(afs), schedule="explicit",
                          schedule_options={"sigmas": list(grid)}, afs=afs, noise=noise)


def test_a_fresh_student_on_a_one_step_grid_is_ddim_exactly():
    teacher = fewstep.load_model("digits-edm")
    student = distill(teacher, "sfd", nfe=1, iterations=1, batch=2, lr=1e-30, options={"afs": False})
    assert student.sigmas == (80.0, 0.0)
    noise = seeded_noise(range(4), (1, 8, 8))
    ddim = fewstep.sample(teacher, solver="ddim", nfe=1, schedule="explicit", schedule_options={"sigmas": [80.0, 0]},
                          noise=noise)
    assert torch.equal(fewstep.sample(student, **student.sampling, noise=noise), ddim)
    assert torch.equal(ddim, teacher(80.0 * noise, 80.0))  # one DDIM step to 0 is D itself


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_sfd_student_reaches_the_teacher_trajectory_on_gaussian_data(gauss_pair, loss):
    # every map is linear per coordinate, so the student family holds the exact answer: zero loss
    grid = student_grid(gauss_pair([1.0])[0], 3)  # NFE 2 with AFS: 3 Euler steps
    teacher, student, net = gauss_pair(grid)
    noise = seeded_noise(range(256, 512), (2,), dtype=torch.float32)
    target = teacher_targets(teacher, grid[0] * noise, grid, 8)[-1]
    before = (_rollout(student, grid, noise, True) - target).abs().max()
    trained = distill(teacher, "sfd", nfe=2, iterations=300, batch=32, lr=0.05, student=student,
                      options={"loss": loss})
    after = (fewstep.sample(trained, **trained.sampling, noise=noise) - target).abs().max()
    assert before > 0.05 and after < 5e-3 * before, (before, after)  # Adam on an L1 loss jitters at ~lr
    with pytest.raises(ValueError, match="option loss must be 'l1' or 'l2'; got 'huber'"):
        distill(teacher, "sfd", nfe=2, iterations=1, batch=2, student=student, options={"loss": "huber"})


def test_sfd_pool_holds_the_teachers_own_trajectories_and_trains_like_fresh_ones(gauss_pair):
    """A pool is the teacher's states for its starting points, drawn once and reused; training on it reaches the
    same optimum (the exact answer is in the student family) as fresh trajectories do."""
    grid = student_grid(gauss_pair([1.0])[0], 3)
    teacher, student, net = gauss_pair(grid)
    step = SFD(teacher, student, nfes=(2,), batch=8, pool=64, seed=5)
    x, targets = step.trajectories(2, torch.Generator().manual_seed(0))
    again = teacher_targets(teacher, x, grid, 8)
    assert x.shape == (8, 2) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(targets, again))
    pool_x = step._pools[2]["x"].clone()
    assert len(pool_x) == 64 and all(any(torch.equal(row, p) for p in pool_x) for row in x)
    rebuilt = SFD(teacher, student, nfes=(2,), batch=8, pool=64, seed=5)
    assert torch.equal(rebuilt.trajectories(2, torch.Generator().manual_seed(0))[0], x)  # same seed, same pool
    fresh = SFD(teacher, student, nfes=(2,), batch=8, pool=64, refresh=5, seed=5)
    fresh.trajectories(2, torch.Generator().manual_seed(0))  # the pool, then its first 5 slots replaced
    state = fresh._pools[2]
    assert state["next"] == 5 and torch.equal(state["x"][5:], pool_x[5:])
    assert not torch.equal(state["x"][:5], pool_x[:5])
    again = teacher_targets(teacher, state["x"][:5], grid, 8)
    assert all(torch.allclose(t[:5], a, atol=1e-6) for t, a in zip(state["targets"], again))
    noise = seeded_noise(range(256, 512), (2,), dtype=torch.float32)
    target = teacher_targets(teacher, grid[0] * noise, grid, 8)[-1]
    before = (_rollout(student, grid, noise, True) - target).abs().max()
    for options, tol in (({"pool": 256}, 5e-3), ({"pool": 256, "refresh": 8}, 2e-2)):
        _, student, _ = gauss_pair(grid)
        trained = distill(teacher, "sfd", nfe=2, iterations=300, batch=32, lr=0.05, student=student,
                          options=options)
        after = (fewstep.sample(trained, **trained.sampling, noise=noise) - target).abs().max()
        assert before > 0.05 and after < tol * before, (options, before, after)  # Adam on L1 jitters at ~lr


@pytest.mark.parametrize("pool, message", [(-1, "pool must be a non-negative integer"),
                                           (True, "pool must be a non-negative integer"),
                                           (4, r"pool \(4\) must hold at least one batch \(8\)"),
                                           ((16, 17), r"refresh must be an integer from 0 to the pool's size \(16\)"),
                                           ((0, 1), r"refresh must be an integer from 0 to the pool's size \(0\)")])
def test_a_bad_pool_is_refused(gauss_pair, pool, message):
    teacher, student, _ = gauss_pair([1.0])
    pool, refresh = pool if isinstance(pool, tuple) else (pool, 0)
    with pytest.raises(ValueError, match=message):
        distill(teacher, "sfd", nfe=2, iterations=1, batch=8, student=student,
                options={"pool": pool, "refresh": refresh})


def test_sfd_training_rollout_is_what_fewstep_sample_runs(gauss_pair):
    grid = student_grid(gauss_pair([1.0])[0], 3)
    teacher, student, net = gauss_pair(grid)
    trained = distill(teacher, "sfd", nfe=2, iterations=3, batch=8, lr=0.05, student=student)
    noise = seeded_noise(range(8), (2,), dtype=torch.float32)
    x = grid[0] * noise
    x = (grid[1] / grid[0]) * x + (1 - grid[1] / grid[0]) * (x - grid[0] * x / (1 + grid[0] ** 2) ** 0.5)  # AFS
    x = (grid[2] / grid[1]) * x + (1 - grid[2] / grid[1]) * student(x, grid[1])
    x = student(x, grid[2])
    assert torch.allclose(fewstep.sample(trained, **trained.sampling, noise=noise), x, atol=1e-6)


def test_progressive_distillation_of_the_gaussian_reaches_the_teachers_two_step_map(gauss_pair):
    fine = student_grid(gauss_pair([1.0])[0], 2)
    teacher, student, net = gauss_pair(fine)
    data = teacher.sample_data(4096, torch.Generator().manual_seed(0), dtype=torch.float32)
    noise = seeded_noise(range(64), (2,), dtype=torch.float32)
    two_steps = _rollout(teacher, fine, noise, False)
    before = (_rollout(student, (fine[0], 0.0), noise, False) - two_steps).abs().max()
    trained = distill(teacher, "progressive", nfe=1, iterations=300, batch=64, lr=0.05, student=student, data=data,
                      options={"rounds": 1})
    assert trained.sigmas == (80.0, 0.0)
    after = (fewstep.sample(trained, **trained.sampling, noise=noise) - two_steps).abs().max()
    assert before > 0.05 and after < 1e-2 * before, (before, after)


def test_two_rounds_of_progressive_distillation_reach_the_four_step_map(gauss_pair):
    fine = student_grid(gauss_pair([1.0])[0], 4)
    teacher, student, net = gauss_pair(fine)
    data = teacher.sample_data(4096, torch.Generator().manual_seed(0), dtype=torch.float32)
    noise = seeded_noise(range(64), (2,), dtype=torch.float32)
    four_steps = _rollout(teacher, fine, noise, False)
    trained = distill(teacher, "progressive", nfe=1, iterations=600, batch=64, lr=0.05, student=student, data=data,
                      options={"rounds": 2})
    err = (fewstep.sample(trained, **trained.sampling, noise=noise) - four_steps).abs().max()
    assert err < 2e-2 * four_steps.abs().max(), err


def test_sfd_v_starts_as_its_teacher_and_samples_at_every_trained_nfe():
    teacher = fewstep.load_model("digits-edm")
    student = distill(teacher, "sfd-v", nfe=2, iterations=1, batch=2, lr=1e-30, options={"nfes": [1, 2]})
    x = seeded_noise(range(4), (1, 8, 8)) * 3.0
    assert torch.allclose(student(x, 3.0), teacher(x, 3.0), atol=1e-6)  # the step branch starts at zero
    for nfe in (1, 2):
        one = fewstep.models.student.Student(student.inner, student.net, student.record, nfe)
        assert len(one.sigmas) == nfe + 2 and one.sampling["nfe"] == nfe
        counter = fewstep.diffusion.denoiser.CountingDenoiser(one)
        fewstep.sample(counter, **one.sampling, batch=2)
        assert counter.calls == nfe
