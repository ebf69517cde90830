"""The bundled digits classifier: held-out accuracy, checksum verification, features and input checks."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from fewstep._verify import BUNDLED_SHA256
from fewstep.metrics import digits_classifier, digits_features, digits_predict
from fewstep.metrics.features import WEIGHTS_PATH, ChecksumError, DigitsNet, load_digits_net
from fewstep.models.digits_data import digits_data


def test_heldout_accuracy_of_shipped_weights():
    x, labels = digits_data("heldout")
    accuracy = (digits_predict(x) == labels).double().mean().item()
    assert accuracy > 0.95
    from safetensors import safe_open

    with safe_open(str(WEIGHTS_PATH), framework="pt") as f:
        recorded = json.loads(f.metadata()["fewstep"])["heldout_accuracy"]
    assert accuracy == pytest.approx(recorded, abs=1e-4)  # the script's report is reproduced


def test_weights_are_small_and_match_the_committed_checksum():
    assert WEIGHTS_PATH.stat().st_size < 200_000
    digest = hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()
    assert digest == BUNDLED_SHA256["metrics/data/digits_cnn.safetensors"]
    assert not WEIGHTS_PATH.with_name(WEIGHTS_PATH.name + ".sha256").exists()  # no checksum file to regenerate
    assert isinstance(load_digits_net(), DigitsNet)


def test_tampered_weights_raise_checksum_error(tmp_path):
    weights = tmp_path / WEIGHTS_PATH.name
    shutil.copy(WEIGHTS_PATH, weights)
    load_digits_net(weights)  # an intact copy loads
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01  # flip one bit of the last weight
    weights.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        load_digits_net(weights)


def test_wrong_expected_digest_and_missing_files_raise(tmp_path):
    with pytest.raises(ChecksumError, match="expected 0{64}"):
        load_digits_net(WEIGHTS_PATH, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="weights not found"):
        load_digits_net(tmp_path / "missing.safetensors")


def test_classifier_is_cached_and_frozen():
    net = digits_classifier()
    assert digits_classifier("cpu") is net
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())


def test_features_and_predictions_shapes_and_layouts():
    x, _ = digits_data("heldout")
    feats = digits_features(x)
    assert feats.shape == (len(x), 64) and feats.dtype == torch.float32
    torch.testing.assert_close(digits_features(x.reshape(-1, 1, 8, 8)), feats)
    torch.testing.assert_close(digits_features(x.double().numpy()), feats)
    torch.testing.assert_close(digits_classifier().head(feats), digits_classifier()(x.reshape(-1, 1, 8, 8)))
    pred = digits_predict(x[:5].numpy())
    assert pred.dtype == torch.int64 and pred.shape == (5,)
    assert bool(((pred >= 0) & (pred <= 9)).all())


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.zeros(5, 8, 8), ValueError, r"\[N, 64\] or \[N, 1, 8, 8\].*got \[5, 8, 8\]"),
        (torch.zeros(5, 63), ValueError, r"got \[5, 63\]"),
        (torch.zeros(0, 64), ValueError, "at least one image"),
        (np.zeros((5, 64), dtype=bool), TypeError, "real numbers"),
        ([[0.0] * 64], TypeError, "got list"),
    ],
)
def test_bad_input_raises(x, error, match):
    with pytest.raises(error, match=match):
        digits_features(x)
    with pytest.raises(error, match=match):
        digits_predict(x)
