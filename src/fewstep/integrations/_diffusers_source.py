"""The diffusers scheduler a ``FewstepScheduler`` replaces: its class (from ``_class_name``, or from the keys of a
directly built scheduler's config), that class's ``__init__`` defaults, the grid its own ``set_timesteps`` builds
and its first model input per unit noise (docs/compat.md, "What ``from_config`` reads")."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import diffusers
import torch
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin

from fewstep.diffusion.from_diffusers import DiffusersSpec
from fewstep.diffusion.schedules import check_sigmas

Tensor = torch.Tensor
# the schedulers diffusers lists as compatible with one another, and the flow ones: FewstepScheduler's compatibles
COMPATIBLES = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler",
                                                             "FlowMatchHeunDiscreteScheduler"]
_MORE_SOURCES = ["DDIMParallelScheduler", "DDPMParallelScheduler", "LCMScheduler", "TCDScheduler", "SASolverScheduler"]
_SAME_SAMPLER = {"DDIMParallelScheduler": "DDIMScheduler", "DDPMParallelScheduler": "DDPMScheduler"}
_FINAL_ALPHA = ("DDIMScheduler", "DDIMParallelScheduler", "PNDMScheduler")  # last step to final_alpha_cumprod


def scheduler_class(name: Any) -> type | None:
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, SchedulerMixin) else None


def source_class(cfg: Mapping[str, Any]) -> tuple[type | None, bool]:
    """The diffusers scheduler class of ``cfg`` and whether its sampler is known: its ``_class_name`` (a loaded
    or ``from_config`` scheduler), or the classes whose ``__init__`` parameters are exactly the config's keys
    (a directly constructed one records every parameter and no class name). Classes with the same keys
    (LMS, KDPM2 and its ancestral form) build the same grid but differ in their samplers."""
    if "_class_name" in cfg:
        return scheduler_class(cfg["_class_name"]), True
    keys = {k for k in cfg if not k.startswith("_")}
    found = [c for c in map(scheduler_class, COMPATIBLES + _MORE_SOURCES)
             if c is not None and set(init_defaults(c)) == keys]
    samplers = {_SAME_SAMPLER.get(c.__name__, c.__name__) for c in found}
    return (found[0] if found else None), len(samplers) == 1


def init_defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD
            and p.default is not p.empty}


def first_input(sch: Any) -> float:
    """The first model input per unit noise of a diffusers scheduler: ``scale_model_input(init_noise_sigma)``."""
    scale = getattr(sch, "scale_model_input", None)
    init = torch.tensor([float(getattr(sch, "init_noise_sigma", 1.0))], dtype=torch.float64)  # flow: none, 1
    ts = getattr(sch, "timesteps", None)
    return float(scale(init, ts[0]) if scale is not None and ts is not None else init)


def source_grid(source: Mapping[str, Any], n: int, spec: DiffusersSpec,
                mu: float | None = None) -> tuple[Tensor, dict[float, float], float]:
    """The grid diffusers' own scheduler ``source`` builds with ``set_timesteps(n)``: the sigmas (fewstep's
    sigma space, float64 of diffusers' values), the model timestep of each grid point, and the first model
    input per unit noise (``init_noise_sigma`` through ``scale_model_input``).

    Schedulers with ``sigmas`` give them directly (Heun's repeated ones once; a flow time ``t`` becomes
    ``t / (1 - t)``); DDIM, DDPM and PNDM give timesteps, whose sigmas come from their ``alphas_cumprod``, and
    DDIM and PNDM end at ``final_alpha_cumprod`` (``set_alpha_to_one``). PNDM's Runge-Kutta warm-up points
    are not grid points (its grid is built with ``skip_prk_steps=True``).
    """
    cls = scheduler_class(source.get("_class_name"))
    if cls is None:
        raise ValueError(f"unknown diffusers scheduler class {source.get('_class_name')!r}")
    cfg = {**source, "skip_prk_steps": True} if cls is diffusers.PNDMScheduler else dict(source)
    sch = cls.from_config(cfg)
    sch.set_timesteps(n, **({"mu": mu} if mu is not None else {}))
    ts = [float(t) for t in sch.timesteps]
    if torch.is_tensor(getattr(sch, "sigmas", None)):
        sig = [float(s) for s in sch.sigmas.double()]
        if spec.kind == "flow":
            sig = [math.inf if s >= 1 else s / (1 - s) for s in sig]
    else:
        ac = sch.alphas_cumprod.double()
        sig = [float(((1 - ac[int(t)]) / ac[int(t)]).sqrt()) for t in ts]
        fac = float(sch.final_alpha_cumprod) if source["_class_name"] in _FINAL_ALPHA else 1.0
        sig.append(math.sqrt((1 - fac) / fac))
    grid = [s for i, s in enumerate(sig) if i == 0 or s != sig[i - 1]]
    times: dict[float, float] = {}
    for s, t in zip(sig, ts):
        if times.setdefault(s, t) != t:  # several timesteps at one sigma (KDPM2's interleaved midpoints)
            times = {}
            break
    return check_sigmas(grid), times, first_input(sch)
