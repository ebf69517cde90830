"""Cost and accuracy of the tuning seeds' references (``_tuning.TUNE_RTOL``) against the benchmark's.

    .venv/bin/python benchmarks/tuning_references.py      # about 6 minutes on one busy core

For each bundled trained model, 32 tuning seeds (100000-100031) are solved from the model's start
sigma by the adaptive reference solver at the tuning tolerance and at the benchmark's (rtol 1e-6, whose
own error is far smaller); prints the model calls and seconds of each and the RMS difference between
them, which is the error the tuning references carry (the few-step errors tuning compares are 0.02 and
up). The numbers are quoted in ``_tuning.py`` and docs/tuning.md.
"""

import time

import torch


def main() -> None:
    from fewstep.diffusion import schedules
    from fewstep.diffusion import tune as T
    from fewstep.diffusion.reference import reference_solution
    from fewstep.diffusion.sampling import seeded_noise
    from fewstep.models import load_model

    torch.set_num_threads(1)
    seeds = list(range(100_000, 100_032))
    print(f"{len(seeds)} tuning seeds; tuning rtol {T.TUNE_RTOL:g} against the benchmark's 1e-6")
    for name in ("digits-edm", "digits-flow", "digits-vp-eps"):
        model = load_model(name)
        top = schedules.start_sigma(model)
        x = top * seeded_noise(seeds, model.shape, dtype=torch.float64)
        out = {}
        for rtol in (T.TUNE_RTOL, 1e-6):
            t = time.perf_counter()
            y, stats = reference_solution(model, x, top, rtol=rtol, atol=rtol * 1e-2, sigma_end=float(model.sigma_min),
                                          return_stats=True)
            out[rtol] = (y, stats["nfe"], time.perf_counter() - t)
        (a, na, ta), (b, nb, tb) = out[T.TUNE_RTOL], out[1e-6]
        print(f"{name}: {na} model calls ({ta:.0f} s) against {nb} ({tb:.0f} s), {na / nb:.2f} of them; "
              f"RMS difference {float((a - b).pow(2).mean().sqrt()):.2g}", flush=True)


if __name__ == "__main__":
    main()
