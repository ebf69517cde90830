"""ld3 with and without its preconditioner on small exact models (docs/design.md, "Learned samplers"): for each NFE
and starting solver, the training rmse_ref after ``--steps`` L-BFGS iterations and the best held-back rmse_ref,
raw against preconditioned, from the same start on 64 tuning seeds (one thread).

    .venv/bin/python benchmarks/ld3_precondition_cells.py --models gmm2d,digits-gmm
"""

from __future__ import annotations

import argparse

import torch

from fewstep.diffusion.tune import ld3
from fewstep.models import load_model

CELLS = [(nfe, solver, schedule) for nfe in (4, 6, 8)
         for solver, schedule in (("dpmpp_2m", "logsnr"), ("ipndm", "karras"), ("euler", "karras"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gmm2d,digits-gmm")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| model | NFE | start | initial | raw: training / held-back | preconditioned: training / held-back |\n"
          "|---|---:|---|---:|---:|---:|")
    wins = total = 0
    for name in args.models.split(","):
        model = load_model(name)
        for nfe, solver, schedule in CELLS:
            kw = {"nfe": nfe, "solver": solver, "schedule": schedule, "seeds": range(100_000, 100_064),
                  "eval_seeds": None, "progress": False, "check_every": 5, "steps": args.steps, "patience": None}
            raw, pre = (ld3.tune(model, precondition=pc, **kw).info["objective"] for pc in (None, 32))
            wins, total = wins + (pre["held_back_final"] < raw["held_back_final"]), total + 1
            print(f"| {name} | {nfe} | {solver} on {schedule} | {raw['initial']:.4f} | "
                  + " | ".join(f"{o['history'][-1][1]:.4f} / {o['held_back_final']:.4f}" for o in (raw, pre))
                  + " |", flush=True)
    print(f"\npreconditioned better on the held-back seeds in {wins} of {total} cells")


if __name__ == "__main__":
    main()
