"""Sets of samples that do not repeat themselves: arithmetic sampling and priority sampling.

- Arithmetic sampling (Vilnis et al., arXiv 2210.15458). The model defines an arithmetic code book: a
  code point ``u`` in ``[0, 1)`` is decoded by splitting the interval at each step into the tokens'
  conditional probabilities (in token-id order), emitting the token whose sub-interval holds ``u`` and
  rescaling ``u <- (u - lo) / (hi - lo)``. A sequence owns an interval of width equal to its probability,
  so one uniform ``u`` is one exact sample. The ``n`` samples of a prompt use ``u_j = frac(j / n + delta)``
  with one uniform ``delta``: each alone is an exact sample, and together they are spread evenly over code
  space, so a sequence of probability ``p`` comes out ``floor(n p)`` or ``ceil(n p)`` times.
- Priority sampling (Grubisic et al., arXiv 2402.18734). Deterministic: a priority queue holds unexpanded
  branches (a prefix plus one token that was not taken) keyed by their probability; each new sample pops
  the most probable branch and completes it greedily, queueing the alternatives it passes. The ``k``
  samples are distinct and come in decreasing order of their branch's probability, one decode each.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fewstep.lm.decoding import Stream, append, check_count, check_prompts, full_probs, left_pad
from fewstep.lm.models import CausalLM
from fewstep.lm.processors import Sampler
from fewstep.lm.scaling import Samples, sample_seed


def arithmetic_step(probs: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of arithmetic decoding: the token whose sub-interval holds ``u``, and ``u`` rescaled into it.

    ``probs`` [rows, vocab] (unnormalised is fine), ``u`` [rows] float64 in [0, 1).
    """
    cdf = probs.double().cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    token = (cdf <= u[:, None]).sum(-1).clamp(max=probs.shape[-1] - 1)
    hi = cdf.gather(-1, token[:, None]).squeeze(-1)
    lo = torch.where(token > 0, cdf.gather(-1, (token - 1).clamp(min=0)[:, None]).squeeze(-1), 0.0)
    return token, ((u - lo) / (hi - lo)).clamp(0.0, math.nextafter(1.0, 0.0))


def code_points(n: int, delta: float) -> torch.Tensor:
    """``frac(j / n + delta)`` for ``j = 0 .. n - 1`` (float64): ``n`` evenly spaced codes, randomly shifted."""
    return torch.remainder(torch.arange(n, dtype=torch.float64) / n + delta, 1.0)


def arithmetic_sample(model: CausalLM, prompts: Any, n: int, sampler: str | Sampler = "", *, seed: int = 0,
                      max_new_tokens: int = 64, eos_token_id: int | None = None, batch: int = 4096) -> Samples:
    """Arithmetic sampling (arXiv 2210.15458): ``n`` diverse samples per prompt from one shifted lattice of codes.

    Prompt ``i``'s shift ``delta`` is uniform from ``sample_seed(seed, i, 0)``. Code points lose about one bit
    of float64 precision per bit of a sequence's surprisal: beyond roughly 50 bits (a sequence of
    probability ~1e-15) later tokens are no longer exact.
    """
    sampler = Sampler.parse(sampler)
    prompts = check_prompts(prompts, model.vocab_size)
    check_count("n", n)
    check_count("batch", batch)
    check_count("max_new_tokens", max_new_tokens)
    shifts = [float(np.random.default_rng(sample_seed(seed, i, 0)).random()) for i in range(len(prompts))]
    codes = [code_points(n, delta) for delta in shifts]
    rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
    tokens: list[list[list[int]]] = [[] for _ in prompts]
    calls = new = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        u = torch.stack([codes[i][j] for i, j in chunk])
        out, c = _decode_codes(model, [prompts[i] for i, _ in chunk], sampler, u, max_new_tokens, eos_token_id)
        for (i, _), t in zip(chunk, out):
            tokens[i].append(t)
        calls, new = calls + c, new + sum(map(len, out))
    return Samples(prompts, tokens, calls, new)


def _decode_codes(model, prompts, sampler, u, max_new_tokens, eos_token_id) -> tuple[list[list[int]], int]:
    stream = Stream(model, len(prompts))
    rows = list(range(len(prompts)))
    out: list[list[int]] = [[] for _ in prompts]
    tokens, valid = left_pad(prompts)
    while rows:
        probs = full_probs(model, sampler, stream.feed(tokens, valid)[:, -1])
        nxt, u = arithmetic_step(probs, u)
        finished = append(out, rows, [[t] for t in nxt.tolist()], max_new_tokens, eos_token_id)
        keep = torch.tensor([r for r, f in enumerate(finished) if not f], dtype=torch.long)
        if len(keep) < len(rows):
            stream.select(keep)
            rows, u = [rows[r] for r in keep.tolist()], u[keep]
        tokens, valid = nxt[keep][:, None], None
    return out, stream.calls


@dataclass(frozen=True)
class PrioritySamples:
    """``tokens[i][j]``: sample ``j`` of prompt ``i``; ``priority[i][j]``: log-probability of its branch prefix
    (non-increasing in ``j``); ``log_prob[i][j]``: of the whole sample; ``decodes[i]``: greedy decodes run."""

    tokens: list[list[list[int]]]
    priority: list[list[float]]
    log_prob: list[list[float]]
    decodes: list[int]
    calls: int
    new_tokens: int


def priority_sample(model: CausalLM, prompts: Any, k: int, sampler: str | Sampler = "", *, max_new_tokens: int = 64,
                    eos_token_id: int | None = None) -> PrioritySamples:
    """Priority sampling (arXiv 2402.18734): ``k`` distinct samples per prompt in exactly ``k`` greedy decodes.

    Probabilities are those of ``sampler`` (e.g. ``"top_k=5"`` limits the branches to five per step). The
    first sample is the greedy one. A prompt whose tree holds fewer than ``k`` sequences gets all of them.
    Decode ``r`` of every prompt runs as one batch.
    """
    sampler = Sampler.parse(sampler)
    prompts = check_prompts(prompts, model.vocab_size)
    check_count("k", k)
    check_count("max_new_tokens", max_new_tokens)
    queues: list[list] = [[(-0.0, 0, [])] for _ in prompts]  # (-log p(prefix), tie-break counter, prefix)
    counter = 1
    tokens: list[list[list[int]]] = [[] for _ in prompts]
    priority: list[list[float]] = [[] for _ in prompts]
    log_prob: list[list[float]] = [[] for _ in prompts]
    calls = new = 0
    for _ in range(k):
        rows = [i for i, q in enumerate(queues) if q and len(tokens[i]) < k]
        if not rows:
            break
        popped = [heapq.heappop(queues[i]) for i in rows]
        completions, steps, c = _greedy(model, sampler, [prompts[i] + p[2] for i, p in zip(rows, popped)],
                                        [max_new_tokens - len(p[2]) for p in popped],
                                        [len(p[2]) > 0 and p[2][-1] == eos_token_id for p in popped], eos_token_id)
        calls += c
        for i, (key, _, prefix), tail, path in zip(rows, popped, completions, steps):
            room = k - len(tokens[i]) - 1  # more branches than this can never be popped
            logp = -key
            for s, (t, probs) in enumerate(zip(tail, path)):
                for alt in _alternatives(probs, t, room):
                    branch = logp + math.log(float(probs[alt]))
                    heapq.heappush(queues[i], (-branch, counter, prefix + tail[:s] + [alt]))
                    counter += 1
                logp += math.log(float(probs[t]))
            tokens[i].append(prefix + tail)
            priority[i].append(-key)
            log_prob[i].append(logp)
            new += len(tail)
    return PrioritySamples(tokens, priority, log_prob, [len(t) for t in tokens], calls, new)


def _alternatives(probs: torch.Tensor, taken: int, room: int) -> list[int]:
    """Up to ``room`` most probable tokens other than ``taken`` with probability above zero."""
    if room <= 0:
        return []
    order = torch.argsort(probs, descending=True, stable=True)[: room + 1].tolist()
    return [t for t in order if t != taken and float(probs[t]) > 0][:room]


def _greedy(model, sampler, inputs, budgets, ended, eos_token_id):
    """Greedy completion of every row (first argmax of the sampler's law) and each step's law; rows with
    no budget left or that already end with end-of-sequence get no new token."""
    tails: list[list[int]] = [[] for _ in inputs]
    laws: list[list[torch.Tensor]] = [[] for _ in inputs]
    rows = [r for r in range(len(inputs)) if budgets[r] > 0 and not ended[r]]
    if not rows:
        return tails, laws, 0
    stream = Stream(model, len(rows))
    tokens, valid = left_pad([inputs[r] for r in rows])
    while rows:
        probs = full_probs(model, sampler, stream.feed(tokens, valid)[:, -1]).double()
        probs = probs / probs.sum(-1, keepdim=True)
        nxt = probs.argmax(-1)
        keep = []
        for j, (r, t) in enumerate(zip(rows, nxt.tolist())):
            tails[r].append(t)
            laws[r].append(probs[j])
            if len(tails[r]) < budgets[r] and t != eos_token_id:
                keep.append(j)
        index = torch.tensor(keep, dtype=torch.long)
        if len(keep) < len(rows):
            stream.select(index)
            rows = [rows[j] for j in keep]
        tokens, valid = nxt[index][:, None], None
    return tails, laws, stream.calls
