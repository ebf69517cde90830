"""How good SFD's targets are, and what they cost (issue 19; docs/distill.md).

An SFD student learns to land on the teacher's trajectory, so the teacher's own error at the student's last point
bounds what it can reach. For NFE 2 with the analytical first step (3 student steps), per teacher steps per student
step ``K``: the rmse of the teacher's final state (``fewstep.distill.sfd.teacher_targets``, DPM-Solver++(3M) on
the polynomial grid, closed by ``D(x, sigma_min)``) against the reference ODE solution on seeds 0-63, and the CPU
seconds of one batch of 64 trajectories. Then the split of one SFD iteration (batch 64) between the teacher's
trajectories and the student's steps with their updates, which is what a trajectory pool (``options={"pool":
P}``) saves.

    .venv/bin/python benchmarks/distill_sfd_targets.py
"""

from __future__ import annotations

import time

import torch

import fewstep
from fewstep.diffusion.noise import seeded_noise
from fewstep.distill import iteration_generator, student_copy
from fewstep.distill.grids import student_grid
from fewstep.distill.sfd import SFD, teacher_targets
from fewstep.evaluation import reference_samples
from fewstep.metrics.paired import rmse

SEEDS, TOP, KS, REPEATS = list(range(64)), 80.0, (2, 4, 8, 16), 3


def _cpu(fn) -> float:
    t0 = time.process_time()
    for _ in range(REPEATS):
        fn()
    return (time.process_time() - t0) / REPEATS


def main() -> None:
    torch.set_num_threads(1)
    print("| model | K | teacher steps | rmse_ref of the targets | CPU s per 64 trajectories |")
    print("|---|---:|---:|---:|---:|")
    splits = []
    for name in ("digits-edm", "digits-flow"):
        teacher = fewstep.load_model(name)
        ref, _ = reference_samples(teacher, SEEDS, sigma_max=TOP, rtol=1e-5)
        grid = student_grid(teacher, 3, TOP)
        x = TOP * seeded_noise(SEEDS, teacher.shape)
        for k in KS:
            err = rmse(teacher_targets(teacher, x, grid, k)[-1].double(), ref.double())
            seconds = _cpu(lambda k=k: teacher_targets(teacher, x, grid, k))
            print(f"| {name} | {k} | {3 * k} | {err:.4f} | {seconds:.2f} |", flush=True)
        student, net = student_copy(teacher)
        step = SFD(teacher, student, nfes=(2,), batch=64, substeps=8)
        step.optimizer = torch.optim.Adam(net.parameters(), lr=1e-6)
        whole = _cpu(lambda: step(0, iteration_generator(0, 0)))
        trajectories = _cpu(lambda: teacher_targets(teacher, x, grid, 8))
        splits.append((name, whole, trajectories))
    print("\n| model | CPU s per SFD iteration (K = 8, batch 64) | of which the teacher's trajectories |")
    print("|---|---:|---:|")
    for name, whole, trajectories in splits:
        print(f"| {name} | {whole:.2f} | {trajectories:.2f} ({100 * trajectories / whole:.0f} %) |")


if __name__ == "__main__":
    main()
