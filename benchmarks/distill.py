"""The bundled distilled students against the best untuned solver at the same NFE (issue 19).

    .venv/bin/python benchmarks/distill.py                      # every student under --students
    .venv/bin/python benchmarks/distill.py --ref-seeds 0-63 --fd-seeds 0-511

For each student (``fewstep.load_model(PATH.json)``) and its teacher, on the same seeds and from the same start
sigma (80):

- ``rmse_ref``: RMSE to the teacher's reference ODE solution (``fewstep.evaluation.reference_samples``, adaptive
  float64, rtol ``--rtol``) on ``--ref-seeds``;
- ``fd``: Frechet distance in the digits classifier's features (``fewstep.metrics.frechet.fd_digits``) to the 359
  held-out digits, on ``--fd-seeds``; the floor is the teacher's own fd with a 32-evaluation DPM-Solver++(3M) run
  (its references for that many seeds would take hours here), and the noise is the spread of fd between the two
  halves of the seeds;
- the best untuned solver at the same NFE: every (solver, schedule, AFS) of ``CANDIDATES``, chosen by rmse_ref;
- the fine-tuning cost: the CPU-minutes the student's record holds (``time.process_time`` of its training).

Prints one markdown table (one torch thread).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

import fewstep
from fewstep.evaluation import reference_samples
from fewstep.metrics.frechet import fd_digits
from fewstep.metrics.paired import rmse
from fewstep.models.digits_data import digits_data
from fewstep.seeds import parse_seeds

STUDENTS = Path(fewstep.__file__).resolve().parent / "models" / "data" / "students"
TOP = 80.0
CANDIDATES = list(itertools.product(("euler", "dpmpp_2m", "unipc", "deis", "ipndm"), ("karras", "logsnr"),
                                    (False, True)))


def _sample(model, seeds, **kw):
    return fewstep.sample(model, seeds=list(seeds), **kw).double()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=Path, default=STUDENTS)
    p.add_argument("--ref-seeds", default="0-63")
    p.add_argument("--fd-seeds", default="0-511")
    p.add_argument("--rtol", type=float, default=1e-6)
    args = p.parse_args()
    torch.set_num_threads(1)
    ref_seeds, fd_seeds = parse_seeds(args.ref_seeds), parse_seeds(args.fd_seeds)
    held = digits_data("heldout")[0].reshape(-1, 1, 8, 8).double()
    half = len(fd_seeds) // 2

    def fd_pair(x):
        return fd_digits(x, held), abs(fd_digits(x[:half], held) - fd_digits(x[half:], held))

    print("| student | NFE | rmse_ref | fd (halves differ by) | best untuned at the same NFE | its rmse_ref | its fd "
          "| teacher fd, NFE 32 | fine-tuning CPU-min |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    teachers = {}
    for path in sorted(args.students.glob("*.json")):
        student = fewstep.load_model(str(path))
        name = student.record.teacher
        if name not in teachers:
            teacher = fewstep.load_model(name)
            t0 = time.time()
            ref, tol = reference_samples(teacher, ref_seeds, sigma_max=TOP, rtol=args.rtol)
            teacher_fd = fd_pair(_sample(teacher, fd_seeds, solver="dpmpp_3m", nfe=32, schedule="karras",
                                         schedule_options={"sigma_max": TOP}))
            teachers[name] = teacher, ref.double(), tol, teacher_fd, time.time() - t0
        teacher, ref, tol, teacher_fd, _ = teachers[name]
        n = student.nfe
        s_rmse = rmse(_sample(student, ref_seeds, **student.sampling), ref)
        s_fd = fd_pair(_sample(student, fd_seeds, **student.sampling))
        best = None
        for solver, schedule, afs in CANDIDATES:
            kw = dict(solver=solver, nfe=n, schedule=schedule, schedule_options={"sigma_max": TOP}, afs=afs)
            try:
                err = rmse(_sample(teacher, ref_seeds, **kw), ref)
            except ValueError:  # the solver cannot run at this NFE (with AFS)
                continue
            if best is None or err < best[0]:
                best = (err, kw)
        b_fd = fd_pair(_sample(teacher, fd_seeds, **best[1]))
        kw = best[1]
        label = f"{kw['solver']}, {kw['schedule']}{', AFS' if kw['afs'] else ''}"
        cpu = student.record.training.get("cpu_seconds", float("nan")) / 60
        print(f"| {path.stem} | {n} | {s_rmse:.4f} | {s_fd[0]:.2f} ({s_fd[1]:.2f}) | {label} | {best[0]:.4f} "
              f"| {b_fd[0]:.2f} ({b_fd[1]:.2f}) | {teacher_fd[0]:.2f} ({teacher_fd[1]:.2f}) | {cpu:.1f} |", flush=True)
    for name, (_, _, tol, _, _) in teachers.items():
        print(f"\n{name}: reference tolerance check (rtol vs rtol/2) {tol:.1e}")


if __name__ == "__main__":
    main()
