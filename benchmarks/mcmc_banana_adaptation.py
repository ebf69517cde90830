"""What fewstep's NUTS and BlackJAX's NUTS adapt to on ``banana`` (docs/mcmc.md: fewstep's ESS per gradient there
is about a third of the peers'): per chain, the step size and diagonal inverse mass after the same 300 warm-up
iterations (Stan's windows in both) from the same starts, and fewstep's tree depth, leapfrog steps and acceptance
statistic over 300 draws.

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


if __name__ == "__main__":
    main()
