"""The benchmark: every (model, solver, schedule, NFE) on the same noise, against exact answers.

One row per configuration: every requested metric, the NFE actually used (counted per sample), wall time
(after a warm-up pass), device and versions. Seeds run in chunks of at most ``batch`` (sharded over ``torchrun``
ranks), so memory is flat in the number of seeds. Peers' samplers run on the same wrapped model and noise when
asked.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fewstep._version import __version__
from fewstep.bench.distributed import is_main, sharded
from fewstep.diffusion.denoiser import CountingDenoiser, Denoiser
from fewstep.diffusion.sampling import plan, sample, seeded_noise, solve
from fewstep.diffusion.schedules import SIGMA_CAP, get_sigmas
from fewstep.diffusion.solvers import get_solver
from fewstep.evaluation import DataReference, compute_metrics, reference_samples
from fewstep.models import load_model
from fewstep.seeds import EVAL_SEEDS


@dataclass
class BenchSpec:
    models: Sequence[str]
    solvers: Sequence[str]
    schedules: Sequence[str] = ("karras",)
    nfes: Sequence[int] = (3, 4, 5, 6, 8, 10)
    metrics: Sequence[str] = ("rmse_ref", "fd")
    seeds: Sequence[int] = tuple(EVAL_SEEDS)
    peers: Sequence[str] = ()
    recipes: Sequence[str] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    import numpy

    return {"fewstep": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_seeds(model: CountingDenoiser, fn: Callable[[list[int]], torch.Tensor], seeds: Sequence[int],
              batch: int | None = None) -> tuple[torch.Tensor | None, int, float]:
    """``fn(ids)`` (which samples ``ids`` with ``model``) over ``seeds``, at most ``batch`` per call (``sharded``).

    Returns the samples (rank 0; None elsewhere), the model calls one sample costs, and the wall time. A model call
    evaluates a whole chunk, so a sample's NFE is the calls of one chunk; every chunk makes the same calls (the
    solver's plan does not depend on the batch), and the most any chunk made is reported.
    """
    per_chunk: list[int] = []

    def counted(ids):
        before = model.calls
        out = fn(ids)
        per_chunk.append(model.calls - before)
        return out

    t0 = time.perf_counter()
    x = sharded(counted, seeds, batch=batch)
    return x, max(per_chunk, default=0), time.perf_counter() - t0


def run_bench(spec: BenchSpec, progress: bool = True, log: Callable[[str], None] = print,
              batch: int | None = None) -> list[dict[str, Any]]:
    """Run every configuration of ``spec``, ``batch`` seeds at a time (default: the enclosing ``seed_batches``
    block's, else all at once); returns one row per configuration (rank 0 only)."""
    from tqdm import tqdm

    main = is_main()
    rows: list[dict[str, Any]] = []
    # "default" is what fewstep.sample runs with no solver or schedule: one row per model and NFE
    configs = [(m, sv, sc, n) for m in spec.models for sv in spec.solvers
               for sc in (["default"] if sv == "default" else spec.schedules) for n in spec.nfes]
    bar = tqdm(total=len(configs), disable=not (progress and main), desc="bench", unit="cfg")
    common = {"device": device_name(), "versions": versions(), "seeds": len(spec.seeds)}
    for model_name in spec.models:
        model = CountingDenoiser(load_model(model_name))
        data = DataReference(model.inner) if main else None
        refs: dict[float, torch.Tensor] = {}
        for _, solver, schedule, nfe in [c for c in configs if c[0] == model_name]:
            kw = dict(nfe=nfe) if solver == "default" else dict(solver=solver, nfe=nfe, schedule=schedule)
            if math.isinf(model.sigma_max) and schedule in ("karras", "logsnr", "exponential"):
                kw["schedule_options"] = {"sigma_max": SIGMA_CAP}
            row = {"model": model_name, "solver": solver, "schedule": schedule, "nfe_budget": nfe,
                   "source": "fewstep", **common}
            try:
                sample(model, seeds=spec.seeds[:2], **kw)  # warm-up pass
            except ValueError as exc:  # e.g. an NFE below the solver's minimum
                row.update(error=str(exc))
                rows.append(row) if main else None
                bar.update()
                continue
            x, row["nfe"], row["wall_s"] = run_seeds(model, lambda ids: sample(model, seeds=ids, **kw),
                                                     spec.seeds, batch)
            if solver == "default":  # what it chose, scored from where its grid starts
                chosen = plan(model, **kw)
                row["label"] = f"default: {chosen.solver}" + (" + AFS" if chosen.afs else "")
            if main:  # the other rows are scored from the model's own start
                top = (float(chosen.sigmas[0]) if solver == "default"
                       else kw.get("schedule_options", {}).get("sigma_max", model.sigma_max))
                if "rmse_ref" in spec.metrics and top not in refs:
                    refs[top], row_tol = reference_samples(model.inner, spec.seeds, sigma_max=top,
                                                           rtol=spec.extra.get("rtol", 1e-6))
                    log(f"reference for {model_name} from sigma {top:g}: tolerance check {row_tol:.2e}")
                row.update(compute_metrics(spec.metrics, x, refs.get(top), data))
                rows.append(row)
            bar.update()
    bar.close()
    return rows


def solver_overhead(solvers: Sequence[str], model_name: str = "digits-edm", n_steps: int = 10,
                    batch: int = 256, repeats: int = 5) -> dict[str, float]:
    """Per-step solver time as a fraction of one model evaluation: the solver runs once with the
    real model and once with a free stand-in (it returns its input), on the same grid and batch."""
    model = load_model(model_name)

    class Free(Denoiser):
        def denoise(self, x, sigma, cond):
            return x * 0.5

    free = Free(model.process)
    noise = seeded_noise(range(batch), model.shape)
    sig = get_sigmas("karras", n_steps, model, sigma_max=min(model.sigma_max, SIGMA_CAP))
    x = noise * float(sig[0])

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.no_grad():
        t_eval = best(lambda: model(x, float(sig[0])))
        out = {}
        for s in solvers:
            evals = get_solver(s).evals(n_steps, True)
            t_free = best(lambda: solve(free, x, sig, s))
            out[s] = (t_free - evals * best(lambda: free(x, 1.0))) / n_steps / t_eval
    return out
