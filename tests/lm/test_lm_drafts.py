"""Drafts without a second model (n-gram lookup, early exit), adaptive gamma and history processors:
exact under speculation (whole-sequence laws with negative controls), greedy-identical, batch-independent."""

import itertools

import pytest
import torch
from lm_toy import TableLM, expected_tv, total_variation

from fewstep.lm import (
    AdaptiveGamma,
    NGramDraft,
    Sampler,
    TransformersLM,
    call_seconds,
    drafts,
    early_exit,
    generate,
    measure_verify_cost,
    speculative,
    speculative_generate,
)
from fewstep.lm.processors import History

transformers = pytest.importorskip("transformers")

SAMPLER = Sampler.parse("temperature=0.9,top_p=0.95")
HISTORY = Sampler.parse("repetition_penalty=1.8,no_repeat_ngram_size=2,temperature=0.9")
REPEAT = Sampler.parse("repetition_penalty=1.8,temperature=0.9")  # no_repeat_ngram would ban every n-gram proposal
PROMPT, LENGTH, N = [2, 1], 4, 8000


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one torch thread is faster than two on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def history_law(model, sampler: Sampler, prompt: list[int], length: int) -> dict[tuple, float]:
    """Exact law of every continuation when the processors read each position's history."""
    vocab = model.vocab_size
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    full = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], 1)
    logits, _ = model.logits(full, torch.ones_like(full, dtype=torch.bool), torch.arange(full.shape[1]).expand_as(full),
                             None)
    history = History(full[:, :-1], torch.zeros(len(seqs), dtype=torch.long), ())
    probs = sampler.probs(logits[:, len(prompt) - 1 : -1].double(), history)
    law = probs.gather(-1, seqs[..., None]).squeeze(-1).prod(1)
    return {tuple(s): float(w) for s, w in zip(seqs.tolist(), law)}


def tiny_llama(vocab=4, layers=3, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # peaked laws, so the sequence law is not flat
    return TransformersLM(model)


def tv_run(target, draft, sampler, rows=N, **kw):
    out = speculative_generate(target, draft, [PROMPT] * rows, sampler, max_new_tokens=LENGTH,
                               generator=torch.Generator().manual_seed(7), eos_token_id=None, **kw)
    law = history_law(target, sampler, PROMPT, LENGTH)
    return total_variation(law, out.tokens), expected_tv(law, rows), out.stats


CASES = {
    "history processors, model draft": lambda: (TableLM(0), TableLM(1), HISTORY, {"gamma": 2}),
    "n-gram draft": lambda: (TableLM(0), NGramDraft(2, 1), SAMPLER, {"gamma": 3}),
    "n-gram draft, repetition penalty": lambda: (TableLM(0), NGramDraft(), REPEAT, {"gamma": 2}),
    "adaptive gamma": lambda: (TableLM(0), TableLM(1), SAMPLER, {"gamma": AdaptiveGamma(3, draft_cost=0.2)}),
    "early exit, adaptive gamma": lambda: (lambda t: (t, early_exit(t, 1), SAMPLER, {"gamma": "adaptive",
                                                                                   "rows": 4000}))(tiny_llama()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_new_drafts_are_exact(name):
    target, draft, sampler, kw = CASES[name]()
    tv, expected, stats = tv_run(target, draft, sampler, **kw)
    assert tv < 1.25 * expected, (tv, expected)
    assert 0 < stats.accepted_tokens < stats.draft_tokens


@pytest.mark.parametrize("wrong", ["history left stale", "n-gram rejection resampled from p"])
def test_negative_controls_are_caught(monkeypatch, wrong):
    if wrong == "history left stale":  # processors that do not see the generated tokens
        real = speculative.histories
        monkeypatch.setattr(speculative, "histories", lambda prompts, out, rows, eos, drafted=None: real(
            prompts, [[] for _ in out], rows, eos, drafted))
        tv, expected, _ = tv_run(TableLM(0), TableLM(1), HISTORY, gamma=2)
    else:
        monkeypatch.setattr(speculative, "residual", lambda p, q: p)
        tv, expected, _ = tv_run(TableLM(0), NGramDraft(2, 1), SAMPLER, gamma=3)
    assert tv > 3 * expected, (tv, expected)


def test_negative_control_placeholders_of_shorter_drafts_must_not_be_verified(monkeypatch):
    """Rows proposing fewer tokens than the round's longest (adaptive gamma, n-gram lookup) carry placeholders
    after their draft; verifying those as draft tokens biases the output."""
    verify_single = speculative._verify_single
    monkeypatch.setattr(speculative, "_verify_single", lambda p, q, x, rng, lengths=None: verify_single(p, q, x, rng))
    tv, expected, _ = tv_run(TableLM(0), NGramDraft(2, 1), SAMPLER, gamma=3)
    assert tv > 3 * expected, (tv, expected)


def test_greedy_stays_token_identical():
    prompts = [[2, 1], [0], [3, 3, 1, 0]]
    for target, draft in ((TableLM(0), NGramDraft()), (TableLM(0), TableLM(1)), (tiny_llama(8), None)):
        draft = early_exit(target, 1) if draft is None else draft
        plain = generate(target, prompts, "greedy", max_new_tokens=20, eos_token_id=None).tokens
        for gamma in (3, "adaptive"):
            out = speculative_generate(target, draft, prompts, "greedy", gamma=gamma, max_new_tokens=20,
                                       eos_token_id=None)
            assert out.tokens == plain, (type(draft).__name__, gamma)


def test_rows_do_not_depend_on_the_batch_with_adaptive_gamma_and_lookup():
    prompts = [[2, 1], [0], [3, 3, 1]]
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    for draft in (TableLM(1), NGramDraft()):
        kw = dict(gamma=AdaptiveGamma(4, draft_cost=0.1), max_new_tokens=15, eos_token_id=None)
        together = speculative_generate(TableLM(0), draft, prompts, SAMPLER, generator=gens([4, 5, 6]), **kw)
        alone = [speculative_generate(TableLM(0), draft, [p], SAMPLER, generator=gens([s]), **kw).tokens[0]
                 for p, s in zip(prompts, [4, 5, 6])]
        assert together.tokens == alone


def test_ngram_lookup_proposes_what_followed_the_latest_match():
    d = NGramDraft(max_ngram=2, min_ngram=1)
    assert d.propose([5, 6, 7, 8, 5, 6], 3) == [7, 8, 5]  # bigram [5, 6] seen before, followed by 7 8 5
    assert d.propose([1, 2, 9, 1, 3, 9], 2) == [1, 3]  # only the unigram [9] matches: its latest earlier place
    assert d.propose([1, 2, 3], 4) == []
    with pytest.raises(ValueError, match="min_ngram must be <= max_ngram"):
        NGramDraft(max_ngram=1, min_ngram=2)


def test_adaptive_gamma_follows_the_acceptance_and_is_reported():
    rule = AdaptiveGamma(max_gamma=8, draft_cost=0.1)
    good, bad = rule.choose(torch.tensor([50.0, 0.0]), torch.tensor([1.0, 30.0]), 0.1).tolist()
    assert good == 8 and bad == 1
    assert rule.choose(torch.tensor([3.0]), torch.tensor([1.0]), 0.0).item() == 8  # free drafts: draft the most
    # a costly verification shortens the draft: at a = 0.5 (prior 2:1 plus 1:2 evidence) and c = 0, the value
    # (1 - 0.5^(g + 1)) / (0.5 (1 + v g)) rises with g for v = 0 and peaks at g = 1 for v = 1 (0.75 vs 0.583)
    half = (torch.tensor([1.0]), torch.tensor([2.0]), 0.0)
    assert AdaptiveGamma(max_gamma=8).choose(*half).item() == 8
    assert AdaptiveGamma(max_gamma=8, verify_cost=1.0).choose(*half).item() == 1
    lengths = [AdaptiveGamma(max_gamma=8, verify_cost=v).choose(torch.tensor([9.0]), torch.tensor([2.0]), 0.1).item()
               for v in (0.0, 0.1, 0.2, 0.5)]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    # a measured curve: a call costs 1.5 for 2 to 5 tokens and 3 beyond (extra 0.5 for g = 1..4, 2 after); at
    # a = 0.9 the value (1 - 0.9^(g + 1)) / (0.1 (1.5 + 0.1 g)) peaks at g = 4 (2.16), where the linear rule with
    # the same cost at g = 4, v = 0.125, peaks at g = 6 (2.22 against 2.21 at g = 5 and 2.19 at g = 8)
    curve = AdaptiveGamma(max_gamma=8, verify_cost=[0.5] * 4 + [2.0] * 4)
    assert curve.verify_cost == (0.5,) * 4 + (2.0,) * 4
    assert curve.choose(torch.tensor([16.0]), torch.tensor([1.0]), 0.1).item() == 4
    assert AdaptiveGamma(max_gamma=8, verify_cost=0.125).choose(torch.tensor([16.0]), torch.tensor([1.0]),
                                                                 0.1).item() == 6
    for bad in (-0.1, float("nan"), True, "0.2", (0.1, 0.2), (0.1,) * 7 + (-1.0,)):
        with pytest.raises(ValueError, match=r"verify_cost must be a finite number >= 0 or max_gamma \(8\) of them"):
            AdaptiveGamma(verify_cost=bad)
    stats = speculative_generate(TableLM(0), TableLM(1), [[2, 1]] * 8, SAMPLER, gamma=rule, max_new_tokens=40,
                                 generator=torch.Generator().manual_seed(0), eos_token_id=None).stats
    assert 1 <= stats.mean_draft_length <= 8 and stats.drafted_per_position[0] == stats.drafts
    assert list(stats.drafted_per_position) == sorted(stats.drafted_per_position, reverse=True)
    assert all(0 <= a <= 1 for a in stats.acceptance_per_position if a == a)
    assert stats.target_seconds > 0 and stats.draft_seconds > 0 and stats.overhead_seconds > 0
    with pytest.raises(ValueError, match="num_drafts > 1 needs a model draft and a fixed integer gamma"):
        speculative_generate(TableLM(0), TableLM(1), [[1]], gamma="adaptive", num_drafts=2)
    with pytest.raises(ValueError, match="gamma must be an integer >= 1, 'adaptive' or an AdaptiveGamma"):
        speculative_generate(TableLM(0), TableLM(1), [[1]], gamma="auto")


def test_verify_cost_is_measured_from_call_times(monkeypatch):
    """On a clock that a call of k tokens per row advances by 1 + 0.5 (k - 1) per row, T(5) / T(1) = 3."""

    class Clock:
        now = 0.0

        @classmethod
        def perf_counter(cls):
            return cls.now

    class Costed(TableLM):
        def logits(self, input_ids, attention_mask, position_ids, cache):
            if cache is not None:  # the context fill is not timed
                assert cache.shape[1] == 64 and attention_mask.shape[1] == 64 + input_ids.shape[1]
                Clock.now += input_ids.shape[0] * (1 + 0.5 * (input_ids.shape[1] - 1))
            return super().logits(input_ids, attention_mask, position_ids, cache)

    monkeypatch.setattr(drafts, "time", Clock)
    model = Costed(0)
    assert call_seconds(model, 1, 1) == 1.0 and call_seconds(model, 3, 5) == 9.0
    assert measure_verify_cost(model, max_gamma=4) == pytest.approx((0.5, 1.0, 1.5, 2.0))  # T(1 + g) / T(1) - 1
    assert measure_verify_cost(model, max_gamma=2, batch=2) == pytest.approx((0.5, 1.0))


def test_early_exit_is_the_lower_layers_with_shared_weights():
    target = tiny_llama(vocab=8, layers=3)
    draft = early_exit(target, 2)
    ids = torch.tensor([[1, 2, 3, 4]])
    hf = target.model
    hidden = hf(input_ids=ids, output_hidden_states=True).hidden_states[2]
    expected = hf.lm_head(hf.model.norm(hidden))
    got, _ = draft.logits(ids, torch.ones_like(ids, dtype=torch.bool), torch.arange(4)[None], None)
    torch.testing.assert_close(got, expected)
    assert draft.model.model.layers[0].mlp.up_proj.weight.data_ptr() == hf.model.layers[0].mlp.up_proj.weight.data_ptr()
    with pytest.raises(ValueError, match=r"layers must be an integer in \[1, 2\]"):
        early_exit(target, 3)
    with pytest.raises(ValueError, match="names no fewstep_early_exit layer"):
        early_exit(target)
    with pytest.raises(TypeError, match="needs a TransformersLM"):
        early_exit(TableLM(0), 1)


def test_history_processors_match_transformers():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (5, 14), generator=g)
    scores = torch.randn(5, 6, generator=g)
    history = History(ids, torch.full((5,), 14 - 9), (2,))
    cases = [("repetition_penalty", 1.7, transformers.RepetitionPenaltyLogitsProcessor(1.7)),
             ("no_repeat_ngram_size", 3, transformers.NoRepeatNGramLogitsProcessor(3)),
             ("min_new_tokens", 7, transformers.MinNewTokensLengthLogitsProcessor(9, 7, 2))]
    for name, value, theirs in cases:
        ours = Sampler(((name, value),))(scores, history)
        torch.testing.assert_close(ours, theirs(ids, scores.clone()), msg=name)


def test_different_vocabularies_are_refused_clearly():
    with pytest.raises(ValueError, match=r"vocabulary sizes 4 \(target\) and 5 \(draft\)"):
        speculative_generate(TableLM(0), TableLM(1, vocab=5), [[1]])
