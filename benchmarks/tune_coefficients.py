"""The coefficient tuners (DPM-Solver-v3 on EMS, DC-Solver, IIA) against their own untuned solvers and
the best untuned solver, at NFE 4, 5, 6 and 8. Prints the tables of docs/solvers.md ("Tuned solvers").

    .venv/bin/python benchmarks/tune_coefficients.py --models digits-gmm gmm2d        # minutes
    .venv/bin/python benchmarks/tune_coefficients.py                                  # + trained nets (about an hour)

Every number is measured on the held-out seeds 0-255 (``fewstep bench``'s), against the same cached
float64 references, with the tuners' default options; the tuning seeds are 100000+. "untuned" is each
tuned solver without its fitted options (its base solver on the same Karras grid); "best untuned" is
the best of ``HAND_MADE`` on that grid. ``rmse_ref`` and ``fd`` (digits models: Frechet distance of
the bundled classifier's features to the held-out digits; gmm2d: of the raw 2-d samples) as in the bench.
Recipes are written to fewstep-out/tune_coefficients/.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "fewstep-out" / "tune_coefficients"
HAND_MADE = ("ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm", "ipndm_v", "dpm_solver_3")
TUNED = (("ems", "dpm_solver_v3"), ("dc", "unipc_dc"), ("dc", "dpmpp_2m_dc"), ("dc", "ipndm_dc"),
         ("iia", "iia_ddim"), ("iia", "iia_dpmpp_2m"), ("iia", "iia_heun"))


def untuned_rows(model, nfe: int, seeds: list[int]) -> dict[str, dict]:
    from fewstep.diffusion.sampling import sample
    from fewstep.diffusion.schedules import start_sigma
    from fewstep.evaluation import DataReference, compute_metrics
    from fewstep.evaluation.references import reference_samples

    ref = reference_samples(model, seeds, sigma_max=start_sigma(model))[0]
    data, rows = DataReference(model), {}
    for solver in HAND_MADE:
        try:
            x = sample(model, solver=solver, nfe=nfe, schedule="karras",
                       schedule_options={"sigma_max": start_sigma(model)}, seeds=seeds)
        except ValueError:  # an NFE below the solver's minimum
            continue
        rows[solver] = compute_metrics(["rmse_ref", "fd"], x, ref, data)
    return rows


def run_model(name: str, nfes, seeds, log) -> list[dict]:
    import importlib

    from fewstep.models import load_model

    model = load_model(name)
    from fewstep.diffusion.denoiser import model_hash
    from fewstep.evaluation.references import cache_dir

    for stale in (cache_dir() / "ems").glob(f"{model_hash(model)}-*.safetensors"):
        stale.unlink()  # so the first NFE's EMS time is the cold cost (later NFEs reuse the statistics)
    out = []
    for nfe in nfes:
        row = {"model": name, "nfe": nfe, "untuned": untuned_rows(model, nfe, seeds), "tuned": {}}
        for method, solver in TUNED:
            module = importlib.import_module(f"fewstep.diffusion.tune.{method}")
            r = module.tune(model, solver=solver, nfe=nfe, eval_seeds=seeds, progress=False)
            folder = OUT / name
            folder.mkdir(parents=True, exist_ok=True)
            r.save(folder / f"{method}-{solver}-nfe{nfe}.json")
            q = r.quality
            row["tuned"][solver] = {"rmse_ref": q["rmse_ref"], "fd": q.get("fd", math.nan),
                                    "base_rmse_ref": q["untuned"]["rmse_ref"],
                                    "base_fd": q["untuned"].get("fd", math.nan),
                                    "seconds": r.info["tune_seconds"], "options": _short(r.solver_options)}
            log(f"{name} NFE {nfe} {solver}: rmse {q['rmse_ref']:.4g} (untuned {q['untuned']['rmse_ref']:.4g}) "
                f"in {r.info['tune_seconds']:.1f} s")
        out.append(row)
    return out


def cpr_row(name: str, seeds, fit_nfes=(4, 5, 8), target=6) -> dict:
    """DC ratios fitted at ``fit_nfes``, CPR fitted to them, used at the unseen ``target`` NFE."""
    from fewstep.diffusion.tune import dc
    from fewstep.models import load_model

    model = load_model(name)
    r = dc.tune(model, nfe=target, eval_seeds=seeds, progress=False, cpr_nfes=list(fit_nfes))
    return {"model": name, "fit_nfes": list(fit_nfes), "nfe": target, "rmse_ref": r.quality["rmse_ref"],
            "untuned": r.quality["untuned"]["rmse_ref"], "seconds": r.info["tune_seconds"]}


def _short(options: dict) -> dict:
    return {k: ("<EMS>" if k == "ems" else v) for k, v in options.items()}


def tables(rows: list[dict], cprs: list[dict]) -> str:
    lines = []
    for metric in ("rmse_ref", "fd"):
        lines += [f"\n{metric}: tuned value (tuned / its untuned solver, tuned / best untuned)\n",
                  "| model | NFE | best untuned | " + " | ".join(s for _, s in TUNED) + " |",
                  "|---|---|---|" + "---|" * len(TUNED)]
        for row in rows:
            unt = {k: v[metric] for k, v in row["untuned"].items() if math.isfinite(v[metric])}
            if not unt:
                continue
            b = min(unt, key=unt.get)
            cells = []
            for _, s in TUNED:
                t = row["tuned"][s]
                cells.append(f"{t[metric]:.4g} ({t[metric] / t['base_' + metric]:.2f}, {t[metric] / unt[b]:.2f})")
            lines.append(f"| {row['model']} | {row['nfe']} | {unt[b]:.4g} {b} | " + " | ".join(cells) + " |")
    lines += ["\ntuning time in seconds (min-max over the NFEs; EMS: the first NFE computes the statistics)\n",
              "| model | " + " | ".join(s for _, s in TUNED) + " |", "|---|" + "---|" * len(TUNED)]
    for name in dict.fromkeys(r["model"] for r in rows):
        sec = [[r["tuned"][s]["seconds"] for r in rows if r["model"] == name] for _, s in TUNED]
        lines.append(f"| {name} | " + " | ".join(f"{min(v):.0f}-{max(v):.0f}" for v in sec) + " |")
    if cprs:
        lines += ["\nCPR: DC ratios (unipc_dc) fitted at other NFEs, predicted for an unseen one\n",
                  "| model | fitted at | used at | rmse_ref CPR | untuned | seconds |", "|---|---|---|---|---|---|"]
        for c in cprs:
            lines.append(f"| {c['model']} | {c['fit_nfes']} | {c['nfe']} | {c['rmse_ref']:.4g} | {c['untuned']:.4g} "
                         f"| {c['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+",
                    default=["digits-gmm", "gmm2d", "digits-edm", "digits-flow", "digits-vp-eps"])
    ap.add_argument("--nfes", nargs="+", type=int, default=[4, 5, 6, 8])
    ap.add_argument("--eval-seeds", type=int, default=256, help="held-out seeds 0..N-1")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (small batches: 1 is fastest)")
    args = ap.parse_args()

    import platform

    import torch

    import fewstep

    torch.set_num_threads(args.threads)
    seeds = list(range(args.eval_seeds))
    t0 = time.perf_counter()
    rows, cprs, skipped = [], [], []
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        try:
            rows += run_model(name, args.nfes, seeds, log=lambda s: print(s, flush=True))
            cprs.append(cpr_row(name, seeds))
        except ValueError as exc:  # e.g. a trained model whose weights are missing: reported, not hidden
            skipped.append(f"{name}: {exc}")
            print(f"skipped {skipped[-1]}", flush=True)
        (OUT / "rows.json").write_text(json.dumps({"rows": rows, "cpr": cprs, "skipped": skipped}, indent=1))
    print(f"\nfewstep {fewstep.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"cpu ({platform.machine()}), {args.threads} thread(s); {len(seeds)} held-out seeds; "
          f"wall {(time.perf_counter() - t0) / 60:.1f} min")
    print(tables(rows, cprs))
    for s in skipped:
        print(f"\nskipped {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
