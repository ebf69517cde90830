"""Training-free corrections: wrappers around a denoiser (or a solver) that fix a known defect.

Each one is off unless you wrap the model in it, and the wrappers compose (``DynamicThreshold(
Calibrated(EpsScaling(model, 1.005), table))``). In sigma space ``eps_hat = (x - D) / sigma``.

- ``EpsScaling``: Ning et al., *Elucidating the Exposure Bias in Diffusion Models*, arXiv 2308.15321.
- ``ddim_ts`` (a registered solver, in ``fewstep.diffusion.solvers.time_shift``): *Alleviating Exposure Bias
  in Diffusion Models through Sampling with Shifted Time Steps*, arXiv 2305.15583.
- ``zero_terminal_snr``: Lin et al., *Common Diffusion Noise Schedules and Sample Steps are Flawed*,
  arXiv 2305.08891 (CFG rescale, from the same paper, is in ``fewstep.diffusion.guidance``).
- ``Calibrated`` / ``calibrate``: Pang et al., *On Calibrating Diffusion Probabilistic Models*, arXiv 2302.10688.
- ``DynamicThreshold``: Saharia et al. (Imagen), arXiv 2205.11487, Sec. 2.3; as in DPM-Solver++ (arXiv 2211.01095).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.processes import VPDiscrete, rescale_zero_terminal_snr
from fewstep.diffusion.solvers.time_shift import ddim_time_shift

__all__ = ["check_number", "Wrapper", "EpsScaling", "DynamicThreshold", "CalibrationTable", "Calibrated", "calibrate",
           "zero_terminal_snr", "ddim_time_shift"]

Tensor = torch.Tensor


def check_number(what: str, value: Any, low: float = 0.0, strict: bool = True) -> float:
    """``value`` as a float, finite and ``> low`` (``>= low`` unless ``strict``); else a ValueError naming it."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if strict else value >= low))
    if not ok:
        raise ValueError(f"{what} must be a finite number {'>' if strict else '>='} {low:g}; got {value!r}")
    return float(value)


class Wrapper(Denoiser):
    """A denoiser that modifies another one; process, shape, ``round_sigma`` and any other attribute
    (a conditional model's ``null_class`` and ``embed``) come from the wrapped model."""

    tag = "wrapper"

    def __init__(self, model: Denoiser):
        if not isinstance(model, Denoiser):
            raise TypeError(f"model must be a fewstep Denoiser; got {type(model).__name__}")
        super().__init__(model.process)
        self.model = model
        self.shape = model.shape
        self.prediction = model.prediction
        self.name = f"{model.name}+{self.tag}"

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet: avoid recursing during construction
            raise AttributeError(name)
        return getattr(self.model, name)

    def round_sigma(self, sigma):
        return self.model.round_sigma(sigma)

    def settings(self) -> dict[str, Any]:
        return {}

    def identity(self) -> dict[str, Any]:
        d = self.model.identity()
        d["name"] = self.name
        d["corrections"] = [*d.get("corrections", []), {"kind": self.tag, **self.settings()}]
        return d


class EpsScaling(Wrapper):
    """Epsilon scaling (arXiv 2308.15321, Eq. 12): ``eps~ = eps_hat / lambda``, in sigma space
    ``D~ = x - (x - D) / lambda = D + (1 - 1/lambda)(x - D)``.

    Args:
        model: the denoiser.
        scale: ``lambda``, a float > 0 (the paper's default, uniform in time), or a callable mapping
            sigma ``[B]`` to ``lambda`` ``[B]`` (for the paper's linear ``lambda(t) = k t + b``).
            ``lambda = 1`` is the identity; the paper's values are slightly above 1 and depend on the NFE.

    At ``sigma = inf`` (zero terminal SNR) eps_hat is not defined in sigma space and ``D`` passes through.
    """

    tag = "eps_scaling"

    def __init__(self, model: Denoiser, scale: float | Callable[[Tensor], Tensor]):
        super().__init__(model)
        self.scale = scale if callable(scale) else check_number("scale (lambda, or a callable of sigma)", scale)

    def settings(self):
        return {"scale": self.scale if isinstance(self.scale, float) else repr(self.scale)}

    def denoise(self, x, sigma, cond):
        d = self.model(x, sigma, cond)
        lam = self.scale(sigma) if callable(self.scale) else torch.full_like(sigma, self.scale)
        lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
        if lam.shape != sigma.shape or not bool((lam > 0).all()):
            raise ValueError(f"scale(sigma) must return positive values of shape {tuple(sigma.shape)}; "
                             f"got shape {tuple(lam.shape)}")
        coef = torch.where(torch.isinf(sigma), torch.zeros_like(lam), 1 - lam.reciprocal())
        return d + bcast(coef, x) * (x - d)


class DynamicThreshold(Wrapper):
    """Dynamic thresholding (Imagen, arXiv 2205.11487, Sec. 2.3; DPM-Solver++, arXiv 2211.01095):
    ``s = max(quantile(|D|, p), m)`` per sample, ``D~ = clip(D, -s, s) * m / s``.

    ``m = max_value`` is the data range ``[-m, m]``; with ``m = 1`` this is DPM-Solver++'s rule
    (``x0 = clip(x0, -s, s) / s``). A prediction already inside the range is returned unchanged.
    For pixel-space data only: latents have no fixed range.
    """

    tag = "dynamic_threshold"

    def __init__(self, model: Denoiser, percentile: float = 0.995, max_value: float = 1.0):
        super().__init__(model)
        if not 0 < percentile <= 1:
            raise ValueError(f"percentile must lie in (0, 1]; got {percentile!r}")
        self.percentile, self.max_value = float(percentile), check_number("max_value", max_value)

    def settings(self):
        return {"percentile": self.percentile, "max_value": self.max_value}

    def denoise(self, x, sigma, cond):
        d = self.model(x, sigma, cond)
        s = torch.quantile(d.abs().reshape(d.shape[0], -1).double(), self.percentile, dim=1)
        s = bcast(s.clamp_min(self.max_value).to(d.dtype), d)
        return torch.maximum(torch.minimum(d, s), -s) * (self.max_value / s)


# ------------------------------------------------------------------------------------------------
# calibration
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class CalibrationTable:
    """The per-sigma, per-dimension mean of the model's ``eps_hat`` on data (arXiv 2302.10688, Eq. 9).

    Attributes:
        sigmas: ``[K]`` increasing positive finite sigmas (float64).
        eta: ``[K, *shape]`` mean of ``eps_hat(x0 + sigma eps, sigma)`` over data ``x0`` and noise ``eps``.
        model: the name of the model it was estimated for.
        n: how many (data, noise) pairs each row averages.
    """

    sigmas: Tensor
    eta: Tensor
    model: str = ""
    n: int = 0

    def __post_init__(self):
        s = torch.as_tensor(self.sigmas, dtype=torch.float64).flatten()
        if s.numel() < 1 or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()) or bool((s.diff() <= 0).any()):
            raise ValueError(f"calibration sigmas must be positive, finite and strictly increasing; got {s.tolist()}")
        eta = torch.as_tensor(self.eta, dtype=torch.float32)
        if eta.ndim < 2 or eta.shape[0] != s.numel():
            raise ValueError(f"eta must have shape [{s.numel()}, *shape]; got {tuple(eta.shape)}")
        object.__setattr__(self, "sigmas", s)
        object.__setattr__(self, "eta", eta)

    def at(self, sigma: Tensor) -> Tensor:
        """``eta`` ``[B, *shape]`` at sigmas ``[B]``: linear in log sigma between rows, constant beyond the ends."""
        if self.sigmas.numel() == 1:
            return self.eta[0].expand(sigma.shape[0], *self.eta.shape[1:])
        ls = self.sigmas.log()
        q = sigma.double().clamp(float(self.sigmas[0]), float(self.sigmas[-1])).log()
        hi = torch.searchsorted(ls, q).clamp(1, ls.numel() - 1)
        lo = hi - 1
        w = ((q - ls[lo]) / (ls[hi] - ls[lo])).float()
        return self.eta[lo] + bcast(w, self.eta[lo]) * (self.eta[hi] - self.eta[lo])

    def save(self, path: str | Path) -> None:
        """Write the table as safetensors (no pickle); the model name and ``n`` go in the metadata."""
        from safetensors.torch import save_file

        save_file({"sigmas": self.sigmas.contiguous(), "eta": self.eta.contiguous()}, str(path),
                  metadata={"model": self.model, "n": str(self.n), "kind": "fewstep-calibration"})

    @classmethod
    def load(cls, path: str | Path) -> CalibrationTable:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("kind") != "fewstep-calibration":
                raise ValueError(f"{path} is not a fewstep calibration table (metadata kind={meta.get('kind')!r})")
            return cls(f.get_tensor("sigmas"), f.get_tensor("eta"), meta.get("model", ""), int(meta.get("n", 0)))


def calibrate(model: Denoiser, data: Tensor, sigmas: Any, *, repeats: int = 1, seed: int = 0, batch: int = 1024,
              cond: Mapping[str, Any] | None = None) -> CalibrationTable:
    """Estimate ``eta_sigma = E[eps_hat(x0 + sigma eps, sigma)]`` per dimension (arXiv 2302.10688, Sec. 4).

    Args:
        model: the denoiser to calibrate.
        data: training (or generated) samples ``[N, *shape]``.
        sigmas: the grid, positive and finite, any order (stored increasing).
        repeats: noise draws per data point.
        seed: seed of the noise (one generator, so the table is reproducible).
        batch: samples per model call.
        cond: model keywords, the same for every call.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().sort().values
    if s.numel() < 1 or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"sigmas must be positive and finite; got {s.tolist()}")
    if not torch.is_tensor(data) or data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must be a tensor [N, *shape] with N >= 1; got {type(data).__name__} "
                         f"{tuple(getattr(data, 'shape', ()))}")
    if model.shape is not None and tuple(data.shape[1:]) != tuple(model.shape):
        raise ValueError(f"data has per-sample shape {tuple(data.shape[1:])}, the model expects {tuple(model.shape)}")
    if repeats < 1 or batch < 1:
        raise ValueError(f"repeats and batch must be >= 1; got repeats={repeats}, batch={batch}")
    g = torch.Generator().manual_seed(seed)
    x0 = data.float().repeat(repeats, *([1] * (data.ndim - 1)))
    rows = []
    with torch.no_grad():
        for sigma in s.tolist():
            total = torch.zeros(data.shape[1:], dtype=torch.float64)
            for chunk in x0.split(batch):
                x = chunk + sigma * torch.randn(chunk.shape, generator=g)
                total += ((x - model(x, sigma, cond)) / sigma).double().sum(0)
            rows.append(total / x0.shape[0])
    return CalibrationTable(s, torch.stack(rows).float(), model.name, x0.shape[0])


class Calibrated(Wrapper):
    """Calibrated denoiser (arXiv 2302.10688, Eq. 10): ``eps_cal = eps_hat - eta_sigma``, i.e.
    ``D_cal = D + sigma * eta_sigma`` with ``eta`` from a stored ``CalibrationTable``.

    The true score has zero mean over the data, so a perfect model has ``eta = 0`` and is unchanged.
    At ``sigma = inf`` ``D`` passes through.
    """

    tag = "calibrated"

    def __init__(self, model: Denoiser, table: CalibrationTable):
        super().__init__(model)
        if not isinstance(table, CalibrationTable):
            raise TypeError(f"table must be a CalibrationTable (see calibrate); got {type(table).__name__}")
        if model.shape is not None and tuple(table.eta.shape[1:]) != tuple(model.shape):
            raise ValueError(f"the table is for per-sample shape {tuple(table.eta.shape[1:])}; "
                             f"the model's is {tuple(model.shape)}")
        self.table = table

    def settings(self):
        return {"table_model": self.table.model, "n": self.table.n, "sigmas": len(self.table.sigmas)}

    def denoise(self, x, sigma, cond):
        d = self.model(x, sigma, cond)
        finite = torch.isfinite(sigma)
        shift = bcast(torch.where(finite, sigma, torch.zeros_like(sigma)), x) * self.table.at(sigma).to(x)
        return d + shift


# ------------------------------------------------------------------------------------------------
# zero terminal SNR (the process side; the driver starts from sigma = inf, see sampling.solve)
# ------------------------------------------------------------------------------------------------

def zero_terminal_snr(process: VPDiscrete) -> VPDiscrete:
    """Lin et al., arXiv 2305.08891, Algorithm 1, applied to an existing discrete VP schedule: shift and
    scale ``sqrt(abar)`` so that ``abar_{T-1} = 0`` (sigma_max = inf) while ``abar_0`` is kept.

    The model must then predict ``v`` (or ``x0``): at ``sigma = inf`` an eps prediction says nothing about
    ``x0``. Sample with the ``discrete`` schedule and its default ``trailing`` spacing (Table 2), which
    starts at timestep ``T - 1``, i.e. at sigma = inf; ``fewstep.sample`` then starts from ``x = noise``
    and takes the first step in the x0 form.
    """
    if not isinstance(process, VPDiscrete):
        raise TypeError(f"zero_terminal_snr needs a VPDiscrete process; got {type(process).__name__}")
    abar = process.alphas_cumprod
    betas = 1 - np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return VPDiscrete(np.cumprod(1 - rescale_zero_terminal_snr(betas)), fractional=process.fractional)


# ------------------------------------------------------------------------------------------------
# the time-shift sampler
# ------------------------------------------------------------------------------------------------
