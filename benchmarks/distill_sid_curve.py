"""A SiD training curve (issue 19; docs/distill.md): the fd of the one-step generator on 512 seeds (0-511) to the
359 held-out digits every ``--every`` iterations, with the CPU minutes spent so far (one thread). Trains as
``fewstep.distill.distill(teacher, "sid", nfe=1, ...)`` does (the learning rate divided by 10 after half the
iterations); the teacher's own fd (32 evaluations of DPM-Solver++(3M)) is the floor.

    .venv/bin/python benchmarks/distill_sid_curve.py --model digits-edm --iterations 1200 --lr 1e-4 --every 200
"""

from __future__ import annotations

import argparse

import torch
from distill_sfd_curve import curve

import fewstep
from fewstep.distill import student_copy
from fewstep.distill.sid import SiD
from fewstep.metrics.frechet import fd_digits
from fewstep.models.digits_data import digits_data

SEEDS = list(range(512))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="digits-edm", choices=("digits-edm", "digits-flow"))
    p.add_argument("--iterations", type=int, default=1200)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--fake-lr", type=float, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sigma-g", type=float, default=2.5)
    p.add_argument("--every", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(1)
    held = digits_data("heldout")[0].reshape(-1, 1, 8, 8).double()
    teacher = fewstep.load_model(args.model)
    floor = fd_digits(fewstep.sample(teacher, solver="dpmpp_3m", nfe=32, schedule="karras",
                                     schedule_options={"sigma_max": 80.0}, seeds=SEEDS).double(), held)
    student, net = student_copy(teacher)
    fake, fake_net = student_copy(teacher)
    step = SiD(teacher, student, fake, fake_net, batch=args.batch, sigma_g=args.sigma_g,
               lr=args.lr if args.fake_lr is None else args.fake_lr)
    step.optimizer = optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, betas=step.betas)
    sampling = {"solver": "euler", "nfe": 1, "schedule": "explicit",
                "schedule_options": {"sigmas": [args.sigma_g, 0.0]}}

    def fd() -> float:
        net.eval()
        with torch.no_grad():
            x = fewstep.sample(student, seeds=SEEDS, **sampling)
        net.train()
        return fd_digits(x.double(), held)

    print(f"{args}\nthe teacher's fd (32 evaluations): {floor:.2f}\n| iterations | fd | CPU-min |\n|---:|---:|---:|\n"
          f"| 0 | {fd():.2f} | 0 |", flush=True)
    curve(step, optimizer, args.iterations, args.lr, args.every,
          lambda done, minutes: print(f"| {done} | {fd():.2f} | {minutes:.2f} |", flush=True))

if __name__ == "__main__":
    main()
