"""The bundled trained digits networks: offline loading, checksums, the denoiser contract, sample quality."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save

import fewstep
from fewstep.diffusion.denoiser import Denoiser
from fewstep.metrics.features import digits_classifier
from fewstep.metrics.frechet import fd_digits
from fewstep.models import trained
from fewstep.models.digits_data import digits_data

NAMES = list(trained.SPECS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These small convolutions gain nothing from a second thread, and on a shared 2-core machine
    # two OpenMP threads spin-wait on each other and run several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> dict[str, Denoiser]:
    return {name: fewstep.load_model(name) for name in NAMES}


def test_every_spec_is_registered_as_trained():
    listed = fewstep.list_models()
    assert NAMES == ["digits-edm", "digits-flow", "digits-vp-eps"]
    for name in NAMES:
        assert listed[name].kind == "trained" and listed[name].description == trained.SPECS[name].description


def test_importing_the_zoo_reads_no_weights():
    # An audit hook sees every file the import opens; no safetensors file may be among them.
    code = (
        "import sys\n"
        "opened = []\n"
        "sys.addaudithook(lambda e, a: opened.append(str(a[0])) if e == 'open' else None)\n"
        "import fewstep.models\n"
        "assert 'digits-edm' in fewstep.models.list_models()\n"
        "print(sum(p.endswith('.safetensors') for p in opened))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


@pytest.mark.parametrize("name", NAMES)
def test_loads_offline_as_a_frozen_float32_denoiser(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = fewstep.load_model(name)
    assert isinstance(model, Denoiser) and model.name == name and model.shape == (1, 8, 8)
    net = model.net if trained.SPECS[name].objective == "edm" else model.model
    params = list(net.parameters())
    assert params and all(p.dtype == torch.float32 and not p.requires_grad for p in params)
    assert not net.training


@pytest.mark.parametrize("name", NAMES)
def test_weights_match_the_committed_checksum_and_stay_small(name):
    path = trained.weights_path(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == trained.SHA256[path.name]
    assert path.stat().st_size < 2_000_000


def test_total_weights_are_a_few_megabytes():
    assert sum(trained.weights_path(n).stat().st_size for n in NAMES) < 6_000_000


def _copy_weights(tmp_path):
    for name in NAMES:
        shutil.copy(trained.weights_path(name), tmp_path / trained.SPECS[name].file)


@pytest.mark.parametrize("name", NAMES)
def test_a_corrupted_copy_is_refused(name, tmp_path, monkeypatch):
    _copy_weights(tmp_path)
    monkeypatch.setattr(trained, "DATA_DIR", tmp_path)
    assert isinstance(fewstep.load_model(name), Denoiser)  # the intact copy loads
    target = tmp_path / trained.SPECS[name].file
    blob = bytearray(target.read_bytes())
    blob[-3] ^= 0x01  # one bit in the last tensor's data
    target.write_bytes(bytes(blob))
    with pytest.raises(trained.ChecksumError, match="SHA-256 mismatch"):
        fewstep.load_model(name)
    target.unlink()
    with pytest.raises(FileNotFoundError, match="train_digits.py"):
        fewstep.load_model(name)


def test_weights_trained_for_another_architecture_are_refused(tmp_path, monkeypatch):
    name = "digits-edm"
    blob = trained.weights_path(name).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    info = json.loads(json.loads(blob[8:8 + n])["__metadata__"]["fewstep"])
    assert info["model"] == name and info["config"] == trained.SPECS[name].config.to_dict()
    info["config"]["time_scale"] = 1.0
    forged = save(load_safetensors(blob), metadata={"fewstep": json.dumps(info)})
    (tmp_path / trained.SPECS[name].file).write_bytes(forged)
    monkeypatch.setattr(trained, "DATA_DIR", tmp_path)
    monkeypatch.setitem(trained.SHA256, trained.SPECS[name].file, hashlib.sha256(forged).hexdigest())
    with pytest.raises(ValueError, match="trained with config"):
        fewstep.load_model(name)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="digits-edm"):
        trained.load_trained("digits-ddpm")
    with pytest.raises(ValueError, match="unknown model"):
        fewstep.load_model("digits-vp")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_denoiser_keeps_shape_and_dtype(models, name, dtype):
    model = models[name]
    x = torch.randn(4, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.02, 0.5, 5.0, 80.0], dtype=dtype)
    out = model(x * sigma[:, None, None, None], sigma)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert model(x, 1.0).shape == x.shape  # a scalar sigma broadcasts


def test_flow_denoises_from_zero_terminal_snr(models):
    # At sigma = inf the state holds unit noise and D is the model's guess of the data mean.
    model = models["digits-flow"]
    assert model.sigma_max == float("inf")
    z = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    d = model(z, float("inf"))
    data_mean = digits_data("train")[0].mean(0).reshape(1, 8, 8)
    assert torch.isfinite(d).all()
    assert (d.mean(0) - data_mean).square().mean() < 0.1 * data_mean.square().mean()


@pytest.mark.parametrize("name", NAMES)
def test_denoising_beats_the_noisy_input_on_held_out_digits(models, name):
    # A net whose time input or preconditioning were wired wrongly would not denoise at every level.
    x0 = digits_data("heldout")[0][:200].reshape(-1, 1, 8, 8)
    g = torch.Generator().manual_seed(2)
    for sigma in (0.1, 0.5, 2.0):
        noisy = x0 + sigma * torch.randn(x0.shape, generator=g)
        mse = (models[name](noisy, sigma) - x0).square().mean().item()
        assert mse < 0.5 * min(sigma**2, x0.var().item()), (sigma, mse)


def euler(model: Denoiser, z: torch.Tensor, steps: int = 50, sigma_max: float = 80.0) -> torch.Tensor:
    """Euler in sigma (EDM Alg. 1 without the corrector) on a Karras rho = 7 grid ending in 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = model.sigma_min ** (1 / 7), sigma_max ** (1 / 7)
    sigmas = torch.cat([(hi + ramp * (lo - hi)) ** 7, torch.zeros(1, dtype=torch.float64)]).tolist()
    x = sigmas[0] * z
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * (x - model(x, s)) / s
    return x


def _confident_classes(x: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        probs = torch.softmax(digits_classifier()(x.reshape(-1, 1, 8, 8).float()), dim=1)
    confidence, label = probs.max(dim=1)
    return float((confidence > 0.9).double().mean()), torch.bincount(label, minlength=10)


@pytest.mark.parametrize("name", NAMES)
def test_samples_are_classified_as_digits(models, name):
    n = 100
    z = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        x = euler(models[name], z).clamp(-1, 1)
    confident, counts = _confident_classes(x)
    heldout = digits_data("heldout")[0]
    real_confident, _ = _confident_classes(heldout[:n])
    # Most samples look like one clear digit, and every digit is drawn (10 % each in the data).
    assert confident > 0.8 * real_confident, (confident, real_confident)
    assert counts.min() >= 2, counts.tolist()
    # In the classifier's feature space the samples are no farther from the held-out digits than
    # twice as far as the same number of real (train) digits are ...
    fd_real = fd_digits(digits_data("train")[0][:n], heldout)
    fd_model = fd_digits(x, heldout)
    assert fd_model < 2 * fd_real, (fd_model, fd_real)
    # ... a bound that noise with the data's per-pixel mean and std does not meet.
    train = digits_data("train")[0]
    fake = train.mean(0) + train.std(0) * torch.randn(n, 64, generator=torch.Generator().manual_seed(4))
    assert fd_digits(fake.clamp(-1, 1), heldout) > 2 * fd_real


def test_unet_config_round_trips_and_rejects_bad_values():
    from fewstep.models.nets import DigitsUNet, UNetConfig

    for spec in trained.SPECS.values():
        assert UNetConfig(**spec.config.to_dict()) == spec.config
    for bad, match in [(dict(channels=(30, 64)), "multiple of groups"), (dict(channels=()), "1 to 4 levels"),
                       (dict(blocks=0), "blocks"), (dict(emb_dim=7), "emb_dim"),
                       (dict(time_scale=float("nan")), "time_scale")]:
        with pytest.raises(ValueError, match=match):
            UNetConfig(**bad)
    net = DigitsUNet(UNetConfig(channels=(8, 8), emb_dim=8))
    assert net(torch.zeros(2, 1, 8, 8), 0.5).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        net(torch.zeros(2, 64), torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \[B\] = \[2\]"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(3))


def test_identity_carries_the_weights_digest():
    """Recipes and cached references are keyed by the identity, so it must change with the weights."""
    from fewstep.diffusion.denoiser import model_hash
    from fewstep.models.trained import SHA256, SPECS

    hashes = set()
    for name, spec in SPECS.items():
        model = fewstep.load_model(name)
        assert model.identity()["weights_sha256"] == SHA256[spec.file]
        hashes.add(model_hash(model))
        model.weights_sha256 = "0" * 64
        assert model_hash(model) not in hashes
    assert len(hashes) == len(SPECS)
