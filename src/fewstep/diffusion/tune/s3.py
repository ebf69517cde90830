"""S3: search over per-step solver schedules (USF's solver schedule search).

Liu et al., *A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic Models*,
arXiv 2312.07243. A candidate is a time grid plus, for every step, a Taylor order (1-3), a prediction
type (data or noise), a free corrector on or off and a relaxation of its derivative estimate; it runs
as the registered solver ``usf``. As in
the paper's S3, candidates are ranked by a cheap predictor of final quality, here the RMSE against
cached reference ODE solutions on a small batch of tuning seeds:

1. seed a population with Karras grids of several ``rho`` and starting sigmas, and a few hand-made
   per-step solvers (UniPC-, DPM-Solver++- and iPNDM-like) next to random ones;
2. evolve it (``mu + lambda``): children mutate one gene (an interior sigma, the start, the end,
   ``rho`` of the whole grid, one step's order, prediction, corrector or relaxation, or the starting point:
   USF's ``average_x0``, the model's data mean in place of the first evaluation) or cross two parents;
3. refine the best candidate's sigmas and relaxations one at a time, the others fixed (line searches);
4. re-rank the finalists on all tuning seeds and keep the best.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fewstep.diffusion.solvers.usf import MAX_ORDER, PREDICTIONS
from fewstep.diffusion.tune import _tuning as T
from fewstep.diffusion.tune.ays import loglinear_interp
from fewstep.limits import MAX_SEEDS
from fewstep.seeds import EVAL_SEEDS, TUNE_SEEDS


@dataclass(frozen=True)
class Candidate:
    """A per-step solver schedule: ``sigmas`` (``N + 1`` entries ending in 0), one entry per step, and
    whether the first evaluation is replaced by the data mean (then ``N`` steps cost ``N - 1``)."""

    sigmas: tuple[float, ...]
    orders: tuple[int, ...]
    predictions: tuple[str, ...]
    correctors: tuple[bool, ...]
    relax: tuple[float, ...]
    first: bool = False

    @property
    def n(self) -> int:
        return len(self.sigmas) - 1


class Search:
    """The search state: the search space's bounds, a seeded RNG and the memoised predictor."""

    def __init__(self, predictor, nfe: int, s_max: float, s_min: float, rng: random.Random):
        self.predict, self.nfe, self.s_max, self.s_min, self.rng = predictor, nfe, s_max, s_min, rng
        self.mean = [float(v) for v in predictor.ref.mean(0).flatten()]  # the model's own data mean
        self.cache: dict[Candidate, float] = {}

    def options(self, c: Candidate) -> dict:
        return {"orders": list(c.orders), "predictions": list(c.predictions), "correctors": list(c.correctors),
                "relax": list(c.relax), "first_x0": self.mean if c.first else None}

    def score(self, c: Candidate) -> float:
        if c not in self.cache:
            self.cache[c] = self.predict(list(c.sigmas), "usf", self.options(c))
        return self.cache[c]

    def grid(self, n: int, rho: float, start: float, end: float) -> tuple[float, ...]:
        return tuple(float(v) for v in T.karras_grid(n, end, start, rho))

    def seeds(self, count: int) -> list[Candidate]:
        """Hand-made starting points, then random ones, ``count`` in all."""
        r, out = self.rng, []
        plans = [(2, "data", True), (3, "data", True), (2, "noise", False), (2, "data", False), (3, "noise", True)]
        for rho in (7.0, 3.0):
            for first in (False, True):
                n = self.nfe + first
                for o, p, c in plans:
                    out.append(Candidate(self.grid(n, rho, self.s_max, self.s_min), (o,) * n, (p,) * n, (c,) * n,
                                         (0.0,) * n, first))
        while len(out) < count:
            first = r.random() < 0.5
            n = self.nfe + first
            start = self.s_max * math.exp(-r.uniform(0, math.log(4)))
            out.append(Candidate(self.grid(n, r.uniform(1.5, 12), start, self.s_min * math.exp(r.uniform(0, 1.5))),
                                 tuple(r.randint(1, MAX_ORDER) for _ in range(n)),
                                 tuple(r.choice(PREDICTIONS) for _ in range(n)),
                                 tuple(r.random() < 0.5 for _ in range(n)), (0.0,) * n, first))
        return out[:count]

    def mutate(self, c: Candidate) -> Candidate:
        r, s, n = self.rng, list(c.sigmas), c.n
        kind = r.choice(["sigma", "sigma", "start", "end", "rho", "order", "prediction", "corrector", "relax",
                         "first"])
        i = r.randrange(n)
        if kind == "first":
            return self.toggle_first(c)
        if kind == "sigma" and n >= 3:
            k = r.randrange(1, n - 1)
            lo, hi = math.log(s[k + 1]), math.log(s[k - 1])
            s[k] = math.exp(min(hi - 1e-3, max(lo + 1e-3, math.log(s[k]) + r.gauss(0, 0.25 * (hi - lo)))))
        elif kind == "start":
            s[0] = min(self.s_max, max(s[1] * 1.01, s[0] * math.exp(r.gauss(0, 0.4))))
        elif kind == "end" and n >= 2:
            s[-2] = min(s[-3] * 0.99, max(self.s_min, s[-2] * math.exp(r.gauss(0, 0.5))))
        elif kind in ("rho", "sigma", "end"):
            s = list(self.grid(n, r.uniform(1.5, 12), s[0], s[-2]))
        elif kind == "order":
            return replace(c, orders=_set(c.orders, i, r.randint(1, MAX_ORDER)))
        elif kind == "prediction":
            return replace(c, predictions=_set(c.predictions, i, r.choice(PREDICTIONS)))
        elif kind == "relax":
            return replace(c, relax=_set(c.relax, i, min(1.0, max(-1.0, c.relax[i] + r.gauss(0, 0.2)))))
        else:
            return replace(c, correctors=_set(c.correctors, i, not c.correctors[i]))
        return replace(c, sigmas=tuple(s))

    def toggle_first(self, c: Candidate) -> Candidate:
        """Switch the data-mean start on (one more step, added at the start) or off (one step fewer)."""
        n = c.n + (-1 if c.first else 1)
        if n == 1:  # one step from the start straight to 0
            sig = (c.sigmas[0], 0.0)
        elif c.n == 1:  # nothing to interpolate between: a polynomial grid from the start to sigma_min
            sig = self.grid(n, 7.0, c.sigmas[0], self.s_min)
        else:
            sig = tuple(float(v) for v in loglinear_interp(c.sigmas, n))
        cut = (lambda t: t[1:]) if c.first else (lambda t: t[:1] + t)  # noqa: E731
        return Candidate(sig, cut(c.orders), cut(c.predictions), cut(c.correctors), cut(c.relax), not c.first)

    def cross(self, a: Candidate, b: Candidate) -> Candidate:
        """Per-step genes from either parent; the grid is the geometric mean of the parents' grids."""
        if a.first != b.first:
            b = self.toggle_first(b)
        pick = [self.rng.random() < 0.5 for _ in range(a.n)]
        mix = lambda x, y: tuple(u if p else v for p, u, v in zip(pick, x, y))  # noqa: E731
        sig = tuple(math.sqrt(u * v) for u, v in zip(a.sigmas, b.sigmas))
        return Candidate(sig, mix(a.orders, b.orders), mix(a.predictions, b.predictions),
                         mix(a.correctors, b.correctors), mix(a.relax, b.relax), a.first)

    def refine(self, c: Candidate, sweeps: int = 2, candidates: int = 6, bar=None) -> Candidate:
        """Line searches over each positive sigma (the start and end included) and each step's relaxation,
        the others fixed; the window halves every sweep."""
        best = c
        for sweep in range(sweeps):
            for k in range(c.n):
                s = list(best.sigmas)
                hi = math.log(self.s_max) if k == 0 else math.log(s[k - 1])
                lo = math.log(self.s_min) if k == c.n - 1 else math.log(s[k + 1])
                half = 0.5 * (hi - lo) * 0.5**sweep
                a, b = max(lo, math.log(s[k]) - half), min(hi, math.log(s[k]) + half)
                for v in np.linspace(a, b, candidates + 2)[1:-1]:  # never onto a neighbour
                    trial = _set(best.sigmas, k, float(math.exp(v)))
                    if all(u > w * (1 + 1e-4) for u, w in zip(trial, trial[1:])):
                        best = min(best, replace(best, sigmas=trial), key=self.score)
                r = best.relax[k]
                for v in np.linspace(max(-1.0, r - 0.5**sweep), min(1.0, r + 0.5**sweep), candidates):
                    best = min(best, replace(best, relax=_set(best.relax, k, float(v))), key=self.score)
                if bar is not None:
                    bar.update()
        return best


def _set(t: tuple, i: int, v) -> tuple:
    return t[:i] + (v,) + t[i + 1:]


def evolve(search: Search, population: list[Candidate], generations: int, children: int, elite: int,
           bar=None) -> list[Candidate]:
    """``mu + lambda`` evolution; returns the final population, best first."""
    pop = sorted(set(population), key=search.score)[:elite]
    for _ in range(generations):
        kids = []
        for _ in range(children):
            a = search.rng.choice(pop[: max(2, elite // 2)] if search.rng.random() < 0.5 else pop)
            if search.rng.random() < 0.3 and len(pop) > 1:
                a = search.cross(a, search.rng.choice(pop))
            kids.append(search.mutate(a))
        pop = sorted(set(pop + kids), key=search.score)[:elite]
        if bar is not None:
            bar.update()
    return pop


def tune(model, *, solver: str = "unipc", nfe: int = 10, seeds: Sequence[int] = TUNE_SEEDS,
         eval_seeds: Sequence[int] | None = EVAL_SEEDS, progress: bool = True, batch: int = 64,
         population: int = 24, generations: int = 12, children: int = 16, elite: int = 8, refine_sweeps: int = 2,
         finalists: int = 4, seed: int = 0):
    """Search a per-step solver schedule (solver ``usf``) for ``nfe`` evaluations; returns a ``Recipe``.

    Args:
        solver: the untuned solver the recipe's quality is compared with (on a Karras grid).
        seeds: tuning seeds; the predictor uses the first ``batch``, the finalists are ranked on all.
        eval_seeds: held-out seeds for the recipe's quality (``None``: do not measure).
        population, generations, children, elite: the evolutionary search.
        refine_sweeps: sweeps of the final per-sigma line search (0: none).
        finalists: how many of the best candidates are re-ranked on all tuning seeds.
        seed: the search's random seed.
    """
    t_start = time.perf_counter()
    T.check_args(model, solver, nfe)
    n_steps = T.check_args(model, "usf", nfe)  # without the data-mean start; with it, one more
    seeds = T.seed_list(seeds, "seeds")
    T.check_sizes(batch=(batch, 1, MAX_SEEDS), population=(population, 1, T.MAX_SEARCH),
                  generations=(generations, 0, T.MAX_SEARCH), children=(children, 1, T.MAX_SEARCH),
                  elite=(elite, 1, T.MAX_SEARCH), refine_sweeps=(refine_sweeps, 0, T.MAX_SEARCH),
                  finalists=(finalists, 1, T.MAX_SEARCH))
    s_max, s_min = T.start_sigma(model), float(model.sigma_min)
    full = T.Predictor(model, seeds, progress)
    search = Search(full.head(batch), nfe, s_max, s_min, random.Random(seed))
    with T.progress_bar(population + generations + refine_sweeps * (n_steps + 1), "s3", progress) as bar:
        start = search.seeds(population)
        for c in start:
            search.score(c)
            bar.update()
        pop = evolve(search, start, generations, children, elite, bar)
        pop = sorted(set([search.refine(pop[0], refine_sweeps, bar=bar)] + pop), key=search.score)
    if len(seeds) > batch:  # re-rank the finalists on every tuning seed
        pop = sorted(pop[:finalists], key=lambda c: full(list(c.sigmas), "usf", search.options(c)))
    best = pop[0]
    untuned = min(search.score(c) for c in start[:5])  # hand-made plans on the rho = 7 Karras grid
    objective = {"name": "rmse_ref on tuning seeds", "initial": untuned, "final": search.score(best),
                 "evaluations": len(search.cache), "note": "initial: the best hand-made usf plan on a Karras grid"}
    options = {"batch": batch, "population": population, "generations": generations, "children": children,
               "elite": elite, "refine_sweeps": refine_sweeps, "finalists": finalists, "seed": seed}
    return T.make_recipe(model, "s3", "usf", nfe, best.sigmas, t_start=t_start, solver_options=search.options(best),
                         objective=objective, options=options, tune_seeds=seeds, eval_seeds=eval_seeds,
                         baseline=(solver, {}), progress=progress)
