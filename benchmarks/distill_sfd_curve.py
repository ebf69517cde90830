"""An SFD training curve (issue 19; docs/distill.md): rmse_ref of the NFE-2 student on seeds 0-63, which training
never sees, every ``--every`` iterations, with the CPU minutes spent so far (one thread).

Trains as ``fewstep.distill.distill(teacher, "sfd", nfe=2, ...)`` does (Adam, the learning rate divided by 10 after
half the iterations, the iteration's noise from ``(seed, iteration)``), with the teacher's steps per student step,
the pool and its refresh as options. The fixed-pool curve in docs/distill.md:

    .venv/bin/python benchmarks/distill_sfd_curve.py --model digits-flow --iterations 3000 --pool 8192 --every 250
"""

from __future__ import annotations

import argparse
import time

import torch

import fewstep
from fewstep.distill import WeightAverage, iteration_generator, student_copy
from fewstep.distill.sfd import SFD
from fewstep.evaluation import reference_samples
from fewstep.metrics.paired import rmse

SEEDS, TOP = list(range(64)), 80.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="digits-flow", choices=("digits-edm", "digits-flow"))
    p.add_argument("--substeps", type=int, default=8)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pool", type=int, default=0)
    p.add_argument("--refresh", type=int, default=0)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--loss", default="l1", choices=("l1", "l2"))
    p.add_argument("--ema", type=float, default=0.0, help="also evaluate an exponential moving average of the weights "
                   "with this decay per iteration (0: none)")
    args = p.parse_args()
    torch.set_num_threads(1)
    teacher = fewstep.load_model(args.model)
    ref, _ = reference_samples(teacher, SEEDS, sigma_max=TOP, rtol=1e-5)
    student, net = student_copy(teacher)
    step = SFD(teacher, student, nfes=(2,), batch=args.batch, substeps=args.substeps, pool=args.pool,
               refresh=args.refresh, loss=args.loss)
    step.optimizer = optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    sampling = dict(solver="euler", nfe=2, schedule="explicit", schedule_options={"sigmas": list(step.grids[2])},
                    afs=True)

    ema = WeightAverage(net, args.ema) if args.ema else None

    def evaluate(weights=None) -> float:
        live = {k: v.clone() for k, v in net.state_dict().items()}
        if weights is not None:
            net.load_state_dict(weights)
        net.eval()
        with torch.no_grad():
            x = fewstep.sample(student, seeds=SEEDS, **sampling)
        net.train()
        net.load_state_dict(live)
        return rmse(x.double(), ref.double())

    print(f"{args}\n| iterations | rmse_ref | rmse_ref of the average | CPU-min |\n|---:|---:|---:|---:|\n"
          f"| 0 | {evaluate():.4f} | | 0 |", flush=True)
    def report(done: int, minutes: float) -> None:
        averaged = f"{evaluate(ema.state):.4f}" if ema is not None else ""
        print(f"| {done} | {evaluate():.4f} | {averaged} | {minutes:.2f} |", flush=True)

    curve(step, optimizer, args.iterations, args.lr, args.every, report,
          after_step=None if ema is None else lambda: ema.update(net))


def curve(step, optimizer, iterations: int, lr: float, every: int, report, after_step=None) -> None:
    """Train with ``step`` for ``iterations`` as ``fewstep.distill.distill`` does (the learning rate ``lr``, divided
    by 10 after half of them; iteration ``i``'s noise from ``iteration_generator(0, i)``) and call
    ``report(iterations done, CPU minutes of training)`` every ``every`` iterations."""
    cpu = 0.0
    for i in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr if i < iterations // 2 else lr / 10
        t0 = time.process_time()
        step(i, iteration_generator(0, i))
        if after_step is not None:
            after_step()
        cpu += time.process_time() - t0
        if (i + 1) % every == 0:
            report(i + 1, cpu / 60)

if __name__ == "__main__":
    main()
