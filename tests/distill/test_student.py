"""Students as models: the saved files round-trip, checksums are enforced, resume reproduces an uninterrupted run,
a user's diffusers UNet2DModel distils, and bad input gets one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep._verify import ChecksumError
from fewstep.cli import main
from fewstep.diffusion.noise import seeded_noise
from fewstep.distill import distill
from fewstep.distill.sfd import SFD
from fewstep.models.student import load_student

from .conftest import interrupted


@pytest.fixture(scope="module")
def edm():
    return fewstep.load_model("digits-edm")


def _state(student):
    return {k: v.clone() for k, v in student.net.state_dict().items()}


def test_a_saved_student_round_trips_and_its_checksum_is_enforced(edm, tmp_path):
    path = tmp_path / "s.json"
    made = distill(edm, "sfd", nfe=2, iterations=2, batch=4, out=path)
    loaded = fewstep.load_model(str(path))
    noise = seeded_noise(range(3), (1, 8, 8))
    assert torch.equal(fewstep.sample(made, **made.sampling, noise=noise),
                       fewstep.sample(loaded, **loaded.sampling, noise=noise))
    record = json.loads(path.read_text())
    assert record["teacher"] == "digits-edm" and record["teacher_sha256"] == edm.weights_sha256
    assert record["method"] == "sfd" and record["seed"] == 0 and record["grids"]["2"][-1] == 0
    weights = path.with_suffix(".safetensors")
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        load_student(path)


def test_a_student_of_other_teacher_weights_is_refused(edm, tmp_path):
    path = tmp_path / "s.json"
    distill(edm, "sfd", nfe=2, iterations=1, batch=2, out=path)
    record = json.loads(path.read_text())
    record["teacher_sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="distilled from other digits-edm weights"):
        load_student(path)


@pytest.mark.parametrize("pool, ema", [({}, 0.0), ({"pool": 8}, 0.0), ({"pool": 8, "refresh": 3}, 0.5)])
def test_resume_after_an_interruption_gives_the_uninterrupted_weights(edm, tmp_path, monkeypatch, pool, ema):
    kw = dict(nfe=2, iterations=4, batch=4, seed=3, checkpoint_every=2, options=pool, ema=ema)
    whole = _state(distill(edm, "sfd", out=tmp_path / "a.json", **kw))
    interrupted(monkeypatch, SFD, 3, lambda: distill(edm, "sfd", out=tmp_path / "b.json", **kw))
    assert (tmp_path / "b.ckpt").is_file() and not (tmp_path / "b.json").exists()
    resumed = _state(distill(edm, "sfd", out=tmp_path / "b.json", resume=True, **kw))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    other = fewstep.load_model("digits-flow")
    with pytest.raises(ValueError, match="student of another teacher"):
        distill(other, "sfd", out=tmp_path / "b.json", resume=True, **kw)


def test_a_tiny_diffusers_unet_distils_saves_and_loads(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    config = {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"}
    teacher = fewstep.diffusion.from_diffusers(unet.eval().requires_grad_(False), config)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    path = tmp_path / "u.json"
    made = distill(teacher, "sfd", nfe=2, iterations=2, batch=4, lr=1e-3, out=path)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # the teacher is untouched
    loaded = fewstep.load_model(str(path))
    noise = seeded_noise(range(2), (1, 8, 8))
    assert torch.allclose(fewstep.sample(made, **made.sampling, noise=noise),
                          fewstep.sample(loaded, **loaded.sampling, noise=noise), atol=1e-6)
    assert not torch.equal(made.net.conv_in.weight, unet.conv_in.weight)  # fine-tuning changed the copy


@pytest.mark.parametrize("kw, message", [
    (dict(nfe=0), "nfe must be a positive integer"),
    (dict(method="magic"), "unknown distillation method 'magic'; choose one of sfd, sfd-v, progressive, cd, ct, "
                             "reflow, shortcut, sid"),
    (dict(options={"subteps": 3}), r"unknown option\(s\) \['subteps'\] for method 'sfd'"),
    (dict(iterations=0), "iterations must be a positive integer"),
    (dict(ema=-0.1), r"ema must be a decay in \[0, 1\)"),
])
def test_bad_arguments_get_one_clear_error(edm, kw, message):
    kw = {"method": "sfd", **kw}
    with pytest.raises(ValueError, match=message):
        distill(edm, kw.pop("method"), **kw)


def test_ema_leaves_the_average_of_the_iterates():
    """With ema = d the saved weights are avg_k = d avg_{k-1} + (1 - d) w_k over the iterates w_1..w_K, from w_0."""
    from fewstep.distill._loop import train

    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)

    def step(i, gen):  # the iterate after step i is i + 1
        with torch.no_grad():
            net.weight.fill_(float(i + 1))
        return 0.0

    train(net, step, iterations=3, seed=0, lr=1e-3, identity={}, ema=0.5)
    avg = 0.0
    for w in (1.0, 2.0, 3.0):
        avg = 0.5 * avg + 0.5 * w
    assert float(net.weight.detach()) == pytest.approx(avg)  # 2.125, not the last iterate 3
    with pytest.raises(ValueError, match=r"ema must be a decay in \[0, 1\)"):
        train(net, step, iterations=1, seed=0, lr=1e-3, identity={}, ema=1.0)


def test_a_teacher_without_parameters_is_refused():
    with pytest.raises(ValueError, match="has no network with parameters to fine-tune"):
        distill(fewstep.load_model("gauss"), "sfd")


def test_the_command_line_distils_samples_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "st.json"
    assert main(["distill", "--teacher", "digits-flow", "--steps", "2", "--batch", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert out.is_file() and out.with_suffix(".safetensors").is_file() and not out.with_suffix(".ckpt").exists()
    assert main(["sample", "--model", str(out), "--seeds", "0-3", "--out", str(tmp_path / "x")]) == 0
    assert "in 2 model evaluations" in capsys.readouterr().out
    assert main(["distill", "--teacher", "digits-flow", "--steps", "2", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["distill", "--teacher", "digits-flow", "--method", "cm", "--out", str(tmp_path / "y.json")]) == 2
    assert "unknown distillation method 'cm'" in capsys.readouterr().err
    assert main(["distill", "--teacher", "gauss", "--out", str(tmp_path / "y.json")]) == 2
    assert "no network with parameters" in capsys.readouterr().err
    assert main(["distill", "--teacher", "digits-flow", "--resume", "--out", str(tmp_path / "z.json")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_the_bundled_students_load_verified_by_path_and_name_and_sample_at_their_nfe():
    paths = sorted((Path(fewstep.models.student.__file__).parent / "data" / "students").glob("*.json"))
    assert {p.stem for p in paths} >= {"digits-edm-sfd-nfe2", "digits-flow-sfd-nfe2"}
    listed = fewstep.list_models()
    assert [n for n, info in listed.items() if info.kind == "student"] == [p.stem for p in paths]
    assert list(listed)[-len(paths):] == [p.stem for p in paths]  # after the exact and trained models
    for path in paths:
        student = load_student(path)
        by_name = fewstep.load_model(path.stem)
        assert by_name.record == student.record and by_name.sampling == student.sampling
        assert listed[path.stem].description.startswith(f"{student.record.method} student of {student.record.teacher}")
        counter = fewstep.diffusion.denoiser.CountingDenoiser(student)
        x = fewstep.sample(counter, **student.sampling, batch=2)
        assert counter.calls == student.nfe and torch.isfinite(x).all()


@pytest.mark.parametrize("nfe, by_name", [(1, False), (2, False), (2, True)])
def test_the_command_line_samples_a_student_with_its_own_solver_options(tmp_path, nfe, by_name):
    """A consistency student's multistep sampler is euler_ancestral with eta = inf (its record's solver options):
    ``fewstep sample --model CD.json`` (or the bundled student's name) draws what
    ``fewstep.sample(student, **student.sampling)`` draws."""
    import numpy as np

    path = Path(fewstep.models.student.__file__).parent / "data" / "students" / "digits-flow-cd-nfe2.json"
    student = load_student(path, nfe=nfe)
    assert student.sampling["solver_options"] or nfe == 1
    out = tmp_path / "cd"
    model = path.stem if by_name else str(path)
    assert main(["sample", "--model", model, "--nfe", str(nfe), "--seeds", "0-3", "--out", str(out),
                 "--no-progress"]) == 0
    expected = fewstep.sample(student, **student.sampling, seeds=[0, 1, 2, 3])
    np.testing.assert_allclose(np.load(out.with_suffix(".npz"))["samples"], expected.numpy(), rtol=0, atol=1e-6)


def test_sample_without_sampler_arguments_uses_the_students_own_sampler():
    """``fewstep.sample(student)`` runs the sampler the student was trained for (its solver, options, grid and
    AFS), also through a counting wrapper; an NFE other than its own is refused with the ways out, and an
    explicit solver and schedule still sample it with another sampler."""
    from fewstep.diffusion.denoiser import CountingDenoiser

    for name, nfe in (("digits-flow-sfd-nfe2", None), ("digits-flow-cd-nfe2", 3)):
        student = fewstep.load_model(name) if nfe is None else load_student(
            Path(fewstep.models.student.__file__).parent / "data" / "students" / f"{name}.json", nfe=nfe)
        expected = fewstep.sample(student, **student.sampling, seeds=[0, 1, 2])
        counter = CountingDenoiser(student)
        assert torch.equal(fewstep.sample(counter, seeds=[0, 1, 2]), expected)
        assert counter.calls == student.nfe
        assert torch.equal(fewstep.sample(student, nfe=student.nfe, seeds=[0, 1, 2]), expected)
    with pytest.raises(ValueError, match=r"own sampler at NFE 3; for another NFE load it with fewstep.load_model"):
        fewstep.sample(student, nfe=4)
    counter = CountingDenoiser(student)
    other = fewstep.sample(counter, solver="euler", schedule="karras", schedule_options={"sigma_max": 80.0}, nfe=4,
                           seeds=[0, 1, 2])
    assert counter.calls == 4 and not torch.allclose(other, expected)
