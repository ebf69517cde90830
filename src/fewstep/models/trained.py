"""The bundled trained networks: small U-Nets (``fewstep.models.nets``) trained on the 8x8 digits.

Three parameterisations of the same data, each converted to the sigma-space denoiser contract:

- ``digits-edm``: EDM preconditioning (Karras et al., arXiv 2206.00364), ``D = c_skip x + c_out F``.
- ``digits-flow``: rectified flow / flow matching (Liu et al., arXiv 2209.03003; Lipman et al.,
  arXiv 2210.02747), velocity ``u = eps - x0`` on ``x_t = (1 - t) x0 + t eps``.
- ``digits-vp-eps``: DDPM (Ho et al., arXiv 2006.11239), eps-prediction on 1000 discrete steps
  with linear betas 1e-4..0.02.

The weights are written by ``scripts/train_digits.py`` as float16 safetensors (no pickle) under
``data/``. Each file's SHA-256 is committed in ``SHA256`` and checked before the weights are read.
Importing this module registers the models but loads no weights.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load as load_safetensors

from fewstep._verify import ChecksumError, read_verified_bytes
from fewstep.diffusion.adapters import EDMPrecond, ModelDenoiser
from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.processes import Flow, VPDiscrete
from fewstep.models._registry import register_model
from fewstep.models.nets import MIN_BATCH, DigitsUNet, UNetConfig

__all__ = ["ChecksumError", "SPECS", "SHA256", "DATA_DIR", "TrainedSpec", "build_net", "wrap", "load_trained",
           "weights_path", "read_weights"]

DATA_DIR = Path(__file__).resolve().parent / "data"
SHAPE = (1, 8, 8)
SIGMA_DATA = 0.5  # EDM's sigma_data (Karras et al. 2022, Sec. 5); the digits' own std is about 0.6

Objective = Literal["edm", "flow", "vp-eps"]


@dataclass(frozen=True)
class TrainedSpec:
    """What a bundled network is: its file, training objective, architecture and description."""

    name: str
    file: str
    objective: Objective
    config: UNetConfig
    description: str


_CHANNELS = (32, 64, 64)
SPECS: dict[str, TrainedSpec] = {
    s.name: s
    for s in (
        TrainedSpec("digits-edm", "digits_edm.safetensors", "edm",
                    UNetConfig(channels=_CHANNELS, time_scale=250.0),  # c_noise = log(sigma)/4 in about [-1.6, 1.1]
                    "EDM-preconditioned U-Net trained on the 8x8 digits (Karras et al. 2022)"),
        TrainedSpec("digits-flow", "digits_flow.safetensors", "flow",
                    UNetConfig(channels=_CHANNELS, time_scale=1000.0),  # t in [0, 1]
                    "rectified-flow velocity U-Net trained on the 8x8 digits (Liu et al. 2022)"),
        TrainedSpec("digits-vp-eps", "digits_vp_eps.safetensors", "vp-eps",
                    UNetConfig(channels=_CHANNELS, time_scale=1.0),  # t in [0, 999]
                    "DDPM eps-prediction U-Net, 1000 linear-beta steps, trained on the 8x8 digits (Ho et al. 2020)"),
    )
}

# SHA-256 of each weights file, as printed by scripts/train_digits.py.
SHA256: dict[str, str] = {
    "digits_edm.safetensors": "1fb0bfbbd140a91009dea2e52e8558575ef249cf8a26fc01b33f7b85b547ba6f",
    "digits_flow.safetensors": "92431149503d47360a741c63cc72984f775747f4f20b8d740ebaebc4a35c2c53",
    "digits_vp_eps.safetensors": "d9e5fed136558037393453850cfc61dcead373006debf153f2abd77a6d9f6fb0",
}


def _spec(name: str) -> TrainedSpec:
    if name not in SPECS:
        raise ValueError(f"unknown trained model {name!r}; choose one of {', '.join(SPECS)}")
    return SPECS[name]


def weights_path(name: str) -> Path:
    """Where the weights of ``name`` live (``DATA_DIR`` is read at call time, so tests can move it)."""
    return DATA_DIR / _spec(name).file


def build_net(name: str) -> DigitsUNet:
    """A freshly initialised network with the architecture of ``name`` (float32, train mode)."""
    return DigitsUNet(_spec(name).config)


def wrap(name: str, net: torch.nn.Module) -> Denoiser:
    """Convert the raw network of ``name`` into the denoiser contract ``D(x, sigma)``."""
    spec = _spec(name)
    if spec.objective == "edm":
        return EDMPrecond(net, sigma_data=SIGMA_DATA, sigma_min=0.002, sigma_max=80.0, shape=SHAPE, name=name,
                          min_batch=MIN_BATCH)
    if spec.objective == "flow":
        return ModelDenoiser(net, Flow(), "velocity", shape=SHAPE, name=name, min_batch=MIN_BATCH)
    return ModelDenoiser(net, VPDiscrete.from_betas("linear"), "eps", shape=SHAPE, name=name, min_batch=MIN_BATCH)


def _header_info(blob: bytes) -> dict:
    # safetensors layout: 8-byte little-endian header length, then a JSON header whose
    # "__metadata__" holds the training script's record as JSON under the key "fewstep".
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8:8 + n]).get("__metadata__") or {}
    return json.loads(meta.get("fewstep", "{}"))


def read_weights(name: str, path: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Verify the SHA-256 of the weights of ``name`` and return ``(float32 state dict, training record)``.

    The record is what ``scripts/train_digits.py`` stored: model, config, steps, batch, seed,
    final loss, threads and torch version.

    The bytes are hashed and then parsed from memory, so what is loaded is exactly what was checked.

    Raises:
        FileNotFoundError: the file is missing.
        ChecksumError: the file has no committed checksum or does not match it.
    """
    spec = _spec(name)
    path = weights_path(name) if path is None else Path(path)
    restore = f"retrain with scripts/train_digits.py {name} (SHA256 in fewstep/models/trained.py)"
    blob = read_verified_bytes(path, SHA256.get(spec.file), restore=restore)
    state = {k: v.float() for k, v in load_safetensors(blob).items()}
    return state, _header_info(blob)


def load_trained(name: str, device: str | torch.device = "cpu") -> Denoiser:
    """Load the bundled network ``name`` as a float32, frozen, eval-mode ``Denoiser`` on ``device``."""
    spec = _spec(name)
    state, info = read_weights(name)
    stored = info.get("config")
    if stored != spec.config.to_dict():
        raise ValueError(f"the weights of {name!r} were trained with config {stored}, but the code builds "
                         f"{spec.config.to_dict()}; retrain with scripts/train_digits.py {name}")
    net = build_net(name)
    net.load_state_dict(state, strict=True)
    net = net.to(device).eval().requires_grad_(False)
    model = wrap(name, net)
    model.weights_sha256 = SHA256[spec.file]  # ties recipes and cached references to these weights
    return model


def _loader(name: str):
    def load(device: str | torch.device = "cpu") -> Denoiser:
        return load_trained(name, device=device)

    load.__doc__ = f"Load {name!r}: {SPECS[name].description}."
    return load


for _name, _s in SPECS.items():
    register_model(_name, "trained", _s.description, _loader(_name))
