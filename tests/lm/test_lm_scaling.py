"""Repeated sampling, pass@k, voting, best-of-n's exact law, compute allocation and restarts (fewstep.lm.scaling)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from lm_toy import TableLM, sequence_law
from scipy import stats

from fewstep.lm import Sampler, generate
from fewstep.lm.scaling import (
    allocate,
    allocate_verified,
    allocation_coverage,
    best_of_n_law,
    coverage,
    held_out_coverage,
    pass_at_k,
    sample_n,
    sample_seed,
    sample_with_restarts,
    vote,
    vote_accuracy,
)


def test_pass_at_k_equals_the_binomial_formula_and_is_unbiased():
    for n, c, k in itertools.product(range(1, 12), range(0, 12), range(1, 12)):
        if c <= n and k <= n:
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6) and pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # unbiased: E[pass@k] over C ~ Binomial(n, p) is exactly 1 - (1 - p)^k, the coverage of k samples
    for n, k, p in [(10, 3, 0.2), (16, 5, 0.05), (7, 7, 0.5)]:
        mean = sum(stats.binom.pmf(c, n, p) * pass_at_k(n, c, k) for c in range(n + 1))
        assert mean == pytest.approx(1 - (1 - p) ** k, abs=1e-12)
    table = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert coverage(table, 1) == pytest.approx((0.25 + 0 + 1) / 3) and coverage(table, 4) == pytest.approx(2 / 3)


@pytest.mark.parametrize("args", [(3, 1, 4), (3, 4, 1), (0, 0, 1), (3, -1, 1), (3.0, 1, 1)])
def test_pass_at_k_refuses_impossible_counts(args):
    with pytest.raises(ValueError, match="pass@k|must be an integer"):
        pass_at_k(*args)


def test_votes():
    answers = ["7", "5", "5", "7", "9"]
    assert vote(answers) == "7"  # tie between 7 and 5: the first seen
    assert vote(answers, [0.1, 0.5, 0.5, 0.1, 0.9], "weighted") == "5"
    assert vote(answers, [0.1, 0.5, 0.5, 0.1, 0.9], "best") == "9"
    assert vote(["a", "b"], [0.5, 0.5], "best") == "a"
    with pytest.raises(ValueError, match="needs one verifier score"):
        vote(answers, None, "weighted")
    with pytest.raises(ValueError, match="vote must be one of"):
        vote(answers, None, "plurality")
    with pytest.raises(ValueError, match="2 scores"):
        vote(answers, [1.0, 2.0], "best")
    truth = ["7", "x"]
    rows = [["7", "7", "5"], ["x", "y", "y"]]
    assert vote_accuracy(rows, truth, 3) == pytest.approx(0.5)
    assert vote_accuracy(rows, truth, 1, draws=3000, seed=1) == pytest.approx((2 / 3 + 1 / 3) / 2, abs=0.03)


def test_best_of_n_law_equals_enumeration_with_ties():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, generator=g, dtype=torch.float64)
    probs /= probs.sum()
    rewards = torch.tensor([0.3, 1.0, 0.3, -2.0, 1.0], dtype=torch.float64)  # two ties
    for n in (1, 2, 3, 4):
        exact = torch.zeros(5, dtype=torch.float64)
        for tup in itertools.product(range(5), repeat=n):
            pick = vote(list(tup), [float(rewards[y]) for y in tup], "best")
            exact[pick] += math.prod(float(probs[y]) for y in tup)
        assert torch.allclose(best_of_n_law(probs, rewards, n), exact, atol=1e-14), n
    assert torch.allclose(best_of_n_law(probs, rewards, 1), probs)
    with pytest.raises(ValueError, match="probability vector"):
        best_of_n_law(probs * 2, rewards, 2)


def test_best_of_n_of_model_samples_follows_the_exact_law():
    """Best-of-4 over the table model's 2-token samples (16 outcomes) against its law: chi-square, and a control."""
    model, prompt, n = TableLM(3), [1], 4
    law = sequence_law(model, Sampler.parse(""), prompt, 2)
    seqs = sorted(law)
    probs = torch.tensor([law[s] for s in seqs], dtype=torch.float64)
    reward = {s: float((3 * s[0] + 5 * s[1]) % 7) for s in seqs}  # ties included
    expected = best_of_n_law(probs, torch.tensor([reward[s] for s in seqs]), n)
    out = sample_n(model, [prompt] * 3000, n, max_new_tokens=2, seed=5)
    picks = [vote([tuple(t) for t in row], [reward[tuple(t)] for t in row], "best") for row in out.tokens]
    counts = torch.tensor([picks.count(s) for s in seqs], dtype=torch.float64)
    keep = expected > 0
    p = stats.chisquare(counts[keep], expected[keep] * len(picks)).pvalue
    assert p > 1e-3 and counts[~keep].sum() == 0
    plain = torch.tensor([sum(tuple(row[0]) == s for row in out.tokens) for s in seqs], dtype=torch.float64)
    assert stats.chisquare(plain[keep], expected[keep] * len(picks), sum_check=False).pvalue < 1e-6  # control


def test_sample_n_is_seeded_per_sample_and_counts_calls():
    model = TableLM(1)
    a = sample_n(model, [[1], [2, 3]], 5, "temperature=1.2", seed=7, max_new_tokens=4)
    b = sample_n(model, [[1], [2, 3]], 2, "temperature=1.2", seed=7, max_new_tokens=4, first=3, batch=3)
    assert a.tokens[0][3:] == b.tokens[0] and a.tokens[1][3:] == b.tokens[1]
    assert a.calls == 4 and b.calls == 2 * 4 and a.new_tokens == 2 * 5 * 4
    gen = torch.Generator().manual_seed(sample_seed(7, 1, 2))
    alone = generate(model, [[2, 3]], "temperature=1.2", max_new_tokens=4, generator=[gen])
    assert alone.tokens[0] == a.tokens[1][2]
    assert sample_seed(0, 0, 1) != sample_seed(0, 1, 0) and sample_seed(1, 0, 0) != sample_seed(0, 0, 0)
    with pytest.raises(ValueError, match="n must be an integer"):
        sample_n(model, [[1]], 0)


def test_allocation_mixes_complementary_configurations_and_never_loses_to_one():
    # config 0 solves only the first half of the problems, config 1 only the second half
    success = torch.tensor([[0.5, 0.0]] * 10 + [[0.0, 0.3]] * 10, dtype=torch.float64)
    counts = allocate(success, 4)
    assert sum(counts) == 4 and min(counts) >= 1
    mixed = allocation_coverage(success, counts)
    assert mixed > max(allocation_coverage(success, [4, 0]), allocation_coverage(success, [0, 4]))
    g = torch.Generator().manual_seed(0)
    for budget in (1, 3, 8, 20):
        s = torch.rand(40, 4, generator=g, dtype=torch.float64) ** 3
        n = allocate(s, budget)
        assert sum(n) <= budget
        best_single = max(allocation_coverage(s, [budget if c == d else 0 for c in range(4)]) for d in range(4))
        assert allocation_coverage(s, n) >= best_single - 1e-12
    cost = [1.0, 3.0]
    n = allocate(success, 7, cost)
    assert n[0] * 1.0 + n[1] * 3.0 <= 7
    with pytest.raises(ValueError, match="cost must hold 2 positive"):
        allocate(success, 4, [1.0])
    with pytest.raises(ValueError, match="budget must afford"):
        allocate(success, 0)


def test_held_out_coverage_is_pass_at_k_per_configuration():
    a = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 0], [1, 1]], dtype=torch.bool)
    assert held_out_coverage([a], [2]) == pytest.approx(coverage(a, 2))
    assert held_out_coverage([a, b], [2, 1]) == pytest.approx((0.5 + 1) / 2)
    assert held_out_coverage([a, b], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="counts must give 0..n_c"):
        held_out_coverage([a, b], [5, 1])


def test_allocation_from_verified_samples_maximises_the_unbiased_estimate():
    g = torch.Generator().manual_seed(1)
    rates = torch.tensor([[0.6, 0.0, 0.2]] * 15 + [[0.0, 0.4, 0.2]] * 15, dtype=torch.float64)
    tables = [torch.rand(30, 12, generator=g, dtype=torch.float64) < rates[:, c : c + 1] for c in range(3)]
    for budget in (1, 2, 5, 12, 30):
        n = allocate_verified(tables, budget)
        assert sum(n) <= budget and all(k <= 12 for k in n)
        got = held_out_coverage(tables, n)
        singles = [held_out_coverage(tables, [min(budget, 12) if c == d else 0 for c in range(3)]) for d in range(3)]
        assert got >= max(singles) - 1e-12
        if budget >= 2:
            assert n[0] > 0 and n[1] > 0  # the complementary configurations are mixed


def test_restarts_prune_by_the_predictor_and_count_attempts():
    model, prompt = TableLM(2), [1, 0]
    law = sequence_law(model, Sampler.parse(""), prompt, 1)
    p2 = law[(2,)]

    def predictor(seqs):
        return torch.tensor([1.0 if s[len(prompt)] == 2 else 0.0 for s in seqs])

    out = sample_with_restarts(model, [prompt] * 4000, predictor, 0.5, after=1, max_attempts=3, max_new_tokens=3)
    first2 = sum(t[0] == 2 for t in out.tokens) / 4000
    exact = 1 - (1 - p2) ** 3
    assert abs(first2 - exact) < 4 * math.sqrt(exact * (1 - exact) / 4000)
    assert all(len(t) == 3 for t in out.tokens) and set(out.attempts) <= {1, 2, 3}
    assert sum(out.attempts) == pytest.approx(4000 * (1 + (1 - p2) + (1 - p2) ** 2), rel=0.05)
    assert out.predictor_calls == 2 and out.new_tokens == sum(out.attempts) + 2 * 4000
    # a predictor that accepts everything gives the plain samples
    keep_all = sample_with_restarts(model, [prompt] * 20, lambda s: torch.ones(len(s)), 0.5, max_new_tokens=3, seed=4)
    plain = sample_n(model, [prompt] * 20, 1, max_new_tokens=3, seed=4)
    assert keep_all.tokens == [row[0] for row in plain.tokens] and keep_all.attempts == [1] * 20
    with pytest.raises(ValueError, match="threshold must be a probability"):
        sample_with_restarts(model, [prompt], predictor, 1.5)


def test_whole_answer_resampling_returns_the_best_scored_attempt():
    """With after = the full length and a threshold nothing reaches, restarts are best-of-m by the predictor."""
    model, prompts, m = TableLM(5), [[1], [2], [3, 1]], 4
    reward = {s: float((2 * s[0] + 3 * s[1]) % 5) / 5 for s in itertools.product(range(4), repeat=2)}

    def predictor(seqs):
        return torch.tensor([reward[tuple(s[-2:])] for s in seqs])

    out = sample_with_restarts(model, prompts * 20, predictor, 1.0, after=2, max_attempts=m, max_new_tokens=2, seed=9)
    plain = sample_n(model, prompts * 20, m, max_new_tokens=2, seed=9)
    for got, row in zip(out.tokens, plain.tokens):
        assert tuple(got) == vote([tuple(t) for t in row], [reward[tuple(t)] for t in row], "best")
    assert out.attempts == [m] * 60 and out.predictor_calls == m
    accept_high = sample_with_restarts(model, prompts, predictor, 0.5, after=2, max_attempts=m, max_new_tokens=2)
    assert all(reward[tuple(t)] >= 0.5 or n == m for t, n in zip(accept_high.tokens, accept_high.attempts))
