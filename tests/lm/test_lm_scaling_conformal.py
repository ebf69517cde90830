"""Conformal sampling (fewstep.lm.conformal): the coverage guarantee, a miscalibrated control, and the sampler."""

from __future__ import annotations

import math
import random

import pytest
import torch
from lm_toy import TableLM

from fewstep.lm.conformal import (
    StoppingRule,
    build_set,
    calibrate,
    confidences,
    conformal_sample,
    covered,
    nonconformity,
)
from fewstep.lm.scaling import sample_n

K_MAX = 16


def synthetic(rng: random.Random, n: int) -> list[tuple[list[str], list[float], list[bool]]]:
    """Problems whose samples are right with a problem-specific rate, scored by a noisy quality score."""
    out = []
    for _ in range(n):
        rate = rng.betavariate(1.5, 1.0)
        answers, quality, correct = [], [], []
        for _ in range(K_MAX):
            ok = rng.random() < rate
            answers.append("right" if ok else f"wrong{rng.randrange(6)}")
            quality.append(1 / (1 + math.exp(-(1.2 * ok - 0.6 + rng.gauss(0, 1)))))
            correct.append(ok)
        out.append((answers, quality, correct))
    return out


def trial_coverages(alpha: float, shift: float, trials: int = 60, n_cal: int = 100, n_test: int = 100,
                    rule: StoppingRule | None = None) -> list[float]:
    """Test coverage of the threshold calibrated at level ``alpha + shift``, one fresh draw per trial."""
    rule = rule or StoppingRule(0.0, K_MAX, "noisy_or", min_quality=0.1)
    rng = random.Random(1)
    out = []
    for _ in range(trials):
        cal, test = synthetic(rng, n_cal), synthetic(rng, n_test)
        cal_ = calibrate([nonconformity(a, q, c, rule) for a, q, c in cal], alpha + shift)
        assert cal_.reachable  # k_max samples reach the level: the guarantee applies
        lam = cal_.threshold
        out.append(sum(covered(nonconformity(a, q, c, rule), lam) for a, q, c in test) / n_test)
    return out


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_split_conformal_coverage_is_nominal_and_a_miscalibrated_threshold_fails(alpha):
    cov = trial_coverages(alpha, 0.0)
    mean = sum(cov) / len(cov)
    se = (sum((c - mean) ** 2 for c in cov) / (len(cov) - 1) / len(cov)) ** 0.5
    # expected coverage lies in [1 - alpha, 1 - alpha + 1 / (n + 1)]
    assert 1 - alpha - 3 * se <= mean <= 1 - alpha + 1 / 101 + 3 * se, (mean, se)
    bad = trial_coverages(alpha, alpha)  # calibrated at level 1 - 2 alpha
    bad_mean = sum(bad) / len(bad)
    assert bad_mean < 1 - alpha - 6 * se, (bad_mean, se)


def test_learn_then_test_holds_with_high_probability():
    alpha, delta = 0.2, 0.1
    rule = StoppingRule(0.0, K_MAX, "noisy_or", min_quality=0.2)
    rng = random.Random(3)
    population = synthetic(rng, 4000)
    s_pop = [nonconformity(a, q, c, rule) for a, q, c in population]
    misses = 0
    for t in range(60):
        cal = random.Random(t).sample(s_pop, 150)
        cal_ = calibrate(cal, alpha, delta)
        risk = sum(not covered(s, cal_.threshold) for s in s_pop) / len(s_pop)
        misses += risk > alpha
        assert cal_.reachable
    assert misses / 60 <= delta + 0.08


def test_sets_and_scores_agree():
    rng = random.Random(5)
    for rule in (StoppingRule(0.7, K_MAX), StoppingRule(0.9, K_MAX, "max", 0.3), StoppingRule(2.0, K_MAX, "sum"),
                 StoppingRule(5, K_MAX, "count")):
        for answers, quality, correct in synthetic(rng, 200):
            kept, used = build_set(answers, quality, rule)
            s = nonconformity(answers, quality, correct, rule)
            assert ("right" in kept) == covered(s, rule.threshold)
            f = confidences(answers, quality, rule)
            assert all(a <= b for a, b in zip(f, f[1:]))  # nested sets
            assert used == K_MAX or f[used - 1] >= rule.threshold
    assert confidences(["a", "a", "b"], [0.5, 0.9, 0.5], StoppingRule(1, 3)) == [0.5, 0.5, 0.75]


def test_calibration_edges_and_errors():
    assert not calibrate([math.inf] * 5 + [0.1] * 5, 0.2).reachable
    cal = calibrate([-math.inf] * 9 + [0.5], 0.2)
    assert cal.threshold == -math.inf and cal.reachable
    assert calibrate([0.1, 0.2, 0.3, 0.4], 0.2).threshold == math.nextafter(0.4, 1)  # the ceil(5 * 0.8) = 4th score
    assert not calibrate([0.1, 0.2, 0.3], 0.2).reachable  # ceil(4 * 0.8) = 4 > 3 calibration problems
    with pytest.raises(ValueError, match="alpha must lie"):
        calibrate([0.1], 1.5)
    with pytest.raises(ValueError, match="delta must lie"):
        calibrate([0.1], 0.1, 2.0)
    with pytest.raises(ValueError, match="set_score must be one of"):
        StoppingRule(0.5, 4, "mean")
    with pytest.raises(ValueError, match="k_max must be"):
        StoppingRule(0.5, 0)


def test_conformal_sample_builds_the_sets_of_the_plain_samples():
    model, prompts = TableLM(4), [[1], [2, 0], [3]]

    def quality(ps, cs):
        return torch.tensor([0.3 + 0.2 * (c[0] == 1) for c in cs])

    rule = StoppingRule(0.8, 6)
    out = conformal_sample(model, prompts, rule, quality, sampler="temperature=1.3", seed=2, max_new_tokens=2)
    plain = sample_n(model, prompts, 6, "temperature=1.3", seed=2, max_new_tokens=2)
    for i, row in enumerate(plain.tokens):
        answers = [tuple(t) for t in row]
        kept, used = build_set(answers, quality(None, row).tolist(), rule)
        assert out.sets[i] == kept and out.samples[i] == used
    assert out.quality_calls == max(out.samples) and out.new_tokens == 2 * sum(out.samples)
