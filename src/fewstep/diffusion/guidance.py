"""Classifier-free guidance as a denoiser, with its guidance interval, CFG rescale and CADS.

- CFG: Ho & Salimans, *Classifier-Free Diffusion Guidance*, arXiv 2207.12598:
  ``D_w = D_u + w (D_c - D_u)``, written here as ``D_c + (w - 1)(D_c - D_u)`` so that ``w = 1`` is exactly
  the conditional model.
- Guidance interval: Kynkäänniemi et al., *Applying Guidance in a Limited Interval Improves Sample and
  Distribution Quality in Diffusion Models*, arXiv 2404.07724: guide only for ``sigma in (lo, hi]``;
  elsewhere ``D_c``, and the unconditional pass is skipped.
- CFG rescale: Lin et al., *Common Diffusion Noise Schedules and Sample Steps are Flawed*, arXiv
  2305.08891, Sec. 3.4: ``x_r = x_cfg std(x_c) / std(x_cfg)`` per sample, ``phi x_r + (1 - phi) x_cfg``.
- CADS: Sadat et al., *CADS: Unleashing the Diversity of Diffusion Models through Condition-Annealed
  Sampling*, arXiv 2310.17347: noise on the condition embedding, annealed by ``gamma(t)``.

NFE: the conditional and unconditional inputs are stacked into **one** model call of batch ``2B`` (or
``B + k`` when only ``k`` samples are inside the guidance interval), so each evaluation is one call.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fewstep.diffusion.corrections import Wrapper, check_number
from fewstep.diffusion.denoiser import Denoiser, bcast

__all__ = ["CADS", "CFG", "unit_time"]

Tensor = torch.Tensor
SEEDS_KEY = "cads_seeds"  # optional cond entry: one seed per sample for CADS's noise


def unit_time(model: Denoiser, sigma: Tensor) -> Tensor:
    """A time in [0, 1] (1 = noise) for schedules written in ``t``: the model's native time where it has
    one in [0, 1] (flow, continuous VP), ``t / (T - 1)`` for discrete VP, and for VE / EDM models the
    fraction of ``log sigma`` between the model's ``sigma_min`` and ``sigma_max``."""
    process = model.process
    s = sigma.double()
    if process.family == "ve":
        lo, hi = math.log(model.sigma_min), math.log(model.sigma_max)
        t = (s.clamp_min(model.sigma_min).log() - lo) / (hi - lo)
    elif process.family == "vp_discrete":
        t = process.sigma_to_t(s) / (process.num_train_timesteps - 1)
    else:
        t = process.sigma_to_t(s)
    return t.clamp(0, 1)


@dataclass(frozen=True)
class CADS:
    """Condition-annealed sampling (arXiv 2310.17347, Eqs. 2-4).

    ``gamma(t) = 1`` for ``t <= tau1``, ``(tau2 - t)/(tau2 - tau1)`` between, ``0`` for ``t >= tau2``;
    ``y_hat = sqrt(gamma) y + noise_scale sqrt(1 - gamma) n``, ``n ~ N(0, I)``; with ``psi > 0`` the
    noisy embedding is rescaled to the mean and std of ``y`` (per sample), and mixed:
    ``psi y_rescaled + (1 - psi) y_hat``. Defaults are the common ports' (0.6, 0.9, 0.25, 1).
    The unconditional (null) embedding is left clean (the paper does not say; UNVERIFIED).
    """

    tau1: float = 0.6
    tau2: float = 0.9
    noise_scale: float = 0.25
    psi: float = 1.0

    def __post_init__(self):
        if not 0 <= self.tau1 < self.tau2 <= 1:
            raise ValueError(f"CADS needs 0 <= tau1 < tau2 <= 1; got tau1={self.tau1}, tau2={self.tau2}")
        if not (math.isfinite(self.noise_scale) and self.noise_scale >= 0):
            raise ValueError(f"CADS noise_scale must be >= 0; got {self.noise_scale}")
        if not 0 <= self.psi <= 1:
            raise ValueError(f"CADS psi must lie in [0, 1]; got {self.psi}")

    def gamma(self, t: Tensor) -> Tensor:
        """``gamma(t)`` in float64 (so that ``t = tau1`` gives exactly 1)."""
        return ((self.tau2 - t.double()) / (self.tau2 - self.tau1)).clamp(0, 1)

    def apply(self, y: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The annealed embedding for ``y`` ``[B, ...]`` at times ``t`` ``[B]`` with ``noise`` like ``y``."""
        g64 = bcast(self.gamma(t), y)
        g = g64.to(y.dtype)
        y_hat = g.sqrt() * y + self.noise_scale * (1 - g).sqrt() * noise
        if self.psi > 0:
            dims = tuple(range(1, y.ndim))
            y_r = (y_hat - y_hat.mean(dims, keepdim=True)) / y_hat.std(dims, keepdim=True)
            y_r = y_r * y.std(dims, keepdim=True) + y.mean(dims, keepdim=True)
            y_hat = self.psi * y_r + (1 - self.psi) * y_hat
        return torch.where(g64 == 1, y, y_hat)  # exactly the clean condition before the annealing starts


def _per_sample_noise(seeds: Sequence[int], sigma: Tensor, shape: tuple[int, ...], like: Tensor) -> Tensor:
    # One generator per (sample seed, sigma): the noise depends neither on the batch nor on call order.
    rows = []
    for seed, s in zip(seeds, sigma.double().tolist()):
        key = hashlib.sha256(struct.pack("<qd", int(seed), float(s))).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
        rows.append(torch.randn(shape, generator=g, dtype=torch.float64))
    return torch.stack(rows).to(like)


def _batched(value: Any, batch: int, key: str) -> Tensor:
    v = torch.as_tensor(value)
    if v.ndim == 0:
        v = v.expand(batch)
    if v.shape[0] != batch:
        raise ValueError(f"cond[{key!r}] must be one value or have {batch} rows (one per sample); "
                         f"got shape {tuple(v.shape)}")
    return v


class CFG(Wrapper):
    """Classifier-free guidance around a conditional denoiser (arXiv 2207.12598); call it with
    ``cond={"class_labels": y}`` (plus ``"cads_seeds"``: one seed per sample, to make CADS's noise
    independent of the batch; by default ``0..B-1``).

    Args:
        model: a conditional denoiser that predicts unconditionally under ``uncond``.
        scale: the guidance weight ``w >= 0`` (1 = conditional, 0 = unconditional).
        uncond: model keywords of the unconditional pass; by default ``{"class_labels": model.null_class}``.
        interval: ``(lo, hi)``: guide only where ``lo < sigma <= hi`` (arXiv 2404.07724); default everywhere.
        rescale: CFG rescale ``phi`` in [0, 1] (arXiv 2305.08891, Sec. 3.4; the paper uses 0.7).
        rescale_space: ``"eps"`` rescales the std of ``eps_hat = (x - D)/sigma`` as diffusers does;
            ``"x0"`` that of ``D``. At sigma = inf the eps form is undefined and nothing is rescaled.
        cads: a ``CADS`` schedule; needs ``model.embed(labels)``, and the model must accept
            ``class_embedding=`` in place of ``class_labels=``.
    """

    tag = "cfg"

    def __init__(self, model: Denoiser, scale: float, *, uncond: Mapping[str, Any] | None = None,
                 interval: tuple[float, float] | None = None, rescale: float = 0.0,
                 rescale_space: Literal["eps", "x0"] = "eps", cads: CADS | None = None):
        super().__init__(model)
        scale = check_number("the guidance scale", scale, strict=False)
        if uncond is None:
            if getattr(model, "null_class", None) is None:
                raise ValueError(f"{model.name} has no null_class; pass uncond={{...}}, the model keywords of its "
                                 "unconditional prediction")
            uncond = {"class_labels": model.null_class}
        if interval is not None:
            lo, hi = (float(v) for v in interval)
            if not 0 <= lo < hi:
                raise ValueError(f"the guidance interval must satisfy 0 <= lo < hi; got {interval!r}")
            interval = (lo, hi)
        if not 0 <= rescale <= 1:
            raise ValueError(f"rescale (phi) must lie in [0, 1]; got {rescale!r}")
        if rescale_space not in ("eps", "x0"):
            raise ValueError(f"rescale_space must be 'eps' or 'x0'; got {rescale_space!r}")
        if cads is not None and not isinstance(cads, CADS):
            raise TypeError(f"cads must be a CADS(...) schedule or None; got {type(cads).__name__}")
        if cads is not None and not callable(getattr(model, "embed", None)):
            raise ValueError(f"CADS adds noise to the condition embedding, but {model.name} exposes no embed(labels)")
        self.scale, self.uncond, self.interval = scale, dict(uncond), interval
        self.rescale, self.rescale_space, self.cads = float(rescale), rescale_space, cads

    def settings(self):
        return {"scale": self.scale, "interval": self.interval, "rescale": self.rescale,
                "rescale_space": self.rescale_space, "cads": None if self.cads is None else vars(self.cads)}

    def guided(self, sigma: Tensor) -> Tensor:
        """Which samples get guidance (and so an unconditional pass) at these sigmas ``[B]``."""
        on = torch.full_like(sigma, self.scale != 1, dtype=torch.bool)
        if self.interval is not None:
            on &= (sigma > self.interval[0]) & (sigma <= self.interval[1])
        return on

    def _annealed(self, cond: dict[str, Any], seeds: Any, x: Tensor, sigma: Tensor) -> tuple[dict, dict]:
        """CADS: both passes switch to ``class_embedding``; only the conditional one gets noise."""
        if set(cond) != {"class_labels"} or set(self.uncond) != {"class_labels"}:
            raise ValueError(f"CADS needs cond and uncond given as class_labels; got cond keys {sorted(cond)}, "
                             f"uncond keys {sorted(self.uncond)}")
        B = x.shape[0]
        y = self.model.embed(_batched(cond["class_labels"], B, "class_labels"))
        seeds = list(range(B)) if seeds is None else [int(v) for v in _batched(seeds, B, SEEDS_KEY).tolist()]
        t = unit_time(self.model, sigma)
        noise = torch.zeros_like(y)
        annealed = self.cads.gamma(t) < 1
        if annealed.any():
            idx = annealed.nonzero().flatten()
            noise[idx] = _per_sample_noise([seeds[i] for i in idx.tolist()], sigma[idx], tuple(y.shape[1:]), y)
        null = self.model.embed(_batched(self.uncond["class_labels"], B, "class_labels"))
        return {"class_embedding": self.cads.apply(y, t, noise)}, {"class_embedding": null}

    def denoise(self, x, sigma, cond):
        if not cond:
            raise ValueError("CFG needs the condition: call it with cond={'class_labels': ...} "
                             "(or the model's own keywords)")
        cond = dict(cond)
        seeds = cond.pop(SEEDS_KEY, None)
        if self.cads is not None:
            cond, uncond = self._annealed(cond, seeds, x, sigma)
        else:
            uncond = self.uncond
        if set(cond) != set(uncond):
            raise ValueError(f"cond and uncond must hold the same keys to be batched; got {sorted(cond)} "
                             f"and {sorted(uncond)}")
        on = self.guided(sigma)
        if not on.any():
            return self.model(x, sigma, cond)
        B, idx = x.shape[0], on.nonzero().flatten()
        stacked = {}
        for k in cond:
            c = _batched(cond[k], B, k)
            stacked[k] = torch.cat([c, _batched(uncond[k], B, k).to(c.device)[idx]])
        out = self.model(torch.cat([x, x[idx]]), torch.cat([sigma, sigma[idx]]), stacked)
        d_c, d_u = out[:B], out[B:]
        d_g = d_c[idx] + (self.scale - 1) * (d_c[idx] - d_u)
        if self.rescale > 0:
            d_g = self._rescaled(d_g, d_c[idx], x[idx], sigma[idx])
        d = d_c.clone()
        d[idx] = d_g
        return d

    def _rescaled(self, d_g: Tensor, d_c: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """CFG rescale (arXiv 2305.08891, Sec. 3.4), per sample over the non-batch dimensions."""
        dims = tuple(range(1, x.ndim))
        if self.rescale_space == "x0":
            f = d_c.std(dims, keepdim=True) / d_g.std(dims, keepdim=True)
            return (self.rescale * f + 1 - self.rescale) * d_g
        # eps_hat = (x - D)/sigma; sigma cancels in the std ratio, so D_r = x - f (x - D_cfg)
        f = (x - d_c).std(dims, keepdim=True) / (x - d_g).std(dims, keepdim=True)
        f = torch.where(bcast(torch.isinf(sigma), x), torch.ones_like(f), self.rescale * f + 1 - self.rescale)
        return x - f * (x - d_g)


_CLASS_PART = re.compile(r"\s*(\d{1,18})(?:-(\d{1,18}))?\s*", re.ASCII)


def _parse_classes(text: str, num_classes: int) -> list[int]:
    """The class list of ``--class`` text (``3``, ``0-9``, ``1,4,7``); each range's ends are checked against
    ``0..num_classes-1`` before it is expanded, so a huge range fails at once instead of filling memory."""
    text = str(text)
    shown = repr(text) if len(text) <= 40 else repr(text[:37] + "...")
    allowed = f"must name classes in 0..{num_classes - 1}"
    classes: list[int] = []
    for part in text.split(","):
        m = _CLASS_PART.fullmatch(part)
        if m is None:
            raise ValueError(f"bad --class {shown}: write one class like 3, a range like 0-9 or a list like 1,4,7; "
                             f"it {allowed}")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if not lo <= hi < num_classes:
            raise ValueError(f"--class {shown} {allowed} (a range as low-high); {part.strip()[:40]!r} does not")
        classes.extend(range(lo, hi + 1))
    return classes


def cli_conditioning(model: Denoiser, seeds: Sequence[int], classes: str | None, scale: float | None = None,
                     cads: bool = False, interval: str | None = None):
    """What ``fewstep sample --class --cfg --cads --guidance-interval`` samples with: the (guided) denoiser
    and ``cond_for(seed_ids) -> cond``. Seed ``seeds[i]`` gets class ``classes[i % len(classes)]``."""
    if classes is None:
        if scale is not None or cads or interval is not None:
            raise ValueError("--cfg, --cads and --guidance-interval need --class")
        return model, lambda ids: None
    if getattr(model, "null_class", None) is None:
        raise ValueError(f"--class needs a class-conditional model such as digits-cond; "
                         f"{model.name} is unconditional")
    labels = _parse_classes(classes, int(model.num_classes))
    label_of = {int(s): labels[i % len(labels)] for i, s in enumerate(seeds)}
    span = None
    if interval is not None:
        if scale is None:
            raise ValueError("--guidance-interval needs --cfg")
        try:
            span = tuple(float(v) for v in interval.split(","))
        except ValueError:
            span = ()
        if len(span) != 2:
            raise ValueError(f"bad --guidance-interval {interval!r}: write LO,HI (sigmas), e.g. 0.28,5.0")
    den = model
    if scale is not None or cads:
        den = CFG(model, 1.0 if scale is None else scale, interval=span, cads=CADS() if cads else None)

    def cond_for(ids: Sequence[int]) -> dict[str, Any]:
        cond: dict[str, Any] = {"class_labels": torch.tensor([label_of[int(i)] for i in ids])}
        if cads:
            cond[SEEDS_KEY] = [int(i) for i in ids]
        return cond

    return den, cond_for
