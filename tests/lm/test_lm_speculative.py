"""Exactness of speculative sampling: one-step identities, whole-sequence laws, a negative control."""

import dataclasses

import pytest
import torch
from lm_toy import TableLM, expected_tv, random_law, sequence_law, total_variation

from fewstep.lm import generate, multidraft, speculative, speculative_generate
from fewstep.lm.decoding import Rng
from fewstep.lm.processors import Sampler


def test_one_step_identity_single_draft():
    """q * min(1, p/q) + P(reject) * norm(max(p - q, 0)) == p, exactly, on random laws with zeros."""
    g = torch.Generator().manual_seed(0)
    for trial in range(100):
        vocab = 2 + trial % 30
        p, q = random_law(g, vocab, zeros=trial % 3), random_law(g, vocab, zeros=(trial + 1) % 3)
        accept = torch.where(q > 0, torch.minimum(torch.ones_like(p), p / q), torch.zeros_like(p))
        reject = 1 - (q * accept).sum()
        res = speculative.residual(p, q)
        out = q * accept + (reject * res / res.sum() if reject > 0 else 0)
        torch.testing.assert_close(out, p, rtol=0, atol=1e-12)


SAMPLER = Sampler.parse("temperature=0.9,top_p=0.95")
PROMPT, LENGTH, N = [2, 1], 4, 12000
SIZES = (750, 3000, N)


def tv_curve(draft, **kw):
    key = (draft.vocab_size, None if draft.vocab_ids is None else tuple(draft.vocab_ids.tolist()),
           speculative.verify, speculative.residual, speculative.plan, tuple(sorted(kw.items())))
    if key not in _CURVES:
        _CURVES[key] = _tv_curve(draft, **kw)
    return _CURVES[key]


_CURVES: dict = {}


def _tv_curve(draft, **kw):
    out = speculative_generate(TableLM(0), draft, [PROMPT] * N, SAMPLER, gamma=2, max_new_tokens=LENGTH,
                               generator=torch.Generator().manual_seed(7), **kw)
    law = sequence_law(TableLM(0), SAMPLER, PROMPT, LENGTH)
    return [total_variation(law, out.tokens[:n]) for n in SIZES], expected_tv(law, N), out.stats


@pytest.mark.parametrize("name, draft, kw", [
    ("single draft", TableLM(1), {}),
    ("3 drafts", TableLM(1), {"num_drafts": 3}),
    ("3 drafts, first_accept selection", TableLM(1), {"num_drafts": 3, "selection": "first_accept"}),
    ("reduced draft vocabulary", TableLM(1, vocab_ids=[0, 2]), {}),
    ("draft with its own sampler", TableLM(1), {"draft_sampler": "temperature=1.5,top_k=2"}),
])
def test_whole_sequence_law_matches_target(name, draft, kw):
    """Sequences of 4 tokens (two rounds of gamma=2): TV to the exact law shrinks like an exact sampler's."""
    tv, expected, stats = tv_curve(draft, **kw)
    assert tv[0] > tv[1] > tv[2], tv
    assert tv[2] < 1.2 * expected, (tv, expected)
    assert 0 < stats.acceptance_rate < 1


def test_plain_sampling_matches_target_too():
    law = sequence_law(TableLM(0), SAMPLER, PROMPT, LENGTH)
    out = generate(TableLM(0), [PROMPT] * N, SAMPLER, max_new_tokens=LENGTH, generator=torch.Generator().manual_seed(7))
    assert total_variation(law, out.tokens) < 1.2 * expected_tv(law, N)


def accept_everything(p, q, drafts, rng, selection="priority", lengths=None):
    batch, _, gamma = drafts.shape
    return (torch.full((batch,), gamma), rng.sample(p[:, 0, gamma]), torch.zeros(batch, dtype=torch.long),
            torch.ones(batch, gamma, dtype=torch.bool))


def verify_against_q(p, q, m, selection):
    """The tempting mistake: select among several drafts, then verify as if the selected token came from q."""
    return dataclasses.replace(multidraft.plan(p, q, m, selection), law=q)


@pytest.mark.parametrize("wrong, kw", [
    ("accept everything", {}),
    ("resample from p, not the residual", {}),
    ("3 drafts verified against q, not p_I", {"num_drafts": 3}),
])
def test_negative_control_wrong_rules_fail(monkeypatch, wrong, kw):
    if wrong == "accept everything":
        monkeypatch.setattr(speculative, "verify", accept_everything)
    elif wrong.startswith("resample"):
        monkeypatch.setattr(speculative, "residual", lambda p, q: p)
    else:
        monkeypatch.setattr(speculative, "plan", verify_against_q)
    tv, expected, _ = tv_curve(TableLM(1), **kw)
    assert tv[2] > 3 * expected, (tv, expected)  # a bias that more samples do not wash out


def test_multi_draft_accepts_more_than_single():
    singles = tv_curve(TableLM(1))[2].acceptance_rate
    first = tv_curve(TableLM(1), num_drafts=3, selection="first_accept")[2].acceptance_rate
    priority = tv_curve(TableLM(1), num_drafts=3)[2].acceptance_rate
    assert first > singles + 0.05 and priority > first, (singles, first, priority)


def test_per_row_generators_make_rows_independent_of_batch():
    prompts = [[2, 1], [0], [3, 3, 1]]
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    for k in (1, 2):
        together = speculative_generate(TableLM(0), TableLM(1), prompts, SAMPLER, gamma=3, num_drafts=k,
                                        max_new_tokens=9, generator=gens([10, 11, 12])).tokens
        alone = [speculative_generate(TableLM(0), TableLM(1), [p], SAMPLER, gamma=3, num_drafts=k, max_new_tokens=9,
                                      generator=gens([s])).tokens[0] for p, s in zip(prompts, [10, 11, 12])]
        assert together == alone


def test_stats_follow_vllm_definitions():
    stats = speculative_generate(TableLM(0), TableLM(1), [[2, 1]], SAMPLER, gamma=3, max_new_tokens=40,
                                 generator=torch.Generator().manual_seed(0)).stats
    assert stats.target_calls == stats.drafts and stats.draft_calls == 3 * stats.drafts
    assert stats.draft_tokens == 3 * stats.drafts
    assert sum(stats.accepted_per_position) == stats.accepted_tokens
    assert list(stats.accepted_per_position) == sorted(stats.accepted_per_position, reverse=True)
    assert stats.mean_acceptance_length == pytest.approx(1 + stats.accepted_tokens / stats.drafts)
    assert stats.new_tokens == 40 and stats.target_calls_per_token < 1
    assert set(stats.to_dict()) >= {"acceptance_rate", "acceptance_per_position", "tokens_per_second"}


def test_a_single_row_leaves_no_hole_in_either_cache():
    """A lone row rolls both caches back by cropping, and its draft is never fed a placeholder slot."""

    class Recording(TableLM):
        def logits(self, input_ids, attention_mask, position_ids, cache):
            self.masks.append(attention_mask.clone())
            return super().logits(input_ids, attention_mask, position_ids, cache)

    target, draft = Recording(0), Recording(1)
    target.masks, draft.masks = [], []
    stats = speculative_generate(target, draft, [[2, 1]], SAMPLER, gamma=3, max_new_tokens=60,
                                 generator=torch.Generator().manual_seed(0)).stats
    assert 0 < stats.accepted_tokens < stats.draft_tokens  # rounds with rejections and with full acceptance
    assert all(bool(m.all()) for m in target.masks + draft.masks)


def test_eos_and_length_stop_each_row():
    out = speculative_generate(TableLM(0), TableLM(1), [[2, 1]] * 50, SAMPLER, gamma=3, max_new_tokens=7,
                               generator=torch.Generator().manual_seed(0), eos_token_id=3)
    for row in out.tokens:
        assert 1 <= len(row) <= 7 and (len(row) == 7 or row[-1] == 3) and 3 not in row[:-1]


def test_bad_input_raises_with_the_allowed_values():
    t, d = TableLM(0), TableLM(1)
    with pytest.raises(ValueError, match="gamma must be an integer >= 1, got 0"):
        speculative_generate(t, d, [[1]], gamma=0)
    with pytest.raises(ValueError, match="selection must be one of 'priority', 'first_accept', got 'best'"):
        speculative_generate(t, d, [[1]], num_drafts=2, selection="best")
    with pytest.raises(ValueError, match="share a vocabulary"):
        speculative_generate(t, TableLM(1, vocab=5), [[1]])
    with pytest.raises(ValueError, match=r"prompt 0 must be a non-empty list of token ids in \[0, 4\)"):
        speculative_generate(t, d, [[7]])
    with pytest.raises(TypeError, match="list of 2 torch.Generators"):
        Rng([torch.Generator()], 2)
