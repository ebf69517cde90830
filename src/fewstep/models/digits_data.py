"""scikit-learn's 8x8 handwritten digits, shipped as package data so sklearn is not needed at runtime.

The archive ``data/digits.npz`` is written once by ``scripts/export_digits.py``. It holds the raw
pixel values 0..16, the labels, and a fixed held-out split (20 %, a seeded permutation) that the
bundled digits classifier (``fewstep.metrics.features``) never saw in training.
"""

from __future__ import annotations

import functools
import io
from typing import Literal

import numpy as np
import torch

from fewstep._verify import bundled_path, read_bundled

__all__ = ["digits_data", "DIGITS_PATH"]

DIGITS_PATH = bundled_path("models/data/digits.npz")
_SPLITS = ("all", "train", "heldout")


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(read_bundled("models/data/digits.npz")), allow_pickle=False) as archive:
        images, labels, heldout = archive["images"], archive["labels"], archive["heldout"]
    if images.shape != (len(labels), 64) or heldout.shape != labels.shape:
        raise RuntimeError(
            f"{DIGITS_PATH} is malformed: images {images.shape}, labels {labels.shape}, "
            f"heldout {heldout.shape}; expected [N, 64], [N], [N]"
        )
    for array in (images, labels, heldout):
        array.setflags(write=False)
    return images, labels, heldout


def digits_data(
    split: Literal["all", "train", "heldout"] = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 digits scaled to [-1, 1], with their labels.

    Pixels p in 0..16 map to ``p / 8 - 1``, the input scaling of the bundled digits classifier.

    Args:
        split: ``"all"`` (1797 images), ``"train"`` (the 1438 the classifier was trained on) or
            ``"heldout"`` (the other 359). The split is fixed and shipped with the data.

    Returns:
        ``(x, labels)``: ``x`` float32 ``[N, 64]`` (row-major 8x8 images; reshape to
        ``[N, 1, 8, 8]`` for the image view) and ``labels`` int64 ``[N]`` with values 0..9.
        Fresh tensors on every call, so callers may modify them.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    images, labels, heldout = _load_raw()
    if split == "train":
        keep = ~heldout
    elif split == "heldout":
        keep = heldout
    else:
        keep = np.ones_like(heldout)
    x = torch.from_numpy(images[keep].astype(np.float32)) / 8.0 - 1.0
    return x, torch.from_numpy(labels[keep].astype(np.int64))
