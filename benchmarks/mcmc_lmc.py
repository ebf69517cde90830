"""The sqrt(d) dimension dependence of Langevin Monte Carlo, measured (issue 21, item 7).

Li, Zha and Tao (arXiv 2109.03839) show that the unadjusted Langevin algorithm (``fewstep.mcmc.ula``) with step
``h`` has a W2 bias of order ``sqrt(d) h`` on smooth strongly log-concave targets, so reaching a W2 error ``eps``
takes steps ``h ~ eps / sqrt(d)`` and ``~ sqrt(d) / eps`` iterations, and that this is tight on Gaussians. Here:
the ill-conditioned Gaussian target (eigenvalues log-spaced over the same range ``[1/condition, 1]`` at every
dimension, in a random basis) at d = 4 ... 256, ULA at a fixed step ``h`` run from the target's mean: the W2
distance of its draws to the target grows like ``d^0.5`` (the fitted exponent). The closed form says the same of
the rule ``h = h0 sqrt(4 / d)``, whose W2 stays flat while its iterations to mix grow like ``sqrt(d)``; measuring
that flat W2 needs far more draws (the estimator's noise floor, below, is ``~ sqrt(d / n)``), so it is printed
from the closed form only.

W2 is measured from the draws, thinned to one per relaxation time ``1/h`` (nearly independent): ULA's update on a
Gaussian is linear and diagonal in the target's eigenbasis, so its law is a Gaussian diagonal there, and the W2
distance of two such Gaussians is ``sqrt(|m|^2 + sum_i (sqrt(v_i) - sqrt(l_i))^2)`` with ``v_i`` the draws'
variances along the eigenvectors. The noise floor is the same estimate on as many exact draws of the target; the
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
    ap.add_argument("--step", type=float, default=0.04, help="the fixed h (and h0 of the sqrt(4/d) rule)")
    ap.add_argument("--chains", type=int, default=1000)
    ap.add_argument("--kept", type=int, default=8, help="thinned draws kept per chain")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dims = [int(d) for d in args.dims.split(",")]
    h = args.step
    relax = math.ceil(1 / h)  # iterations for the slowest direction (l = 1) to forget its state: one e-fold
    rows, measured = [], []
    for d in dims:
        target = mcmc.make_target("gaussian", dim=d, condition=args.condition, seed=args.seed)
        t0 = time.perf_counter()
        res = mcmc.ula(target, chains=args.chains, draws=relax * args.kept, warmup=8 * relax, seed=args.seed,
                       init=target.mean.expand(args.chains, d).clone(), step_size=h)
        kept = res.draws[:, relax - 1::relax]
        w2 = w2_measured(kept, target)
        floor = w2_measured(target.sample(kept.shape[0] * kept.shape[1], torch.Generator().manual_seed(1)), target)
        measured.append(w2)
        h_d = args.step * math.sqrt(4 / d)
        rows.append(f"| {d} | {w2:.4f} | {floor:.4f} | {w2_exact(target, h):.4f} | {h_d:.4f} | "
                    f"{w2_exact(target, h_d):.4f} | {math.ceil(1 / h_d)} | {time.perf_counter() - t0:.0f} |")
    slope = float(np.polyfit(np.log(dims), np.log(measured), 1)[0])
    print(f"Made by `.venv/bin/python benchmarks/mcmc_lmc.py` (ULA on `gaussian:dim=d,condition={args.condition:g}` "
          f"at h = {h:g}, {args.chains} chains from the mean, 8 relaxation times of warm-up, then {args.kept} draws "
          f"per chain, one per relaxation time {relax}).\n")
    print(f"| d | W2 measured, h = {h:g} | noise floor | W2 closed form | h = {h:g} sqrt(4/d) | its W2 (closed form) "
          "| its relaxation (iterations) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nFitted exponent of the measured W2 in d at a fixed h: {slope:.2f} (theory 0.5).")


if __name__ == "__main__":
    main()
