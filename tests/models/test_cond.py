"""digits-cond: registration, checksum-verified loading, the embedding override CADS needs, sample
quality per class, and a deterministic training script."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep.diffusion.sampling import sample, seeded_noise
from fewstep.metrics import digits_predict, fd_digits
from fewstep.models import cond
from fewstep.models.digits_data import digits_data
from fewstep.models.trained import ChecksumError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_digits_cond.py"

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def model():
    return fewstep.load_model("digits-cond")


def test_registered_as_a_trained_conditional_model(model):
    info = fewstep.list_models()["digits-cond"]
    assert info.kind == "trained" and "class-conditional" in info.description
    assert isinstance(model, cond.CondEDM) and model.null_class == 10 and model.num_classes == 10
    assert model.shape == (1, 8, 8) and not any(p.requires_grad for p in model.net.parameters())
    assert not model.net.training


def test_a_changed_or_missing_weights_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "digits_cond.safetensors"
    shutil.copy(cond.WEIGHTS, bad)
    blob = bytearray(bad.read_bytes())
    blob[-1] ^= 1
    bad.write_bytes(bytes(blob))
    monkeypatch.setattr(cond, "WEIGHTS", bad)
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        fewstep.load_model("digits-cond")
    monkeypatch.setattr(cond, "WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="train_digits_cond.py"):
        fewstep.load_model("digits-cond")


def test_labels_embeddings_and_the_null_class(model):
    x = seeded_noise(range(4), (1, 8, 8)) * 2.0
    sigma = torch.full((4,), 2.0)
    y = torch.tensor([1, 4, 7, 10])
    by_label = model(x, sigma, {"class_labels": y})
    by_embedding = model(x, sigma, {"class_embedding": model.embed(y)})
    assert torch.equal(by_label, by_embedding)
    uncond = model(x, sigma)
    assert torch.equal(uncond, model(x, sigma, {"class_labels": 10}))
    torch.testing.assert_close(uncond[3], by_label[3])
    assert (by_label[:3] - uncond[:3]).abs().amax() > 1e-2
    with pytest.raises(ValueError, match="not both"):
        model(x, sigma, {"class_labels": y, "class_embedding": model.embed(y)})
    with pytest.raises(ValueError, match="1-D integer tensor"):
        model(x, sigma, {"class_labels": torch.tensor([1.0, 2.0, 3.0, 4.0])})
    with pytest.raises(ValueError, match=r"\[4, 128\] embeddings"):
        model(x, sigma, {"class_embedding": torch.zeros(4, 7)})


def test_conditional_samples_show_their_class_and_unconditional_ones_look_like_digits(model):
    labels = torch.arange(100) % 10
    x_c = sample(model, solver="dpmpp_2m", nfe=8, seeds=range(100), cond={"class_labels": labels})
    assert float((digits_predict(x_c) == labels).double().mean()) > 0.8
    x_u = sample(model, solver="dpmpp_2m", nfe=8, seeds=range(100))
    held = digits_data("heldout")[0]
    noise_fd = fd_digits(seeded_noise(range(100), (1, 8, 8)).clamp(-1, 1), held)
    assert fd_digits(x_u, held) < 0.1 * noise_fd


def test_the_training_script_is_deterministic():
    spec = importlib.util.spec_from_file_location("train_digits_cond", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    a, loss_a, _ = script.train(steps=2, batch=16, seed=0)
    b, loss_b, _ = script.train(steps=2, batch=16, seed=0)
    c, _, _ = script.train(steps=2, batch=16, seed=1)
    assert loss_a == loss_b and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
