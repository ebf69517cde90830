"""Every fewstep solver with k-diffusion's calling convention, for ComfyUI / A1111-style code:

    from fewstep.integrations.kdiffusion import sample_unipc
    x = sample_unipc(model, x, sigmas, extra_args={"cond": c}, callback=cb, disable=False, order=3)

``model(x, sigma, **extra_args)`` is a k-diffusion denoiser (``sigma`` has shape ``[batch]``, the result
is the denoised ``x0``); ``x`` starts at ``sigmas[0]``; ``sigmas`` is decreasing and usually ends in 0.
The callback gets k-diffusion's keys ``x, i, sigma, sigma_hat, denoised``; ``disable`` hides the
progress bar as in k-diffusion. Keyword ``options`` are the solver's (see ``fewstep.list_solvers()``).
Each ``sample_<name>`` exists for every registered solver, including ones registered after import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from fewstep.diffusion.denoiser import Denoiser
from fewstep.diffusion.processes import VE
from fewstep.diffusion.sampling import solve
from fewstep.diffusion.schedules import check_sigmas
from fewstep.diffusion.solvers import SOLVERS, get_solver

Tensor = torch.Tensor


class KDiffusionDenoiser(Denoiser):
    """A k-diffusion-style ``model(x, sigma, **extra_args) -> denoised`` as a fewstep ``Denoiser``."""

    prediction = "x0"
    name = "k-diffusion-model"

    def __init__(self, model: Callable[..., Tensor], sigma_min: float = 0.0, sigma_max: float = float("inf")):
        super().__init__(VE(sigma_min, sigma_max))
        if not callable(model):
            raise TypeError(f"model must be callable; got {type(model).__name__}")
        self.model = model

    def denoise(self, x: Tensor, sigma: Tensor, cond: Mapping[str, Any] | None) -> Tensor:
        return self.model(x, sigma, **(cond or {}))


def run(solver: str, model: Callable[..., Tensor], x: Tensor, sigmas: Any, extra_args: Mapping[str, Any] | None = None,
        callback: Callable[[dict], Any] | None = None, disable: bool | None = None, **options: Any) -> Tensor:
    """``sample_<solver>`` for any registered solver name (what the generated functions call)."""
    info = get_solver(solver)
    if extra_args is not None and not isinstance(extra_args, Mapping):
        raise TypeError(f"extra_args must be a mapping of model keywords or None; got {type(extra_args).__name__}")
    grid = check_sigmas(torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu())
    wrapped = model if isinstance(model, Denoiser) else KDiffusionDenoiser(model)
    with tqdm(total=len(grid) - 1, disable=disable, desc=f"fewstep {solver}") as bar:
        def progress(payload: dict) -> None:
            bar.update(1)
            if callback is not None:
                callback(payload)

        with torch.no_grad():
            return solve(wrapped, x, grid, info.name, cond=extra_args, callback=progress, **options)


def _make(solver: str) -> Callable[..., Tensor]:
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return run(solver, model, x, sigmas, extra_args, callback, disable, **options)

    info = SOLVERS[solver]
    sampler.__name__ = sampler.__qualname__ = f"sample_{solver}"
    sampler.__doc__ = (f"fewstep's {solver!r} solver ({info.paper}) with k-diffusion's signature.\n\n"
                       f"Options (keyword): {dict(info.options) or 'none'}. See the module docstring.")
    return sampler


def list_samplers() -> list[str]:
    """The k-diffusion-style names, ``sample_<solver>``, of every registered solver."""
    return [f"sample_{name}" for name in sorted(SOLVERS)]


for _name in sorted(SOLVERS):
    globals()[f"sample_{_name}"] = _make(_name)


def __getattr__(name: str):
    # solvers registered after this module was imported
    if name.startswith("sample_") and name[len("sample_"):] in SOLVERS:
        fn = _make(name[len("sample_"):])
        globals()[name] = fn
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; samplers: {', '.join(list_samplers())}")
