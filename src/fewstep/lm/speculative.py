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
from typing import Any, Callable, Sequence

import torch

from fewstep.lm.decoding import (
    MODEL,
    Generation,
    Generators,
    Rng,
    Stream,
    append,
    check_count,
    check_positions,
    check_prompts,
    eos_ids,
    full_probs,
    histories,
    left_pad,
    stop_rule,
)
from fewstep.lm.drafts import AdaptiveGamma, NGramDraft
from fewstep.lm.metrics import DecodeStats
from fewstep.lm.models import CausalLM
from fewstep.lm.multidraft import DEFAULT, check_selection, pick, plan
from fewstep.lm.processors import History, Sampler


def check_vocabularies(target: CausalLM, draft: CausalLM) -> None:
    """Target and draft must index the same token-id space (a draft's reduced head is a subset of it)."""
    if target.vocab_size != draft.vocab_size:
        raise ValueError(f"target and draft must share a vocabulary (the same token ids), got vocabulary sizes "
                         f"{target.vocab_size} (target) and {draft.vocab_size} (draft); use a draft trained with "
                         "the target's tokenizer")


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``max(p - q, 0)``, the law drawn from on rejection (arXiv 2211.17192), unnormalised.

    Falls back to ``p`` where rounding left it empty; with ``q = 0`` it is ``p`` (the bonus draw).
    """
    r = (p - q).clamp(min=0)
    return torch.where(r.sum(-1, keepdim=True) > 0, r, p)


def _verify_single(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor, rng: Rng,
                   lengths: torch.Tensor | None = None):
    """One draft per row, all positions at once (Leviathan et al. Alg. 1, arXiv 2211.17192).

    Row ``r`` proposed only its first ``lengths[r]`` tokens (default: all); after them comes its bonus draw.
    """
    batch, gamma = x.shape
    rows = torch.arange(batch)
    if gamma == 0:
        return (torch.zeros(batch, dtype=torch.long), rng.sample(p[:, 0]), torch.zeros(batch, dtype=torch.long),
                torch.zeros(batch, 0, dtype=torch.bool))
    lengths = torch.full((batch,), gamma) if lengths is None else lengths
    u = rng.uniform(batch, gamma, lengths)
    p_x = p[:, :gamma].gather(-1, x[..., None])[..., 0]
    q_x = q.gather(-1, x[..., None])[..., 0]
    accepted = ((u * q_x < p_x) & (torch.arange(gamma) < lengths[:, None])).cumprod(1).bool()
    n = accepted.sum(1)
    stop_q = torch.where((n < lengths)[:, None], q[rows, n.clamp(max=gamma - 1)], 0.0)  # q = 0 at the bonus
    return n, rng.sample(residual(p[rows, n], stop_q)), torch.zeros_like(n), accepted


def verify(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, rng: Rng, selection: str = DEFAULT,
           lengths: torch.Tensor | None = None):
    """Verify ``k`` draft sequences per row.

    Args:
        p: target probabilities [B, k, gamma + 1, V] (position ``i`` scores draft token ``i``).
        q: draft probabilities [B, k, gamma, V], those the drafts were sampled from.
        drafts: draft tokens [B, k, gamma].
        rng: randomness; every row draws the same amount whatever happens in other rows.
        selection: the rule that picks one of the alive drafts (``fewstep.lm.multidraft.SELECTIONS``).
        lengths: [B] draft tokens each row really proposed (single draft only; default ``gamma``).

    Returns:
        (n, token, path, accepted): accepted count [B], the corrected or bonus token [B], the index of
        a draft whose first ``n`` tokens are the accepted ones [B], and per-position acceptance [B, gamma].
    """
    batch, k, gamma = drafts.shape
    if k == 1:
        return _verify_single(p[:, 0], q[:, 0], drafts[:, 0], rng, lengths)
    if lengths is not None and bool((lengths != gamma).any()):
        raise ValueError("several drafts per row need the same draft length in every row")
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


def speculative_generate(target: CausalLM, draft: CausalLM | NGramDraft, prompts: Any, sampler: str | Sampler = "",
                         *, draft_sampler: str | Sampler | None = None, gamma: int | str | AdaptiveGamma = 4,
                         num_drafts: int = 1, selection: str = DEFAULT, max_new_tokens: int = 64,
                         generator: Generators = None, eos_token_id: int | Sequence[int] | None | str = MODEL,
                         stop: Sequence[Sequence[int] | str] = (),
                         decode: Callable[[list[int]], str] | None = None) -> Generation:
    """Sample from ``target`` (after ``sampler``) with ``draft`` proposing up to ``gamma`` tokens a round.

    Args:
        target: a ``CausalLM``.
        draft: a ``CausalLM`` over the same token ids (it may have ``vocab_ids``; ``early_exit(target)``
            is one), or an ``NGramDraft`` (prompt lookup, no second model).
        prompts: list of token-id lists, or a [batch, length] LongTensor; any batch size.
        sampler: the target's processor chain; the output follows exactly this distribution.
        draft_sampler: the draft's chain (default: the same); any choice keeps the output exact.
        gamma: draft tokens per round: an integer, ``"adaptive"`` (``AdaptiveGamma()``) or an
            ``AdaptiveGamma``, which picks each row's length per round from its running acceptance.
        num_drafts: independent draft sequences per row (``k``; a model draft and a fixed ``gamma``).
        selection: how one of the ``k`` drafts is picked at each position (``"priority"`` or
            ``"first_accept"``, see ``fewstep.lm.multidraft``); every rule is exact.
        generator: one ``torch.Generator`` per prompt, or one for the batch.
        eos_token_id, stop, decode: when a row ends, as in ``fewstep.lm.generate``.

    History processors (``repetition_penalty``, ...) in either chain see, at every draft position, the
    prompt, the accepted tokens and the draft tokens before that position, in the draft and in the
    target alike, so the output law is still the target's.
    """
    sampler = Sampler.parse(sampler)
    draft_sampler = sampler if draft_sampler is None else Sampler.parse(draft_sampler)
    lookup = isinstance(draft, NGramDraft)
    if not lookup:
        check_vocabularies(target, draft)
    prompts = check_prompts(prompts, target.vocab_size)
    k = check_count("num_drafts", num_drafts)
    adaptive = AdaptiveGamma() if gamma == "adaptive" else gamma if isinstance(gamma, AdaptiveGamma) else None
    if isinstance(gamma, str) and adaptive is None:
        raise ValueError(f"gamma must be an integer >= 1, 'adaptive' or an AdaptiveGamma, got {gamma!r}")
    gamma = adaptive.max_gamma if adaptive else check_count("gamma", gamma)
    if k > 1 and (lookup or adaptive):
        raise ValueError("num_drafts > 1 needs a model draft and a fixed integer gamma")
    check_selection(selection)
    check_count("max_new_tokens", max_new_tokens)
    eos, stop_test = eos_ids(eos_token_id, target), stop_rule(stop, decode)
    check_positions(target, prompts, max_new_tokens + gamma)
    start = time.perf_counter()
    batch = len(prompts)
    tgt, rng = Stream(target, batch), Rng(generator, batch)
    dft = None if lookup else Stream(draft, batch)
    cost = adaptive.cost(target, draft) if adaptive else 0.0
    successes, failures = torch.zeros(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64)
    rows = list(range(batch))
    out: list[list[int]] = [[] for _ in prompts]
    tokens_t, valid_t = left_pad(prompts)  # what each cache has not seen yet: the prompts, at first
    tokens_d, valid_d = tokens_t, valid_t
    counts = dict(drafts=0, draft_tokens=0, accepted_tokens=0)
    per_position = torch.zeros(gamma, dtype=torch.long)
    drafted_per_position = torch.zeros(gamma, dtype=torch.long)
    history_needed = sampler.needs_history or (draft_sampler.needs_history and not lookup)
    lookup_seconds = 0.0
    while rows:
        b = len(rows)
        index = torch.tensor(rows, dtype=torch.long)
        lengths = adaptive.choose(successes[index], failures[index], cost) if adaptive else torch.full((b,), gamma)
        fan = torch.arange(b).repeat_interleave(k)
        krng = rng
        if k > 1:  # every row fans out into k draft sequences that share its cache
            tgt.select(fan)
            dft.select(fan)
            krng = rng.select(fan)
        base = histories(prompts, out, [rows[i] for i in fan.tolist()], eos) if history_needed else None
        # 1. draft up to gamma tokens per row and draft sequence, keeping the probabilities they came from
        if lookup:
            t0 = time.perf_counter()
            proposals = [draft.propose(prompts[r] + out[r], int(n)) for r, n in zip(rows, lengths.tolist())]
            lengths = torch.tensor([len(x) for x in proposals], dtype=torch.long)
            width = int(lengths.max())
            drafted_t = torch.tensor([x + [0] * (width - len(x)) for x in proposals], dtype=torch.long).view(b, width)
            real = torch.arange(width) < lengths[:, None]
            q_t = torch.nn.functional.one_hot(drafted_t, target.vocab_size).float() * real[..., None]  # one-hot q
            lookup_seconds += time.perf_counter() - t0
        else:
            width = int(lengths.max())
            tokens, valid, drafted, q = tokens_d[fan], valid_d[fan], [], []
            for j in range(width):
                seen = None if base is None else History(torch.cat([base.tokens, *drafted], 1), base.new + j, eos)
                q.append(full_probs(draft, draft_sampler, dft.feed(tokens, valid)[:, -1], seen))
                drafted.append(krng.sample(q[-1], None if adaptive is None else lengths > j)[:, None])
                tokens, valid = drafted[-1], None
            drafted_t, q_t = torch.cat(drafted, 1), torch.stack(q, 1)
        # 2. one target call scores every draft position plus the bonus position
        logits = tgt.feed(torch.cat([tokens_t[fan], drafted_t], 1),
                          torch.cat([valid_t[fan], torch.ones_like(drafted_t, dtype=torch.bool)], 1))
        seen = None if base is None else History(torch.cat([base.tokens, drafted_t], 1), base.new, eos)
        p = full_probs(target, sampler, logits[:, -width - 1:], seen)
        v = p.shape[-1]
        n, token, path, accepted = verify(p.view(b, k, width + 1, v), q_t.view(b, k, width, v),
                                          drafted_t.view(b, k, width), rng, selection, lengths)
        # 3. keep each row's accepted path; roll both caches back to it
        if k > 1:
            chosen = torch.arange(b) * k + path
            tgt.select(chosen)
            dft.select(chosen)
            drafted_t = drafted_t[chosen]
        tgt.drop(width - n)
        if dft is not None:
            dft.drop(width - 1 - n.clamp(max=width - 1))  # the draft never saw its last proposal
        counts["drafts"] += b
        counts["draft_tokens"] += int(lengths.sum())
        counts["accepted_tokens"] += int(n.sum())
        per_position[:width] += accepted.sum(0)
        drafted_per_position[:width] += (torch.arange(width) < lengths[:, None]).sum(0)
        if adaptive is not None:
            successes[index], failures[index] = adaptive.update(successes[index], failures[index], n, lengths)
        tokens_t, valid_t = token[:, None], torch.ones(b, 1, dtype=torch.bool)
        if dft is not None:
            tokens_d = torch.stack([drafted_t[:, -1], token], 1)
            valid_d = torch.stack([n == width, torch.ones(b, dtype=torch.bool)], 1)
            if not bool(valid_d[:, 0].any()):  # no row kept its last draft token: feed no placeholder (no hole)
                tokens_d, valid_d = tokens_d[:, 1:], valid_d[:, 1:]
        emitted = torch.cat([drafted_t, token[:, None]], 1).tolist()
        new = [seq[:m] + seq[-1:] for seq, m in zip(emitted, n.tolist())]
        finished = append(out, rows, new, max_new_tokens, eos, stop_test)
        if any(finished):
            keep = torch.tensor([r for r in range(b) if not finished[r]], dtype=torch.long)
            tgt.select(keep)
            if dft is not None:
                dft.select(keep)
            rng = rng.select(keep)
            rows = [rows[r] for r in keep.tolist()]
            tokens_t, valid_t, tokens_d, valid_d = tokens_t[keep], valid_t[keep], tokens_d[keep], valid_d[keep]
    stats = DecodeStats(new_tokens=sum(map(len, out)), seconds=time.perf_counter() - start,
                        target_calls=tgt.calls, draft_calls=0 if dft is None else dft.calls,
                        accepted_per_position=tuple(per_position.tolist()),
                        drafted_per_position=tuple(drafted_per_position.tolist()),
                        target_seconds=tgt.seconds, draft_seconds=lookup_seconds if dft is None else dft.seconds,
                        **counts)
    return Generation(out, stats)
