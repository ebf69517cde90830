"""Adapters that convert a model of any family and prediction type into a ``Denoiser``.

Convert at the edge: after this module, solvers never ask what kind of model they were given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from fewstep.diffusion.conversions import check_prediction, to_x0
from fewstep.diffusion.denoiser import Denoiser, bcast
from fewstep.diffusion.processes import VE, NoiseProcess

Tensor = torch.Tensor


def _module_dtype(model: Any) -> torch.dtype | None:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.dtype
    return None


def call_net(net: Callable[..., Tensor], x: Tensor, t: Tensor, cond: Mapping[str, Any] | None, dtype: torch.dtype,
             min_batch: int = 1, chunk: int | None = None) -> Tensor:
    """``net(x, t, **cond)`` in ``dtype``, on at least ``min_batch`` rows, or on blocks of exactly ``chunk`` rows.

    CPU kernels (oneDNN, MKL) choose other algorithms for small batches, which round differently, so a sample
    would depend on how many others share its batch. Padding every call to ``min_batch`` rows (repeating the first
    row of ``x``, ``t`` and every per-sample tensor in ``cond``) makes each row's result independent of the batch
    and of the process count; only the padded rows are dropped. Some matrix products round a row differently at
    other row counts above that too; with ``chunk`` the rows are padded to a multiple of ``chunk`` and ``net`` sees
    only blocks of that one shape.
    """
    n = x.shape[0]
    rows = max(min_batch, -(-n // chunk) * chunk if chunk else n)
    cond = dict(cond or {})
    per_sample = [k for k, v in cond.items() if torch.is_tensor(v) and v.ndim and v.shape[0] == n]
    if n < rows:
        pad = rows - n

        def grow(v):
            return torch.cat([v, v[:1].expand(pad, *v.shape[1:])])

        x, t = grow(x), grow(t)
        cond.update({k: grow(cond[k]) for k in per_sample})
    if not chunk or rows <= chunk:
        return net(x.to(dtype), t.to(dtype), **cond)[:n]
    blocks = []
    for i in range(0, rows, chunk):
        part = {**cond, **{k: cond[k][i:i + chunk] for k in per_sample}}
        blocks.append(net(x[i:i + chunk].to(dtype), t[i:i + chunk].to(dtype), **part))
    return torch.cat(blocks)[:n]


class ModelDenoiser(Denoiser):
    """Wrap ``model(x_t, t, **cond) -> prediction`` defined on a ``NoiseProcess``.

    Args:
        model: a callable taking the model-space state ``x_t`` (``[B, ...]``), the native time
            ``t`` (``[B]``; a fractional timestep for discrete VP, ``t`` in [0, 1] for continuous VP
            and flow, sigma for VE) and the keywords in ``cond``.
        process: the forward process the model was trained on.
        prediction: ``eps``, ``x0``, ``v``, ``velocity`` or ``score``.
        shape: the per-sample data shape (needed by ``fewstep.sample`` to draw noise).
        time_fn: optional map from native time to what the model takes as its time input.
        model_dtype: the dtype the model computes in; by default the dtype of its first parameter,
            or the state's dtype for parameter-free callables. The output is cast back.
        min_batch: pad every call to at least this many rows (``call_net``), so that a sample does not depend
            on the batch it is drawn in; 1 (no padding) by default.
    """

    def __init__(self, model: Callable[..., Tensor], process: NoiseProcess, prediction: str, *,
                 shape: tuple[int, ...] | None = None, name: str | None = None,
                 time_fn: Callable[[Tensor], Tensor] | None = None, model_dtype: torch.dtype | None = None,
                 min_batch: int = 1):
        super().__init__(process)
        if not callable(model):
            raise TypeError(f"model must be callable; got {type(model).__name__}")
        if prediction == "v" and process.family not in ("vp_discrete", "vp_continuous"):
            raise ValueError(f"v-prediction needs a VP process (a^2 + b^2 = 1); got the {process.family} process")
        if prediction == "velocity":
            process.dcoeffs_dt(torch.zeros(1, dtype=torch.float64))  # raises early for processes without a path
        self.model = model
        self.prediction = check_prediction(prediction)
        self.shape = tuple(shape) if shape is not None else None
        self.name = name or f"{process.family}-{prediction}"
        self.time_fn = time_fn
        self.model_dtype = model_dtype or _module_dtype(model)
        self.min_batch = int(min_batch)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Mapping[str, Any] | None) -> Tensor:
        inf = torch.isinf(sigma)
        if inf.any() and self.prediction in ("eps", "score"):
            raise ValueError(
                f"{self.prediction}-prediction cannot denoise at sigma = inf (zero terminal SNR): "
                "the model output carries no information about x0 there. Use a v, x0 or velocity "
                "model, or a schedule with a finite sigma_max."
            )
        a, b = (bcast(c.to(x.dtype), x) for c in self.process.coeffs(sigma))
        # At sigma = inf the state holds x / sigma (unit noise); x_t = a x0 + b eps -> b x.
        xt = torch.where(bcast(inf, x), b * x, a * x)
        t = self.process.sigma_to_t(sigma)
        t_in = self.time_fn(t) if self.time_fn is not None else t
        dtype = self.model_dtype or x.dtype
        out = call_net(self.model, xt, t_in, cond, dtype, self.min_batch).to(x.dtype)
        da = db = None
        if self.prediction == "velocity":
            da, db = (bcast(c.to(x.dtype), x) for c in self.process.dcoeffs_dt(t))
        return to_x0(self.prediction, out, xt, a, b, da, db)


class EDMPrecond(Denoiser):
    """EDM preconditioning (Karras et al., arXiv 2206.00364, Table 1):
    ``D = c_skip x + c_out F(c_in x, c_noise)`` with ``c_skip = sd^2/(s^2+sd^2)``,
    ``c_out = s sd / sqrt(s^2+sd^2)``, ``c_in = 1/sqrt(s^2+sd^2)``, ``c_noise = log(s)/4``.

    ``net(x_in, c_noise, **cond)`` is the raw network ``F``; ``min_batch`` as in ``ModelDenoiser``.
    """

    prediction = "edm"

    def __init__(self, net: Callable[..., Tensor], *, sigma_data: float = 0.5, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, shape: tuple[int, ...] | None = None, name: str = "edm",
                 model_dtype: torch.dtype | None = None, min_batch: int = 1):
        super().__init__(VE(sigma_min, sigma_max))
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive; got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.shape = tuple(shape) if shape is not None else None
        self.name = name
        self.model_dtype = model_dtype or _module_dtype(net)
        self.min_batch = int(min_batch)

    def denoise(self, x, sigma, cond):
        if torch.isinf(sigma).any():
            raise ValueError("an EDM-preconditioned net needs a finite sigma; its sigma_max is "
                             f"{self.sigma_max}")
        sd = self.sigma_data
        s = bcast(sigma, x)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        c_in = torch.rsqrt(s**2 + sd**2)
        c_noise = torch.log(sigma) / 4
        dtype = self.model_dtype or x.dtype
        F = call_net(self.net, c_in * x, c_noise, cond, dtype, self.min_batch).to(x.dtype)
        return c_skip * x + c_out * F

    def identity(self):
        d = super().identity()
        d["sigma_data"] = self.sigma_data
        return d
