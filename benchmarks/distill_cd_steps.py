"""Whether the consistency-distillation students get worse with more steps (issue 19; docs/distill.md): the
multistep consistency sampler with the student's ``f`` at each step, with the exact ``f`` at every step (the
teacher's ODE from that sigma, which gives exact samples at every NFE, so it is the floor), and with the exact ``f``
at one step only; and the student's error at each step against the exact ``f`` on the sampler's own states.

    .venv/bin/python benchmarks/distill_cd_steps.py --models digits-edm,digits-flow --nfes 1,2,3,4

fd is to the 359 held-out digits on 512 samples, as benchmarks/distill.py, repeated on ``--repeats`` sets of them
(repeat ``r``: start seeds ``1000 r .. 1000 r + 511`` and the steps' noise from generator seed ``r``; repeat 0
starts from seeds 0-511, the benchmark's); the student's own sampler (``fewstep.sample(student)``, whose steps'
noise is drawn from the seeds) is measured on the same start seeds. The exact ``f(x, s)`` is DPM-Solver++(3M) with
32 evaluations from ``s`` to 0 on the karras grid (its rmse to the reference ODE solution from sigma 80 is 0.007 on
digits-edm, benchmarks/distill.py). One thread.
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from fewstep.diffusion.sampling import seeded_noise
from fewstep.metrics.frechet import fd_digits
from fewstep.models.digits_data import digits_data
from fewstep.models.student import BUNDLED, load_student

SAMPLES = 512


def exact_f(teacher, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The teacher's ODE from ``(x, sigma)`` to 0: the exact consistency function, up to the solver's error."""
    return fewstep.sample(teacher, solver="dpmpp_3m", nfe=32, schedule="karras",
                          schedule_options={"sigma_max": sigma}, noise=x / sigma)


def run(teacher, student, grid, exact_at, seeds, gen_seed: int, errors: bool):
    """The consistency sampler on ``grid``: ``x0 = f(x, s_i)``, then ``x = x0 + s_{i+1} z``; the steps in
    ``exact_at`` use the exact ``f``. Returns the samples and, with ``errors``, per step the rmse of the
    student's ``f`` to the exact one on that step's input (the exact ``f`` is solved only where it is used)."""
    gen = torch.Generator().manual_seed(gen_seed)
    x = grid[0] * seeded_noise(seeds, teacher.shape)
    errs = []
    for i, s in enumerate(grid[:-1]):
        with torch.no_grad():
            mine = student(x, s)
        exact = exact_f(teacher, x, s) if errors or i in exact_at else None
        if errors:
            errs.append(float((mine - exact).pow(2).mean().sqrt()))
        x0 = exact if i in exact_at else mine
        x = x0 if grid[i + 1] == 0 else x0 + grid[i + 1] * torch.randn(x0.shape, generator=gen)
    return x, errs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits-edm,digits-flow")
    p.add_argument("--nfes", default="1,2,3,4")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    held = digits_data("heldout")[0].reshape(-1, 1, 8, 8).double()

    def fd(x):
        return fd_digits(x.double(), held)

    print("| model | NFE | student's sigmas | sampler | fd of each repeat | student's f error per step (repeat 0) |\n"
          "|---|---:|---|---|---|---|")
    for name in args.models.split(","):
        teacher = fewstep.load_model(name)
        for nfe in map(int, args.nfes.split(",")):
            student = load_student(BUNDLED / f"{name}-cd-nfe2.json", nfe=nfe)
            grid = list(student.sigmas)
            seed_sets = [list(range(1000 * r, 1000 * r + SAMPLES)) for r in range(args.repeats)]
            own = [fd(fewstep.sample(student, seeds=seeds)) for seeds in seed_sets]
            head = f"| {name} | {nfe} | {', '.join(f'{s:.3g}' for s in grid[:-1])} |"
            print(f"{head} the student's own | {', '.join(f'{v:.2f}' for v in own)} | |", flush=True)
            variants = [(), tuple(range(nfe))] + ([(k,) for k in range(nfe)] if nfe > 1 else [])
            for exact_at in variants:
                fds, errors = [], []
                for r, seeds in enumerate(seed_sets):
                    x, errs = run(teacher, student, grid, set(exact_at), seeds, r, errors=r == 0)
                    fds.append(fd(x))
                    errors += errs
                where = ("exact f at every step" if len(exact_at) == nfe else
                         "exact f at step " + ", ".join(str(k + 1) for k in exact_at) if exact_at else "student's f")
                print(f"{head} {where} | {', '.join(f'{v:.2f}' for v in fds)} | "
                      f"{', '.join(f'{e:.3f}' for e in errors)} |", flush=True)


if __name__ == "__main__":
    main()
