"""Why fewstep's NUTS has about a third of the peers' ESS per gradient on ``banana`` (docs/mcmc.md).

1. Adaptation: per chain, the step size and diagonal inverse mass fewstep's NUTS and BlackJAX's NUTS adapt to
   after the same 300 warm-up iterations (Stan's windows in both) from the same starts, and fewstep's tree depth,
   leapfrog steps and acceptance statistic over 300 draws.
2. The U-turn rule, everything else fixed (step 0.05, identity mass, 4 chains x 500 draws started at exact
   samples): fewstep's NUTS with ``turn="sum"`` (Stan's rho) and ``turn="trapezoid"`` (NumPyro's and BlackJAX's),
   and BlackJAX's NUTS, over seeds 0-1.

    .venv/bin/python benchmarks/mcmc_banana_adaptation.py
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

import fewstep.mcmc as mcmc

_spec = importlib.util.spec_from_file_location("mcmc_bench", Path(__file__).with_name("mcmc.py"))
B = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(B)


def main(seed: int = 0, chains: int = 4, warmup: int = 300, draws: int = 300) -> None:
    torch.set_num_threads(1)
    target = mcmc.make_target("banana", dim=2)
    x0 = B._init(target, seed, chains)
    t0 = time.perf_counter()
    r = mcmc.run_sampler("nuts", target, chains=chains, draws=draws, warmup=warmup, seed=seed,
                         init=torch.from_numpy(x0))
    print(f"fewstep nuts ({time.perf_counter() - t0:.0f} s); bulk ESS per coordinate "
          f"{np.round(mcmc.ess_bulk(r.draws.numpy()), 1)}")
    print("| chain | fewstep step | fewstep inverse mass | tree depth | leapfrog steps | acceptance stat | "
          "BlackJAX step | BlackJAX inverse mass |")
    print("|---|---|---|---|---|---|---|---|")
    jax = B._jax()
    import blackjax

    logdensity = B.jax_log_prob(target)
    keys = jax.random.split(jax.random.key(seed), chains)
    for c in range(chains):
        adapt = blackjax.window_adaptation(blackjax.nuts, logdensity, target_acceptance_rate=0.8)
        (_, params), _ = adapt.run(jax.random.split(keys[c])[0], jax.numpy.asarray(x0[c]), num_steps=warmup)
        inv = np.asarray(r.stats["inv_mass"][c])
        print(f"| {c} | {float(r.stats['step_size'][c]):.3f} | {np.round(inv, 1).tolist()} | "
              f"{float(r.stats['tree_depth'][c].float().mean()):.1f} | "
              f"{float(r.stats['n_leapfrog'][c].float().mean()):.0f} | {float(r.accept[c].mean()):.2f} | "
              f"{float(params['step_size']):.3f} | {np.round(np.asarray(params['inverse_mass_matrix']), 1).tolist()} |")


def turn_rules(seeds=(0, 1), step: float = 0.05, chains: int = 4, draws: int = 500) -> None:
    torch.set_num_threads(1)
    target = mcmc.make_target("banana", dim=2)
    jax = B._jax()
    import blackjax

    algo = blackjax.nuts(B.jax_log_prob(target), step, jax.numpy.ones(target.dim))

    def one(key, x):
        def step_fn(st, k):
            st, info = algo.step(k, st)
            return st, (st.position, info.num_integration_steps)

        _, (xs, n) = jax.lax.scan(step_fn, algo.init(x), jax.random.split(key, draws))
        return xs, n.sum()

    blackjax_run = jax.jit(jax.vmap(one))
    print(f"\n| seed | fewstep turn='sum' | fewstep turn='trapezoid' | BlackJAX | (ESS per gradient; step {step}, "
          "identity mass) |")
    print("|---|---|---|---|---|")
    for seed in seeds:
        init = target.sample(chains, torch.Generator().manual_seed(100 + seed))
        cells = []
        for rule in ("sum", "trapezoid"):
            r = mcmc.run_sampler("nuts", target, chains=chains, draws=draws, warmup=0, seed=seed, init=init,
                                 step_size=step, turn=rule)
            cells.append(float(mcmc.ess_bulk(r.draws.numpy()).min()) / int(r.n_grad.sum()))
        xs, n = blackjax_run(jax.random.split(jax.random.key(seed), chains), jax.numpy.asarray(init.numpy()))
        cells.append(float(mcmc.ess_bulk(np.asarray(xs)).min()) / int(np.asarray(n).sum()))
        print(f"| {seed} | " + " | ".join(f"{c:.2e}" for c in cells) + " | |")


if __name__ == "__main__":
    main()
    turn_rules()
