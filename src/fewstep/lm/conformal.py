"""Conformal sampling: draw samples until a calibrated stopping rule says the set holds a right answer.

Conformal Language Modeling (Quach et al., arXiv 2306.10193). Samples of a prompt are drawn one at a
time; a sample whose quality score is below ``min_quality`` is rejected (not admitted to the set), a
duplicate adds nothing, and sampling stops once the set's confidence ``F`` reaches the threshold
``lambda`` (or after ``k_max`` samples). ``F`` only grows as samples arrive, so a larger ``lambda``
gives a larger set: the sets are nested, and ``lambda`` is calibrated on problems with known answers.

For a calibration problem, let ``k*`` be the first admitted right sample. The set of threshold
``lambda`` holds it exactly when sampling has not stopped before it, i.e. ``F_{k*-1} < lambda``: its
nonconformity score is ``s = F_{k*-1}`` (``-inf`` if the first sample is right and admitted, ``+inf``
if no admitted sample within ``k_max`` is right). Two calibrations:

- ``delta=None`` (split conformal): ``lambda`` just above the ``ceil((n + 1)(1 - alpha))``-th smallest of
  the ``n`` scores. For a new exchangeable problem, ``P(set holds a right answer) >= 1 - alpha``, and at
  most ``1 - alpha + 1 / (n + 1)`` when scores do not tie.
- ``delta`` given (Learn-then-Test, the paper's calibration): candidate thresholds are tested from the
  largest down with binomial tail p-values of ``H0: risk > alpha`` (fixed-sequence testing); the smallest
  rejected one holds ``P(risk <= alpha) >= 1 - delta`` over the calibration draw.

The paper calibrates the rejection threshold and the stopping threshold jointly (Pareto testing);
here ``min_quality`` is fixed by the user and only ``lambda`` is calibrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Literal, Sequence

import torch

from fewstep.lm.decoding import check_count, check_prompts, generate
from fewstep.lm.models import CausalLM
from fewstep.lm.processors import Sampler
from fewstep.lm.scaling import Verifier, sample_seed

SetScore = Literal["noisy_or", "max", "sum", "count"]
SET_SCORES = ("noisy_or", "max", "sum", "count")


@dataclass(frozen=True)
class StoppingRule:
    """Stop once the set's confidence ``F`` reaches ``threshold``, or after ``k_max`` samples.

    ``set_score``: ``noisy_or`` = ``1 - prod(1 - q)``, ``max`` = ``max q``, ``sum`` = ``sum q`` over the
    distinct admitted answers, or ``count`` = samples drawn so far (the paper's first-k baseline).
    """

    threshold: float
    k_max: int
    set_score: SetScore = "noisy_or"
    min_quality: float = 0.0

    def __post_init__(self) -> None:
        check_count("k_max", self.k_max)
        if self.set_score not in SET_SCORES:
            raise ValueError(f"set_score must be one of {', '.join(SET_SCORES)}, got {self.set_score!r}")
        if not isinstance(self.threshold, (int, float)) or math.isnan(self.threshold):
            raise ValueError(f"threshold must be a number (inf: always k_max samples), got {self.threshold!r}")


def confidences(answers: Sequence[Hashable], quality: Sequence[float], rule: StoppingRule) -> list[float]:
    """``F`` after each of the samples (their answers and quality scores, in drawing order)."""
    seen: dict[Hashable, float] = {}
    out = []
    for k, (a, q) in enumerate(zip(answers, quality, strict=True), 1):
        q = float(q)
        if q >= rule.min_quality and a not in seen:
            seen[a] = q
        qs = list(seen.values())
        if rule.set_score == "count":
            out.append(float(k))
        elif rule.set_score == "max":
            out.append(max(qs, default=0.0))
        elif rule.set_score == "sum":
            out.append(sum(qs))
        else:
            out.append(1.0 - math.prod(1.0 - q for q in qs))
    return out


def build_set(answers: Sequence[Hashable], quality: Sequence[float], rule: StoppingRule) -> tuple[list[Hashable], int]:
    """The conformal set from samples in drawing order, and how many samples it used."""
    conf = confidences(answers[: rule.k_max], quality[: rule.k_max], rule)
    used = next((k + 1 for k, f in enumerate(conf) if f >= rule.threshold), len(conf))
    kept: list[Hashable] = []
    for a, q in zip(answers[:used], quality[:used]):
        if float(q) >= rule.min_quality and a not in kept:
            kept.append(a)
    return kept, used


def nonconformity(answers: Sequence[Hashable], quality: Sequence[float], correct: Sequence[bool],
                  rule: StoppingRule) -> float:
    """``F`` just before the first admitted right sample: the set holds a right answer iff ``threshold > s``."""
    conf = confidences(answers[: rule.k_max], quality[: rule.k_max], rule)
    for k, (q, ok) in enumerate(zip(quality[: rule.k_max], correct[: rule.k_max])):
        if ok and float(q) >= rule.min_quality:
            return -math.inf if k == 0 else conf[k - 1]
    return math.inf


@dataclass(frozen=True)
class Calibration:
    """The calibrated threshold; ``reachable`` is False when ``k_max`` samples cannot reach ``1 - alpha``."""

    threshold: float
    alpha: float
    delta: float | None
    n: int
    reachable: bool


def calibrate(scores: Sequence[float], alpha: float, delta: float | None = None) -> Calibration:
    """The stopping threshold from calibration problems' nonconformity scores (see the module docstring)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1) or be None, got {delta!r}")
    s = sorted(float(x) for x in scores)
    n = len(s)
    if n == 0:
        raise ValueError("calibration needs at least one problem's score")
    if delta is None:
        j = math.ceil((n + 1) * (1 - alpha))
        if j > n or math.isinf(s[j - 1]) and s[j - 1] > 0:
            return Calibration(math.inf, alpha, None, n, False)
        return Calibration(_above(s[j - 1]), alpha, None, n, True)
    best = math.inf
    for lam in sorted({_above(x) for x in s if not math.isinf(x) or x < 0}, reverse=True):
        misses = sum(not covered(x, lam) for x in s)
        if _binom_cdf(misses, n, alpha) > delta:
            break
        best = lam
    return Calibration(best, alpha, delta, n, not math.isinf(best))


def covered(score: float, threshold: float) -> bool:
    """Whether the set of ``threshold`` holds a right answer of a problem of nonconformity ``score``."""
    return score == -math.inf or score < threshold


def _above(x: float) -> float:
    return -math.inf if x == -math.inf else math.nextafter(x, math.inf)


def _binom_cdf(x: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= x), summed in log space."""
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
             + (n - i) * math.log1p(-p) for i in range(x + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@dataclass(frozen=True)
class ConformalSets:
    """Each prompt's set of answers, the samples it used, and the cost in model and quality calls."""

    sets: list[list[Hashable]]
    samples: list[int]
    calls: int
    quality_calls: int
    new_tokens: int


def conformal_sample(model: CausalLM, prompts: Any, rule: StoppingRule, quality: Verifier,
                     answer: Callable[[list[int]], Hashable] = tuple, sampler: str | Sampler = "", *, seed: int = 0,
                     max_new_tokens: int = 64, eos_token_id: int | None = None) -> ConformalSets:
    """Sample every prompt until its stopping rule fires (Conformal Language Modeling, arXiv 2306.10193).

    One batched round per sample index: round ``r`` draws sample ``r`` of every prompt still sampling
    (seeded ``sample_seed(seed, i, r)``, the same samples as ``scaling.sample_n``) and scores it with
    ``quality(prompts, completions)``; ``answer`` maps a completion's tokens to the answer that sets hold.
    """
    prompts = check_prompts(prompts, model.vocab_size)
    answers: list[list[Hashable]] = [[] for _ in prompts]
    scores: list[list[float]] = [[] for _ in prompts]
    used: list[int | None] = [None] * len(prompts)
    calls = qcalls = new = 0
    for r in range(rule.k_max):
        rows = [i for i, u in enumerate(used) if u is None]
        if not rows:
            break
        gens = [torch.Generator().manual_seed(sample_seed(seed, i, r)) for i in rows]
        out = generate(model, [prompts[i] for i in rows], sampler, max_new_tokens=max_new_tokens, generator=gens,
                       eos_token_id=eos_token_id)
        q = quality([prompts[i] for i in rows], out.tokens)
        calls, qcalls, new = calls + out.stats.target_calls, qcalls + 1, new + out.stats.new_tokens
        for i, t, s in zip(rows, out.tokens, q.tolist()):
            answers[i].append(answer(t))
            scores[i].append(float(s))
            if confidences(answers[i], scores[i], rule)[-1] >= rule.threshold or r == rule.k_max - 1:
                used[i] = r + 1
    sets = [build_set(a, s, rule)[0] for a, s in zip(answers, scores)]
    return ConformalSets(sets, [int(u) for u in used], calls, qcalls, new)  # type: ignore[arg-type]
