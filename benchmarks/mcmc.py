"""fewstep.mcmc beside BlackJAX (NUTS, HMC, MALA), NumPyro (NUTS) and emcee on the same targets (issue 21).

Every peer samples the same density: each target's log-density is written again in JAX from the fewstep target's
own parameters (``jax_log_prob``; tests/mcmc/test_peers.py checks that the two agree at random points), in
float64, on one CPU thread (``torch.set_num_threads(1)``; XLA without its thread pool). Same number of chains
(emcee: its ensemble needs at least 2 dim walkers, so it gets that many), same starting law (uniform on (-2, 2)),
same warm-up length for the adaptive samplers. The budget per target is the gradient evaluations fewstep's NUTS
spends after warm-up; a sampler of fixed cost per draw (HMC: 16 leapfrog steps, MALA, random walk, slice, emcee)
gets as many draws as that budget buys, while the NUTS peers run as many iterations as fewstep's NUTS and spend
what they choose. The independent-draw samplers (rdmc, walk_jump, data_init) run a fixed setting and report what
it costs; data_init (a sampler for mixtures, given exact samples as data) runs on the mixtures only.

Reported per sampler: min bulk ESS over the coordinates per gradient evaluation after warm-up (density
evaluations for gradient-free samplers), MMD^2 and sliced W2 to exact samples (to the committed NUTS reference for
the logistic target), the mode-weight error on the mixture, and wall time as a ratio to fewstep's NUTS on the same
target, measured in the same run (JAX timed on a second, compiled call).

    .venv/bin/python benchmarks/mcmc.py --update-docs docs/mcmc.md   # or --json rows.json, then
    .venv/bin/python benchmarks/mcmc.py --from-json rows.json --update-docs docs/mcmc.md
    .venv/bin/python benchmarks/mcmc.py --make-reference   # the logistic reference (long NUTS run)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fewstep.mcmc as mcmc  # noqa: E402
from fewstep.bench.report import replace_section  # noqa: E402
from fewstep.mcmc import targets as T  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "benchmarks" / "data" / "mcmc_logistic_reference.npz"
REFERENCE_COMMAND = ".venv/bin/python benchmarks/mcmc.py --make-reference"
TARGETS = [("gaussian", {"dim": 10, "condition": 100.0}), ("mixture", {"dim": 16, "modes": 4}),
           ("funnel", {"dim": 10}), ("banana", {"dim": 2}), ("student_t", {"dim": 10, "df": 3.0}), ("logistic", {})]
CHAINS, WARMUP, DRAWS, EXACT = 4, 300, 300, 2000
INDEPENDENT = {  # the seed samplers' settings here (per chain: draws)
    "rdmc": dict(draws=50, steps=40, proposals=64, inner_chains=4, inner_steps=8),
    "walk_jump": dict(draws=50, measurements=12, walk_steps=16, first_walk_steps=100, step_size=0.4, proposals=32,
                      inner_chains=1, inner_steps=0),
    "data_init": dict(draws=250, steps=30, step_size=0.05, n_data=2000),
}


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def jax_log_prob(target):
    """The target's log-density for one point ``x`` ``[dim]`` in JAX, from the fewstep target's parameters."""
    jax = _jax()
    jnp = jax.numpy
    log_2pi = math.log(2 * math.pi)
    if isinstance(target, T.Gaussian):
        mean, chol = jnp.asarray(target.mean.numpy()), jnp.asarray(target.dist.chol.numpy())
        log_det = float(target.dist.chol.diagonal().log().sum())

        def f(x):
            z = jax.scipy.linalg.solve_triangular(chol, x - mean, lower=True)
            return -0.5 * (z @ z + target.dim * log_2pi) - log_det
    elif isinstance(target, T.GaussianMixture):
        means, s2 = jnp.asarray(target.means.numpy()), jnp.asarray(target.stds.square().numpy())
        log_w = jnp.log(jnp.asarray(target.weights.numpy()))

        def f(x):
            d2 = ((x - means) ** 2).sum(-1)
            return jax.scipy.special.logsumexp(log_w - 0.5 * (d2 / s2 + target.dim * (log_2pi + jnp.log(s2))))
    elif isinstance(target, T.Funnel):
        def f(x):
            v, ss = x[0], (x[1:] ** 2).sum()
            scaled = jnp.where(ss > 0, jnp.exp(jnp.log(jnp.where(ss > 0, ss, 1.0)) - v), 0.0)
            return (-0.5 * (v / target.scale) ** 2 - math.log(target.scale) - 0.5 * log_2pi - 0.5 * scaled
                    - 0.5 * (target.dim - 1) * (v + log_2pi))
    elif isinstance(target, T.Banana):
        def f(x):
            x1, rest = x[0], x[1:]
            return (-0.5 * (x1 - target.a) ** 2 / target.var1 - 0.5 * math.log(2 * math.pi * target.var1)
                    - 0.5 * ((rest - x1**2) ** 2).sum() / target.var2
                    - 0.5 * (target.dim - 1) * math.log(2 * math.pi * target.var2))
    elif isinstance(target, T.StudentT):
        def f(x):
            return target._const - 0.5 * (target.df + target.dim) * jnp.log1p((x @ x) / target.df)
    elif isinstance(target, T.LogisticRegression):
        X, y = jnp.asarray(target.X.numpy()), jnp.asarray(target.y.numpy())
        chol = jnp.asarray(target.prior.chol.numpy())
        log_det = float(target.prior.chol.diagonal().log().sum())

        def f(x):
            z = jax.scipy.linalg.solve_triangular(chol, x, lower=True)
            logits = X @ x
            return (-0.5 * (z @ z + target.dim * log_2pi) - log_det
                    + (y * logits - jax.nn.softplus(logits)).sum())
    else:
        raise ValueError(f"no JAX log-density for target {target.name!r}")
    return f


def _init(target, seed: int, n: int) -> np.ndarray:
    return 4 * np.random.default_rng(seed).random((n, target.dim)) - 2


def _timed(fn):
    fn()  # compile (JAX) or warm caches
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def blackjax_run(kind: str, target, draws: int, warmup: int, seed: int):
    """BlackJAX ``nuts`` / ``hmc`` (Stan's window adaptation) or ``mala`` (dual averaging to 0.574), vmapped over
    chains. Returns draws ``[chains, draws, dim]`` and gradient evaluations after warm-up."""
    jax = _jax()
    import blackjax

    jnp = jax.numpy
    logdensity = jax_log_prob(target)
    x0 = jnp.asarray(_init(target, seed, CHAINS))
    keys = jax.random.split(jax.random.key(seed), CHAINS)

    def one_chain(key, x):
        k_warm, k_draw = jax.random.split(key)
        if kind == "mala":
            da_init, da_update, da_final = blackjax.adaptation.step_size.dual_averaging_adaptation(0.574)
            kernel = blackjax.mala.build_kernel()
            state = blackjax.mala.init(x, logdensity)

            def warm(carry, k):
                st, da = carry
                st, info = kernel(k, st, logdensity, jnp.exp(da.log_step_size))
                return (st, da_update(da, info.acceptance_rate)), None

            (state, da), _ = jax.lax.scan(warm, (state, da_init(0.1)), jax.random.split(k_warm, warmup))
            algo = blackjax.mala(logdensity, da_final(da))
            cost = 1
        else:
            extra = {"num_integration_steps": 16} if kind == "hmc" else {}
            algo_cls = blackjax.nuts if kind == "nuts" else blackjax.hmc
            adapt = blackjax.window_adaptation(algo_cls, logdensity, target_acceptance_rate=0.8, **extra)
            (state, params), _ = adapt.run(k_warm, x, num_steps=warmup)
            algo = algo_cls(logdensity, **params)  # params hold num_integration_steps for hmc
            cost = 16

        def step(st, k):
            st, info = algo.step(k, st)
            n = info.num_integration_steps if kind == "nuts" else cost
            return st, (st.position, n)

        _, (xs, n) = jax.lax.scan(step, state, jax.random.split(k_draw, draws))
        return xs, n.sum()

    run = jax.jit(jax.vmap(one_chain))
    (xs, n), seconds = _timed(lambda: jax.block_until_ready(run(keys, x0)))
    return np.asarray(xs), int(np.asarray(n).sum()), seconds


def numpyro_nuts(target, draws: int, warmup: int, seed: int):
    jax = _jax()
    from numpyro.infer import MCMC, NUTS

    logdensity = jax_log_prob(target)
    x0 = jax.numpy.asarray(_init(target, seed, CHAINS))

    def go():
        m = MCMC(NUTS(potential_fn=lambda x: -logdensity(x), target_accept_prob=0.8), num_warmup=warmup,
                 num_samples=draws, num_chains=CHAINS, chain_method="vectorized", progress_bar=False)
        m.run(jax.random.key(seed), init_params=x0, extra_fields=("num_steps",))
        return np.asarray(m.get_samples(group_by_chain=True)), int(np.asarray(m.get_extra_fields()["num_steps"]).sum())

    (xs, n), seconds = _timed(go)
    return xs, n, seconds


def emcee_run(target, budget: int, seed: int):
    """emcee's stretch move with ``max(chains, 2 dim + 2)`` walkers, half the iterations discarded as burn-in:
    ``budget`` density evaluations after burn-in."""
    import emcee

    jax = _jax()
    f = jax.jit(jax.vmap(jax_log_prob(target)))
    walkers = max(CHAINS, 2 * target.dim + 2)
    steps = max(budget // walkers, 20)

    def go():
        sampler = emcee.EnsembleSampler(walkers, target.dim, lambda x: np.asarray(f(x)), vectorize=True)
        sampler.random_state = np.random.RandomState(seed).get_state()
        sampler.run_mcmc(_init(target, seed, walkers), 2 * steps, progress=False)
        return np.swapaxes(sampler.get_chain()[steps:], 0, 1)

    xs, seconds = _timed(go)
    return xs, walkers * steps, seconds, walkers


def _row(name, target, draws, cost, seconds, reference, **extra):
    draws = np.array(draws, dtype=np.float64)
    if not np.isfinite(draws).all():  # a sampler that diverged: no statistics to report
        return {"sampler": name, "evaluations": int(cost), "seconds": seconds, "diverged": True, **extra}
    ess = float(np.min(mcmc.ess_bulk(draws)))
    row = {"sampler": name, "ess_min": ess, "evaluations": int(cost), "ess_per_eval": ess / max(cost, 1),
           "seconds": seconds, "mmd2": mcmc.mmd2(draws, reference),
           "sliced_w2": mcmc.sliced_wasserstein(draws, reference), **extra}
    if hasattr(target, "assign"):
        row["mode_weight_error"] = mcmc.mode_weight_error(target, torch.from_numpy(draws))
    return row


def fewstep_rows(target, reference, seed: int) -> list[dict]:
    rows = []
    x0 = torch.from_numpy(_init(target, seed, CHAINS))

    def run(name, **kw):
        t0 = time.perf_counter()
        r = mcmc.run_sampler(name, target, chains=CHAINS, seed=seed, **kw)
        return r, time.perf_counter() - t0

    nuts, seconds = run("nuts", draws=DRAWS, warmup=WARMUP, init=x0)
    budget = int((nuts.n_grad - nuts.n_grad_warmup).sum())
    rows.append(_row("fewstep nuts", target, nuts.draws, budget, seconds, reference, grad=True))
    per_chain = budget // CHAINS
    for name, (_, info) in mcmc.SAMPLERS.items():
        if name in ("nuts", "ula") or (info.needs_prior and target.prior is None):
            continue  # ula is biased by design (a fixed step, no accept step): benchmarks/mcmc_lmc.py measures it
        if info.independent:
            kw = dict(INDEPENDENT[name])
            if name == "data_init" and not hasattr(target, "assign"):
                continue  # a sampler for multimodal targets (its paper's setting); its fixed ULA step diverges on
                # the ill-conditioned ones (gaussian, funnel, banana)
            r, seconds = run(name, warmup=0, **kw)
            grad = bool(r.n_grad.sum() > 0)  # walk_jump without inner MALA steps takes no gradient
            cost = int((r.n_grad if grad else r.n_density).sum())
            rows.append(_row(f"fewstep {name}", target, r.draws, cost, seconds, reference, grad=grad))
            continue
        else:
            if name == "hmc":
                kw = dict(draws=max(per_chain // 16, 20), n_leapfrog=16)
            elif name in ("polar_slice", "elliptical_slice"):
                pilot = mcmc.run_sampler(name, target, chains=CHAINS, draws=20, warmup=0, seed=seed, init=x0)
                kw = dict(draws=max(int(per_chain / float(pilot.stats["evals_per_draw"].mean())), 20))
            else:
                kw = dict(draws=max(per_chain, 20))
            warm = WARMUP if info.adapts else 0
            r, seconds = run(name, warmup=warm, init=x0, **kw)
            cost = int(((r.n_grad - r.n_grad_warmup) if info.gradient else (r.n_density - r.n_density_warmup)).sum())
        rows.append(_row(f"fewstep {name}", target, r.draws[:, :r.n_recorded], cost, seconds, reference,
                         grad=info.gradient))
    return rows


def peer_rows(target, reference, budget: int, seed: int) -> list[dict]:
    rows = []
    for kind in ("nuts", "hmc", "mala"):
        draws = DRAWS if kind == "nuts" else max(budget // CHAINS // (16 if kind == "hmc" else 1), 20)
        xs, cost, seconds = blackjax_run(kind, target, draws, WARMUP, seed)
        rows.append(_row(f"blackjax {kind}", target, xs, cost, seconds, reference, grad=True))
    xs, cost, seconds = numpyro_nuts(target, DRAWS, WARMUP, seed)
    rows.append(_row("numpyro nuts", target, xs, cost, seconds, reference, grad=True))
    xs, cost, seconds, walkers = emcee_run(target, budget, seed)
    rows.append(_row("emcee", target, xs, cost, seconds, reference, grad=False, walkers=walkers))
    return rows


def make_reference(draws: int = 2500, warmup: int = 1000, keep: int = 2000) -> None:
    """The logistic target's reference: fewstep NUTS, 4 chains x ``draws`` after ``warmup``, thinned to ``keep``
    points (float32), with its R-hat and ESS."""
    torch.set_num_threads(1)
    target = mcmc.make_target("logistic")
    r = mcmc.nuts(target, chains=4, draws=draws, warmup=warmup, seed=2024)
    x = r.draws.reshape(-1, target.dim)
    idx = torch.linspace(0, x.shape[0] - 1, keep).round().long()
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, draws=x[idx].numpy().astype(np.float32), command=REFERENCE_COMMAND,
                        rhat_max=float(np.max(mcmc.rhat(r.draws))), ess_bulk_min=float(np.min(mcmc.ess_bulk(r.draws))),
                        chains=4, n_draws=draws, warmup=warmup, seed=2024)
    print(f"wrote {REFERENCE}: R-hat max {float(np.max(mcmc.rhat(r.draws))):.4f}, "
          f"min bulk ESS {float(np.min(mcmc.ess_bulk(r.draws))):.0f}")


def reference_of(target, seed: int) -> torch.Tensor:
    if target.has_exact:
        return target.sample(EXACT, torch.Generator().manual_seed(10_000 + seed))
    if not REFERENCE.exists():
        raise SystemExit(f"{REFERENCE} is missing: run {REFERENCE_COMMAND}")
    with np.load(REFERENCE) as z:
        return torch.from_numpy(z["draws"].astype(np.float64))


def markdown(results: dict) -> str:
    import blackjax
    import emcee
    import jax
    import numpyro

    lines = [f"Made by `benchmarks/mcmc.py` (with `--json rows.json`, then `--from-json rows.json --update-docs "
             f"docs/mcmc.md`, or `--update-docs docs/mcmc.md` in one go; {CHAINS} chains, "
             f"{WARMUP} warm-up iterations, {DRAWS} NUTS draws; {platform.processor() or platform.machine()}, one "
             f"thread; torch {torch.__version__}, jax {jax.__version__}, blackjax {blackjax.__version__}, numpyro "
             f"{numpyro.__version__}, emcee {emcee.__version__}).", ""]
    for name, block in results.items():
        lines += [f"**{name}** ({block['spec']}; budget {block['budget']:,} gradient evaluations after warm-up; "
                  f"distances to {block['reference']})", "",
                  "| sampler | evaluations | min bulk ESS | ESS / evaluation | MMD^2 | sliced W2 | mode-weight error "
                  "| time / fewstep NUTS |", "|---|---|---|---|---|---|---|---|"]
        base = next(r for r in block["rows"] if r["sampler"] == "fewstep nuts")["seconds"]
        for r in block["rows"]:
            kind = "grad" if r["grad"] else "density"
            if r.get("diverged"):
                lines.append(f"| {r['sampler']} | {r['evaluations']:,} {kind} | diverged (non-finite draws) "
                             f"| | | | | {r['seconds'] / base:.2f} |")
                continue
            mwe = f"{r['mode_weight_error']:.3f}" if "mode_weight_error" in r else ""
            who = r["sampler"] + (f" ({r['walkers']} walkers)" if "walkers" in r else "")
            lines.append(f"| {who} | {r['evaluations']:,} {kind} | {r['ess_min']:.0f} | {r['ess_per_eval']:.2e} | "
                         f"{r['mmd2']:.2e} | {r['sliced_w2']:.3f} | {mwe} | {r['seconds'] / base:.2f} |")
        lines.append("")
    return "\n".join(lines)


def update_docs(path: Path, text: str) -> None:
    begin, end = "<!-- mcmc-benchmark:begin -->", "<!-- mcmc-benchmark:end -->"
    try:
        path.write_text(replace_section(path.read_text(), begin, end, f"{begin}\n{text}\n{end}", append=False))
    except ValueError as exc:
        raise SystemExit(f"{path}: {exc}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(t for t, _ in TARGETS), help="comma-separated target names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--update-docs", help="replace the benchmark section of this page (docs/mcmc.md)")
    p.add_argument("--make-reference", action="store_true", help="write the logistic target's NUTS reference")
    p.add_argument("--from-json", help="rewrite --update-docs from the rows of earlier --json runs (comma-separated)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.make_reference:
        make_reference()
        return 0
    if args.from_json:
        if not args.update_docs:
            raise SystemExit("--from-json needs --update-docs")
        merged = {}  # runs of different --targets, in the order given
        for path in args.from_json.split(","):
            merged.update(json.loads(Path(path).read_text()))
        update_docs(Path(args.update_docs), markdown(merged))
        return 0
    wanted = args.targets.split(",")
    results = {}
    for name, options in TARGETS:
        if name not in wanted:
            continue
        target = mcmc.make_target(name, **options)
        reference = reference_of(target, args.seed)
        rows = fewstep_rows(target, reference, args.seed)
        budget = rows[0]["evaluations"]
        rows += peer_rows(target, reference, budget, args.seed)
        spec = f"`{name}:" + ",".join(f"{k}={v}" for k, v in options.items()) + "`" if options else f"`{name}`"
        results[name] = {"spec": spec, "budget": budget, "rows": rows,
                         "reference": f"{EXACT} exact samples" if target.has_exact else
                         "the committed NUTS reference (benchmarks/data/mcmc_logistic_reference.npz)"}
        for r in rows:
            if r.get("diverged"):
                print(f"{name:10s} {r['sampler']:24s} diverged", flush=True)
                continue
            print(f"{name:10s} {r['sampler']:24s} evals {r['evaluations']:>9,} ESS/eval {r['ess_per_eval']:.2e} "
                  f"MMD2 {r['mmd2']:.2e} SW2 {r['sliced_w2']:.3f} mwe {r.get('mode_weight_error', float('nan')):.3f} "
                  f"t {r['seconds']:.1f}s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.update_docs:
        update_docs(Path(args.update_docs), markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
