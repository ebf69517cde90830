"""Wrap a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, a transformer, or any callable with
their signature) into a fewstep ``Denoiser``, with the noise process read from a scheduler config.

diffusers is never imported here: a scheduler or its config is only read as a mapping.

Supported configs (docs/math.md, "Mapping models into sigma space"):

- discrete-time VP (DDPM, DDIM, PNDM, Euler, DPM-Solver, UniPC, ... configs): ``beta_schedule``
  ``linear`` / ``scaled_linear`` / ``squaredcos_cap_v2`` or ``trained_betas``, ``rescale_betas_zero_snr``,
  and ``prediction_type`` ``epsilon``, ``v_prediction`` or ``sample``. The model gets the (fractional)
  training timestep.
- flow matching (``FlowMatch*`` configs, or ``use_flow_sigmas`` / ``flow_prediction``): the velocity
  ``u = eps - x0`` of ``x_t = (1 - t) x0 + t eps``; the model gets ``t * num_train_timesteps``. The
  timestep ``shift`` (or ``exp(mu)`` for dynamic shifting) is part of the process, see ``ShiftedFlow``.
- ``clip_sample`` and dynamic ``thresholding`` act on ``D`` (the x0 estimate).

The rest of a scheduler config (its grid and sampler keys, for ``FewstepScheduler.from_config``) is read in
``fewstep.diffusion.scheduler_config``; its names are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fewstep.diffusion.adapters import _module_dtype
from fewstep.diffusion.conversions import from_x0, to_x0
from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.processes import Flow, NoiseProcess, VPDiscrete
from fewstep.diffusion.scheduler_config import (
    GRID_KEYS,
    MODEL_KEYS,
    SOLVER_KEYS,
    IgnoredConfigWarning,
    SchedulerConfig,
    SourceSolver,
    is_flow_config,
    read_scheduler_config,
    source_solver,
)

__all__ = ["PREDICTION_TYPES", "DiffusersDenoiser", "DiffusersSpec", "ShiftedFlow", "call_model", "dynamic_threshold",
           "flow_shift", "from_diffusers", "spec_from_config",
           # fewstep.diffusion.scheduler_config's, re-exported
           "GRID_KEYS", "MODEL_KEYS", "SOLVER_KEYS", "IgnoredConfigWarning", "SchedulerConfig", "SourceSolver",
           "is_flow_config", "read_scheduler_config", "source_solver"]

Tensor = torch.Tensor

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}


@dataclass(frozen=True)
class ShiftedFlow(Flow):
    """Flow matching with diffusers' timestep shift ``t = s u / (1 + (s - 1) u)`` (SD3, Flux, Wan).

    The native time is the unshifted ``u`` in ``[t_min, t_max]``, so a grid uniform in ``u`` is
    diffusers' shifted grid. In sigma space the shift is a scale: ``sigma = s u / (1 - u)``. A model
    sees the shifted ``t``; its velocity is ``dx_t/dt``, and ``dcoeffs_dt`` gives derivatives in ``u``.
    """

    shift: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not self.shift > 0:
            raise ValueError(f"the flow shift must be positive; got {self.shift}")

    def sigma_to_t(self, sigma):
        s = sigma / self.shift
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), s / (1 + s))

    def t_to_sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t
        return self.shift * t / (1 - t)

    def dcoeffs_dt(self, t):
        dt_du = self.shift / (1 + (self.shift - 1) * t) ** 2
        return -dt_du, dt_du

    def describe(self):
        return {"family": self.family, "shift": self.shift, "t_min": self.t_min, "t_max": self.t_max}


@dataclass(frozen=True, eq=False)
class DiffusersSpec:
    """What a diffusers scheduler config says about its model: the process, the prediction, the time
    the model is given, and the post-processing of the x0 estimate. Shared by ``from_diffusers`` and
    ``fewstep.integrations.diffusers.FewstepScheduler``, so both convert identically.

    The model space is ``x_t = a x0 + b eps`` (``a, b`` from ``process.coeffs``); fewstep's state is
    ``x = x_t / a``, and at ``sigma = inf`` it holds the unit noise ``x_t`` itself.
    """

    process: NoiseProcess
    prediction: str  # fewstep name: eps, v, x0, velocity
    kind: str  # "vp" or "flow"
    num_train_timesteps: int
    clip: float | None = None
    threshold: tuple[float, float] | None = None  # (quantile ratio, max value)
    config: Mapping[str, Any] = field(default_factory=dict)

    def coeffs(self, sigma: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        return tuple(bcast(c.to(like.dtype), like) for c in self.process.coeffs(sigma.to(torch.float64)))

    def model_input(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The model-space state ``x_t`` of the sigma-space state ``x`` (``sigma``: ``[B]``)."""
        a, _ = self.coeffs(sigma, x)
        return torch.where(bcast(torch.isinf(sigma), x), x, a * x)

    def state(self, xt: Tensor, sigma: Tensor) -> Tensor:
        """The inverse of ``model_input``."""
        a, _ = self.coeffs(sigma, xt)
        return torch.where(bcast(torch.isinf(sigma), xt), xt, xt / a)

    def model_time(self, sigma: Tensor) -> Tensor:
        """The timestep the model is given at ``sigma`` (float64): a fractional training step for VP,
        ``t * num_train_timesteps`` with the shifted flow time ``t = sigma / (1 + sigma)`` for flow."""
        sigma = sigma.to(torch.float64)
        if self.kind == "flow":
            t = torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))
            return t * self.num_train_timesteps
        return self.process.sigma_to_t(sigma)

    def sigma_of_time(self, timesteps: Tensor) -> Tensor:
        """The inverse of ``model_time`` (float64)."""
        t = torch.as_tensor(timesteps).to(torch.float64)
        if self.kind == "flow":
            t = t / self.num_train_timesteps
            return torch.where(t >= 1, torch.full_like(t, math.inf), t / (1 - t))
        return self.process.t_to_sigma(t)

    def _derivatives(self, like: Tensor):
        if self.prediction != "velocity":
            return None, None
        one = torch.ones((), dtype=like.dtype, device=like.device)
        return -one, one  # d/dt of (1 - t, t): the model's velocity is in the shifted time t

    def check_sigma(self, sigma: Tensor) -> None:
        if self.prediction == "eps" and torch.isinf(sigma).any():
            raise ValueError("an epsilon-prediction model cannot denoise at sigma = inf (zero terminal SNR): its "
                             "output carries no information about x0 there; use v_prediction or a finite sigma_max")

    def to_x0(self, out: Tensor, xt: Tensor, sigma: Tensor) -> Tensor:
        """``D`` from a model output at the model-space state ``xt``, then ``clip_sample`` / thresholding."""
        return self.postprocess(self.raw_x0(out, xt, sigma))

    def raw_x0(self, out: Tensor, xt: Tensor, sigma: Tensor) -> Tensor:
        """The x0 estimate of a model output before ``postprocess``."""
        self.check_sigma(sigma)
        a, b = self.coeffs(sigma, xt)
        return to_x0(self.prediction, out, xt, a, b, *self._derivatives(xt))

    def postprocess(self, x0: Tensor) -> Tensor:
        """Dynamic thresholding, else ``clip_sample`` (as diffusers' DDIM and DDPM: thresholding wins)."""
        if self.threshold is not None:
            return dynamic_threshold(x0, *self.threshold)
        if self.clip is not None:
            return x0.clamp(-self.clip, self.clip)
        return x0

    @property
    def postprocessed(self) -> bool:
        """Whether ``postprocess`` changes x0 estimates (clipping or thresholding is on)."""
        return self.clip is not None or self.threshold is not None

    def from_x0(self, x0: Tensor, xt: Tensor, sigma: Tensor) -> Tensor:
        """The model output that corresponds to ``x0`` at ``xt`` (used to build exact test models)."""
        a, b = self.coeffs(sigma, xt)
        return from_x0(self.prediction, x0, xt, a, b, *self._derivatives(xt))


def dynamic_threshold(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """Imagen's dynamic thresholding (arXiv 2205.11487): ``s = clamp(quantile(|x0|, ratio), 1, max_value)``
    per sample, then ``clamp(x0, -s, s) / s``."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    s = torch.quantile(flat.float(), ratio, dim=1).to(x0.dtype).clamp(1.0, max_value)
    s = bcast(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def _as_config(scheduler_or_config: Any) -> dict[str, Any]:
    cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(cfg, Mapping):
        raise TypeError("expected a diffusers scheduler or its config (a mapping); got "
                        f"{type(scheduler_or_config).__name__}")
    cfg = dict(cfg)
    if "_class_name" not in cfg and not isinstance(scheduler_or_config, Mapping):
        cfg["_class_name"] = type(scheduler_or_config).__name__
    return cfg


def flow_shift(cfg: Mapping[str, Any], mu: float | None) -> float:
    """The sigma-space scale of the flow timestep shift: ``shift`` (``flow_shift``), or ``exp(mu)`` / ``mu``
    for dynamic shifting of ``exponential`` / ``linear`` type."""
    if cfg.get("use_dynamic_shifting"):
        if mu is None:
            raise ValueError("this config uses dynamic shifting (use_dynamic_shifting=True); pass mu=... as the "
                             "pipeline would (it depends on the image size)")
        kind = cfg.get("time_shift_type", "exponential")
        if kind not in ("exponential", "linear"):
            raise ValueError(f"unknown time_shift_type {kind!r}; allowed: 'exponential', 'linear'")
        return math.exp(mu) if kind == "exponential" else float(mu)
    if mu is not None:
        raise ValueError("mu is only used with dynamic shifting, and this config has use_dynamic_shifting=False")
    return float(cfg.get("shift", cfg.get("flow_shift", 1.0)) or 1.0)


def spec_from_config(scheduler_or_config: Any, *, mu: float | None = None) -> DiffusersSpec:
    """Read a diffusers scheduler (or config) into a ``DiffusersSpec``; see the module docstring."""
    cfg = _as_config(scheduler_or_config)
    T = int(cfg.get("num_train_timesteps", 1000))
    flow = is_flow_config(cfg)
    pred_type = cfg.get("prediction_type", "flow_prediction" if flow else "epsilon")
    if flow:
        if pred_type not in ("flow_prediction", None) and str(cfg.get("_class_name", "")).startswith("FlowMatch"):
            raise ValueError(f"a FlowMatch config predicts the flow velocity; got prediction_type={pred_type!r}")
        for key in ("shift_terminal", "invert_sigmas", "stochastic_sampling"):
            if cfg.get(key):
                raise ValueError(f"the flow config option {key}={cfg[key]!r} is not supported; allowed: unset")
        shift = flow_shift(cfg, mu)
        u_min = 1.0 / T if cfg.get("use_dynamic_shifting") else float(cfg.get("shift", 1.0)) / (
            T + float(cfg.get("shift", 1.0)) - 1)  # diffusers shifts its lowest training sigma once in __init__
        process: NoiseProcess = ShiftedFlow(t_min=u_min, t_max=1.0, shift=shift)
        prediction = "velocity"
    else:
        if pred_type not in PREDICTION_TYPES or pred_type == "flow_prediction":
            allowed = ", ".join(k for k in PREDICTION_TYPES if k != "flow_prediction")
            raise ValueError(f"unknown prediction_type {pred_type!r} for a VP config; allowed: {allowed}")
        betas = cfg.get("trained_betas")
        process = VPDiscrete.from_betas(
            betas if betas is not None else cfg.get("beta_schedule", "linear"), num_train_timesteps=T,
            beta_start=float(cfg.get("beta_start", 1e-4)), beta_end=float(cfg.get("beta_end", 0.02)),
            rescale_betas_zero_snr=bool(cfg.get("rescale_betas_zero_snr", False)))
        prediction = PREDICTION_TYPES[pred_type]
    threshold = ((float(cfg.get("dynamic_thresholding_ratio", 0.995)), float(cfg.get("sample_max_value", 1.0)))
                 if cfg.get("thresholding") else None)
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample") and threshold is None else None
    return DiffusersSpec(process, prediction, "flow" if flow else "vp", T, clip, threshold, cfg)


def call_model(model: Callable[..., Any], xt: Tensor, timestep: Tensor, cond: Mapping[str, Any] | None) -> Tensor:
    """Call a diffusers model as its pipelines do, ``model(sample, timestep=t, **cond)``, and unwrap the output
    (``.sample``, a tuple, or a tensor). A learned-variance output (twice the input channels) keeps its first half."""
    out = model(xt, timestep=timestep, **(cond or {}))
    if hasattr(out, "sample"):
        out = out.sample
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out):
        raise TypeError(f"the model returned {type(out).__name__}; expected a tensor or a diffusers output")
    if out.ndim >= 2 and xt.ndim >= 2 and out.shape[1] == 2 * xt.shape[1] and out.shape[2:] == xt.shape[2:]:
        out = out[:, : xt.shape[1]]  # learned variance (iDDPM, DiT): the mean prediction is the first half
    return out


def _model_dtype(model: Any) -> torch.dtype | None:
    dtype = getattr(model, "dtype", None)  # diffusers models have one; plain callables may not
    return dtype if isinstance(dtype, torch.dtype) else _module_dtype(model)


class DiffusersDenoiser(Denoiser):
    """A diffusers model as ``D(x, sigma, cond)``; ``cond`` holds the model's keywords
    (e.g. ``{"encoder_hidden_states": emb}``)."""

    def __init__(self, model: Callable[..., Any], spec: DiffusersSpec, *, shape: tuple[int, ...] | None = None,
                 name: str | None = None, model_dtype: torch.dtype | None = None,
                 timestep_fn: Callable[[Tensor], Tensor] | None = None):
        super().__init__(spec.process)
        if not callable(model):
            raise TypeError(f"model must be callable; got {type(model).__name__}")
        self.model, self.spec, self.timestep_fn = model, spec, timestep_fn
        self.prediction = spec.prediction
        self.shape = tuple(shape) if shape is not None else _infer_shape(model)
        self.name = name or f"diffusers-{type(model).__name__}"
        self.model_dtype = model_dtype or _model_dtype(model)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Mapping[str, Any] | None) -> Tensor:
        self.spec.check_sigma(sigma)  # before calling the model
        xt = self.spec.model_input(x, sigma)
        t = self.spec.model_time(sigma)
        if self.timestep_fn is not None:
            t = self.timestep_fn(t)
        dtype = self.model_dtype or x.dtype
        t_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # as pipelines pass timesteps
        out = call_model(self.model, xt.to(dtype), t.to(device=x.device, dtype=t_dtype), cond).to(x.dtype)
        return self.spec.to_x0(out, xt, sigma)

    def identity(self) -> dict[str, Any]:
        d = super().identity()
        cfg = {k: v for k, v in self.spec.config.items() if not k.startswith("_") or k == "_class_name"}
        blob = json.dumps(cfg, sort_keys=True, default=str).encode()
        d["scheduler_config_sha"] = hashlib.sha256(blob).hexdigest()[:16]
        return d


def _infer_shape(model: Any) -> tuple[int, ...] | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
    size, channels = get("sample_size", None), get("in_channels", None)
    if isinstance(size, int) and isinstance(channels, int):
        return (channels, size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and isinstance(channels, int):
        return (channels, int(size[0]), int(size[1]))
    return None


def from_diffusers(model: Callable[..., Any], scheduler_or_config: Any, *, mu: float | None = None,
                   shape: tuple[int, ...] | None = None, name: str | None = None,
                   model_dtype: torch.dtype | None = None,
                   timestep_fn: Callable[[Tensor], Tensor] | None = None) -> DiffusersDenoiser:
    """Wrap a diffusers model as a fewstep ``Denoiser``.

    Args:
        model: a ``UNet2DModel``, ``UNet2DConditionModel``, a transformer, or any callable
            ``model(sample, timestep=t, **cond)`` returning a tensor or a diffusers output.
        scheduler_or_config: the pipeline's scheduler, or its config (``scheduler.config`` or a dict).
        mu: the dynamic shift of a flow config with ``use_dynamic_shifting=True``.
        shape: the per-sample data shape (read from ``model.config`` when it has ``sample_size``).
        model_dtype: the dtype to run the model in (default: the model's own).
        timestep_fn: maps the timestep fewstep computes to what the model takes (e.g. ``t / 1000``).

    Returns:
        A ``DiffusersDenoiser``; pass model keywords as ``cond={...}`` to ``fewstep.sample``.
    """
    return DiffusersDenoiser(model, spec_from_config(scheduler_or_config, mu=mu), shape=shape, name=name,
                             model_dtype=model_dtype, timestep_fn=timestep_fn)


class _CallableModule(types.ModuleType):
    """Importing this submodule makes ``fewstep.diffusion.from_diffusers`` name the module rather than the
    function the package re-exports; making the module callable keeps ``fewstep.diffusion.from_diffusers(...)``
    working either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> DiffusersDenoiser:
        return from_diffusers(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
