"""Speculative sampling: a cheap draft proposes, the target verifies, the output law is the target's.

Single draft (Leviathan et al., arXiv 2211.17192; Chen et al., arXiv 2302.01318). Notation: target
``p``, draft ``q``, both the *final* sampling distributions after each model's processors. The draft
proposes ``x_1..x_gamma``; one target call scores them; ``x_i`` is accepted while ``u * q(x_i) < p(x_i)``
(probability ``min(1, p/q)``); the first rejection resamples from ``norm(max(p - q, 0))``; when all
are accepted a bonus token comes from the target's next distribution. Greedy decoding is the case
where ``p`` and ``q`` are one-hot.

Several drafts (canonical decomposition of Khisti et al., arXiv 2410.18234; SpecTr, arXiv 2310.15141).
``k`` independent draft sequences share the prompt. At each position the ``m`` drafts still consistent
with the accepted prefix carry i.i.d. tokens from ``q``. A selection rule (``fewstep.lm.multidraft``)
picks one of them, ``Y``, whose law ``p_I`` it knows in closed form, and ``Y`` then goes through
single-draft verification against ``p_I`` instead of ``q``. Exactness needs nothing else; with
``m = 1`` every rule gives ``p_I = q``, the single-draft rule. The default rule, ``"priority"``,
ranks tokens by ``p/q`` around the cut of the acceptance bound ``min_S p(S) + 1 - q(S)^m``;
``"first_accept"`` keeps the earlier scan (first draft with ``u * q(X_j) < min(p, q)(X_j)``).

Reduced draft vocabulary (FR-Spec, arXiv 2502.14856): a draft whose ``vocab_ids`` restrict its LM head
proposes only frequent tokens (``q = 0`` elsewhere); verification is unchanged and still exact, the
other tokens come from the residual and bonus draws.

Batches (EMS-SD, arXiv 2405.07542): every row keeps its own acceptance length; rejected slots become
holes in the shared cache, so one target call per round serves all rows and none is re-run to
re-align them. Finished rows leave the batch.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from fewstep.lm.decoding import (
    Generation,
    Generators,
    Rng,
    Stream,
    append,
    check_count,
    check_prompts,
    full_probs,
    left_pad,
)
from fewstep.lm.metrics import DecodeStats
from fewstep.lm.models import CausalLM
from fewstep.lm.multidraft import DEFAULT, check_selection, pick, plan
from fewstep.lm.processors import Sampler


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``max(p - q, 0)``, the law drawn from on rejection (arXiv 2211.17192), unnormalised.

    Falls back to ``p`` where rounding left it empty; with ``q = 0`` it is ``p`` (the bonus draw).
    """
    r = (p - q).clamp(min=0)
    return torch.where(r.sum(-1, keepdim=True) > 0, r, p)


def _verify_single(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor, rng: Rng):
    """One draft per row, all positions at once (Leviathan et al. Alg. 1, arXiv 2211.17192)."""
    batch, gamma = x.shape
    rows = torch.arange(batch)
    u = rng.uniform(batch, gamma)
    p_x = p[:, :gamma].gather(-1, x[..., None])[..., 0]
    q_x = q.gather(-1, x[..., None])[..., 0]
    accepted = (u * q_x < p_x).cumprod(1).bool()
    n = accepted.sum(1)
    stop_q = torch.where((n < gamma)[:, None], q[rows, n.clamp(max=gamma - 1)], 0.0)  # q = 0 at the bonus
    return n, rng.sample(residual(p[rows, n], stop_q)), torch.zeros_like(n), accepted


def verify(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, rng: Rng, selection: str = DEFAULT):
    """Verify ``k`` draft sequences per row.

    Args:
        p: target probabilities [B, k, gamma + 1, V] (position ``i`` scores draft token ``i``).
        q: draft probabilities [B, k, gamma, V], those the drafts were sampled from.
        drafts: draft tokens [B, k, gamma].
        rng: randomness; every row draws the same amount whatever happens in other rows.
        selection: the rule that picks one of the alive drafts (``fewstep.lm.multidraft.SELECTIONS``).

    Returns:
        (n, token, path, accepted): accepted count [B], the corrected or bonus token [B], the index of
        a draft whose first ``n`` tokens are the accepted ones [B], and per-position acceptance [B, gamma].
    """
    batch, k, gamma = drafts.shape
    if k == 1:
        return _verify_single(p[:, 0], q[:, 0], drafts[:, 0], rng)
    rows = torch.arange(batch)
    u = rng.uniform(batch, gamma)
    u_pick = rng.uniform(batch, gamma * k).view(batch, gamma, k)
    alive = torch.ones(batch, k, dtype=torch.bool)
    running = torch.ones(batch, dtype=torch.bool)
    accepted = torch.zeros(batch, gamma, dtype=torch.bool)
    stop_p = stop_q = torch.zeros_like(p[:, 0, 0])  # where each row stops: the final draw is max(p - q, 0)
    for i in range(gamma):
        path = alive.to(torch.int8).argmax(1)  # alive drafts share the prefix, so any one's p, q will do
        p_i, q_i, x = p[rows, path, i], q[rows, path, i], drafts[:, :, i]
        rule = plan(p_i, q_i, torch.where(running, alive.sum(1), 1), selection)  # stopped rows: no work
        y = x[rows, pick(x, alive, rule, u_pick[:, i])]
        law = rule.law
        ok = running & (u[:, i] * law[rows, y] < p_i[rows, y])
        rejected = (running & ~ok)[:, None]
        stop_p, stop_q = torch.where(rejected, p_i, stop_p), torch.where(rejected, law, stop_q)
        accepted[:, i] = ok
        alive = torch.where(ok[:, None], alive & (x == y[:, None]), alive)
        running = ok
    path = alive.to(torch.int8).argmax(1)
    stop_p = torch.where(running[:, None], p[rows, path, gamma], stop_p)  # bonus token: q = 0
    return accepted.sum(1), rng.sample(residual(stop_p, stop_q)), path, accepted


def speculative_generate(target: CausalLM, draft: CausalLM, prompts: Any, sampler: str | Sampler = "", *,
                         draft_sampler: str | Sampler | None = None, gamma: int = 4, num_drafts: int = 1,
                         selection: str = DEFAULT, max_new_tokens: int = 64, generator: Generators = None,
                         eos_token_id: int | None = None) -> Generation:
    """Sample from ``target`` (after ``sampler``) with ``draft`` proposing ``gamma`` tokens a round.

    Args:
        target, draft: ``CausalLM`` models over the same token ids (the draft may have ``vocab_ids``).
        prompts: list of token-id lists, or a [batch, length] LongTensor; any batch size.
        sampler: the target's processor chain; the output follows exactly this distribution.
        draft_sampler: the draft's chain (default: the same); any choice keeps the output exact.
        gamma: draft tokens per round. num_drafts: independent draft sequences per row (``k``).
        selection: how one of the ``k`` drafts is picked at each position (``"priority"`` or
            ``"first_accept"``, see ``fewstep.lm.multidraft``); every rule is exact.
        generator: one ``torch.Generator`` per prompt, or one for the batch.
    """
    sampler = Sampler.parse(sampler)
    draft_sampler = sampler if draft_sampler is None else Sampler.parse(draft_sampler)
    if target.vocab_size != draft.vocab_size:
        raise ValueError(f"target and draft must share a vocabulary, got sizes {target.vocab_size} "
                         f"and {draft.vocab_size}")
    prompts = check_prompts(prompts, target.vocab_size)
    gamma, k = check_count("gamma", gamma), check_count("num_drafts", num_drafts)
    check_selection(selection)
    check_count("max_new_tokens", max_new_tokens)
    start = time.perf_counter()
    batch = len(prompts)
    tgt, dft, rng = Stream(target, batch), Stream(draft, batch), Rng(generator, batch)
    rows = list(range(batch))
    out: list[list[int]] = [[] for _ in prompts]
    tokens_t, valid_t = left_pad(prompts)  # what each cache has not seen yet: the prompts, at first
    tokens_d, valid_d = tokens_t, valid_t
    counts = dict(drafts=0, draft_tokens=0, accepted_tokens=0)
    per_position = torch.zeros(gamma, dtype=torch.long)
    while rows:
        b = len(rows)
        fan = torch.arange(b).repeat_interleave(k)
        krng = rng
        if k > 1:  # every row fans out into k draft sequences that share its cache
            tgt.select(fan)
            dft.select(fan)
            krng = rng.select(fan)
        # 1. draft gamma tokens per row and draft sequence, keeping the probabilities they came from
        tokens, valid, drafted, q = tokens_d[fan], valid_d[fan], [], []
        for _ in range(gamma):
            q.append(full_probs(draft, draft_sampler, dft.feed(tokens, valid)[:, -1]))
            drafted.append(krng.sample(q[-1]))
            tokens, valid = drafted[-1][:, None], None
        drafted_t = torch.stack(drafted, 1)
        # 2. one target call scores every draft position plus the bonus position
        logits = tgt.feed(torch.cat([tokens_t[fan], drafted_t], 1),
                          torch.cat([valid_t[fan], torch.ones_like(drafted_t, dtype=torch.bool)], 1))
        p = full_probs(target, sampler, logits[:, -gamma - 1:])
        v = p.shape[-1]
        n, token, path, accepted = verify(p.view(b, k, gamma + 1, v), torch.stack(q, 1).view(b, k, gamma, v),
                                          drafted_t.view(b, k, gamma), rng, selection)
        # 3. keep each row's accepted path; roll both caches back to it
        if k > 1:
            chosen = torch.arange(b) * k + path
            tgt.select(chosen)
            dft.select(chosen)
            drafted_t = drafted_t[chosen]
        tgt.drop(gamma - n)
        dft.drop(gamma - 1 - n.clamp(max=gamma - 1))  # the draft never saw its last proposal
        counts["drafts"] += b
        counts["draft_tokens"] += b * gamma
        counts["accepted_tokens"] += int(n.sum())
        per_position += accepted.sum(0)
        tokens_t, valid_t = token[:, None], torch.ones(b, 1, dtype=torch.bool)
        tokens_d = torch.stack([drafted_t[:, -1], token], 1)
        valid_d = torch.stack([n == gamma, torch.ones(b, dtype=torch.bool)], 1)
        emitted = torch.cat([drafted_t, token[:, None]], 1).tolist()
        new = [seq[:m] + seq[-1:] for seq, m in zip(emitted, n.tolist())]
        finished = append(out, rows, new, max_new_tokens, eos_token_id)
        if any(finished):
            keep = torch.tensor([r for r in range(b) if not finished[r]], dtype=torch.long)
            tgt.select(keep)
            dft.select(keep)
            rng = rng.select(keep)
            rows = [rows[r] for r in keep.tolist()]
            tokens_t, valid_t, tokens_d, valid_d = tokens_t[keep], valid_t[keep], tokens_d[keep], valid_d[keep]
    stats = DecodeStats(new_tokens=sum(map(len, out)), seconds=time.perf_counter() - start,
                        target_calls=tgt.calls, draft_calls=dft.calls,
                        accepted_per_position=tuple(per_position.tolist()), **counts)
    return Generation(out, stats)
