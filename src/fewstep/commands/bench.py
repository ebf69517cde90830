"""``fewstep bench``: every solver on every model at several NFE, on the same noise, with metrics."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from fewstep.seeds import EVAL_SEEDS, seed_text


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark solvers x schedules x NFE on bundled models",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="digits-gmm", help="comma-separated model names")
    p.add_argument("--solvers", default="ddim,dpmpp_2m,unipc,deis,ipndm", help="comma-separated solver names")
    p.add_argument("--schedules", default="karras", help="comma-separated schedule names")
    p.add_argument("--nfe", default="3,4,5,6,8,10", help="comma-separated NFE budgets")
    p.add_argument("--metrics", default="rmse_ref,fd",
                   help="comma-separated: rmse_ref,fd,fd_pixels,sw,precision,recall")
    p.add_argument("--seeds", default=seed_text(EVAL_SEEDS), help="seeds, e.g. 0-255")
    p.add_argument("--peers", default="", help="also run peers' own samplers: diffusers,kdiffusion")
    p.add_argument("--recipes", default="", metavar="A.json,B.json",
                   help="also run tuned recipes from `fewstep tune`, one row each")
    p.add_argument("--json", default=None, metavar="PATH", help="write one JSON row per configuration")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG of quality against NFE")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    from fewstep.bench.harness import BenchSpec, run_bench
    from fewstep.commands.args import claim_outputs, parse_ints, parse_names, parse_seeds
    from fewstep.diffusion.schedules import list_schedules
    from fewstep.diffusion.solvers import SOLVERS
    from fewstep.evaluation import METRICS
    from fewstep.models import list_models

    spec = BenchSpec(
        models=parse_names(args.models, list_models(), "models"),
        solvers=parse_names(args.solvers, SOLVERS, "solvers"),
        schedules=parse_names(args.schedules, [s for s in list_schedules() if s != "explicit"], "schedules"),
        nfes=parse_ints(args.nfe, "NFE budgets"),
        metrics=parse_names(args.metrics, METRICS, "metrics"),
        seeds=parse_seeds(args.seeds),
        peers=parse_names(args.peers, ("diffusers", "kdiffusion"), "peers") if args.peers else (),
        recipes=[p.strip() for p in args.recipes.split(",") if p.strip()],
    )
    outputs = [Path(p) for p in (args.json, args.plot) if p]
    claim_outputs(outputs, args.force)
    rows = run_bench(spec, progress=not args.no_progress)
    if spec.peers:
        from fewstep.bench.peers import peer_rows

        rows += peer_rows(spec)
    if spec.recipes:
        from fewstep.bench.recipes import recipe_rows

        rows += recipe_rows(spec.recipes, spec, progress=not args.no_progress)
    if not rows:  # not rank 0 under torchrun
        return 0
    print(format_table(rows, spec.metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=_jsonable) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        from fewstep.bench.report import plot_quality

        plot_quality(rows, spec.metrics[0], args.plot)
        print(f"wrote {args.plot}")
    return 0


def _jsonable(v):
    return None if isinstance(v, float) and math.isnan(v) else str(v)


def format_table(rows, metrics) -> str:
    """A readable terminal table: one line per configuration."""
    head = ["model", "solver", "schedule", "nfe", *metrics, "wall_s"]
    lines = []
    for r in rows:
        if "error" in r:
            cells = [r["model"], r.get("label", r["solver"]), r["schedule"], str(r["nfe_budget"])]
            lines.append(cells + ["-"] * len(metrics) + [f"skipped: {r['error'][:60]}"])
            continue
        cells = [r["model"], r.get("label", r["solver"]), r["schedule"], str(r["nfe"])]
        cells += [_fmt(r.get(m)) for m in metrics] + [f"{r['wall_s']:.3f}"]
        lines.append(cells)
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4g}"
