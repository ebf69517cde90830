"""Rewards (verifiers) for steering: functions of clean samples ``[B, *shape] -> [B]``.

A steering method evaluates a reward on its final samples, and, for intermediate rewards, on the step's
x0-prediction ``D(x_t, sigma_t)`` (Singhal et al., arXiv 2501.06848, Sec. 3; Li et al., arXiv 2408.08252,
"SVDD-PM"). Every call goes through ``Reward.__call__``, which refuses a result that is not a finite
``[B]`` tensor with one error naming the step. ``differentiable`` says whether gradients flow through the
reward; the methods of ``fewstep.steer`` are derivative-free and never need them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fewstep.metrics import digits_classifier
from fewstep.models.exact import GMM

Tensor = torch.Tensor

__all__ = ["Reward", "RewardError", "as_reward", "component_logpost", "digit_confidence", "digit_logprob", "linear",
           "make_reward", "stroke_mass", "REWARD_NAMES"]


class RewardError(ValueError):
    """A reward returned something other than finite values of shape ``[B]``."""


@dataclass(frozen=True)
class Reward:
    """A reward ``r(x) -> [B]`` on clean samples ``x`` of shape ``[B, *shape]``.

    Attributes:
        fn: the function itself (any callable of one tensor).
        name: a short name for messages and reports.
        differentiable: whether ``fn`` is differentiable in ``x`` (gradients flow through it).
    """

    fn: Callable[[Tensor], Tensor]
    name: str
    differentiable: bool = False

    def __call__(self, x: Tensor, where: str = "the final samples") -> Tensor:
        """``r(x)`` as float64 ``[B]``; ``where`` names the step in the error for a bad result."""
        out = self.fn(x)
        if not torch.is_tensor(out):
            raise RewardError(f"reward {self.name!r} returned {type(out).__name__} at {where}; "
                              f"it must return a tensor of shape [{x.shape[0]}] (one value per sample)")
        if tuple(out.shape) != (x.shape[0],):
            raise RewardError(f"reward {self.name!r} returned shape {tuple(out.shape)} at {where}; "
                              f"it must return shape [{x.shape[0]}] (one value per sample)")
        out = out.detach().to(torch.float64)
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).sum())
            raise RewardError(f"reward {self.name!r} returned NaN or Inf for {bad} of {x.shape[0]} samples at {where}; "
                              "a reward must be finite everywhere (clamp a log-probability, e.g. at -1e4)")
        return out


def as_reward(reward: Reward | Callable[[Tensor], Tensor], name: str | None = None) -> Reward:
    """A ``Reward`` from a ``Reward`` or any user callable ``[B, *shape] -> [B]`` (taken as not differentiable)."""
    if isinstance(reward, Reward):
        return reward
    if not callable(reward):
        raise TypeError(f"reward must be a fewstep.steer.Reward or a callable x -> [B]; got {type(reward).__name__}")
    return Reward(reward, name or getattr(reward, "__name__", "user reward"), differentiable=False)


def _digits_logits(x: Tensor) -> Tensor:
    if x.ndim < 2 or math.prod(x.shape[1:]) != 64:
        raise RewardError(f"the digits rewards take 8x8 digits [B, 1, 8, 8] or [B, 64]; got shape {tuple(x.shape)}")
    net = digits_classifier(x.device)
    return net(x.reshape(-1, 1, 8, 8).to(torch.float32)).to(torch.float64)


def _check_digit(digit: int) -> int:
    if isinstance(digit, bool) or not isinstance(digit, int) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an integer 0..9; got {digit!r}")
    return digit


def digit_logprob(digit: int) -> Reward:
    """``log p(c = digit | x)`` under the bundled digits classifier (``fewstep.metrics.digits_classifier``)."""
    c = _check_digit(digit)
    return Reward(lambda x: torch.log_softmax(_digits_logits(x), dim=1)[:, c], f"digit:{c}", differentiable=True)


def digit_confidence() -> Reward:
    """The classifier's confidence ``max_c p(c | x)``, in [0.1, 1]."""
    return Reward(lambda x: torch.softmax(_digits_logits(x), dim=1).amax(dim=1), "confidence", differentiable=True)


def stroke_mass() -> Reward:
    """Mean brightness of a sample in [-1, 1], mapped to [0, 1]: ``mean((x + 1) / 2)`` (thicker strokes score more)."""
    return Reward(lambda x: ((x.flatten(1).to(torch.float64) + 1) / 2).mean(dim=1), "stroke", differentiable=True)


def linear(a: Sequence[float] | Tensor) -> Reward:
    """``r(x) = a . x`` over the flattened sample; its tilt of a Gaussian mixture is known in closed form
    (``fewstep.steer.exact.tilt_linear``)."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    if a.numel() == 0 or not torch.isfinite(a).all():
        raise ValueError(f"linear reward needs a non-empty, finite vector a; got {a.tolist()[:8]}")

    def fn(x: Tensor) -> Tensor:
        flat = x.flatten(1).to(torch.float64)
        if flat.shape[1] != a.numel():
            raise RewardError(f"linear reward has {a.numel()} coefficients for samples of {flat.shape[1]} values")
        return flat @ a.to(flat.device)

    return Reward(fn, f"linear:{','.join(f'{v:g}' for v in a.tolist()[:4])}{'...' if a.numel() > 4 else ''}",
                  differentiable=True)


def gmm_log_joint(gmm: GMM, x: Tensor) -> Tensor:
    """``log w_k + log N(x; mu_k, C_k)`` for every component, ``[B, K]`` (float64); eigenvalues below 1e-12 are
    raised to 1e-12 so that a degenerate direction stays finite."""
    flat = x.flatten(1).to(torch.float64)
    lam = gmm.lam.clamp_min(1e-12).to(flat.device)
    z = torch.einsum("kij,bki->bkj", gmm.U.to(flat.device), flat[:, None, :] - gmm.means.to(flat.device)[None])
    logdet = torch.log(lam).sum(-1)
    quad = (z**2 / lam[None]).sum(-1)
    return gmm.log_w.to(flat.device) - 0.5 * (quad + logdet + flat.shape[1] * math.log(2 * math.pi))


def component_logpost(gmm: GMM, k: int) -> Reward:
    """``log p(component = k | x)`` under a Gaussian mixture (e.g. ``gmm2d``, ``digits-gmm``). At temperature 1 it
    tilts the mixture into its component ``k`` exactly (``docs/math.md``, "Steering")."""
    if not isinstance(gmm, GMM):
        raise TypeError(f"component_logpost needs a fewstep GMM model (gmm2d, digits-gmm); got {type(gmm).__name__}")
    n = gmm.means.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
        raise ValueError(f"component must be an integer 0..{n - 1} for {gmm.name!r}; got {k!r}")
    return Reward(lambda x: torch.log_softmax(gmm_log_joint(gmm, x), dim=1)[:, k], f"component:{k}",
                  differentiable=True)


REWARD_NAMES = ("digit", "confidence", "stroke", "linear", "component")


def make_reward(spec: str, model=None) -> Reward:
    """A bundled reward from ``NAME[:options]``: ``digit:3``, ``confidence``, ``stroke``, ``linear:1,0`` (the
    coefficients), ``component:2`` (needs a GMM ``model``)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a reward is NAME[:options], NAME one of {', '.join(REWARD_NAMES)}; got {spec!r}")
    name, _, opts = spec.partition(":")
    if name not in REWARD_NAMES:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(REWARD_NAMES)}")
    if name in ("confidence", "stroke"):
        if opts:
            raise ValueError(f"reward {name!r} takes no options; got {opts!r}")
        return digit_confidence() if name == "confidence" else stroke_mass()
    if not opts:
        needs = {"digit": "a digit, e.g. digit:3", "linear": "coefficients, e.g. linear:1,0",
                 "component": "a component index, e.g. component:2"}[name]
        raise ValueError(f"reward {name!r} needs {needs}")
    try:
        values = [float(v) for v in opts.split(",")]
    except ValueError:
        raise ValueError(f"reward {name!r}: options must be numbers separated by commas; got {opts!r}") from None
    if name == "linear":
        return linear(values)
    if len(values) != 1 or not values[0].is_integer():
        raise ValueError(f"reward {name!r} takes one integer; got {opts!r}")
    if name == "digit":
        return digit_logprob(int(values[0]))
    return component_logpost(model, int(values[0]))
