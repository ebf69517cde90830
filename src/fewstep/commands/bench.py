"""``fewstep bench``: every solver on every model at several NFE, on the same noise, with metrics.

Every input (names, budgets, seeds, recipe files and the models they were made for, output paths) is checked
before the first model evaluation. Reference solutions that are not cached yet are computed first, with a bar of
their own, so the benchmark's bar never sits still while they are computed.
"""

from __future__ import annotations

import json
import math
import sys
import warnings

from fewstep.commands.args import (
    MAX_BATCH,
    MAX_NFE,
    input_file,
    int_in,
    output_path,
    parse_ints,
    parse_names,
    parse_seeds,
    subcommand,
)
from fewstep.seeds import EVAL_SEEDS, seed_text

DEFAULT_BATCH = 256


def add_parser(sub) -> None:
    p = subcommand(sub, "bench", "benchmark solvers x schedules x NFE on bundled models")
    p.add_argument("--models", default="digits-gmm", help="comma-separated model names")
    p.add_argument("--solvers", default="default,ddim,dpmpp_2m,unipc,deis,ipndm",
                   help="comma-separated solver names; 'default' means what 'fewstep sample' runs with no --solver "
                   "and --schedule (with --peers: also each peer's default sampler on its own grid)")
    p.add_argument("--schedules", default="karras", help="comma-separated schedule names")
    p.add_argument("--nfe", default="3,4,5,6,8,10", help=f"comma-separated NFE budgets, each 1..{MAX_NFE:,}")
    p.add_argument("--metrics", default="rmse_ref,fd",
                   help="comma-separated: rmse_ref, fd, fd_pixels, sw, precision, recall")
    p.add_argument("--seeds", default=seed_text(EVAL_SEEDS), help="seeds, e.g. 0-255")
    p.add_argument("--batch", type=int_in(1, MAX_BATCH), default=DEFAULT_BATCH,
                   help=f"seeds evaluated together, 1..{MAX_BATCH:,}; the samples do not depend on it")
    p.add_argument("--peers", default="", help="also run peers' own samplers: diffusers, kdiffusion (default: none)")
    p.add_argument("--recipes", default="", metavar="A.json,B.json",
                   help="also run tuned recipes from 'fewstep tune', one row each (default: none)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="run a recipe made for another model as it is (with a warning)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the rows to this JSON file, one per "
                   "configuration")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="write a plot of quality against NFE to this .png, .pdf or .svg file")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args) -> int:
    from fewstep.bench.report import check_plot_path
    from fewstep.commands.outputs import Outputs

    seeds = parse_seeds(args.seeds)
    nfes = parse_ints(args.nfe, "NFE budgets")
    recipe_files = [input_file(p.strip(), "--recipes") for p in args.recipes.split(",") if p.strip()]
    files = {}
    if args.json is not None:
        files["--json"] = [output_path(args.json, "--json")]
    if args.plot is not None:
        files["--plot"] = [output_path(args.plot, "--plot")]
        check_plot_path(files["--plot"][0])
    outputs = Outputs(files, args.force)  # checked now; made after every other input is checked

    from fewstep.bench.distributed import is_main
    from fewstep.bench.harness import BenchSpec, run_bench
    from fewstep.diffusion.recipe import Recipe
    from fewstep.diffusion.schedules import list_schedules
    from fewstep.diffusion.solvers import SOLVERS
    from fewstep.evaluation import METRICS
    from fewstep.models import list_models, load_model

    spec = BenchSpec(
        models=parse_names(args.models, list_models(), "models"),
        solvers=parse_names(args.solvers, ["default", *SOLVERS], "solvers"),
        schedules=parse_names(args.schedules, [s for s in list_schedules() if s != "explicit"], "schedules"),
        nfes=nfes,
        metrics=parse_names(args.metrics, METRICS, "metrics"),
        seeds=seeds,
        peers=parse_names(args.peers, ("diffusers", "kdiffusion"), "peers") if args.peers.strip() else (),
        recipes=[str(p) for p in recipe_files],
    )
    recipes = [Recipe.load(p) for p in recipe_files]
    for recipe in recipes:  # the checks recipe_rows makes, before any configuration runs
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # recipe_rows warns once, when the recipe runs
                recipe.check(load_model(recipe.model), force=args.allow_mismatch)
        except ValueError as exc:  # the library's hint names its keyword; this command's flag is --allow-mismatch
            raise ValueError(str(exc).replace("force=True", "--allow-mismatch")) from None
    main = is_main()
    outputs.enabled = main
    progress = not args.no_progress
    with outputs:
        if main and "rmse_ref" in spec.metrics:
            _compute_references(spec, recipes, progress)
        rows = run_bench(spec, progress=progress, batch=args.batch)
        if spec.recipes:
            from fewstep.bench.recipes import recipe_rows

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rows += recipe_rows(spec.recipes, spec, progress=progress, batch=args.batch,
                                    force=args.allow_mismatch)
            for message in dict.fromkeys(str(w.message) for w in caught):  # once each, not once per chunk
                print(f"fewstep bench: warning: {message}", file=sys.stderr)
        if spec.peers:
            from fewstep.bench.peers import peer_rows

            rows += peer_rows(spec)
        if not main:  # not rank 0 under torchrun
            return 0
        if args.json is not None:
            outputs.write(files["--json"][0], (json.dumps(_jsonable(rows), indent=1) + "\n").encode())
        if args.plot is not None:
            from fewstep.bench.report import quality_plot

            path = files["--plot"][0]
            outputs.write(path, quality_plot(rows, spec.metrics[0], path.suffix))
        outputs.commit()
    print(format_table(rows, spec.metrics))
    for paths in files.values():
        print(f"wrote {paths[0]}")
    return 0


def _compute_references(spec, recipes, progress: bool) -> None:
    """The reference solutions the rows will need, computed now (and cached) unless already cached: the same
    arguments as ``run_bench`` and ``recipe_rows`` use, so they find them in the cache."""
    from fewstep.diffusion.schedules import SIGMA_CAP
    from fewstep.evaluation import reference_samples
    from fewstep.evaluation.references import reference_path
    from fewstep.models import load_model

    rtol = spec.extra.get("rtol", 1e-6)
    models = {name: load_model(name) for name in [*spec.models, *(r.model for r in recipes)]}
    needed: dict[str, set[float]] = {name: set() for name in models}
    for name in spec.models:
        top = models[name].sigma_max
        for schedule in spec.schedules:
            capped = math.isinf(top) and schedule in ("karras", "logsnr", "exponential")
            needed[name].add(SIGMA_CAP if capped else top)
    for recipe in recipes:
        top = models[recipe.model].sigma_max
        needed[recipe.model].add(top if math.isfinite(top) else SIGMA_CAP)
    for name, tops in needed.items():
        model = models[name]
        for top in sorted(tops, reverse=True):
            if reference_path(model, spec.seeds, sigma_max=top, rtol=rtol).exists():
                continue
            print(f"computing reference solutions for {name} from sigma {top:g} on {len(spec.seeds)} seeds "
                  "(cached afterwards)", flush=True)
            reference_samples(model, spec.seeds, sigma_max=top, rtol=rtol, progress=progress)


def _jsonable(value):
    """Rows as strict JSON: NaN and infinities become null, anything else unknown its text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def format_table(rows, metrics) -> str:
    """A readable terminal table: one line per configuration; the NFE column shows the budget, and the
    evaluations used when fewer (Heun at budget 4 uses 3: "4 (3 used)")."""
    head = ["model", "solver", "schedule", "nfe", *metrics, "wall_s"]
    lines = []
    for r in rows:
        if "error" in r:
            cells = [r["model"], r.get("label", r["solver"]), r["schedule"], str(r["nfe_budget"])]
            lines.append(cells + ["-"] * len(metrics) + [f"skipped: {r['error'][:60]}"])
            continue
        budget, used = r.get("nfe_budget", r["nfe"]), r["nfe"]
        nfe = str(used) if used == budget else f"{budget} ({used:g} used)"
        cells = [r["model"], r.get("label", r["solver"]), r["schedule"], nfe]
        cells += [_fmt(r.get(m)) for m in metrics] + [f"{r['wall_s']:.3f}"]
        lines.append(cells)
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4g}"
