"""``digits-cond``: a class-conditional digits U-Net, trained with label dropout for classifier-free guidance.

The network is the shared ``DigitsUNet`` (``fewstep.models.nets``) with a class embedding: a table of
11 vectors (classes 0..9 and the null class 10, which stands for "no label") passes through an MLP and
is added to the time embedding, as in ADM (Dhariwal & Nichol, arXiv 2105.05233). Training replaces the
label by the null class with probability ``p_uncond`` (Ho & Salimans, *Classifier-Free Diffusion
Guidance*, arXiv 2207.12598), so one network predicts both ``D(x, sigma | y)`` and ``D(x, sigma)``.

The net takes either ``class_labels`` (ints ``[B]``) or ``class_embedding`` (the table's vectors,
``[B, emb_dim]``), so that CADS (arXiv 2310.17347) can add noise to the embedding itself.

The weights are written by ``scripts/train_digits_cond.py`` (float16 safetensors, no pickle) and their
SHA-256 is checked before they are read. Importing this module registers the model but reads no weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from torch import nn
from torch.nn import functional as F

from fewstep._verify import read_verified_bytes
from fewstep.diffusion.adapters import EDMPrecond
from fewstep.models._registry import register_model
from fewstep.models.nets import MIN_BATCH, DigitsUNet, UNetConfig

__all__ = ["NUM_CLASSES", "NULL_CLASS", "CONFIG", "CondDigitsUNet", "CondEDM", "load_digits_cond", "wrap"]

Tensor = torch.Tensor

NUM_CLASSES = 10
NULL_CLASS = 10  # the label that means "unconditional"
SHAPE = (1, 8, 8)
SIGMA_DATA = 0.5
CONFIG = UNetConfig(channels=(32, 64, 64), time_scale=250.0)  # c_noise = log(sigma)/4, as digits-edm
WEIGHTS = Path(__file__).resolve().parent / "data" / "digits_cond.safetensors"
# SHA-256 of WEIGHTS, as printed by scripts/train_digits_cond.py.
SHA256 = "036acc6d16296f3282703dfeedf5dd21230260ae4fd0c5bf4ff77c553c4f04da"


class CondDigitsUNet(DigitsUNet):
    """``net(x, t, class_labels=None, class_embedding=None) -> y`` with ``x``, ``y`` of shape ``[B, 1, 8, 8]``.

    ``class_labels`` holds ints in ``0..10`` (10 = null, unconditional); ``class_embedding`` holds
    vectors ``[B, emb_dim]`` that replace the table lookup. Give at most one; with neither, the
    prediction is unconditional.

    ``DigitsUNet.forward`` has no input for an extra embedding, so the U-Net traversal is written
    out here once more with ``emb = silu(time_mlp(t) + class_mlp(c))``.
    """

    def __init__(self, config: UNetConfig = CONFIG):
        super().__init__(config)
        e = config.emb_dim
        self.class_table = nn.Embedding(NUM_CLASSES + 1, e)
        self.class_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))

    def embed(self, class_labels: Tensor) -> Tensor:
        """The condition embedding ``[B, emb_dim]`` of labels in ``0..10`` (what CADS adds noise to)."""
        labels = torch.as_tensor(class_labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
            raise ValueError(f"class_labels must be a 1-D integer tensor; got dtype {labels.dtype}, "
                             f"shape {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() > NULL_CLASS):
            raise ValueError(f"class_labels must lie in 0..{NULL_CLASS} ({NULL_CLASS} = unconditional); got "
                             f"values from {int(labels.min())} to {int(labels.max())}")
        return self.class_table(labels.to(self.class_table.weight.device))

    def _condition(self, batch: int, class_labels: Any, class_embedding: Any, dtype) -> Tensor:
        if class_labels is not None and class_embedding is not None:
            raise ValueError("give class_labels or class_embedding, not both")
        if class_embedding is None:
            labels = torch.full((batch,), NULL_CLASS) if class_labels is None else torch.as_tensor(class_labels)
            if labels.ndim == 0:
                labels = labels.expand(batch)
            c = self.embed(labels)
        else:
            c = torch.as_tensor(class_embedding)
        if c.shape != (batch, self.config.emb_dim):
            raise ValueError(f"the condition must give one entry per sample: expected [{batch}, "
                             f"{self.config.emb_dim}] embeddings, got shape {tuple(c.shape)}")
        return c.to(dtype)

    def forward(self, x: Tensor, t: Tensor, class_labels: Any = None, class_embedding: Any = None) -> Tensor:
        t = self.check_inputs(x, t)
        c = self._condition(x.shape[0], class_labels, class_embedding, x.dtype)
        return self.trunk(x, F.silu(self.time_mlp(self.time(t).to(x.dtype)) + self.class_mlp(c)))


class CondEDM(EDMPrecond):
    """EDM preconditioning (arXiv 2206.00364, Table 1) around a ``CondDigitsUNet``.

    ``cond`` is ``{"class_labels": y}`` (``y`` ints ``[B]`` or one int) or ``{"class_embedding": e}``;
    without ``cond`` the prediction is unconditional. ``null_class`` and ``embed`` let
    ``fewstep.diffusion.guidance.CFG`` build the unconditional pass and CADS's noisy embedding.
    """

    num_classes = NUM_CLASSES
    null_class = NULL_CLASS

    def __init__(self, net: CondDigitsUNet, name: str = "digits-cond"):
        super().__init__(net, sigma_data=SIGMA_DATA, sigma_min=0.002, sigma_max=80.0, shape=SHAPE, name=name,
                         min_batch=MIN_BATCH)

    def embed(self, class_labels: Tensor) -> Tensor:
        return self.net.embed(class_labels)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Mapping[str, Any] | None) -> Tensor:
        bad = set(cond or {}) - {"class_labels", "class_embedding"}
        if bad:
            raise ValueError(f"unknown condition key(s) {sorted(bad)} for {self.name}; "
                             "allowed: class_labels, class_embedding")
        cond = dict(cond or {})
        self.net._condition(x.shape[0], cond.get("class_labels"), cond.get("class_embedding"), x.dtype)  # checked
        return super().denoise(x, sigma, cond)  # at the caller's batch size, before call_net pads the rows


def wrap(net: CondDigitsUNet) -> CondEDM:
    """The denoiser contract around a (trained or training) ``CondDigitsUNet``."""
    return CondEDM(net)


def read_verified(path: Path, sha256: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Hash the bytes of ``path``, compare with ``sha256``, and parse those same bytes: the float32 state and
    the training record the script stores as JSON under the metadata key ``fewstep``."""
    blob = read_verified_bytes(path, sha256,
                               restore="rerun scripts/train_digits_cond.py (SHA256 in fewstep/models/cond.py)")
    n = int.from_bytes(blob[:8], "little")  # safetensors: 8-byte header length, then a JSON header
    meta = json.loads(blob[8:8 + n]).get("__metadata__") or {}
    return {k: v.float() for k, v in load_safetensors(blob).items()}, json.loads(meta.get("fewstep", "{}"))


def load_digits_cond(device: str | torch.device = "cpu") -> CondEDM:
    """Load ``digits-cond`` as a frozen, eval-mode, float32 ``CondEDM`` on ``device``."""
    state, meta = read_verified(WEIGHTS, SHA256)
    stored = meta.get("config")
    if stored != CONFIG.to_dict():
        raise ValueError(f"the weights of 'digits-cond' were trained with config {stored}, but the code builds "
                         f"{CONFIG.to_dict()}; retrain with scripts/train_digits_cond.py")
    net = CondDigitsUNet(CONFIG)
    net.load_state_dict(state, strict=True)
    model = wrap(net.to(device).eval().requires_grad_(False))
    model.weights_sha256 = SHA256  # ties recipes and cached references to these weights
    return model


register_model("digits-cond", "trained",
               "class-conditional EDM U-Net on the 8x8 digits, label dropout for classifier-free guidance "
               "(cond={'class_labels': y}, y in 0..9; 10 = unconditional)", load_digits_cond)
