"""Truncation samplers as pure functions over next-token logits, and an explicit chain of them.

Every processor takes logits of shape ``[batch, vocab]`` (any leading dimensions work) and returns a
new tensor; the input is never modified. Removed tokens get the logit ``-inf``. Half-precision input
is promoted to float32 (probabilities of a 50k-token vocabulary do not fit float16 well); float32 and
float64 keep their dtype.

Ties at a cutoff are always kept together, so the result never depends on the order of the vocabulary:
top-k keeps every token whose logit equals the k-th largest, and top-p and typical keep every token
tied with the last one they need. Every processor keeps at least the most likely token.

Order matters and is the caller's choice. Hugging Face transformers and vLLM apply temperature
*first*, so truncation sees the tempered distribution; llama.cpp applies it *last*, so truncation
sees the model's own distribution and temperature only reshapes what survived. ``Sampler.parse``
keeps the order as written, or sorts into either convention with ``order="hf"`` / ``"llama.cpp"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Sequence

import torch

Order = Literal["given", "hf", "llama.cpp"]


def _work(logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point torch.Tensor, got {type(logits).__name__}"
                        f"{'' if not isinstance(logits, torch.Tensor) else ' of dtype ' + str(logits.dtype)}")
    if logits.ndim == 0:
        raise ValueError("logits must have shape [batch, vocab], got a scalar")
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _is_argmax(probs: torch.Tensor) -> torch.Tensor:
    return probs == probs.amax(-1, keepdim=True)


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Divide logits by ``t`` (Ackley et al. 1985); ``t = 0`` is greedy: only the first argmax survives."""
    _check("temperature", t)
    x = _work(logits)
    if t == 1:
        return x
    if t == 0:
        first = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, x.argmax(-1, keepdim=True), True)
        return x.masked_fill(~first, -math.inf)
    return x / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits and every token tied with the k-th (Fan et al., arXiv 1805.04833)."""
    _check("top_k", k)
    x = _work(logits)
    if k >= x.shape[-1]:
        return x
    kth = x.topk(int(k), dim=-1).values[..., -1:]
    return x.masked_fill(x < kth, -math.inf)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: the smallest top set with mass >= ``p``, plus ties (Holtzman et al., arXiv 1904.09751)."""
    _check("top_p", p)
    x = _work(logits)
    if p == 1:
        return x
    probs = x.softmax(-1)
    sorted_p = probs.sort(-1, descending=True).values
    kept = (sorted_p.cumsum(-1) - sorted_p) < p  # mass strictly before a token is still short of p
    cutoff = sorted_p.masked_fill(~kept, math.inf).amin(-1, keepdim=True)
    return x.masked_fill(probs < cutoff, -math.inf)


def typical(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical: keep tokens closest to the entropy up to ``mass`` (Meister et al., arXiv 2202.00666).

    Tokens are ranked by ``|-log p(x) - H(p)|``; the shortest prefix with mass >= ``mass`` is kept,
    the token that crosses it included.
    """
    _check("typical", mass)
    x = _work(logits)
    if mass == 1:
        return x
    logp = x.log_softmax(-1)
    probs = logp.exp()
    entropy = torch.special.entr(probs).sum(-1, keepdim=True)
    score = (-logp - entropy).abs()  # +inf for removed tokens, so they rank last
    sorted_s, order = score.sort(-1)
    sorted_p = probs.gather(-1, order)
    kept = (sorted_p.cumsum(-1) - sorted_p) < mass
    cutoff = sorted_s.masked_fill(~kept, -math.inf).amax(-1, keepdim=True)
    return x.masked_fill(score > cutoff, -math.inf)


def min_p(logits: torch.Tensor, p_min: float) -> torch.Tensor:
    """Keep tokens with ``p(x) >= p_min * max p`` (Nguyen et al., min-p, arXiv 2407.01082)."""
    _check("min_p", p_min)
    x = _work(logits)
    probs = x.softmax(-1)
    return x.masked_fill(probs < p_min * probs.amax(-1, keepdim=True), -math.inf)


def epsilon(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """epsilon-sampling: keep ``p(x) >= eps`` and the argmax (Hewitt et al., arXiv 2210.15191)."""
    _check("epsilon", eps)
    x = _work(logits)
    probs = x.softmax(-1)
    return x.masked_fill((probs < eps) & ~_is_argmax(probs), -math.inf)


def eta(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """eta-sampling: keep ``p(x) >= min(eps, sqrt(eps) * exp(-H(p)))`` and the argmax (arXiv 2210.15191).

    ``H`` is the entropy in nats of the distribution this processor receives.
    """
    _check("eta", eps)
    x = _work(logits)
    probs = x.softmax(-1)
    entropy = torch.special.entr(probs).sum(-1, keepdim=True)
    threshold = torch.clamp(math.sqrt(eps) * torch.exp(-entropy), max=eps)
    return x.masked_fill((probs < threshold) & ~_is_argmax(probs), -math.inf)


class ProcessorInfo(NamedTuple):
    fn: Callable[[torch.Tensor, float], torch.Tensor]
    kind: type  # int or float
    low: float
    high: float
    low_open: bool  # whether ``low`` itself is excluded
    paper: str


PROCESSORS: dict[str, ProcessorInfo] = {
    "temperature": ProcessorInfo(temperature, float, 0.0, math.inf, False, "0 = greedy"),
    "top_k": ProcessorInfo(top_k, int, 1, math.inf, False, "arXiv 1805.04833"),
    "top_p": ProcessorInfo(top_p, float, 0.0, 1.0, True, "arXiv 1904.09751"),
    "typical": ProcessorInfo(typical, float, 0.0, 1.0, True, "arXiv 2202.00666"),
    "min_p": ProcessorInfo(min_p, float, 0.0, 1.0, False, "arXiv 2407.01082"),
    "epsilon": ProcessorInfo(epsilon, float, 0.0, 1.0, False, "arXiv 2210.15191"),
    "eta": ProcessorInfo(eta, float, 0.0, 1.0, False, "arXiv 2210.15191"),
}

# Application orders of the two conventions (llama.cpp has no epsilon/eta; they go with the truncations).
ORDERS: dict[str, tuple[str, ...]] = {
    "hf": ("temperature", "top_k", "top_p", "min_p", "typical", "epsilon", "eta"),
    "llama.cpp": ("top_k", "typical", "top_p", "min_p", "epsilon", "eta", "temperature"),
}

# sampler name -> keyword of transformers' GenerationConfig
_HF_KEYWORDS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                "typical": "typical_p", "epsilon": "epsilon_cutoff", "eta": "eta_cutoff"}


def _check(name: str, value: float) -> None:
    info = PROCESSORS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if info.kind is int and value != int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    too_low = value <= info.low if info.low_open else value < info.low
    if too_low or value > info.high:
        bracket = "(" if info.low_open else "["
        high = "inf)" if math.isinf(info.high) else f"{info.high:g}]"
        raise ValueError(f"{name} must be in {bracket}{info.low:g}, {high}, got {value!r}")


@dataclass(frozen=True)
class Sampler:
    """An ordered chain of processors, e.g. ``Sampler.parse("temperature=0.8,min_p=0.05")``.

    ``steps`` is applied left to right. An empty chain samples the model's own distribution.
    """

    steps: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for step in self.steps:
            if not (isinstance(step, tuple) and len(step) == 2 and isinstance(step[0], str)):
                raise TypeError(f"each step must be a (name, value) tuple, got {step!r}")
            if step[0] not in PROCESSORS:
                raise ValueError(f"unknown processor {step[0]!r}; allowed: {', '.join(PROCESSORS)}")
            _check(*step)

    @classmethod
    def parse(cls, spec: str | Sequence[tuple[str, float]] | Sampler, order: Order = "given") -> Sampler:
        """Build a chain from ``"name=value,..."`` (``"greedy"`` means ``temperature=0``) or (name, value) pairs.

        ``order="given"`` keeps the written order; ``"hf"`` or ``"llama.cpp"`` sorts the steps into that
        library's order (temperature first, or last).
        """
        if order not in ("given", *ORDERS):
            raise ValueError(f"order must be one of 'given', 'hf', 'llama.cpp', got {order!r}")
        if isinstance(spec, Sampler):
            steps = spec.steps
        elif isinstance(spec, str):
            steps = tuple(_parse_item(item) for item in spec.split(",") if item.strip())
        elif isinstance(spec, Sequence):
            steps = tuple((str(name), value) for name, value in spec)
        else:
            raise TypeError(f"sampler spec must be a string, a list of (name, value) pairs or a Sampler, "
                            f"got {type(spec).__name__}")
        if order != "given":
            rank = {name: i for i, name in enumerate(ORDERS[order])}
            steps = tuple(sorted(steps, key=lambda step: rank.get(step[0], -1)))
        return cls(steps)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        x = _work(logits)
        for name, value in self.steps:
            x = PROCESSORS[name].fn(x, value)
        return x

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The final sampling distribution (float32 or wider) after the whole chain."""
        x = self(logits)
        if not torch.isfinite(x).any(-1).all():
            raise ValueError("every row of logits needs at least one finite value; got a row of -inf/nan")
        return x.softmax(-1)

    @property
    def is_greedy(self) -> bool:
        return any(name == "temperature" and value == 0 for name, value in self.steps)

    def to_hf(self) -> dict[str, float | int | bool]:
        """Keyword arguments for transformers' ``generate`` that give the same distribution."""
        names = [name for name, _ in self.steps]
        hf_order = [name for name in ORDERS["hf"] if name in names]
        if len(set(names)) != len(names) or names != hf_order:
            raise ValueError(f"transformers applies {', '.join(ORDERS['hf'])} once each in that order; "
                             f"got {self}; use Sampler.parse(..., order='hf')")
        if self.is_greedy:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                **{_HF_KEYWORDS[name]: value for name, value in self.steps}}

    def __str__(self) -> str:
        return ",".join(f"{name}={value:g}" for name, value in self.steps)


def _parse_item(item: str) -> tuple[str, float]:
    item = item.strip()
    if item == "greedy":
        return ("temperature", 0.0)
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or name not in PROCESSORS:
        raise ValueError(f"sampler item {item!r} must be 'name=value' with name in {', '.join(PROCESSORS)} "
                         f"(or 'greedy')")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"sampler item {item!r}: {value.strip()!r} is not a number") from None
    return (name, int(number) if PROCESSORS[name].kind is int and number.is_integer() else number)
