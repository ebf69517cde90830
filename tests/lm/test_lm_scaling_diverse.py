"""Arithmetic and priority sampling (fewstep.lm.diverse) on the exact table model."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from lm_toy import TableLM, sequence_law
from scipy import stats

import fewstep.lm.diverse as diverse
from fewstep.lm import Sampler, generate
from fewstep.lm.diverse import arithmetic_sample, arithmetic_step, code_points, priority_sample


def test_arithmetic_step_picks_the_interval_and_rescales():
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25]] * 4)
    u = torch.tensor([0.1, 0.5, 0.7, 0.99], dtype=torch.float64)
    token, nxt = arithmetic_step(probs, u)
    assert token.tolist() == [0, 2, 2, 3]  # the zero-width token 1 is never chosen
    assert torch.allclose(nxt, torch.tensor([0.2, 0.0, 0.8, 0.96], dtype=torch.float64))
    assert torch.allclose(code_points(4, 0.9), torch.tensor([0.9, 0.15, 0.4, 0.65], dtype=torch.float64))


def _chi2(samples: list[tuple], law: dict[tuple, float]) -> float:
    counts = Counter(samples)
    keys = sorted(law)
    observed = torch.tensor([counts.get(k, 0) for k in keys], dtype=torch.float64)
    expected = torch.tensor([law[k] for k in keys], dtype=torch.float64) * len(samples)
    return stats.chisquare(observed, expected).pvalue


def test_each_arithmetic_sample_alone_follows_the_model_and_a_broken_rescale_does_not(monkeypatch):
    model, prompt, sampler = TableLM(6), [1], "temperature=1.4"
    law = sequence_law(model, Sampler.parse(sampler), prompt, 3)
    out = arithmetic_sample(model, [prompt] * 3000, 4, sampler, seed=0, max_new_tokens=3)
    for j in (0, 3):  # sample j of independent prompts: exact draws from the model
        assert _chi2([tuple(row[j]) for row in out.tokens], law) > 1e-3

    def no_rescale(probs, u):  # negative control: keeps u instead of rescaling it into the chosen interval
        return arithmetic_step(probs, u)[0], u

    monkeypatch.setattr(diverse, "arithmetic_step", no_rescale)
    bad = arithmetic_sample(model, [prompt] * 3000, 4, sampler, seed=0, max_new_tokens=3)
    assert _chi2([tuple(row[0]) for row in bad.tokens], law) < 1e-6


def test_arithmetic_samples_spread_over_code_space():
    """A sequence of probability p comes out floor(n p) or ceil(n p) times among a prompt's n samples."""
    model, prompt, n = TableLM(7), [2], 16
    law = sequence_law(model, Sampler.parse(""), prompt, 2)
    out = arithmetic_sample(model, [prompt] * 50, n, max_new_tokens=2, seed=3)
    for row in out.tokens:
        counts = Counter(tuple(t) for t in row)
        for seq, p in law.items():
            assert math.floor(n * p - 1e-6) <= counts.get(seq, 0) <= math.ceil(n * p + 1e-6)
    assert out.calls == 2 and out.new_tokens == 50 * n * 2


def test_priority_sampling_distinct_ordered_in_k_decodes():
    model, prompt, sampler = TableLM(8), [3], "temperature=1.2"
    law = sequence_law(model, Sampler.parse(sampler), prompt, 3)
    k = 10
    out = priority_sample(model, [prompt, [1, 0]], k, sampler, max_new_tokens=3)
    seqs, priority, logp = out.tokens[0], out.priority[0], out.log_prob[0]
    assert out.decodes == [k, k] and len(seqs) == k and len(set(map(tuple, seqs))) == k
    assert all(a >= b - 1e-12 for a, b in zip(priority, priority[1:]))  # decreasing branch probability
    greedy = generate(model, [prompt], "greedy", max_new_tokens=3).tokens[0]
    assert seqs[0] == greedy and priority[0] == 0.0
    for s, lp, pr in zip(seqs, logp, priority):
        assert lp == pytest.approx(math.log(law[tuple(s)]), abs=1e-5) and lp <= pr + 1e-9
    # best-first: nothing left out is more probable than the last branch taken
    left_out = [p for s, p in law.items() if list(s) not in seqs]
    assert max(left_out) <= math.exp(priority[-1]) + 1e-9


def test_priority_sampling_exhausts_the_tree_and_respects_truncation():
    model, prompt = TableLM(9), [0]
    out = priority_sample(model, [prompt], 100, "top_k=2", max_new_tokens=3)
    assert len(out.tokens[0]) == 8 and out.decodes == [8]  # 2^3 sequences, then the tree is empty
    assert sum(math.exp(lp) for lp in out.log_prob[0]) == pytest.approx(1.0, abs=1e-5)
    eos = priority_sample(model, [prompt], 5, max_new_tokens=4, eos_token_id=2)
    for s in eos.tokens[0]:
        assert 2 not in s[:-1] and (len(s) == 4 or s[-1] == 2)
    with pytest.raises(ValueError, match="k must be an integer"):
        priority_sample(model, [prompt], 0)
