"""Truncation samplers as pure functions over next-token logits, and an explicit chain of them.

Every processor takes logits of shape ``[batch, vocab]`` (any leading dimensions work) and returns a
new tensor; the input is never modified. Removed tokens get the logit ``-inf``. Half-precision input
is promoted to float32 (probabilities of a 50k-token vocabulary do not fit float16 well); float32 and
float64 keep their dtype.

Ties at a cutoff are always kept together, so the result never depends on the order of the vocabulary:
top-k keeps every token whose logit equals the k-th largest, and top-p and typical keep every token
tied with the last one they need. Every processor except ``typical`` keeps at least the most likely
token: ``typical`` ranks tokens by how close their surprisal is to the entropy, so a peaked distribution
can lose its argmax (transformers' ``TypicalLogitsWarper`` behaves the same).

History processors (``repetition_penalty``, ``no_repeat_ngram_size``, ``min_new_tokens``) also read the
tokens before each position, a ``History``. Under speculative sampling the draft's and the target's
distributions at a draft position are computed from the same history (the prompt, the accepted tokens and
the draft tokens before that position), so the output law stays the target's (tests/lm/test_lm_history.py).

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
    if logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty vocabulary (last) dimension, got shape {tuple(logits.shape)}")
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


@dataclass(frozen=True)
class History:
    """The tokens each position of a logits tensor ``[rows, T, vocab]`` (or ``[rows, vocab]``, T = 1) follows.

    Attributes:
        tokens: [rows, W] LongTensor, left-padded with -1; position ``t`` follows ``tokens[:, :W - T + 1 + t]``
            (so the last ``T - 1`` columns are the draft tokens that the later positions score).
        new: [rows] LongTensor, tokens generated before position 0 (the prompt excluded).
        eos: the end-of-sequence ids (``min_new_tokens`` suppresses them).
    """

    tokens: torch.Tensor
    new: torch.Tensor
    eos: tuple[int, ...] = ()

    def seen(self, positions: int, vocab: int) -> torch.Tensor:
        """[rows, positions, vocab] bool: which tokens occur in each position's history."""
        rows, width = self.tokens.shape
        base = width - positions + 1
        onehot = torch.zeros(rows, width, vocab + 1, dtype=torch.int32)
        onehot.scatter_(2, torch.where(self.tokens < 0, vocab, self.tokens)[..., None], 1)
        counts = onehot[:, :base].sum(1, keepdim=True) + torch.cat(
            [torch.zeros_like(onehot[:, :1]), onehot[:, base:].cumsum(1)], 1)
        return counts[..., :vocab] > 0

    def ngram_bans(self, n: int, positions: int, vocab: int) -> torch.Tensor:
        """[rows, positions, vocab] bool: tokens that would repeat an ``n``-gram of each position's history."""
        rows, width = self.tokens.shape
        banned = torch.zeros(rows, positions, vocab + 1, dtype=torch.bool)  # column ``vocab``: no ban
        if width < n:
            return banned[..., :vocab]
        grams = self.tokens.unfold(1, n, 1)  # [rows, width - n + 1, n]: every n-gram, ending at column j + n - 1
        for t in range(positions):
            end = width - positions + 1 + t  # the history's length
            if end < n:
                continue
            prefix = self.tokens[:, end - n + 1 : end]  # the last n - 1 tokens
            match = (grams[:, : end - n + 1, :-1] == prefix[:, None]).all(-1) & (prefix >= 0).all(-1, keepdim=True)
            nxt = grams[:, : end - n + 1, -1]
            banned[:, t].scatter_(1, torch.where(match & (nxt >= 0) & (nxt < vocab), nxt, vocab), True)
        return banned[..., :vocab]


def _positions(x: torch.Tensor, history: History | None, name: str) -> torch.Tensor:
    """``x`` viewed as [rows, T, vocab], checked against ``history``."""
    if history is None:
        raise ValueError(f"{name} reads the tokens generated so far: call it through generate or "
                         "speculative_generate, or pass a History")
    view = x if x.ndim == 3 else x[:, None]
    if view.ndim != 3 or view.shape[0] != history.tokens.shape[0]:
        raise ValueError(f"{name}: logits of shape {tuple(x.shape)} do not match a history of "
                         f"{history.tokens.shape[0]} rows")
    return view


def repetition_penalty(logits: torch.Tensor, penalty: float, history: History | None = None) -> torch.Tensor:
    """Tokens already in the history (prompt included) get ``logit / penalty`` if positive, else ``logit * penalty``.

    CTRL (Keskar et al., arXiv 1909.05858), as transformers' ``RepetitionPenaltyLogitsProcessor`` applies it.
    """
    _check("repetition_penalty", penalty)
    x = _work(logits)
    view = _positions(x, history, "repetition_penalty")
    if penalty == 1:
        return x
    seen = history.seen(view.shape[1], view.shape[2])
    out = torch.where(seen, torch.where(view > 0, view / penalty, view * penalty), view)
    return out.view_as(x)


def no_repeat_ngram_size(logits: torch.Tensor, n: int, history: History | None = None) -> torch.Tensor:
    """Remove every token that would complete an ``n``-gram already in the history (prompt included).

    As transformers' ``NoRepeatNGramLogitsProcessor`` (Paulus et al., arXiv 1705.04304).
    """
    _check("no_repeat_ngram_size", n)
    x = _work(logits)
    view = _positions(x, history, "no_repeat_ngram_size")
    banned = history.ngram_bans(int(n), view.shape[1], view.shape[2])
    return view.masked_fill(banned, -math.inf).view_as(x)


def min_new_tokens(logits: torch.Tensor, n: int, history: History | None = None) -> torch.Tensor:
    """Remove the end-of-sequence tokens until ``n`` new tokens exist (transformers' ``min_new_tokens``)."""
    _check("min_new_tokens", n)
    x = _work(logits)
    view = _positions(x, history, "min_new_tokens")
    if not history.eos or n == 0:
        return x
    eos = torch.tensor([e for e in history.eos if 0 <= e < view.shape[2]], dtype=torch.long)
    early = (history.new[:, None] + torch.arange(view.shape[1])) < n  # [rows, T]
    mask = torch.zeros(view.shape, dtype=torch.bool)
    mask[..., eos] = True
    return view.masked_fill(mask & early[..., None], -math.inf).view_as(x)


class ProcessorInfo(NamedTuple):
    fn: Callable[[torch.Tensor, float], torch.Tensor]
    kind: type  # int or float
    low: float
    high: float
    low_open: bool  # whether ``low`` itself is excluded
    paper: str
    history: bool = False  # whether it reads the tokens before each position (a ``History``)


PROCESSORS: dict[str, ProcessorInfo] = {
    "temperature": ProcessorInfo(temperature, float, 0.0, math.inf, False, "0 = greedy"),
    "top_k": ProcessorInfo(top_k, int, 1, math.inf, False, "arXiv 1805.04833"),
    "top_p": ProcessorInfo(top_p, float, 0.0, 1.0, True, "arXiv 1904.09751"),
    "typical": ProcessorInfo(typical, float, 0.0, 1.0, True, "arXiv 2202.00666"),
    "min_p": ProcessorInfo(min_p, float, 0.0, 1.0, False, "arXiv 2407.01082"),
    "epsilon": ProcessorInfo(epsilon, float, 0.0, 1.0, False, "arXiv 2210.15191"),
    "eta": ProcessorInfo(eta, float, 0.0, 1.0, False, "arXiv 2210.15191"),
    "repetition_penalty": ProcessorInfo(repetition_penalty, float, 0.0, math.inf, True, "arXiv 1909.05858", True),
    "no_repeat_ngram_size": ProcessorInfo(no_repeat_ngram_size, int, 1, math.inf, False, "arXiv 1705.04304", True),
    "min_new_tokens": ProcessorInfo(min_new_tokens, int, 0, math.inf, False, "transformers", True),
}
HISTORY = ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens")

# Application orders of the two conventions (llama.cpp has no epsilon/eta; they go with the truncations).
ORDERS: dict[str, tuple[str, ...]] = {
    "hf": ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "temperature", "top_k", "top_p", "min_p",
           "typical", "epsilon", "eta"),
    "llama.cpp": ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "top_k", "typical", "top_p",
                  "min_p", "epsilon", "eta", "temperature"),
}

# sampler name -> keyword of transformers' GenerationConfig
_HF_KEYWORDS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                "typical": "typical_p", "epsilon": "epsilon_cutoff", "eta": "eta_cutoff",
                "repetition_penalty": "repetition_penalty", "no_repeat_ngram_size": "no_repeat_ngram_size",
                "min_new_tokens": "min_new_tokens"}


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

    def __call__(self, logits: torch.Tensor, history: History | None = None) -> torch.Tensor:
        x = _work(logits)
        for name, value in self.steps:
            info = PROCESSORS[name]
            x = info.fn(x, value, history) if info.history else info.fn(x, value)
        return x

    @property
    def needs_history(self) -> bool:
        """Whether a step reads the tokens before each position (pass a ``History``)."""
        return any(PROCESSORS[name].history for name, _ in self.steps)

    def probs(self, logits: torch.Tensor, history: History | None = None) -> torch.Tensor:
        """The final sampling distribution (float32 or wider) after the whole chain.

        Raises ValueError naming the first step that produced NaN, ``+inf`` or a row with no finite value
        ("the model's logits" when they arrived that way).
        """
        x = self(logits, history)
        if not bool(_sane(x).all()):
            raise ValueError(self._diagnose(logits, history))
        return x.softmax(-1)

    def _diagnose(self, logits: torch.Tensor, history: History | None) -> str:
        x, where = _work(logits), "the model's logits"
        for i in range(len(self.steps) + 1):
            bad = ~_sane(x)
            if bool(bad.any()):
                row = int(bad.reshape(-1).nonzero()[0])
                flat = x.reshape(-1, x.shape[-1])[row]
                what = ("NaN" if bool(flat.isnan().any()) else "+inf" if bool(flat.isposinf().any())
                        else "no finite value (each row needs at least one finite value)")
                return f"{where} contain {what} (row {row} of {flat.numel()}-token logits); cannot sample"
            if i == len(self.steps):
                break
            name, value = self.steps[i]
            info = PROCESSORS[name]
            x = info.fn(x, value, history) if info.history else info.fn(x, value)
            where = f"step {i + 1} ({name}={value:g}) of the sampler '{self}'"
        return f"the sampler '{self}' produced invalid probabilities"

    @property
    def is_greedy(self) -> bool:
        return any(name == "temperature" and value == 0 for name, value in self.steps)

    def to_hf(self) -> dict[str, float | int | bool]:
        """Keyword arguments for transformers' ``generate`` that give the same distribution."""
        names = [name for name, _ in self.steps]
        hf_order = [name for name in ORDERS["hf"] if name in names]
        if len(set(names)) != len(names) or names != hf_order:
            raise ValueError(f"transformers applies {', '.join(ORDERS['hf'])} once each in that order; "
                             f"got '{self}'; write the steps in that order (Sampler.parse(..., order='hf') "
                             "sorts them)")
        history = {_HF_KEYWORDS[name]: value for name, value in self.steps if PROCESSORS[name].history}
        if self.is_greedy:
            return {"do_sample": False, **history}
        return {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                **{_HF_KEYWORDS[name]: value for name, value in self.steps}}

    def __str__(self) -> str:
        return ",".join(f"{name}={value:g}" for name, value in self.steps)


def _sane(x: torch.Tensor) -> torch.Tensor:
    """Per row: no NaN, no ``+inf``, and at least one finite value, in one reduction: a row's max is NaN
    if it holds a NaN, ``+inf`` if it holds ``+inf`` and ``-inf`` if nothing is finite."""
    return torch.isfinite(x.amax(-1))


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
