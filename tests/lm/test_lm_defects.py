"""Regression tests for the defects of issue 22 found when fewstep.lm was tried as a new user would."""

import math
import warnings

import pytest
import torch
from lm_toy import TableLM

from fewstep.lm import Sampler, generate, multidraft, speculative_generate
from fewstep.lm import processors as P


class NaNLM(TableLM):
    def logits(self, input_ids, attention_mask, position_ids, cache):
        logits, cache = super().logits(input_ids, attention_mask, position_ids, cache)
        logits[0, -1, 2] = math.nan
        return logits, cache


def test_nan_and_inf_logits_are_named_at_the_step_that_made_them(monkeypatch):
    chain = Sampler.parse("temperature=0.5,top_k=2")
    with pytest.raises(ValueError, match=r"the model's logits contain NaN \(row 1 of 3-token"):
        chain.probs(torch.tensor([[0.0, 1.0, 2.0], [0.0, math.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"the model's logits contain \+inf"):
        chain.probs(torch.tensor([[0.0, math.inf, 1.0]]))
    with pytest.raises(ValueError, match="the model's logits contain NaN"):
        generate(NaNLM(0), [[1, 2]], "temperature=1", max_new_tokens=3)
    broken = P.PROCESSORS["top_k"]._replace(fn=lambda x, k: x * math.nan)  # a processor that breaks finite input
    monkeypatch.setitem(P.PROCESSORS, "top_k", broken)
    with pytest.raises(ValueError, match=r"step 2 \(top_k=2\) of the sampler 'temperature=0.5,top_k=2' contain NaN"):
        chain.probs(torch.tensor([[0.0, 1.0, 2.0]]))


def test_flat_prompt_and_empty_vocabulary_say_what_to_pass():
    with pytest.raises(TypeError, match=r"for one prompt write \[\[1, 2, 3\]\], not \[1, 2, 3\]"):
        generate(TableLM(0), [1, 2, 3])
    with pytest.raises(TypeError, match="prompt 1 must be a list of token ids, got 3"):
        generate(TableLM(0), [[1, 2], 3])
    with pytest.raises(ValueError, match="non-empty vocabulary"):
        Sampler.parse("top_p=0.9").probs(torch.zeros(2, 0))


def test_max_new_tokens_past_the_positions_warns():
    model = TableLM(0)
    model.max_positions = 10
    with pytest.warns(UserWarning, match=r"longest prompt \(3 tokens\) plus 8 new tokens exceeds the model's 10"):
        generate(model, [[1, 2, 3]], max_new_tokens=8)
    with pytest.warns(UserWarning, match="plus 9 new tokens"):  # speculation also scores gamma tokens ahead
        speculative_generate(model, TableLM(1), [[1, 2, 3]], max_new_tokens=5, gamma=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, [[1, 2, 3]], max_new_tokens=7)


def test_typical_can_drop_the_argmax_as_documented_and_as_transformers_does():
    transformers = pytest.importorskip("transformers")
    logits = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()  # the argmax 0 is the least typical token
    ours = P.typical(logits, 0.2)
    theirs = transformers.TypicalLogitsWarper(0.2, min_tokens_to_keep=1)(torch.zeros(1, 1, dtype=torch.long), logits)
    assert torch.isinf(ours[0, 0]) and torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert "except ``typical``" in P.__doc__


def test_priority_plan_ignores_float_noise_between_batch_sizes(monkeypatch):
    """Logits differ by ~1e-6 between batch sizes; the plan (and so a row's output) must not follow the noise."""
    g = torch.Generator().manual_seed(0)
    lp, lq = (torch.rand(600, 64, generator=g, dtype=torch.float64) ** 3).log(), \
        (torch.rand(600, 64, generator=g, dtype=torch.float64) ** 3).log()
    noisy = lambda x: x + 3e-6 * torch.randn(x.shape, generator=g, dtype=torch.float64)  # noqa: E731
    m = torch.full((600,), 3)

    def flips():
        a = multidraft.plan(lp.float().softmax(-1), lq.float().softmax(-1), m)
        b = multidraft.plan(noisy(lp).float().softmax(-1), noisy(lq).float().softmax(-1), m)
        return int(((a.top != b.top).any(1) | ((a.a - b.a).abs() > 1e-3).any(1)).sum())

    assert flips() <= 3
    monkeypatch.setattr(multidraft, "TOLERANCE", 0.0)  # negative control: the exact argmax follows the noise
    assert flips() > 300


def test_multi_draft_rows_are_batch_independent_on_the_bundled_pair():
    pytest.importorskip("transformers")
    from fewstep.lm import load_bundled, load_tokenizer

    target, draft = load_bundled("target"), load_bundled("draft")
    tok = load_tokenizer()
    prompts = [tok.encode(t).ids for t in ("The for statement", "Augmented assignment", "The del statement",
                                           "Comparisons")]
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    kw = dict(gamma=4, num_drafts=3, max_new_tokens=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test is about batch sizes; one thread keeps it fast on a shared machine
    try:
        together = speculative_generate(target, draft, prompts, "temperature=1", generator=gens(range(4)), **kw)
        alone = [speculative_generate(target, draft, [p], "temperature=1", generator=gens([i]), **kw).tokens[0]
                 for i, p in enumerate(prompts)]
    finally:
        torch.set_num_threads(threads)
    assert together.tokens == alone


def test_eos_from_the_model_stop_sequences_and_strings():
    model = TableLM(0)
    model.eos_token_ids = (3,)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = generate(model, [[2, 1]] * 40, max_new_tokens=12, generator=gen()).tokens
    assert all(3 not in row[:-1] for row in out) and any(len(row) < 12 for row in out)
    assert any(3 in row for row in generate(model, [[2, 1]] * 40, max_new_tokens=12, generator=gen(),
                                            eos_token_id=None).tokens[:40])  # None: never ends early
    for fn in (generate, lambda m, *a, **k: speculative_generate(m, TableLM(1), *a, gamma=3, **k)):
        rows = fn(model, [[2, 1]] * 40, max_new_tokens=12, generator=gen(), eos_token_id=None, stop=[[1, 2]]).tokens
        for row in rows:
            ends = [i for i in range(1, len(row)) if row[i - 1 : i + 1] == [1, 2]]
            assert (ends == [len(row) - 1]) if ends else len(row) == 12
    decode = lambda ids: "".join("abcd"[i] for i in ids)  # noqa: E731
    rows = generate(model, [[2, 1]] * 20, max_new_tokens=12, generator=gen(), eos_token_id=None, stop=["cb"],
                    decode=decode).tokens
    assert all(decode(r).find("cb") in (-1, len(r) - 2) and (len(r) == 12 or decode(r).endswith("cb")) for r in rows)
    with pytest.raises(ValueError, match="stop strings need decode="):
        generate(model, [[1]], stop=["x"])


def test_min_new_tokens_holds_off_eos_in_both_decoders():
    model = TableLM(0)
    model.eos_token_ids = (3,)
    for run in (lambda **k: generate(model, [[3, 3]] * 60, **k),
                lambda **k: speculative_generate(model, TableLM(1), [[3, 3]] * 60, gamma=3, **k)):
        rows = run(sampler="min_new_tokens=5", max_new_tokens=9, generator=torch.Generator().manual_seed(1)).tokens
        assert all(len(r) >= 5 and 3 not in r[:5] for r in rows)
        assert any(len(r) < 9 for r in rows)  # EOS is allowed again after 5 tokens


def test_history_processors_need_a_history_and_translate_to_transformers():
    with pytest.raises(ValueError, match="repetition_penalty reads the tokens generated so far"):
        Sampler.parse("repetition_penalty=1.2").probs(torch.zeros(1, 4))
    chain = Sampler.parse("top_p=0.9,temperature=0.7,no_repeat_ngram_size=3,repetition_penalty=1.3", order="hf")
    assert chain.to_hf() == {"do_sample": True, "temperature": 0.7, "top_k": 0, "top_p": 0.9,
                             "repetition_penalty": 1.3, "no_repeat_ngram_size": 3}
    with pytest.raises(ValueError, match="write the steps in that order"):
        Sampler.parse("top_p=0.9,temperature=0.7").to_hf()
