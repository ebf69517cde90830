"""Where the SFD students' rmse_ref comes from (issue 19; docs/distill.md): the per-seed error of the NFE-2 SFD
student against the teacher's reference ODE solution, beside ld3 at NFE 4 (fitted as ``benchmarks/distill.py``
fits it) and the teacher's own 32-evaluation DPM-Solver++(3M) samples, on the benchmark's seeds 0-63 and on 0-255.

    .venv/bin/python benchmarks/distill_seed_errors.py --models digits-edm,digits-flow

For each sampler: rmse_ref (the root of the mean over seeds of each seed's mean squared error), the median seed's
rmse, the share of the squared error that the worst 5 % of the seeds carry, how many seeds are off by more than 0.2
rmse, and of those how many the bundled digits classifier reads as another digit than the reference solution.
One thread.
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from distill import fit
from fewstep.evaluation import reference_samples
from fewstep.metrics.features import digits_classifier

SEEDS, TOP, FAR = list(range(256)), 80.0, 0.2


def per_seed(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x.double() - ref.double()).flatten(1).pow(2).mean(1)


def describe(e: torch.Tensor, other_digit: torch.Tensor) -> str:
    worst = e.sort(descending=True).values[:max(1, len(e) // 20)]
    far = e.sqrt() > FAR
    return (f"{float(e.mean().sqrt()):.4f} | {float(e.median().sqrt()):.4f} | {float(worst.sum() / e.sum()):.2f} | "
            f"{int(far.sum())} | {int((far & other_digit).sum())}")


def digits(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return digits_classifier()(x.float()).argmax(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits-edm,digits-flow")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| model | sampler | NFE | seeds | rmse_ref | median seed's rmse | share of the squared error in the worst "
          f"5 % | seeds off by > {FAR} | of those, another digit |\n|---|---|---:|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        teacher = fewstep.load_model(name)
        ref, _ = reference_samples(teacher, SEEDS, sigma_max=TOP, rtol=1e-5)
        recipe = fit(teacher, "ld3", 4, range(100_000, 100_064))
        rows = [("SFD student", 2, fewstep.sample(fewstep.load_model(f"{name}-sfd-nfe2"), seeds=SEEDS)),
                ("ld3", 4, fewstep.sample(teacher, recipe=recipe, seeds=SEEDS)),
                ("teacher, DPM-Solver++(3M)", 32, fewstep.sample(teacher, solver="dpmpp_3m", nfe=32, schedule="karras",
                                                                 schedule_options={"sigma_max": TOP}, seeds=SEEDS))]
        ref_digits = digits(ref)
        for label, nfe, x in rows:
            e, other = per_seed(x, ref), digits(x) != ref_digits
            for seeds, k in (("0-63", 64), ("0-255", len(SEEDS))):
                print(f"| {name} | {label} | {nfe} | {seeds} | {describe(e[:k], other[:k])} |", flush=True)


if __name__ == "__main__":
    main()
