"""The sqrt(d) dimension dependence of Langevin Monte Carlo, measured (issue 21, item 7).

Li, Zha and Tao (arXiv 2109.03839) show that the unadjusted Langevin algorithm (``fewstep.mcmc.ula``) with step
``h`` has a W2 bias of order ``sqrt(d) h`` on smooth strongly log-concave targets, so reaching a W2 error ``eps``
takes steps ``h ~ eps / sqrt(d)`` and ``~ sqrt(d) / eps`` iterations, and that this is tight on Gaussians. Here:
the ill-conditioned Gaussian target (eigenvalues log-spaced over the same range ``[1/condition, 1]`` at every
dimension, in a random basis) at d = 4 ... 256, ULA run from the target's mean,

- at a fixed step ``h``: the W2 distance of the draws to the target grows like ``d^0.5`` (fitted exponent);
- at ``h = h0 sqrt(4 / d)``: it stays flat, at the cost of ``sqrt(d / 4)`` times more iterations to mix.

W2 is measured from the draws: ULA's update on a Gaussian is linear and diagonal in the target's eigenbasis, so
its law is a Gaussian diagonal there, and the W2 distance of two such Gaussians is
``sqrt(|m|^2 + sum_i (sqrt(v_i) - sqrt(l_i))^2)`` with ``v_i`` the draws' variances along the eigenvectors. The
closed form (``l / (1 - h / (2 l))``, see ``ula``) is printed beside it.

    .venv/bin/python benchmarks/mcmc_lmc.py            # prints the markdown table of docs/mcmc.md
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import fewstep.mcmc as mcmc


def w2_measured(draws: torch.Tensor, target) -> float:
    """W2 between the draws' Gaussian (diagonal in the target's eigenbasis) and the target."""
    eig, q = torch.linalg.eigh(target.cov)
    z = (draws.reshape(-1, target.dim) - target.mean) @ q
    m, v = z.mean(0), z.var(0)
    return float((m.square().sum() + (v.sqrt() - eig.sqrt()).square().sum()).sqrt())


def w2_exact(target, h: float) -> float:
    eig = torch.linalg.eigvalsh(target.cov)
    return float(((eig / (1 - h / (2 * eig))).sqrt() - eig.sqrt()).square().sum().sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="4,16,64,256")
    ap.add_argument("--condition", type=float, default=10.0)
    ap.add_argument("--step", type=float, default=0.04, help="h at d = 4 (and the fixed h)")
    ap.add_argument("--chains", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dims = [int(d) for d in args.dims.split(",")]
    rows, fixed, scaled = [], [], []
    for d in dims:
        target = mcmc.make_target("gaussian", dim=d, condition=args.condition, seed=args.seed)
        for rule, h in (("fixed", args.step), ("h0 sqrt(4/d)", args.step * math.sqrt(4 / d))):
            relax = math.ceil(1 / h)  # iterations for the slowest direction (l = 1) to forget its start: e-fold
            warmup = 8 * relax
            t0 = time.perf_counter()
            res = mcmc.ula(target, chains=args.chains, draws=args.draws, warmup=warmup, seed=args.seed,
                           init=target.mean.expand(args.chains, d).clone(), step_size=h)
            w2 = w2_measured(res.draws, target)
            (fixed if rule == "fixed" else scaled).append(w2)
            rows.append(f"| {d} | {rule} | {h:.4f} | {w2:.4f} | {w2_exact(target, h):.4f} | {relax} | "
                        f"{time.perf_counter() - t0:.0f} |")
    slope = lambda ys: float(np.polyfit(np.log(dims), np.log(ys), 1)[0])  # noqa: E731
    print(f"Made by `.venv/bin/python benchmarks/mcmc_lmc.py` (ULA on `gaussian:dim=d,condition={args.condition:g}`, "
          f"{args.chains} chains x {args.draws} draws after 8 relaxation times from the mean).\n")
    print("| d | step rule | h | W2 measured | W2 closed form | relaxation (iterations, 1/h) | seconds |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nFitted exponent of W2 in d: {slope(fixed):.2f} at a fixed h (theory 0.5), "
          f"{slope(scaled):.2f} at h ~ d^-1/2 (theory 0), where the iterations to mix grow like d^0.5.")


if __name__ == "__main__":
    main()
