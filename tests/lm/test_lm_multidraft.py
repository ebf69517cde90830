"""Multi-draft selection rules, checked exactly by enumerating every draft tuple and every coin.

No sampling: the law of the picked token, the output law of selection + verification, and the
acceptance against the linear program over all selection rules are all computed exactly.
"""

import itertools

import pytest
import torch
from lm_toy import random_law

from fewstep.lm import SELECTIONS, multidraft, selection_law, speculative


def cases(seed, count=12):
    """Random (p, q, vocab) with zeros in p or in q, on 4 or 5 tokens."""
    g = torch.Generator().manual_seed(seed)
    for trial in range(count):
        vocab = 4 + trial % 2
        yield random_law(g, vocab, zeros=trial % 2), random_law(g, vocab, zeros=(trial // 2) % 2), vocab


def outcomes(vocab, k, plan):
    """Every draft tuple with every pass/fail coin of each draft: tokens [N, k], coins u [N, k], weights [N]."""
    x = torch.tensor(list(itertools.product(range(vocab), repeat=k)))
    coins = torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)), dtype=torch.float64)
    x, u = x.repeat_interleave(len(coins), 0), coins.repeat(len(x), 1)
    a = plan.a[0][x]  # u = 0 passes wherever a > 0, u = 1 never does
    return x, u, torch.where(u == 0, a, 1 - a).prod(1)


def expand(plan, rows):
    return multidraft.Plan(*(t.expand(rows, -1) for t in (plan.top, plan.a, plan.law)))


@pytest.mark.parametrize("selection", list(SELECTIONS))
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_selection_law_is_the_law_of_the_picked_draft(selection, k):
    """p_I in closed form equals the law of ``pick`` summed over all k-tuples of i.i.d. drafts and all coins."""
    for p, q, vocab in cases(k):
        plan = multidraft.plan(p[None], q[None], torch.tensor([k]), selection)
        x, u, coin = outcomes(vocab, k, plan)
        chosen = multidraft.pick(x, torch.ones_like(x, dtype=torch.bool), expand(plan, len(x)), u)
        weight = coin * q[x].prod(1)
        law = torch.zeros(vocab, dtype=torch.float64).index_add_(0, x[torch.arange(len(x)), chosen], weight)
        torch.testing.assert_close(plan.law[0], law, rtol=0, atol=1e-13)
        if k == 1:
            torch.testing.assert_close(plan.law[0], q, rtol=0, atol=1e-15)


def test_first_accept_keeps_its_closed_form():
    """The scan's law: min(p, q) F(beta) / beta + (q - min(p, q)) (1 - beta)^(m - 1), beta = sum min(p, q)."""
    for p, q, _ in cases(5):
        for m in (1, 2, 3, 5):
            overlap = torch.minimum(p, q)
            beta = overlap.sum()
            law = overlap * (1 - (1 - beta) ** m) / beta + (1 - beta) ** (m - 1) * (q - overlap)
            got = selection_law(p[None], q[None], torch.tensor([m]), "first_accept")[0]
            torch.testing.assert_close(got, law, rtol=0, atol=1e-14)


class Coins:
    """An Rng stand-in for ``verify``: hands out given uniforms and records the law of the final draw."""

    def __init__(self, *uniforms):
        self.uniforms, self.drawn_from = list(uniforms), None

    def uniform(self, rows, n):
        return self.uniforms.pop(0).view(rows, n)

    def sample(self, probs):
        self.drawn_from = probs / probs.sum(-1, keepdim=True)
        return torch.zeros(len(probs), dtype=torch.long)


@pytest.mark.parametrize("selection", list(SELECTIONS))
@pytest.mark.parametrize("k", [2, 3])
def test_selection_then_verification_outputs_p_exactly(selection, k):
    """One position (gamma = 1) through ``speculative.verify`` itself, every tuple, coin and accept/reject
    outcome enumerated: the first output token has law p exactly."""
    for p, q, vocab in cases(10 + k, count=6):
        plan = multidraft.plan(p[None], q[None], torch.tensor([k]), selection)
        x, u, coin = outcomes(vocab, k, plan)
        x, u, coin = x.repeat(2, 1), u.repeat(2, 1), coin.repeat(2)
        accept_coin = torch.cat([torch.zeros(len(x) // 2), torch.ones(len(x) // 2)])  # u = 0 accepts when p(Y) > 0
        rows = len(x)
        bonus = torch.full((vocab,), 1.0 / vocab, dtype=torch.float64)
        target = torch.stack([p, bonus]).expand(rows, k, 2, vocab)
        rng = Coins(accept_coin.float(), u.float())
        n, _, path, _ = speculative.verify(target, q.expand(rows, k, 1, vocab), x[..., None], rng, selection)
        y = x[torch.arange(rows), multidraft.pick(x, torch.ones_like(x, dtype=torch.bool), expand(plan, rows), u)]
        assert torch.equal(x[torch.arange(rows), path][n == 1], y[n == 1])  # an accepted draft carries Y
        accept = torch.where(plan.law[0][y] > 0, (p[y] / plan.law[0][y]).clamp(max=1), 0.0)
        weight = coin * q[x].prod(1) * torch.where(accept_coin == 0, accept, 1 - accept)
        out = torch.zeros(vocab, dtype=torch.float64).index_add_(0, y, weight * (n == 1))
        out += (weight * (n == 0))[:, None].mul(rng.drawn_from).sum(0)
        torch.testing.assert_close(out, p, rtol=0, atol=1e-12)


def lp_optimum(p, q, k):
    """Best acceptance over *all* selection rules for k i.i.d. drafts: the LP over selection weights
    w[tuple, j] (Khisti et al., arXiv 2410.18234, canonical form), solved by scipy."""
    from scipy.optimize import linprog

    vocab = len(p)
    tuples = list(itertools.product(range(vocab), repeat=k))
    nw = len(tuples) * k  # variables: w (one per tuple and draft), then z (one per token)
    cost = [0.0] * nw + [-1.0] * vocab
    a_eq = [[1.0 if t * k <= i < (t + 1) * k else 0.0 for i in range(nw + vocab)] for t in range(len(tuples))]
    a_ub, b_ub = [], []
    for y in range(vocab):
        row = [0.0] * (nw + vocab)  # z_y - p_I(y) <= 0
        for t, xs in enumerate(tuples):
            for j, x in enumerate(xs):
                if x == y:
                    row[t * k + j] = -float(q[list(xs)].prod())
        row[nw + y] = 1.0
        a_ub.append(row)
        b_ub.append(0.0)
    bounds = [(0, 1)] * nw + [(0, float(p[y])) for y in range(vocab)]
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0] * len(tuples), bounds=bounds, method="highs")
    assert res.success
    return -res.fun


def bound(p, q, k):
    """min over token sets S of p(S) + 1 - q(S)^k (accepted on S, plus some draft outside S)."""
    sets = itertools.chain.from_iterable(itertools.combinations(range(len(p)), n) for n in range(len(p) + 1))
    return min(float(p[list(s)].sum() + 1 - q[list(s)].sum() ** k) for s in sets)


@pytest.mark.parametrize("k", [2, 3])
def test_acceptance_against_single_first_accept_and_the_lp_optimum(k):
    """sum min(p, p_I): single draft <= first_accept <= priority <= LP optimum = the set bound."""
    pytest.importorskip("scipy")
    gaps = []
    for p, q, _ in cases(20 + k, count=10):
        accept = {s: float(torch.minimum(p, selection_law(p[None], q[None], torch.tensor([k]), s)[0]).sum())
                  for s in SELECTIONS}
        single, best = float(torch.minimum(p, q).sum()), lp_optimum(p, q, k)
        assert best == pytest.approx(bound(p, q, k), abs=1e-7)  # HiGHS tolerance
        assert single <= accept["first_accept"] + 1e-12 <= accept["priority"] + 2e-12 <= best + 1e-7
        gaps.append(best - accept["priority"])
    assert sum(gaps) / len(gaps) < 2e-3 and max(gaps) < 2e-2, gaps


def test_the_bound_uses_the_lowest_ratio_sets():
    """The set bound is reached on a suffix of the tokens sorted by decreasing p/q (what ``priority`` cuts at)."""
    for p, q, _ in cases(40):
        for k in (2, 3, 5):
            order = torch.argsort(p / q.clamp(min=1e-300), descending=True)
            suffixes = [order[i:] for i in range(len(p) + 1)]
            best = min(float(p[s].sum() + 1 - q[s].sum() ** k) for s in suffixes)
            assert best == pytest.approx(bound(p, q, k), abs=1e-12)
            fast = multidraft.acceptance_bound(p[None], q[None], torch.tensor([k]))
            assert float(fast[0]) == pytest.approx(best, abs=1e-12)


def test_unknown_selection_lists_the_rules():
    with pytest.raises(ValueError, match="selection must be one of 'priority', 'first_accept', got 'best'"):
        multidraft.plan(torch.ones(1, 2) / 2, torch.ones(1, 2) / 2, torch.tensor([2]), "best")
