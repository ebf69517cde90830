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

``read_scheduler_config`` reads the rest of a scheduler config for ``FewstepScheduler.from_config``: which keys
describe the model, the grid or the sampler, the fewstep solver of each diffusers sampler, and the keys that
cannot be honoured.
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


def is_flow_config(cfg: Mapping[str, Any]) -> bool:
    """A ``FlowMatch*`` config (by ``_class_name``, or by its keys: a ``shift`` and no betas), or a VP-family
    scheduler switched to flow sigmas (``use_flow_sigmas``, ``prediction_type="flow_prediction"``)."""
    betas = any(k in cfg for k in ("beta_schedule", "beta_start", "trained_betas"))
    return (str(cfg.get("_class_name", "")).startswith("FlowMatch") or ("shift" in cfg and not betas)
            or bool(cfg.get("use_flow_sigmas")) or cfg.get("prediction_type") == "flow_prediction")


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


# ------------------------------------------------------------------------------------------------
# what a scheduler config says about its grid and its sampler (read by FewstepScheduler.from_config)
# ------------------------------------------------------------------------------------------------

MODEL_KEYS = frozenset({  # read by spec_from_config (variance_type: a learned variance's half is dropped)
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "rescale_betas_zero_snr", "clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio",
    "sample_max_value", "shift", "flow_shift", "use_flow_sigmas", "use_dynamic_shifting", "time_shift_type",
    "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "variance_type"})
GRID_KEYS = frozenset({  # read by the scheduler's own set_timesteps
    "timestep_spacing", "steps_offset", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
    "use_lu_lambdas", "final_sigmas_type", "set_alpha_to_one", "interpolation_type", "sigma_min", "sigma_max",
    "timestep_type", "lambda_min_clipped", "original_inference_steps", "shift_terminal", "invert_sigmas"})
SOLVER_KEYS = frozenset({  # the scheduler's own algorithm
    "solver_order", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final", "predict_x0",
    "disable_corrector", "solver_p", "skip_prk_steps", "noise_sampler_seed", "predictor_order", "corrector_order",
    "tau_func", "timestep_scaling", "stochastic_sampling"})

# diffusers schedulers whose step is a registered fewstep solver with these options
_SAME_ALGORITHM: dict[str, tuple[str, dict[str, Any]]] = {
    "DDIMScheduler": ("ddim", {}), "DDIMParallelScheduler": ("ddim", {}),
    "EulerDiscreteScheduler": ("euler", {}), "FlowMatchEulerDiscreteScheduler": ("euler", {}),
    "EulerAncestralDiscreteScheduler": ("euler_ancestral", {"eta": 1.0}),
    "HeunDiscreteScheduler": ("heun", {}), "FlowMatchHeunDiscreteScheduler": ("heun", {}),
    "LMSDiscreteScheduler": ("ipndm_v", {"order": 4, "lower_order_final": False}),
    "KDPM2DiscreteScheduler": ("dpm_solver_2", {"r1": 0.5}),
    "DPMSolverSDEScheduler": ("dpmpp_sde", {"eta": 1.0, "r": 0.5}),
}
_DDPM_VARIANCE = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
                  "fixed_large_log": "fixed_large"}


class IgnoredConfigWarning(UserWarning):
    """A key of a diffusers scheduler config that fewstep does not honour; the message names the key."""


@dataclass(frozen=True)
class SourceSolver:
    """The fewstep solver and options that run a diffusers scheduler's algorithm (``solver=None``: there is
    none), and the config keys they do not honour, each with the reason."""

    solver: str | None
    options: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def source_solver(class_name: str | None, cfg: Mapping[str, Any]) -> SourceSolver:
    """The fewstep equivalent of the sampler of diffusers' ``class_name`` configured by ``cfg`` (docs/compat.md)."""
    get = cfg.get
    if class_name in _SAME_ALGORITHM:
        solver, options = _SAME_ALGORITHM[class_name]
        refused = {}
        if get("stochastic_sampling"):
            refused["stochastic_sampling"] = "the flow schedulers' stochastic sampling has no fewstep equivalent"
        if get("noise_sampler_seed") is not None:
            refused["noise_sampler_seed"] = "the noise comes from the generator the pipeline passes to step"
        return SourceSolver(solver, dict(options), refused)
    if class_name in ("DDPMScheduler", "DDPMParallelScheduler"):
        kind = get("variance_type", "fixed_small")
        refused = {} if kind in _DDPM_VARIANCE else {"variance_type": "the model's learned variance is not used; "
                                                                     "the posterior variance (fixed_small) is"}
        return SourceSolver("ddpm", {"variance": _DDPM_VARIANCE.get(kind, "fixed_small")}, refused)
    order, lower_final, refused = int(get("solver_order", 2)), bool(get("lower_order_final", True)), {}
    if class_name == "DPMSolverMultistepScheduler":
        algorithm = get("algorithm_type", "dpmsolver++")
        sde = algorithm.startswith("sde")
        if algorithm == "sde-dpmsolver" or (algorithm == "dpmsolver" and order > 1):
            refused["algorithm_type"] = (f"fewstep has no multistep solver in noise-prediction form; "
                                         f"{'sde-' if sde else ''}dpmsolver++ runs")
        if get("euler_at_final") and get("final_sigmas_type") == "sigma_min":
            refused["euler_at_final"] = "the last step to sigma_min keeps the solver's order"
        if order > 3:
            refused["solver_order"], order = "fewstep's DPM-Solver++ multistep has orders 1 to 3; 3 runs", 3
        if sde and order == 3:
            refused["solver_order"] = ("diffusers' third-order SDE step has the opposite sign of k-diffusion's D2 "
                                       "term (its weight tends to -1 as h -> 0: first order); dpmpp_3m_sde runs "
                                       "k-diffusion's")
        taylor = {"solver_type": "taylor" if get("solver_type") == "heun" else "midpoint"}
        sde_eta = {"eta": 1.0} if sde else {}
        if order == 1:
            return SourceSolver("euler_ancestral" if sde else "ddim", sde_eta, refused)
        if order == 2:
            return SourceSolver("dpmpp_2m_sde" if sde else "dpmpp_2m",
                                {**sde_eta, **taylor, "lower_order_final": lower_final}, refused)
        return SourceSolver("dpmpp_3m_sde" if sde else "dpmpp_3m",
                            {**sde_eta, "coefficients": "official", "lower_order_final": lower_final}, refused)
    if class_name == "UniPCMultistepScheduler":
        if order > 3:
            refused["solver_order"], order = "fewstep's UniPC has orders 1 to 3; 3 runs", 3
        if not get("predict_x0", True):
            refused["predict_x0"] = "fewstep's UniPC is the data-prediction form"
        if get("disable_corrector"):
            refused["disable_corrector"] = "fewstep's UniPC corrects every step but the last"
        if get("solver_p") is not None:
            refused["solver_p"] = "the predictor is UniP"
        return SourceSolver("unipc", {"order": order, "variant": get("solver_type", "bh2"),
                                      "lower_order_final": lower_final}, refused)
    if class_name == "DEISMultistepScheduler":
        if order > 3:
            refused["solver_order"], order = "fewstep's DEIS has orders 1 to 3; 3 runs", 3
        if order > 1:
            refused["solver_type"] = ("fewstep's deis is tAB (its polynomial in VP time), not diffusers' logrho "
                                      "form; they agree at order 1 (docs/compat.md)")
        return SourceSolver("deis", {"order": order, "lower_order_final": lower_final}, refused)
    return SourceSolver(None)


@dataclass(frozen=True)
class SchedulerConfig:
    """A diffusers scheduler config as ``FewstepScheduler`` reads it: the model keys (``spec_from_config``), the
    complete source config whose ``set_timesteps`` gives the default grid (``None`` without a known class),
    the solver and options of the source's algorithm, and the keys not honoured (key -> message)."""

    model: dict[str, Any]
    source: dict[str, Any] | None
    solver: str | None
    options: dict[str, Any]
    notes: dict[str, str]


def read_scheduler_config(cfg: Mapping[str, Any], defaults: Mapping[str, Any] | None, *, solver: str | None = None,
                          schedule: str | None = None, fallback: str = "dpmpp_2m",
                          sampler_known: bool = True) -> SchedulerConfig:
    """Read ``cfg`` of the scheduler class ``cfg["_class_name"]`` with that class's ``__init__`` ``defaults``
    (``None``: an unknown class). ``sampler_known=False``: the class's grid is known but not its sampler
    (classes with the same keys and different samplers).

    diffusers' configs mark the keys that held their class's default (``_use_default_values``) and its
    ``from_config`` drops them, so another class would apply its own defaults; here every key is completed
    from ``defaults`` first. Each key is then honoured or named in ``notes``: model keys always; grid keys by
    the source's own grid unless ``schedule`` is given; solver keys when the solver is the source's own
    algorithm (``solver`` is ``None`` or that solver). A key left at its class default changes nothing and
    is never named when a ``solver`` or ``schedule`` argument replaces it.
    """
    name = cfg.get("_class_name") if isinstance(cfg.get("_class_name"), str) else None
    if cfg.get("invert_sigmas"):
        raise ValueError("invert_sigmas=True (a grid that runs from data to noise) is not supported; allowed: False")
    base = {k: _plain(v) for k, v in (defaults or {}).items()}
    full = {**base, **{k: _plain(v) for k, v in cfg.items() if not k.startswith("_")}}

    def chosen(key: str) -> bool:
        v = full[key]
        return v != base[key] if key in base else v not in (None, False) and v != []

    def note(key: str, reason: str) -> None:
        notes[key] = f"{key}={full.get(key, name)!r}: {reason}"

    notes: dict[str, str] = {}
    model = {k: full[k] for k in MODEL_KEYS | {"timestep_spacing", "steps_offset"} if k in full}
    if is_flow_config({**full, "_class_name": name or ""}):
        model["prediction_type"] = "flow_prediction"
        model.setdefault("shift", full.get("flow_shift", 1.0))
    mapped = source_solver(name if sampler_known else None, full)
    options: dict[str, Any] = {}
    if solver is None or solver == mapped.solver:
        if mapped.solver is None:
            what = (f"_class_name={name!r}: fewstep has no equivalent of its sampler" if sampler_known else
                    "_class_name (absent): the keys fit schedulers with different samplers")
            notes["_class_name"] = f"{what}; solver {fallback!r} runs (pass solver=...)"
        for key, reason in mapped.refused.items():
            note(key, reason)
        solver, options = mapped.solver, dict(mapped.options)
    else:
        for key in sorted(SOLVER_KEYS & set(full)):
            if chosen(key):
                note(key, f"a setting of {name}'s own sampler, which solver={solver!r} replaces")
    source = {"_class_name": name, **{k: full[k] for k in base}} if defaults is not None else None
    for key in sorted(GRID_KEYS & set(full)):
        if schedule is not None and chosen(key):
            note(key, f"schedule={schedule!r} replaces the scheduler's own grid")
        elif schedule is None and source is None and key not in ("timestep_spacing", "steps_offset") and chosen(key):
            note(key, "the grid of an unknown scheduler class is fewstep's discrete schedule")
    for key in sorted(set(full) - MODEL_KEYS - GRID_KEYS - SOLVER_KEYS):
        if chosen(key):
            note(key, "not a key fewstep knows")
    return SchedulerConfig(model, source, solver, options, notes)


def _plain(v: Any) -> Any:
    """A config value as plain JSON-able Python (numpy arrays and scalars, tensors, tuples)."""
    if torch.is_tensor(v) or hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (tuple, list)):
        return [_plain(u) for u in v]
    return v


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
