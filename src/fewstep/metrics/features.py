"""Feature extractors for metrics: the small digits classifier that fewstep bundles.

The classifier is a 3-layer convolutional net trained on the train split of the 8x8 digits
(``fewstep.models.digits_data``) by ``scripts/train_classifier.py``. Its penultimate layer (64-d)
is the feature space of ``fd_digits``, playing the role Inception-v3 plays for FID
(Heusel et al. 2017, arXiv 1706.08500). The weights are safetensors (no pickle) and are checked
against a committed SHA-256 checksum before they are loaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fewstep._verify import BUNDLED_SHA256, ChecksumError, bundled_path, read_verified_bytes

__all__ = [
    "ChecksumError",
    "DigitsNet",
    "digits_classifier",
    "digits_features",
    "digits_predict",
    "WEIGHTS_PATH",
    "load_digits_net",
]

WEIGHTS_PATH = bundled_path("metrics/data/digits_cnn.safetensors")
_BATCH = 4096


class DigitsNet(nn.Module):
    """Conv net for 8x8 digits in [-1, 1]: ``[N, 1, 8, 8] -> features [N, 64] -> logits [N, 10]``."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.fc = nn.Linear(32 * 2 * 2, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (after the ReLU): ``[N, 1, 8, 8] -> [N, 64]``."""
        return torch.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits: ``[N, 1, 8, 8] -> [N, 10]``."""
        return self.head(self.features(x))


def load_digits_net(weights: Path = WEIGHTS_PATH, sha256: str | None = None) -> DigitsNet:
    """Loads a ``DigitsNet`` from safetensors (no pickle) after verifying the file's SHA-256.

    Args:
        weights: path of the ``.safetensors`` file.
        sha256: the expected hex digest; ``None`` means the committed digest of the bundled weights
            (``fewstep._verify.BUNDLED_SHA256``), a constant in the code rather than a file beside them.

    Raises:
        FileNotFoundError: the weights are missing.
        ChecksumError: the digest of ``weights`` differs from the expected one.
    """
    from safetensors.torch import load as load_safetensors

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"classifier weights not found at {weights}")
    if sha256 is None:
        sha256 = BUNDLED_SHA256["metrics/data/digits_cnn.safetensors"]
    blob = read_verified_bytes(weights, sha256, restore="rerun scripts/train_classifier.py")
    net = DigitsNet()
    net.load_state_dict(load_safetensors(blob), strict=True)
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _classifier_on(device: str) -> DigitsNet:
    return load_digits_net().to(device)


def digits_classifier(device: str | torch.device = "cpu") -> DigitsNet:
    """The bundled digits classifier, loaded once per device and cached (eval mode, frozen).

    Held-out accuracy is printed by ``scripts/train_classifier.py`` and stored in the weights'
    metadata. Do not modify the returned module: it is shared between callers.
    """
    return _classifier_on(str(torch.device(device)))


def _as_digit_images(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"digits must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"digits must be real numbers, got dtype {x.dtype}")
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 1, 8, 8)
    elif not (x.ndim == 4 and tuple(x.shape[1:]) == (1, 8, 8)):
        raise ValueError(
            f"digits must be shaped [N, 64] or [N, 1, 8, 8] (scaled to [-1, 1]), got {list(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("digits must hold at least one image, got N = 0")
    return x.to(torch.float32)


@torch.inference_mode()
def _run(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    images = _as_digit_images(x)
    net = digits_classifier(images.device)
    fn = net.features if what == "features" else net
    return torch.cat([fn(chunk) for chunk in images.split(_BATCH)])


def digits_features(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Penultimate-layer features of the bundled digits classifier.

    Args:
        x: digits scaled as ``p / 8 - 1`` (p in 0..16), shaped ``[N, 64]`` or ``[N, 1, 8, 8]``;
            a tensor on any device, or a numpy array.

    Returns:
        float32 ``[N, 64]`` on the device of ``x``.
    """
    return _run(x, "features")


def digits_predict(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Class labels predicted by the bundled digits classifier.

    Args:
        x: digits as for ``digits_features``: ``[N, 64]`` or ``[N, 1, 8, 8]`` in [-1, 1].

    Returns:
        int64 ``[N]`` with values 0..9.
    """
    return _run(x, "logits").argmax(dim=1)
