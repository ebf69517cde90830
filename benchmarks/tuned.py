"""Tuned samplers against the best untuned ones, at NFE 4, 5, 6 and 8. Writes the `tuned` section of
docs/benchmarks.md and docs/img/tuned.png.

    .venv/bin/python benchmarks/tuned.py                      # every bundled model (hours on 2 busy cores)
    .venv/bin/python benchmarks/tuned.py --models digits-gmm  # minutes

Untuned: every deterministic fewstep solver on karras, logsnr and time_uniform grids (and discrete for
discrete-time models), and the diffusers and k-diffusion peers on the same grids. Tuned: every tuning
method whose module exists, one recipe per NFE, measured by ``fewstep.bench.recipes.recipe_rows`` on
the same seeds, noise and references. The tuning seeds (100000+) are disjoint from the benchmark's.
Recipes and raw rows go to fewstep-out/tuned/; ``--resume`` reuses the rows of models already done.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from solvers import DOC, IMG, write_section  # noqa: E402  (the shared docs/benchmarks.md writer)

MODELS = ["digits-gmm", "digits-edm", "digits-flow", "digits-vp-eps"]
NFES = [4, 5, 6, 8]
OUT = ROOT / "fewstep-out" / "tuned"
MINE = {"ays": "dpmpp_2m", "gits": "ipndm", "s3": "unipc", "ld3": "best"}  # method -> solver it tunes (s3: compares
# with; ld3: starts from the best one-evaluation-per-step solver and schedule on the tuning seeds)
# AYS's objective and GITS's one-step costs are the same for every one-evaluation-per-step multistep
# solver, so their schedule is also benchmarked with these solvers (same recipe, solver replaced).
SHARED_SCHEDULE = {"ays": ("unipc", "ipndm", "ipndm_v"), "gits": ("dpmpp_2m", "unipc", "ipndm_v")}


def method_options(method: str, exact: bool) -> dict:
    """Sizes: exact models are cheap to evaluate, the trained U-Nets are not (about 0.4 s per 256 samples here)."""
    if method == "ays":
        return {"mc_samples": 256} if exact else {"mc_samples": 128, "max_sweeps": 3}
    if method == "s3":
        return {"batch": 512, "generations": 24} if exact else {"batch": 64, "population": 16, "generations": 10,
                                                                 "children": 12}
    if method == "ld3":  # ld3's defaults: full-batch L-BFGS in coordinates preconditioned on 32 seeds, stopped
        # when 4 held-back checks in a row found nothing better, or after 100 iterations
        return {"optimizer": "lbfgs", "steps": 100, "patience": 4, "precondition": 32}
    if method == "ems" and exact:  # a few seeds of digits-gmm switch modes: 128 seeds rank its trials noisily
        return {"trajectories": 512}
    return {}


def tuning_seeds(method: str, exact: bool) -> range:
    if method == "ld3":  # it fits more parameters than the others: more seeds keep it from overfitting
        # (at NFE 8 on the trained models 256 seeds overfit: held-out 0.62 of the best untuned on
        # digits-flow, 0.48 with 512)
        return range(100_000, 100_512)
    return range(100_000, 100_512 if (method in ("s3", "ems") and exact) else 100_128)


def available_methods() -> list[str]:
    from fewstep.diffusion.tune import METHOD_MODULES

    return [m for m, mod in METHOD_MODULES.items() if importlib.util.find_spec(mod) is not None]


def tune_model(name: str, nfes, methods, seeds, log) -> tuple[list[Path], list[str], list[float]]:
    """Tune every method at every NFE; returns the recipe files (with shared-schedule variants), failures and
    the seconds of the reference blocks computed for the tuning seeds."""
    from fewstep.diffusion.sampling import plan_steps
    from fewstep.diffusion.tune import METHOD_MODULES
    from fewstep.models import load_model

    model = load_model(name)
    exact = hasattr(model, "sample_data")
    paths, failures = [], []
    n_refs = max(len(tuning_seeds(m, exact)) for m in methods)
    ref_seconds = tuning_references(model, range(100_000, 100_000 + n_refs), log)
    for method in methods:
        module = importlib.import_module(METHOD_MODULES[method])
        for nfe in nfes:
            kw = {"solver": MINE[method]} if method in MINE else {}
            s3_recipe = OUT / name / f"s3-usf-nfe{nfe}.json"
            if method == "ld3" and s3_recipe.exists():  # ld3 may start from the S3 solver schedule
                kw["starts"] = [str(s3_recipe)]
            try:
                r = module.tune(model, nfe=nfe, seeds=tuning_seeds(method, exact), eval_seeds=seeds, progress=True,
                                **kw, **method_options(method, exact))
            except Exception as exc:  # a method that cannot run here is reported, not hidden
                failures.append(f"{method} on {name} at NFE {nfe}: {type(exc).__name__}: {exc}")
                log(failures[-1])
                continue
            log(f"{name} {method} NFE {nfe}: {r.info.get('tune_seconds', float('nan')):.1f} s, quality {r.quality}")
            folder = OUT / name
            folder.mkdir(parents=True, exist_ok=True)
            paths.append(r.save(folder / f"{method}-{r.solver}-nfe{nfe}.json"))
            for solver in SHARED_SCHEDULE.get(method, ()):
                if plan_steps(solver, nfe) == r.n_steps:
                    v = dataclasses.replace(r, solver=solver, quality={}, info={**r.info, "schedule_of": r.solver})
                    paths.append(v.save(folder / f"{method}-{solver}-nfe{nfe}.json"))
    return paths, failures, ref_seconds


def tuning_references(model, seeds, log) -> list[float]:
    """Compute (or load) the tuning seeds' references before any method, so that no method's time
    includes them; returns the seconds of each block of ``REF_BLOCK`` seeds computed here."""
    from fewstep.diffusion import schedules
    from fewstep.diffusion import tune as T
    from fewstep.evaluation.references import reference_path

    seeds, out = list(seeds), []
    for i in range(0, len(seeds), T.REF_BLOCK):
        block = seeds[i:i + T.REF_BLOCK]
        fresh = not reference_path(model, block, sigma_max=schedules.start_sigma(model), rtol=T.TUNE_RTOL,
                                   check=T.TUNE_CHECK).exists()
        t = time.perf_counter()
        T.tuning_references(model, block)
        if fresh:
            out.append(round(time.perf_counter() - t, 1))
            log(f"{model.name}: references of tuning seeds {block[0]}-{block[-1]}: {out[-1]} s")
    return out


def baseline_rows(name: str, nfes, seeds) -> list[dict]:
    from fewstep.bench.harness import BenchSpec, run_bench
    from fewstep.diffusion.solvers import SOLVERS
    from fewstep.models import load_model

    solvers = sorted(n for n, i in SOLVERS.items() if not i.stochastic and n != "euler"
                     and (n == "usf" or not i.fn.__module__.startswith("fewstep.diffusion.tune")))
    schedules = ["karras", "logsnr", "time_uniform"]
    if getattr(load_model(name).process, "num_train_timesteps", None) is not None:
        schedules.append("discrete")
    peers = ["diffusers", "kdiffusion"] if importlib.util.find_spec("fewstep.bench.peers") else []
    spec = BenchSpec(models=[name], solvers=solvers, schedules=schedules, nfes=nfes, metrics=["rmse_ref", "fd"],
                     seeds=seeds, peers=peers)
    rows = run_bench(spec)
    if peers:
        from fewstep.bench.peers import peer_rows

        rows += peer_rows(spec)
    return rows


def config(r: dict) -> str:
    if r.get("source") == "fewstep-recipe":
        return f"{r['label']} ({r['solver']})"
    return f"{r.get('label', r['solver'])} / {r['schedule']}"


def best(rows, metric):
    ok = [r for r in rows if "error" not in r and r.get(metric) is not None and math.isfinite(r[metric])]
    return min(ok, key=lambda r: r[metric]) if ok else None


def summary(rows, models, nfes, methods) -> tuple[str, str, list[tuple]]:
    """The target table, the per-method ratio table, and (model, nfe, metric, ratio, best untuned value) for
    the verdict."""
    head = ["| model | NFE | metric | best untuned | value | best tuned | value | tuned / untuned | at most half |",
            "|---|---|---|---|---|---|---|---|---|"]
    per = [f"| model | NFE | metric | {' | '.join(methods)} |", "|---|---|---|" + "---|" * len(methods)]
    verdict = []
    for m in models:
        for n in nfes:
            cell = [r for r in rows if r["model"] == m and r["nfe_budget"] == n]
            base = [r for r in cell if r.get("source") != "fewstep-recipe"]
            tuned = [r for r in cell if r.get("source") == "fewstep-recipe"]
            for metric in ("rmse_ref", "fd"):
                b, t = best(base, metric), best(tuned, metric)
                if b is None or t is None:
                    continue
                ratio = t[metric] / b[metric]
                verdict.append((m, n, metric, ratio, b[metric]))
                head.append(f"| {m} | {n} | {metric} | {config(b)} | {b[metric]:.4g} | {config(t)} | {t[metric]:.4g} "
                            f"| {ratio:.2f} | {'yes' if ratio <= 0.5 else '**no**'} |")
                cells = []
                for method in methods:
                    bm = best([r for r in tuned if r["label"] == method], metric)
                    cells.append("-" if bm is None else f"{bm[metric] / b[metric]:.2f}")
                per.append(f"| {m} | {n} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(head), "\n".join(per), verdict


def plot(rows, models, nfes, methods, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fewstep.bench.report import style_axis

    fig, axes = plt.subplots(2, len(models), figsize=(4.5 * len(models), 7), squeeze=False)
    for j, m in enumerate(models):
        cell = [r for r in rows if r["model"] == m]
        for i, metric in enumerate(("rmse_ref", "fd")):
            ax = axes[i][j]
            groups = {"best untuned": [r for r in cell if r.get("source") != "fewstep-recipe"]}
            groups.update({k: [r for r in cell if r.get("label") == k and r.get("source") == "fewstep-recipe"]
                           for k in methods})
            for label, sub in groups.items():
                pts = [(n, best([r for r in sub if r["nfe_budget"] == n], metric)) for n in nfes]
                pts = [(n, r[metric]) for n, r in pts if r is not None and r[metric] > 0]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=label, lw=2.5 if label == "best untuned" else 1.2,
                            color="black" if label == "best untuned" else None)
            style_axis(ax, metric, m)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def span(v: list[float]) -> str:
    return "-" if not v else f"{min(v):.3g}-{max(v):.3g} s" if len(v) > 1 else f"{v[0]:.3g} s"


def timing_table(recipe_paths, methods, models, ref_seconds) -> str:
    from fewstep.diffusion.tune import Recipe

    secs: dict = {}
    for p in recipe_paths:
        r = Recipe.load(p)
        if "schedule_of" not in r.info:
            secs.setdefault((r.method, r.model), []).append(r.info.get("tune_seconds", math.nan))
    lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    lines.append("| references, per 128 tuning seeds (once per model) | "
                 + " | ".join(span(ref_seconds.get(m, [])) for m in models) + " |")
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(span(secs.get((method, m))) for m in models) + " |")
    return "\n".join(lines)


def fd_floor(models, seeds) -> dict[str, float]:
    """fd of the reference ODE solutions themselves, per model: what an exact solver of it scores."""
    from fewstep.diffusion.schedules import SIGMA_CAP
    from fewstep.evaluation import DataReference, compute_metrics
    from fewstep.evaluation.references import reference_samples
    from fewstep.models import load_model

    out = {}
    for m in models:
        model = load_model(m)
        top = model.sigma_max if math.isfinite(model.sigma_max) else SIGMA_CAP
        ref = reference_samples(model, seeds, sigma_max=top)[0]
        out[m] = compute_metrics(["fd"], ref, None, DataReference(model))["fd"]
    return out


def real_fd_spread(n: int) -> str:
    """fd of ``n`` real training digits against the held-out ones, over disjoint subsets: the metric's own
    floor and noise at the benchmark's sample size (a sampler as good as the data scores about this)."""
    import torch

    from fewstep.metrics import digits_features, fd
    from fewstep.models.digits_data import digits_data

    train, held = digits_data("train")[0], digits_features(digits_data("heldout")[0]).double()
    vals = [fd(digits_features(chunk.reshape(-1, 1, 8, 8)).double(), held)
            for chunk in torch.split(train, n)[: len(train) // n]]
    return (f"{len(vals)} disjoint sets of {n} real training digits score fd {min(vals):.1f} to {max(vals):.1f} "
            f"(mean {sum(vals) / len(vals):.1f}) against the same held-out digits")


def write_doc(rows, recipe_paths, models, nfes, methods, failures, seeds, minutes, threads, ref_seconds) -> None:
    import torch

    from fewstep.bench.harness import device_name
    from fewstep.diffusion import tune as T

    IMG.mkdir(parents=True, exist_ok=True)
    png = IMG / "tuned.png"
    plot(rows, models, nfes, methods, png)
    target, per, verdict = summary(rows, models, nfes, methods)
    met = sum(v[3] <= 0.5 for v in verdict)
    floor = fd_floor(models, seeds)
    missed = [(m, b) for m, _, metric, r, b in verdict if metric == "fd" and r > 0.5]
    under = sum(b / 2 < floor[m] for m, b in missed)
    parts = [
        "## Tuned samplers",
        f"Made by `python benchmarks/tuned.py --models {','.join(models)}` on {device_name()}, "
        f"torch {torch.__version__}, {threads} thread(s) (this invocation {minutes:.0f} min; with `--resume` the rows "
        "of models already done come from fewstep-out/tuned/, and tuning times are in the last table); "
        f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]}), the same noise for every row. Untuned: every deterministic "
        "fewstep solver on karras, logsnr and time_uniform grids "
        "(and discrete for digits-vp-eps), and the diffusers and k-diffusion samplers on the same grids; the "
        "best of them per metric. Tuned: one recipe per method and NFE, fitted on seeds 100000+ (disjoint "
        "from these; 128 of them, 512 for ld3, and for S3 and EMS on digits-gmm; `tuning_seeds` in the "
        "script; ld3 fits by preconditioned L-BFGS, stopped after 4 held-back checks without a better iterate "
        "or at 100 iterations, `method_options`; ld3 is also offered the model's S3 recipe of the same NFE as a "
        "starting point), run through `fewstep bench --recipes` (a method added or redone later: `--resume "
        "--add METHOD`). AYS and GITS schedules are also run with the other one-evaluation-per-step multistep "
        "solvers listed in the script (their objectives do not depend on "
        "which). rmse_ref is measured against the reference ODE solution from the model's own start (80 for "
        "digits-flow) even when a recipe starts lower.",
        f"**Target** (tuned at most half the best untuned, per metric): met in {met} of {len(verdict)} "
        "(model, NFE, metric) cells. The fd of the reference ODE solutions themselves (what an exact solver "
        f"of the model scores): {', '.join(f'{m}: {v:.4g}' for m, v in floor.items())}. In {under} of the "
        f"{len(missed)} fd cells missed, half the best untuned fd is below that: meeting the target there means "
        f"beating the model's own exact solution by the margin. And {real_fd_spread(len(seeds))}: at this "
        "sample size fd differences of that size are within the metric's noise.",
        f"![best tuned and best untuned against NFE](img/{png.name})", "", target, "",
        "### Each method against the best untuned (ratio; below 1 helps, below 0.5 meets the target)", "", per, "",
        "### Tuning time per recipe (range over NFE)",
        "The tuning seeds' reference ODE solutions (adaptive Dormand-Prince at the tuning tolerance, rtol "
        f"{T.TUNE_RTOL:g}, with the first {T.TUNE_CHECK} seeds of each block re-solved at half of it for the check) "
        "are computed once per model before any method and cached: the first row is their time per 128 seeds "
        "(of the blocks this script computed), and the methods' times exclude them. Held-out quality "
        "measurement is not included.", "",
        timing_table(recipe_paths, methods, models, ref_seconds),
    ]
    if failures:
        parts += ["", "### Methods that failed to run", ""] + [f"- {f}" for f in failures]
    write_section(DOC, "tuned", "\n".join(parts))


def unloadable(name: str) -> str | None:
    from fewstep.models import load_model

    try:
        load_model(name)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def add_methods(blob: dict, name: str, nfes, methods, seeds, tune: bool = True) -> dict:
    """``blob`` (a model's saved rows, recipes and failures) with ``methods`` tuned anew at ``nfes`` (or,
    without ``tune``, their recipe files there measured again): their old rows, recipe files and
    failures at those NFEs are replaced, the others kept."""
    from fewstep.bench.harness import BenchSpec
    from fewstep.bench.recipes import recipe_rows

    if tune:
        new_paths, new_failures, ref_seconds = tune_model(name, nfes, methods, seeds, print)
    else:
        new_paths = sorted(p for m in methods for n in nfes for p in (OUT / name).glob(f"{m}-*-nfe{n}.json"))
        new_failures, ref_seconds = [], []
    spec = BenchSpec(models=[name], solvers=[], nfes=nfes, metrics=["rmse_ref", "fd"], seeds=seeds)
    ours = {(m, n) for m in methods for n in nfes}
    rows = [r for r in blob["rows"]
            if not (r.get("source") == "fewstep-recipe" and (r.get("label"), r.get("nfe_budget")) in ours)]
    recipes = [p for p in blob["recipes"]
               if (Path(p).name.split("-")[0], int(Path(p).stem.rsplit("nfe", 1)[1])) not in ours]
    failures = [f for f in blob["failures"]
                if not any(f.startswith(f"{m} on {name} at NFE {n}:") for m, n in ours)]
    return {"rows": rows + recipe_rows(new_paths, spec), "recipes": recipes + [str(p) for p in new_paths],
            "failures": failures + new_failures, "reference_seconds": blob.get("reference_seconds", []) + ref_seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--nfe", default=",".join(map(str, NFES)))
    ap.add_argument("--methods", default=None, help="default: every method whose module exists")
    ap.add_argument("--seeds", default="0-255")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--resume", action="store_true", help="reuse fewstep-out/tuned/<model>.json rows")
    ap.add_argument("--add", default=None, metavar="METHODS",
                    help="with --resume: tune these methods again (or for the first time) and replace their rows")
    ap.add_argument("--remeasure", default=None, metavar="METHODS",
                    help="with --resume: measure these methods' recipe files again without tuning (e.g. after an "
                         "--add run stopped once its recipes were written) and replace their rows")
    args = ap.parse_args()

    import torch

    from fewstep.bench.recipes import recipe_rows
    from fewstep.commands.args import parse_ints, parse_seeds
    from fewstep.models import list_models

    torch.set_num_threads(args.threads)
    seeds = parse_seeds(args.seeds)
    nfes = parse_ints(args.nfe, "NFE budgets")
    models = [m for m in args.models.split(",") if m in list_models()]
    methods = available_methods() if args.methods is None else args.methods.split(",")
    t0 = time.time()
    rows, paths, failures, ref_seconds = [], [], [], {}
    OUT.mkdir(parents=True, exist_ok=True)
    for name in models:
        saved = OUT / f"{name}.json"
        problem = unloadable(name)
        if problem:  # e.g. weights being retrained: the doc says so
            failures.append(f"{name} is not loadable, so it is not in the table: {problem}")
            print(failures[-1])
        elif args.resume and saved.exists():
            blob = json.loads(saved.read_text())
            for option, tune in ((args.add, True), (args.remeasure, False)):
                if option:
                    blob = add_methods(blob, name, nfes, option.split(","), seeds, tune)
                    saved.write_text(json.dumps(blob, indent=1, default=str))
            rows += blob["rows"]
            ref_seconds[name] = blob.get("reference_seconds", [])
            paths += [Path(p) for p in blob["recipes"]]
            failures += blob["failures"]
        else:
            new_paths, new_failures, ref_seconds[name] = tune_model(name, nfes, methods, seeds, print)
            from fewstep.bench.harness import BenchSpec

            spec = BenchSpec(models=[name], solvers=[], nfes=nfes, metrics=["rmse_ref", "fd"], seeds=seeds)
            new_rows = baseline_rows(name, nfes, seeds) + recipe_rows(new_paths, spec)
            saved.write_text(json.dumps({"rows": new_rows, "recipes": [str(p) for p in new_paths],
                                         "failures": new_failures, "reference_seconds": ref_seconds[name]},
                                        indent=1, default=str))
            rows, paths, failures = rows + new_rows, paths + new_paths, failures + new_failures
        done = [m for m in models if any(r["model"] == m for r in rows)]
        if not done:
            continue
        write_doc(rows, paths, done, nfes, methods, failures, seeds, (time.time() - t0) / 60, args.threads,
                  ref_seconds)
        print(f"wrote {DOC} ({', '.join(done)})", flush=True)


if __name__ == "__main__":
    main()
