"""What a diffusers scheduler config says, key by key, for ``FewstepScheduler.from_config``: which keys
describe the model (read by ``fewstep.diffusion.from_diffusers.spec_from_config``), the grid (the source
scheduler's own ``set_timesteps``) or the sampler; the fewstep solver and options of each diffusers sampler; and
the keys that cannot be honoured, each with the reason (docs/compat.md, "What ``from_config`` reads").

diffusers is never imported here: a config is only read as a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["GRID_KEYS", "MODEL_KEYS", "SOLVER_KEYS", "IgnoredConfigWarning", "SchedulerConfig", "SourceSolver",
           "is_flow_config", "read_scheduler_config", "source_solver"]

def is_flow_config(cfg: Mapping[str, Any]) -> bool:
    """A ``FlowMatch*`` config (by ``_class_name``, or by its keys: a ``shift`` and no betas), or a VP-family
    scheduler switched to flow sigmas (``use_flow_sigmas``, ``prediction_type="flow_prediction"``)."""
    betas = any(k in cfg for k in ("beta_schedule", "beta_start", "trained_betas"))
    return (str(cfg.get("_class_name", "")).startswith("FlowMatch") or ("shift" in cfg and not betas)
            or bool(cfg.get("use_flow_sigmas")) or cfg.get("prediction_type") == "flow_prediction")


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
        if get("solver_type", "logrho") != "logrho" or get("algorithm_type", "deis") != "deis":
            refused["solver_type"] = "fewstep runs diffusers' only DEIS form, algorithm_type='deis' with 'logrho'"
        return SourceSolver("deis", {"order": order, "lower_order_final": lower_final, "variable": "log_sigma"},
                            refused)
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
        sampler_keys = SOLVER_KEYS | ({"variance_type"} if mapped.solver == "ddpm" else set())  # DDPM's own variance
        for key in sorted(sampler_keys & set(full)):
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
