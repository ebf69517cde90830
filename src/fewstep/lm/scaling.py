"""Spending more samples per question: repeated sampling, pass@k, voting, best-of-n, compute allocation, restarts.

- Repeated sampling with a verifier, and coverage (the share of problems that any of k samples solves),
  estimated without bias by pass@k (Chen et al., arXiv 2107.03374; Large Language Monkeys, arXiv 2407.21787).
- Majority voting and verifier-weighted voting over the answers; best-of-n by a verifier's score, and
  its exact output law ``pi(y) (F(r)^n - F_(r)^n) / (F(r) - F_(r))`` (BoNBoN, arXiv 2406.00832).
- Compute allocation: how many samples each sampler configuration gets so that coverage is highest for a
  budget, learned from per-problem success rates on training problems (OSCA, arXiv 2410.22480).
- Mid-generation restarts: a learned predictor reads each sample after a few tokens and abandons the
  ones it does not expect to end well (early pruning of Adaptive Inference-Time Compute, arXiv 2410.02725).

Every function that runs a model is batched over prompts and samples, seeded per sample (sample ``j``
of prompt ``i`` is the same whatever ``n`` or the batch), and counts its model calls and new tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Literal, Sequence

import numpy as np
import torch

from fewstep.lm.decoding import check_count, check_prompts, generate
from fewstep.lm.models import CausalLM
from fewstep.lm.processors import Sampler

Vote = Literal["majority", "weighted", "best"]
VOTES = ("majority", "weighted", "best")
Verifier = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], torch.Tensor]


def sample_seed(seed: int, prompt: int, sample: int) -> int:
    """The seed of sample ``sample`` of prompt ``prompt``: independent streams from one base seed."""
    return int(np.random.SeedSequence([seed, prompt, sample]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Samples:
    """``tokens[i][j]``: the new tokens of sample ``j`` of prompt ``i``; the model calls and tokens they cost."""

    prompts: list[list[int]]
    tokens: list[list[list[int]]]
    calls: int
    new_tokens: int


def sample_n(model: CausalLM, prompts: Any, n: int, sampler: str | Sampler = "", *, seed: int = 0, first: int = 0,
             max_new_tokens: int = 64, eos_token_id: int | None = None, batch: int = 4096) -> Samples:
    """Repeated sampling (Large Language Monkeys, arXiv 2407.21787): ``n`` independent samples of every prompt.

    Samples ``first .. first + n - 1`` of each prompt are drawn, ``batch`` rows per batched ``generate``;
    sample ``j`` of prompt ``i`` uses its own generator seeded by ``sample_seed(seed, i, j)``.
    """
    prompts = check_prompts(prompts, model.vocab_size)
    check_count("n", n)
    check_count("batch", batch)
    check_count("first", first, 0)
    rows = [(i, j) for i in range(len(prompts)) for j in range(first, first + n)]
    tokens: list[list[list[int]]] = [[] for _ in prompts]
    calls = new = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        gens = [torch.Generator().manual_seed(sample_seed(seed, i, j)) for i, j in chunk]
        out = generate(model, [prompts[i] for i, _ in chunk], sampler, max_new_tokens=max_new_tokens, generator=gens,
                       eos_token_id=eos_token_id)
        for (i, _), t in zip(chunk, out.tokens):
            tokens[i].append(t)
        calls, new = calls + out.stats.target_calls, new + out.stats.new_tokens
    return Samples(prompts, tokens, calls, new)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct of ``n`` samples: ``1 - C(n - c, k) / C(n, k)`` (arXiv 2107.03374).

    Computed as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``, which never forms the large binomials.
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if not 1 <= k <= n or c > n:
        raise ValueError(f"pass@k needs 1 <= k <= n and c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def coverage(correct: torch.Tensor, k: int) -> float:
    """Mean pass@k over problems: ``correct`` is a boolean [problems, n] table of verified samples."""
    correct = _table(correct, "correct")
    n = correct.shape[1]
    return float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(1).tolist()]))


def _table(x: Any, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a [problems, samples] table, got shape {tuple(x.shape)}")
    return x


def vote(answers: Sequence[Hashable], scores: Sequence[float] | torch.Tensor | None = None,
         method: Vote = "majority") -> Hashable:
    """One answer from several samples' answers (ties go to the answer seen first).

    ``majority``: the most frequent answer (self-consistency); ``weighted``: the answer with the largest
    total verifier score; ``best``: best-of-n, the answer of the single highest score.
    """
    if method not in VOTES:
        raise ValueError(f"vote must be one of {', '.join(VOTES)}, got {method!r}")
    answers = list(answers)
    if not answers:
        raise ValueError("vote needs at least one answer")
    if method == "majority":
        counts = Counter(answers)
        return max(counts, key=lambda a: counts[a])  # Counter keeps first-seen order; max keeps the first of ties
    if scores is None:
        raise ValueError(f"the {method!r} vote needs one verifier score per answer")
    scores = [float(s) for s in scores]
    if len(scores) != len(answers):
        raise ValueError(f"got {len(answers)} answers but {len(scores)} scores")
    if method == "best":
        return answers[max(range(len(answers)), key=lambda j: scores[j])]
    totals: dict[Hashable, float] = {}
    for a, s in zip(answers, scores):
        totals[a] = totals.get(a, 0.0) + s
    return max(totals, key=lambda a: totals[a])


def vote_accuracy(answers: Sequence[Sequence[Hashable]], truth: Sequence[Hashable], k: int, method: Vote = "majority",
                  scores: torch.Tensor | None = None, draws: int = 32, seed: int = 0) -> float:
    """Expected accuracy of voting over ``k`` of each problem's ``n`` samples (mean over ``draws`` random subsets)."""
    n = len(answers[0])
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, {n}], got {k}")
    rng = np.random.default_rng(seed)
    hits = 0.0
    for i, row in enumerate(answers):
        for _ in range(draws if k < n else 1):
            pick = rng.choice(n, size=k, replace=False) if k < n else np.arange(n)
            s = None if scores is None else scores[i][torch.as_tensor(pick)]
            hits += (vote([row[j] for j in pick], s, method) == truth[i]) / (draws if k < n else 1)
    return hits / len(answers)


def best_of_n_law(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """The exact law of best-of-n over a finite set of outputs (BoNBoN, arXiv 2406.00832).

    With ``F(r) = P(R <= r)`` and ``F_(r) = P(R < r)`` under the base law ``probs``, the output ``y`` of the
    highest reward among ``n`` i.i.d. draws (ties to the first drawn) has probability
    ``probs[y] (F(r_y)^n - F_(r_y)^n) / (F(r_y) - F_(r_y))``.
    """
    check_count("n", n)
    probs, rewards = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(rewards, dtype=torch.float64)
    if probs.ndim != 1 or probs.shape != rewards.shape:
        raise ValueError(f"probs and rewards must be 1-D of one length, got shapes {tuple(probs.shape)} and "
                         f"{tuple(rewards.shape)}")
    if (probs < 0).any() or not torch.isclose(probs.sum(), torch.tensor(1.0, dtype=torch.float64)):
        raise ValueError("probs must be a probability vector (non-negative, summing to 1)")
    below_eq = (probs[None, :] * (rewards[None, :] <= rewards[:, None])).sum(1)
    below = (probs[None, :] * (rewards[None, :] < rewards[:, None])).sum(1)
    tie = below_eq - below
    return torch.where(tie > 0, probs * (below_eq**n - below**n) / tie.clamp(min=1e-300), 0.0)


def allocation_coverage(success: torch.Tensor, counts: Sequence[int]) -> float:
    """Mean over problems of ``1 - prod_c (1 - p_ic)^(n_c)``: the coverage of ``counts[c]`` samples from each config."""
    success = _table(success, "success").double()
    n = torch.as_tensor(list(counts), dtype=torch.float64)
    return float((1 - torch.prod((1 - success) ** n, dim=1)).mean())


def allocate(success: torch.Tensor, budget: int, cost: Sequence[float] | None = None) -> list[int]:
    """OSCA (arXiv 2410.22480): samples per configuration maximising expected coverage within ``budget``.

    ``success[i, c]`` is the success rate of configuration ``c`` on training problem ``i``; a sample of
    ``c`` costs ``cost[c]`` (default 1); the objective is ``allocation_coverage`` with the rates plugged in.
    Greedy by coverage gained per cost, then hill climbing (move samples from one configuration to another
    while coverage rises), and never worse on the training problems than the best single configuration,
    which is among the candidates.
    """
    success = _table(success, "success").double()
    cost_t = _costs(cost, success.shape[1], budget)
    return _climb(lambda n: allocation_coverage(success, n), cost_t, budget, [None] * success.shape[1])


def allocate_verified(correct: Sequence[torch.Tensor], budget: int, cost: Sequence[float] | None = None) -> list[int]:
    """OSCA from verified training samples: ``correct[c]`` is a boolean [problems, n_c] table of configuration c.

    The objective is the unbiased coverage estimate of ``held_out_coverage`` on the training samples
    (pass@k per configuration, so at most ``n_c`` samples of configuration c), which avoids the bias of
    plugging estimated rates into ``1 - prod (1 - p)^n``; the search is that of ``allocate``.
    """
    tables = [_table(t, "correct") for t in correct]
    miss = [_miss(t) for t in tables]
    cost_t = _costs(cost, len(tables), budget)

    def value(n: list[int]) -> float:
        m = torch.ones(tables[0].shape[0], dtype=torch.float64)
        for table, k in zip(miss, n):
            m = m * table[:, k]
        return float(1 - m.mean())

    return _climb(value, cost_t, budget, [t.shape[1] for t in tables])


def _costs(cost: Sequence[float] | None, configs: int, budget: float) -> torch.Tensor:
    cost_t = torch.ones(configs, dtype=torch.float64) if cost is None else torch.as_tensor(cost, dtype=torch.float64)
    if cost_t.shape != (configs,) or (cost_t <= 0).any():
        raise ValueError(f"cost must hold {configs} positive numbers, got {cost!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < float(cost_t.min()):
        raise ValueError(f"budget must afford at least one sample (>= {float(cost_t.min())}), got {budget!r}")
    return cost_t


def _climb(value: Callable[[list[int]], float], cost: torch.Tensor, budget: float, caps: list[int | None]) -> list[int]:
    """Greedy then hill climbing over sample counts within the budget (and ``caps``), and the best single config."""
    configs = len(cost)

    def fits(n: list[int]) -> bool:
        under = all(cap is None or k <= cap for k, cap in zip(n, caps))
        return under and float((torch.tensor(n, dtype=torch.float64) * cost).sum()) <= budget + 1e-9

    def plus(n: list[int], c: int) -> list[int]:
        return n[:c] + [n[c] + 1] + n[c + 1 :]

    n = [0] * configs
    while True:  # greedy: the sample that gains most coverage per cost
        options = [c for c in range(configs) if fits(plus(n, c))]
        if not options:
            break
        base = value(n)
        n = plus(n, max(options, key=lambda c: (value(plus(n, c)) - base) / float(cost[c])))
    improved = True
    while improved:  # hill climbing: one sample out of a, as many into b as fit
        improved, base = False, value(n)
        for a in range(configs):
            for b in range(configs):
                if a == b or n[a] == 0:
                    continue
                m = list(n)
                m[a] -= 1
                while fits(plus(m, b)):
                    m = plus(m, b)
                    if value(m) > base + 1e-12:
                        n, base, improved = list(m), value(m), True
                        break
    singles = []
    for d in range(configs):
        k = int(budget // float(cost[d])) if caps[d] is None else min(int(budget // float(cost[d])), caps[d])
        singles.append([k if c == d else 0 for c in range(configs)])
    return max([n, *singles], key=value)


def _miss(table: torch.Tensor) -> torch.Tensor:
    """``[problems, n + 1]``: column k is ``C(n - c, k) / C(n, k)``, the chance that k of the n samples
    drawn without replacement all fail (c right ones per problem)."""
    n = table.shape[1]
    c = table.sum(1, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    ratios = (n - c - j).clamp(min=0) / (n - j)
    return torch.cat([torch.ones_like(c), ratios.cumprod(1)], 1)


def held_out_coverage(correct: Sequence[torch.Tensor], counts: Sequence[int]) -> float:
    """Unbiased coverage of ``counts[c]`` samples per configuration from held-out verified samples.

    ``correct[c]`` is a boolean [problems, n_c] table; a problem is missed only if every configuration's
    draws without replacement all fail: ``prod_c C(n_c - c_c, k_c) / C(n_c, k_c)`` (pass@k, arXiv 2107.03374).
    """
    tables = [_table(t, "correct") for t in correct]
    if len(counts) != len(tables) or any(not 0 <= int(k) <= t.shape[1] for k, t in zip(counts, tables)):
        raise ValueError(f"counts must give 0..n_c samples for each of the {len(tables)} configurations, got "
                         f"{list(counts)} for n_c = {[t.shape[1] for t in tables]}")
    miss = torch.ones(tables[0].shape[0], dtype=torch.float64)
    for table, k in zip(tables, counts):
        miss = miss * _miss(table)[:, int(k)]
    return float(1 - miss.mean())


@dataclass(frozen=True)
class Restarts:
    """One finished sample per prompt, how many attempts each took, and the cost in calls and new tokens."""

    tokens: list[list[int]]
    attempts: list[int]
    calls: int
    predictor_calls: int
    new_tokens: int


def sample_with_restarts(model: CausalLM, prompts: Any, predictor: Callable[[list[list[int]]], torch.Tensor],
                         threshold: float, *, after: int = 1, max_attempts: int = 4, sampler: str | Sampler = "",
                         seed: int = 0, max_new_tokens: int = 64, eos_token_id: int | None = None) -> Restarts:
    """Early pruning with restarts (Adaptive Inference-Time Compute, arXiv 2410.02725).

    Each attempt generates ``after`` tokens; ``predictor(prompt + prefix)`` estimates the probability
    that the finished sample will be right, and attempts below ``threshold`` are abandoned and restarted
    with a fresh sample (attempt ``a`` of prompt ``i`` is ``sample_seed(seed, i, a)``, so attempt 0 is
    the plain sample of ``sample_n``). The last allowed attempt always runs to the end. An attempt that
    finished within ``after`` tokens and was rejected is kept as a candidate: with ``after`` at the full
    length this is the paper's adaptive resampling, and the answer is the highest-scored finished attempt
    (the first of ties), not the last one. The paper reads the prediction off the model's own next-token
    probability after a fine-tuned prompt; here the predictor is any callable, e.g. the bundled arithmetic
    model's ``restart`` probe or a verifier.
    """
    prompts = check_prompts(prompts, model.vocab_size)
    check_count("after", after)
    check_count("max_attempts", max_attempts)
    if not 0 <= float(threshold) <= 1:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    done: list[list[int] | None] = [None] * len(prompts)
    candidates: dict[int, list[tuple[float, list[int]]]] = {}  # finished, rejected attempts and their scores
    final_score: dict[int, float] = {}
    attempts = [0] * len(prompts)
    calls = pcalls = new = 0
    for a in range(max_attempts):
        rows = [i for i, d in enumerate(done) if d is None]
        if not rows:
            break
        gens = [torch.Generator().manual_seed(sample_seed(seed, i, a)) for i in rows]
        head = generate(model, [prompts[i] for i in rows], sampler, max_new_tokens=min(after, max_new_tokens),
                        generator=gens, eos_token_id=eos_token_id)
        calls, new = calls + head.stats.target_calls, new + head.stats.new_tokens
        for i in rows:
            attempts[i] += 1
        complete = [len(t) >= max_new_tokens or eos_token_id in t for t in head.tokens]
        last = a == max_attempts - 1
        scored = range(len(rows)) if not last else [r for r, i in enumerate(rows) if i in candidates]
        score = {}
        if scored:
            score = dict(zip(scored, predictor([prompts[rows[r]] + head.tokens[r] for r in scored]).tolist()))
            pcalls += 1
        if last:
            keep = list(range(len(rows)))
            final_score.update({rows[r]: v for r, v in score.items()})
        else:
            keep = [r for r in range(len(rows)) if score[r] >= threshold]
            for r in range(len(rows)):
                if complete[r] and score[r] < threshold:
                    candidates.setdefault(rows[r], []).append((score[r], head.tokens[r]))
        finished = [r for r in keep if complete[r]]
        for r in finished:
            done[rows[r]] = head.tokens[r]
        going = [r for r in keep if r not in finished]
        if going:  # continue the kept rows with the same generators (the prefix is re-read in one call)
            tail = generate(model, [prompts[rows[r]] + head.tokens[r] for r in going], sampler,
                            max_new_tokens=max_new_tokens - after, generator=[gens[r] for r in going],
                            eos_token_id=eos_token_id)
            calls, new = calls + tail.stats.target_calls, new + tail.stats.new_tokens
            for r, t in zip(going, tail.tokens):
                done[rows[r]] = head.tokens[r] + t
    for i, found in candidates.items():
        if i in final_score:  # rejected up to the last attempt: the best finished one
            done[i] = max([*found, (final_score[i], done[i])], key=lambda st: st[0])[1]  # the first of ties
    return Restarts([list(d) for d in done], attempts, calls, pcalls, new)  # type: ignore[arg-type]
