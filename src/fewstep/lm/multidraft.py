"""Selecting one of ``m`` i.i.d. draft tokens so that the law ``p_I`` of the selected token is exact.

Canonical decomposition (Khisti et al., arXiv 2410.18234): a multi-draft verifier can first pick one
of the drafts with an importance-sampling step, giving a token ``Y`` with law ``p_I``, and then run
single-draft speculative sampling on ``Y`` against ``p_I`` (accept with ``min(1, p/p_I)``, else draw
from ``norm(max(p - p_I, 0))``). Any selection rule is exact this way; the rule only sets the
acceptance ``sum min(p, p_I)``.

Every rule here is a *class priority* rule. Each draft ``X_j = t`` independently joins class
``top[t]`` with probability ``a[t]`` and class ``top[t] + 1`` otherwise; the selected draft is the
first one of the best (lowest) class present. With class masses ``M_c = sum_t q_t P(t joins c)``,
cumulative ``C_c = M_1 + ... + M_c`` and ``F(u) = 1 - (1 - u)^m`` (the chance that one of ``m`` draws
falls in a set of mass ``u``), the best class is ``c`` with probability ``F(C_c) - F(C_{c-1})``, and
given that, the selected token is a draw from class ``c``'s share of ``q`` (the drafts are i.i.d.).
So, in closed form and linear in the vocabulary,

    p_I(t) = sum_c q_t P(t joins c) * iota_c,    iota_c = (F(C_c) - F(C_{c-1})) / M_c.

``"first_accept"``: one pass class, ``a = min(1, p/q)``: scan the drafts, take the first that passes
``u * q(X_j) < min(p, q)(X_j)``, else one that failed; with ``beta = sum min(p, q)`` its law is
``min(p, q) F(beta) / beta + (q - min(p, q)) (1 - beta)^(m - 1)``.

``"priority"`` (the default): four classes, built around an upper bound. For any rule and any token
set ``S``, the accepted mass is at most ``p(S)`` on ``S`` plus ``P(some draft outside S) = 1 - q(S)^m``
off it. The minimising ``S`` holds the tokens of lowest importance ratio ``r = p/q``: if ``i`` is in
a minimiser ``S`` and ``j`` is not, dropping ``i`` and adding ``j`` do not help, so
``p_i <= q(S)^m - (q(S) - q_i)^m <= q_i m q(S)^(m-1)`` and ``p_j >= (q(S) + q_j)^m - q(S)^m >= q_j m q(S)^(m-1)``,
hence ``r_i <= r_j``; so one pass over the tokens sorted by ``r`` finds it. (The tests check that this
bound equals the optimum of the LP over all selection rules, Khisti et al.'s optimal acceptance, for
2 and 3 drafts on small vocabularies.) Let ``H`` be the complement of the minimiser. A rule meets
the bound when drafts in ``H`` always win over the others (then ``p_I(H) = F(q(H))``), ``p_I <= p``
on ``H`` and ``p_I >= p`` off it. ``H`` gets classes 0-1 and the rest classes 2-3. On each side the
top class takes a mass ``b`` of the side's ``q``, chosen on a grid (32 steps) to maximise
``sum min(p, p_I)``; for a given ``b`` the best pass probabilities are the greedy
``a_t = clip((r_t - iota_low) / (iota_high - iota_low), 0, 1)``, rescaled so that they fill ``b``.
The cut is compared with no cut (two classes over the whole vocabulary, a family that contains
``first_accept``, whose ``b`` is on the grid) and the better is used. So the acceptance is never
below ``first_accept``'s by more than ``TOLERANCE`` (1e-4); on random laws it is within a few thousandths
of the optimum on average. Each of these three choices (cut, grid point, cut or not) takes the first
candidate within ``TOLERANCE`` of the best, not the exact best: the logits of a row differ by ~1e-6
between batch sizes, and an exact ``argmax`` over near-equal candidates jumped on that noise, so a row's
output depended on its batch. With the tolerance a choice flips only when a candidate sits within the
noise of the band's edge (tests/lm/test_lm_defects.py measures how rarely).

This is our member of the canonical family, not the paper's Section 4 scheme (weighted importance
sampling; we could not read that section, and a third-party implementation reads it as an LP over
the top-``s`` tokens for two drafts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch


@dataclass(frozen=True)
class Plan:
    """A class priority rule for one position of every row, and the law of the token it selects.

    Attributes:
        top: [B, V] class a draft of token ``t`` joins when it passes; it joins ``top + 1`` otherwise.
        a: [B, V] probability of passing (float64).
        law: [B, V] ``p_I``, the law of the selected token when ``m`` drafts are i.i.d. from ``q``.
    """

    top: torch.Tensor
    a: torch.Tensor
    law: torch.Tensor


def cover(u: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``F(u) = 1 - (1 - u)^m``: probability that one of ``m`` i.i.d. draws lands in a set of mass ``u``."""
    return -torch.expm1(m * torch.log1p(-u.clamp(0, 1)))


def class_law(q: torch.Tensor, top: torch.Tensor, a: torch.Tensor, m: torch.Tensor, classes: int) -> torch.Tensor:
    """``p_I`` of a class priority rule (module docstring) for ``m`` [B] i.i.d. drafts from ``q`` [B, V]."""
    share = torch.zeros(*q.shape, classes, dtype=q.dtype)
    share.scatter_add_(-1, top[..., None], (q * a)[..., None])
    share.scatter_add_(-1, (top + 1)[..., None], (q * (1 - a))[..., None])
    mass = share.sum(1)  # [B, classes]
    reach = cover(torch.cat([torch.zeros_like(mass[:, :1]), mass.cumsum(1)], 1), m[:, None])
    iota = torch.where(mass > 0, reach.diff(dim=1) / mass.clamp(min=torch.finfo(q.dtype).tiny), 0.0)
    return (share * iota[:, None, :]).sum(-1)


def pick(x: torch.Tensor, alive: torch.Tensor, plan: Plan, u: torch.Tensor) -> torch.Tensor:
    """Index [B] of the selected draft among ``x`` [B, k] (only ``alive`` ones): first of the best class."""
    rows = torch.arange(x.shape[0])[:, None]
    k = x.shape[1]
    cls = plan.top[rows, x] + (u >= plan.a[rows, x]).long()
    cls = torch.where(alive, cls, torch.iinfo(torch.long).max // (2 * k))
    return (cls * k + torch.arange(k)).argmin(1)


def _first_accept(p: torch.Tensor, q: torch.Tensor, m: torch.Tensor) -> Plan:
    a = torch.where(q > 0, torch.minimum(p, q) / q.clamp(min=torch.finfo(q.dtype).tiny), 1.0)
    top = torch.zeros_like(p, dtype=torch.long)
    return Plan(top, a, class_law(q, top, a, m, 2))


TOLERANCE = 1e-4  # acceptance given up so that float noise in p and q does not flip the plan's choices


def _first_within(values: torch.Tensor, best: torch.Tensor, sign: int) -> torch.Tensor:
    """Index of the first entry of each row within ``TOLERANCE`` of the row's best (``sign`` 1: max, -1: min).

    An ``argmax`` jumps between near-equal entries on rounding noise (the logits of a row differ by ~1e-6
    between batch sizes); the first entry clearly inside the tolerance band does not, so a row's plan,
    and hence its output, does not depend on the other rows of the batch.
    """
    return (sign * values >= sign * best - TOLERANCE).to(torch.int8).argmax(-1)


def _priority(p: torch.Tensor, q: torch.Tensor, m: torch.Tensor, grid: int = 32) -> Plan:
    """Four classes: the bound's cut ``H`` first, two classes on each side (module docstring)."""
    r, order = _Sorted.of(p, q, m)
    terms = r.bound_terms  # p(S) + 1 - q(S)^m over S = ratio suffixes
    cut = _first_within(terms, terms.amin(1, keepdim=True), -1)  # a minimiser, up to TOLERANCE
    zero, end = torch.zeros_like(cut), torch.full_like(cut, p.shape[1])
    # sides [i0, i1) in ratio order: H and the rest for the cut, and the whole vocabulary for no cut
    i0, i1 = torch.stack([zero, cut, zero], 1), torch.stack([cut, end, end], 1)
    width = r.width(i0, i1)[..., None]
    beta = torch.minimum(p, q).sum(1)[:, None, None].minimum(width)  # first_accept's top class, for no cut
    b = torch.cat([width * torch.arange(1, grid + 1, dtype=p.dtype) / grid, beta], -1)
    value = r.accepted(i0, i1, b)
    best = _first_within(value, value.amax(-1, keepdim=True), 1)[..., None]
    value, b = value.gather(-1, best)[..., 0], b.gather(-1, best)[..., 0]
    use_cut = (value[:, 0] + value[:, 1] + TOLERANCE >= value[:, 2])[:, None]
    i0 = torch.where(use_cut, i0[:, :2], torch.stack([zero, zero], 1))
    i1 = torch.where(use_cut, i1[:, :2], torch.stack([zero, end], 1))
    b = torch.where(use_cut, b[:, :2], torch.stack([torch.zeros_like(b[:, 0]), b[:, 2]], 1))
    a = r.allocate(i0, i1, b)
    top = torch.where(torch.arange(p.shape[1]) < i1[:, :1], 0, 2)  # H: classes 0-1, the rest: 2-3
    a, top = torch.empty_like(a).scatter_(1, order, a), torch.empty_like(top).scatter_(1, order, top)
    return Plan(top, a, class_law(q, top, a, m, 4))


@dataclass(frozen=True)
class _Sorted:
    """Tokens in decreasing ``p/q`` order: ratios, p, q [B, V], cumulative ``cp``, ``cq`` [B, V + 1], m [B, 1].

    A *side* is a range [i0, i1) of this order; it holds the levels of priority [cq[i0], cq[i1]), its
    top class the first ``b`` of them and its low class the rest.
    """

    r: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    m: torch.Tensor

    @classmethod
    def of(cls, p: torch.Tensor, q: torch.Tensor, m: torch.Tensor) -> tuple[_Sorted, torch.Tensor]:
        """The sorted view of ``p``, ``q`` [B, V] with ``m`` [B] drafts, and the order [B, V] it uses."""
        ratio = torch.where(q > 0, p / q.clamp(min=torch.finfo(q.dtype).tiny), torch.inf)
        order = torch.argsort(ratio, dim=1, descending=True, stable=True)
        return cls(ratio.gather(1, order), p.gather(1, order), q.gather(1, order), m[:, None]), order

    @cached_property
    def bound_terms(self) -> torch.Tensor:
        """``p(S) + 1 - q(S)^m`` [B, V + 1] for ``S`` every suffix of the order (the first ``i`` tokens cut off)."""
        return 1 + cover(self.cq, self.m) - self.cp

    @cached_property
    def cp(self) -> torch.Tensor:
        return torch.cat([torch.zeros_like(self.p[:, :1]), self.p.cumsum(1)], 1)

    @cached_property
    def cq(self) -> torch.Tensor:
        return torch.cat([torch.zeros_like(self.q[:, :1]), self.q.cumsum(1)], 1)

    @cached_property
    def neg_r(self) -> torch.Tensor:
        return -self.r  # increasing, for searchsorted

    def width(self, i0: torch.Tensor, i1: torch.Tensor) -> torch.Tensor:
        return self.cq.gather(1, i1) - self.cq.gather(1, i0)

    def iotas(self, i0, i1, b):
        """(high, low) class intensities of sides [B, S] whose top class has mass ``b`` [B, S, N]."""
        lo, hi, m = self.cq.gather(1, i0)[..., None], self.cq.gather(1, i1)[..., None], self.m[..., None]
        f_lo, f_b, f_hi = cover(lo, m), cover(lo + b, m), cover(hi, m)
        high = (f_b - f_lo) / b.clamp(min=1e-300)
        rest = hi - lo - b
        low = torch.where(rest > 1e-12 * (hi - lo), (f_hi - f_b) / rest.clamp(min=1e-300), high)
        return high, low

    def accepted(self, i0, i1, b):
        """``sum min(p, p_I)`` over each side [B, S] for each top-class mass ``b`` [B, S, N], greedy ``a``.

        For fixed ``b``, ``p_I = q (low + a (high - low))`` gains ``high - low`` per unit of ``q a`` until
        ``p_I = p``: the accepted mass is ``sum min(p, q low) + min(b (high - low), room)``, and the sums
        of ``min(p, c q)`` over a side are prefix sums split where the ratio crosses ``c``.
        """
        batch, sides, n = b.shape
        high, low = self.iotas(i0, i1, b)
        lo, hi = i0[..., None], i1[..., None]

        def count(c, right):  # positions in the side with ratio >= c (right) or > c
            j = torch.searchsorted(self.neg_r, -c.reshape(batch, -1), right=right).view(batch, sides, n)
            return torch.minimum(torch.maximum(j, lo), hi)

        at = lambda t, j: t.gather(1, j.reshape(batch, -1)).view(batch, sides, n)  # noqa: E731
        cq0, cp1 = self.cq.gather(1, i0)[..., None], self.cp.gather(1, i1)[..., None]
        j_low, j_above = count(low, True), count(low, False)
        j_high = torch.minimum(count(high, True), j_above)
        base = low * (at(self.cq, j_low) - cq0) + cp1 - at(self.cp, j_low)
        room = (high * (at(self.cq, j_high) - cq0) + at(self.cp, j_above) - at(self.cp, j_high)
                - low * (at(self.cq, j_above) - cq0))
        return torch.where(hi > lo, base + torch.minimum(b * (high - low), room), 0.0)

    def allocate(self, i0, i1, b):
        """Pass probabilities ``a`` [B, V] for sides [B, 2]: greedy, rescaled so each top class has mass ``b``."""
        high, low = (t[..., 0] for t in self.iotas(i0, i1, b[..., None]))
        width, pos = self.width(i0, i1), torch.arange(self.r.shape[1])
        a = torch.zeros_like(self.q)
        for s in range(i0.shape[1]):
            inside = (pos >= i0[:, s, None]) & (pos < i1[:, s, None])
            hs, ls, bs, ws = high[:, s, None], low[:, s, None], b[:, s, None], width[:, s, None]
            want = torch.where(hs > ls, ((self.r - ls) / (hs - ls).clamp(min=1e-300)).clamp(0, 1),
                               (self.r >= hs).to(self.q.dtype))
            want = torch.where(torch.isnan(want), 1.0, want)
            filled = (self.q * want * inside).sum(1, keepdim=True)
            fit = torch.where(filled >= bs, want * bs / filled.clamp(min=1e-300),
                              want + (1 - want) * ((bs - filled) / (ws - filled).clamp(min=1e-300)).clamp(0, 1))
            a = torch.where(inside, fit, a)
        return a


def acceptance_bound(p: torch.Tensor, q: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``min_S p(S) + 1 - q(S)^m`` [B]: no selection rule accepts more among ``m`` [B] i.i.d. drafts from
    ``q`` [B, V] for target ``p`` (module docstring; the minimiser is a lowest-``p/q`` set)."""
    p64, q64 = p.double(), q.double()
    return _Sorted.of(p64, q64 / q64.sum(-1, keepdim=True), m.to(torch.float64))[0].bound_terms.amin(1)


@dataclass(frozen=True)
class Selection:
    """A registered selection rule: ``plan(p, q, m)`` and where it comes from."""

    plan: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Plan]
    summary: str


SELECTIONS: dict[str, Selection] = {
    "priority": Selection(_priority, "four classes by importance ratio p/q around the cut of the acceptance "
                                     "bound min_S p(S) + 1 - q(S)^m"),
    "first_accept": Selection(_first_accept, "the first draft passing u q < min(p, q), else the first one"),
}
DEFAULT = "priority"


def check_selection(name: str) -> str:
    if name not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(map(repr, SELECTIONS))}, got {name!r}")
    return name


def plan(p: torch.Tensor, q: torch.Tensor, m: torch.Tensor, selection: str = DEFAULT) -> Plan:
    """The rule ``selection`` for target ``p`` and draft ``q`` [B, V] with ``m`` [B] drafts; float64 inside.

    ``q`` is renormalised, since the drafts were drawn from ``q / sum(q)``. Rows with ``m = 1`` skip the
    rule: one draft is picked whatever the rule, and ``p_I = q``.
    """
    rule = SELECTIONS[check_selection(selection)]
    p64, q64 = p.double(), q.double()
    q64 = q64 / q64.sum(-1, keepdim=True)
    top, a, law = torch.zeros_like(p, dtype=torch.long), torch.ones_like(q64), q64.clone()
    many = m > 1
    if many.any():
        out = rule.plan(p64[many], q64[many], m[many].to(torch.float64))
        top[many], a[many], law[many] = out.top, out.a, out.law
    return Plan(top, a, law.to(p.dtype))


def selection_law(p: torch.Tensor, q: torch.Tensor, m: torch.Tensor, selection: str = DEFAULT) -> torch.Tensor:
    """``p_I`` [B, V]: the law of the token that ``selection`` picks among ``m`` [B] i.i.d. drafts from ``q``."""
    return plan(p, q, m, selection).law
