"""Hamiltonian Monte Carlo with a fixed number of leapfrog steps, and the No-U-Turn sampler, batched over chains.

Hamiltonian ``H(x, p) = -log pi(x) + p^T M^-1 p / 2`` with a diagonal mass ``M``; ``p_sharp = M^-1 p``. Both adapt
the step size by dual averaging and ``M^-1`` in Stan's windows (``_adapt``); the initial step size comes from
Hoffman and Gelman's heuristic (arXiv 1111.4246, Alg. 4).

NUTS follows Stan's multinomial variant (Betancourt, arXiv 1701.02434, Sec. A.4-A.5; Hoffman and Gelman, arXiv
1111.4246): the trajectory doubles in a random direction; inside a new subtree a state is drawn with probability
proportional to ``exp(-H)`` (progressively, leaf by leaf); the subtree's draw replaces the current one with
probability ``min(1, W_subtree / W_old)`` (biased progressive sampling); the generalised no-U-turn criterion
``p_sharp(-) . rho > 0 and p_sharp(+) . rho > 0`` is checked on every sub-tree. Two rules: by default
(``turn="trapezoid"``) NumPyro's and BlackJAX's, ``rho`` the sum of the momenta less half of each end's, on the
sub-trees only; with ``turn="sum"`` Stan's, ``rho`` the plain sum, plus Stan's two extra checks across each merge
(the left half with the right half's first state, the right half with the left half's last state). A subtree
that U-turns or diverges (energy error above 1000) is discarded and the transition ends. The acceptance
statistic for adaptation is the mean over every leapfrog state of ``min(1, exp(H0 - H))``.
"""

from __future__ import annotations

import math

import torch

from fewstep.mcmc import _core
from fewstep.mcmc._adapt import Adaptation, initial_step_size
from fewstep.mcmc._core import Result, Run

Tensor = torch.Tensor
MAX_DELTA_H = 1000.0


def _leapfrog(run: Run, x, p, g, eps, inv_mass, idx):
    """One leapfrog step of size ``eps`` ``[n]`` (negative to go back) for chains ``idx``."""
    p = p + 0.5 * eps[:, None] * g
    x = x + eps[:, None] * inv_mass * p
    lp, g = run.density.log_prob_grad(x, idx)
    p = p + 0.5 * eps[:, None] * g
    return x, p, lp, g


def _kinetic(p, inv_mass):
    return 0.5 * (p.square() * inv_mass).sum(-1)


def _first_step_size(run: Run, x, lp, g, inv_mass, step_size):
    """Alg. 4 of arXiv 1111.4246: one leapfrog step per trial."""

    def trial(eps, idx):
        p = run.rng.normal(idx, run.dim) / inv_mass[idx].sqrt()
        x1, p1, lp1, _ = _leapfrog(run, x[idx], p, g[idx], eps[idx], inv_mass[idx], idx)
        return _core.log_acceptance(lp1, lp[idx], -_kinetic(p1, inv_mass[idx]), -_kinetic(p, inv_mass[idx]))

    eps = torch.full((run.chains,), 1.0 if step_size is None else float(step_size), dtype=run.dtype)
    return initial_step_size(trial, eps) if step_size is None and run.warmup > 0 else eps


def hmc(target, chains: int = 4, draws: int = 1000, warmup: int = 1000, seed=0, init: Tensor | None = None,
        n_leapfrog: int = 16, step_size: float | None = None, target_accept: float = 0.8,
        adapt_mass: bool = True) -> Result:
    """Hamiltonian Monte Carlo (Duane et al. 1987, doi:10.1016/0370-2693(87)91197-X; Neal, arXiv 1206.1901):
    ``p ~ N(0, M)``, ``n_leapfrog`` leapfrog steps, accept with probability ``min(1, exp(H(x, p) - H(x', p')))``.

    ``n_leapfrog`` density and gradient evaluations per iteration.
    """
    if isinstance(n_leapfrog, bool) or not isinstance(n_leapfrog, int) or not 1 <= n_leapfrog <= 10_000:
        raise ValueError(f"n_leapfrog must be an integer in 1..10000; got {n_leapfrog!r}")
    run = Run("hmc", target, chains, draws, warmup, seed, init)
    everyone = list(range(chains))
    with run:
        x, lp, g = run.start(grad=True)
        eps0 = _first_step_size(run, x, lp, g, torch.ones_like(x), step_size)
        adapt = Adaptation(eps0, warmup, target_accept, run.dim, adapt_mass)
        for i in run.iterations():
            inv_mass, eps = adapt.inv_mass, adapt.step_size
            p0 = run.rng.normal(None, run.dim) / inv_mass.sqrt()
            y, p, lp_y, g_y = x, p0, lp, g
            for _ in range(n_leapfrog):
                y, p, lp_y, g_y = _leapfrog(run, y, p, g_y, eps, inv_mass, everyone)
            # the momentum densities play the part of the proposal densities in the Hastings ratio
            log_a = _core.log_acceptance(lp_y, lp, -_kinetic(p, inv_mass), -_kinetic(p0, inv_mass))
            x, g, lp = _core.accept_gradient_step(run, adapt, i, log_a, (x, g, lp), (y, g_y, lp_y))
    return run.result(step_size=adapt.step_size, inv_mass=adapt.inv_mass)


TURN_RULES = ("sum", "trapezoid")


def _no_u_turn(p_sharp_minus: Tensor, p_sharp_plus: Tensor, rho: Tensor, inv_mass: Tensor, rule: str) -> Tensor:
    """The generalised criterion (arXiv 1701.02434, Sec. A.4.2): True while the trajectory has not turned.

    ``rule="sum"``: ``rho`` is the sum of the momenta of every state, as in that paper and Stan;
    ``"trapezoid"``: half of each end's momentum is taken off, ``rho - (p(-) + p(+)) / 2``, as NumPyro and BlackJAX
    do (the trapezoid rule for the displacement ``int p dt``)."""
    if rule == "trapezoid":
        rho = rho - 0.5 * (p_sharp_minus + p_sharp_plus) / inv_mass
    return ((p_sharp_plus * rho).sum(-1) > 0) & ((p_sharp_minus * rho).sum(-1) > 0)


def _subtree(run: Run, x, p, g, eps, inv_mass, H0, depth: int, idx: list[int], rule: str):
    """Build ``2^depth`` leapfrog steps from the edge ``(x, p, g)`` for chains ``idx`` (``eps`` signed), stopping a
    chain at its first U-turn or divergence. Returns per chain: valid, the far edge, the momenta of the first and
    last state, ``rho``, ``log W`` and the multinomial draw of the subtree, and the adaptation statistics."""
    n, k = 2 ** depth, len(idx)
    pos = torch.arange(k)
    alive = torch.ones(k, dtype=torch.bool)
    P = torch.zeros(n, k, run.dim, dtype=run.dtype)  # p_sharp of each state, for the sub-tree checks
    S = torch.zeros(n + 1, k, run.dim, dtype=run.dtype)  # prefix sums of the momenta
    log_w = torch.full((k,), -math.inf, dtype=run.dtype)
    draw_x, draw_lp, draw_g = x.clone(), torch.zeros(k, dtype=run.dtype), g.clone()
    acc_sum = torch.zeros(k, dtype=run.dtype)
    steps = torch.zeros(k, dtype=torch.int64)
    divergent = torch.zeros(k, dtype=torch.bool)
    first_p = p.clone()
    everyone = True
    for t in range(n):
        a = slice(None) if everyone else pos[alive]
        chains = idx if everyone else [idx[j] for j in a.tolist()]
        xa, pa, lpa, ga = _leapfrog(run, x[a], p[a], g[a], eps[a], inv_mass[a], chains)
        x[a], p[a], g[a] = xa, pa, ga
        H = -lpa + _kinetic(pa, inv_mass[a])
        delta = torch.nan_to_num(H - H0[a], nan=math.inf)
        steps[a] += 1
        acc_sum[a] += torch.exp(-delta.clamp(min=0))
        ok = delta <= MAX_DELTA_H
        divergent[a] |= ~ok
        # progressive uniform sampling: the new leaf replaces the draw with probability w / W
        log_w_new = torch.logaddexp(log_w[a], -delta)
        take = run.rng.uniform(chains).log() < -delta - log_w_new
        log_w[a] = log_w_new
        rows = pos[a][take]
        draw_x[rows], draw_lp[rows], draw_g[rows] = xa[take], lpa[take], ga[take]
        if t == 0:
            first_p = pa.clone()
        P[t, a], S[t + 1, a] = inv_mass[a] * pa, S[t, a] + pa
        levels = [level for level in range(1, depth + 1) if (t + 1) % 2 ** level == 0]
        if levels:  # each finished sub-tree [s, t] with halves split at m: whole, and for Stan's rule also
            # its extra checks, left + m and m - 1 + right
            s_ = [t + 1 - 2 ** lv for lv in levels]
            m_ = [t + 1 - 2 ** (lv - 1) for lv in levels] if rule == "sum" else []
            ends = [t] * len(m_)
            minus = P[s_ + s_[:len(m_)] + [m - 1 for m in m_]][:, a]
            plus = P[[t] * len(levels) + m_ + ends][:, a]
            rho = (S[[t + 1] * len(levels) + [m + 1 for m in m_] + [e + 1 for e in ends]]
                   - S[s_ + s_[:len(m_)] + [m - 1 for m in m_]])[:, a]
            ok &= _no_u_turn(minus, plus, rho, inv_mass[a], rule).all(dim=0)
        alive[a] = ok
        everyone = everyone and bool(ok.all())
    return dict(valid=alive, x=x, p=p, g=g, p_first=first_p, rho=S[n], log_w=log_w, draw_x=draw_x, draw_lp=draw_lp,
                draw_g=draw_g, acc_sum=acc_sum, steps=steps, divergent=divergent)


def _nuts_transition(run: Run, x, lp, g, eps, inv_mass, max_depth: int, rule: str = "trapezoid"):
    C = run.chains
    p0 = run.rng.normal(None, run.dim) / inv_mass.sqrt()
    H0 = -lp + _kinetic(p0, inv_mass)
    left = [x.clone(), p0.clone(), g.clone()]
    right = [x.clone(), p0.clone(), g.clone()]
    rho, log_w = p0.clone(), torch.zeros(C, dtype=run.dtype)
    new_x, new_lp, new_g = x.clone(), lp.clone(), g.clone()
    active = torch.ones(C, dtype=torch.bool)
    depth = torch.zeros(C, dtype=torch.int64)
    acc_sum = torch.zeros(C, dtype=run.dtype)
    steps = torch.zeros(C, dtype=torch.int64)
    divergent = torch.zeros(C, dtype=torch.bool)
    for j in range(max_depth):
        a = active.nonzero().flatten()
        if len(a) == 0:
            break
        chains = a.tolist()
        forward = run.rng.uniform(chains) < 0.5
        edge = [torch.where(forward[:, None], r[a], l[a]) for l, r in zip(left, right)]
        sign = torch.where(forward, 1.0, -1.0).to(run.dtype)
        sub = _subtree(run, *edge, sign * eps[a], inv_mass[a], H0[a], j, chains, rule)
        acc_sum[a] += sub["acc_sum"]
        steps[a] += sub["steps"]
        divergent[a] |= sub["divergent"]
        depth[a] = j + 1
        valid = sub["valid"]
        # biased progressive sampling between the old trajectory and the new subtree
        take = valid & (run.rng.uniform(chains).log() < sub["log_w"] - log_w[a])
        ta = a[take]
        new_x[ta], new_lp[ta], new_g[ta] = sub["draw_x"][take], sub["draw_lp"][take], sub["draw_g"][take]
        # merge the subtree into the trajectory (spatial order: left ... right)
        ims = inv_mass[a]
        old_left_p, old_right_p, old_rho = left[1][a], right[1][a], rho[a]
        for side, far in ((right, forward), (left, ~forward)):
            rows = a[valid & far]
            side[0][rows], side[1][rows], side[2][rows] = (sub["x"][valid & far], sub["p"][valid & far],
                                                           sub["g"][valid & far])
        log_w[a] = torch.where(valid, torch.logaddexp(log_w[a], sub["log_w"]), log_w[a])
        rho[a] = torch.where(valid[:, None], old_rho + sub["rho"], old_rho)
        # checks across the merge: whole trajectory, then each half extended by the other half's nearest state
        f = forward[:, None]
        bck_rho = torch.where(f, old_rho, sub["rho"])
        fwd_rho = torch.where(f, sub["rho"], old_rho)
        bck_first = torch.where(f, old_left_p, sub["p"])  # spatially leftmost momentum of the left half
        bck_last = torch.where(f, old_right_p, sub["p_first"])
        fwd_first = torch.where(f, sub["p_first"], old_left_p)
        fwd_last = torch.where(f, sub["p"], old_right_p)
        turn_ok = _no_u_turn(ims * bck_first, ims * fwd_last, bck_rho + fwd_rho, ims, rule)
        if rule == "sum":  # Stan's extra checks; NumPyro and BlackJAX check the whole trajectory only
            turn_ok &= _no_u_turn(ims * bck_first, ims * fwd_first, bck_rho + fwd_first, ims, rule)
            turn_ok &= _no_u_turn(ims * bck_last, ims * fwd_last, fwd_rho + bck_last, ims, rule)
        active[a] = valid & turn_ok
    accept_stat = acc_sum / steps.clamp(min=1)
    return new_x, new_lp, new_g, accept_stat, depth, steps, divergent


def nuts(target, chains: int = 4, draws: int = 1000, warmup: int = 1000, seed=0, init: Tensor | None = None,
         max_depth: int = 10, step_size: float | None = None, target_accept: float = 0.8,
         adapt_mass: bool = True, turn: str = "trapezoid") -> Result:
    """The No-U-Turn sampler, multinomial with the generalised criterion (Hoffman and Gelman, arXiv 1111.4246;
    Betancourt, arXiv 1701.02434): see the module docstring. At most ``2^max_depth - 1`` leapfrog steps (density
    and gradient evaluations) per iteration; ``stats`` holds ``tree_depth``, ``n_leapfrog`` and ``divergent``
    per draw. ``turn`` picks the criterion's ``rho``: ``"trapezoid"`` (the default, NumPyro's and BlackJAX's:
    half of each end's momentum off, sub-trees only) or ``"sum"`` of every state's momentum with Stan's extra
    checks (both compared with BlackJAX over seeds in ``benchmarks/mcmc_nuts_repeats.py``).
    """
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 1 <= max_depth <= 15:
        raise ValueError(f"max_depth must be an integer in 1..15; got {max_depth!r}")
    if turn not in TURN_RULES:
        raise ValueError(f"turn must be one of {', '.join(map(repr, TURN_RULES))}; got {turn!r}")
    run = Run("nuts", target, chains, draws, warmup, seed, init)
    with run:
        x, lp, g = run.start(grad=True)
        eps0 = _first_step_size(run, x, lp, g, torch.ones_like(x), step_size)
        adapt = Adaptation(eps0, warmup, target_accept, run.dim, adapt_mass)
        for i in run.iterations():
            x, lp, g, stat, depth, steps, divergent = _nuts_transition(run, x, lp, g, adapt.step_size,
                                                                       adapt.inv_mass, max_depth, turn)
            adapt.update(i, stat, x)
            run.record(i, x, lp, stat, tree_depth=depth, n_leapfrog=steps, divergent=divergent)
    return run.result(step_size=adapt.step_size, inv_mass=adapt.inv_mass)
