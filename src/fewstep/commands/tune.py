"""``fewstep tune``: fit a sampler to one model at one NFE and save it as a recipe (JSON).

The methods live in ``fewstep.diffusion.tune`` (``METHOD_MODULES``); each one's ``tune`` shows a
progress bar with the time left. The recipe is then used by ``fewstep sample --recipe`` and
``fewstep bench --recipes``.
"""

from __future__ import annotations

import json

from fewstep.commands.args import MAX_NFE, int_in, name, output_path, parse_seeds, subcommand
from fewstep.seeds import EVAL_SEEDS, TUNE_SEEDS, seed_text


def add_parser(sub) -> None:
    p = subcommand(sub, "tune", "fit a schedule, solver schedule or coefficients to a model and write a recipe")
    p.add_argument("--model", type=name, required=True, help="a name from 'fewstep list models'")
    p.add_argument("--method", type=name, required=True, help="ays, gits, s3, dc, iia, ems or ld3")
    p.add_argument("--solver", type=name, default="dpmpp_2m",
                   help="the solver to tune (s3: the untuned solver it is compared with, and it writes solver usf; "
                        "ld3: the solver it starts from, or best, and it writes solver learned)")
    p.add_argument("--nfe", type=int_in(1, MAX_NFE), default=5, help=f"model evaluations per sample, 1..{MAX_NFE:,}")
    p.add_argument("--out", required=True, help="the recipe JSON file to write")
    p.add_argument("--seeds", default=seed_text(TUNE_SEEDS), help="tuning seeds")
    p.add_argument("--eval-seeds", default=seed_text(EVAL_SEEDS),
                   help="held-out seeds for the recipe's quality (none of the tuning seeds), or 'none'")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, VALUE in JSON (e.g. fine_steps=40); repeatable")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def load_method(name: str):
    """The module implementing tuning method ``name`` (a clear error if it is unknown or missing)."""
    import importlib

    from fewstep.diffusion.tune import METHOD_MODULES

    if name not in METHOD_MODULES:
        raise ValueError(f"unknown tuning method {name!r}; choose one of {', '.join(METHOD_MODULES)}")
    module = METHOD_MODULES[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise ValueError(f"tuning method {name!r} is not available in this fewstep: its module {module} "
                         "is missing") from None


def parse_options(items: list[str], fn) -> dict:
    """``KEY=VALUE`` pairs (VALUE parsed as JSON, else kept as a string), checked against ``fn``'s keywords."""
    import inspect

    allowed = [k for k, p in inspect.signature(fn).parameters.items()
               if p.kind == p.KEYWORD_ONLY and k not in ("solver", "nfe", "seeds", "eval_seeds", "progress")]
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad --option {item!r}: write KEY=VALUE")
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for this method; allowed: {', '.join(allowed) or 'none'}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args) -> int:
    from fewstep.commands.outputs import Outputs

    seeds = parse_seeds(args.seeds)
    eval_seeds = None if args.eval_seeds.strip().lower() == "none" else parse_seeds(args.eval_seeds)
    shared = sorted(set(seeds) & set(eval_seeds or ()))
    if shared:
        raise ValueError(f"--eval-seeds and --seeds share {len(shared)} seed(s) (first {shared[0]}): a recipe "
                         "must be scored on seeds it was not tuned on")
    out = output_path(args.out, "--out")
    outputs = Outputs({"--out": [out]}, args.force)  # checked now; made after every other input is checked

    module = load_method(args.method)
    options = parse_options(args.option, module.tune)

    from fewstep.models import load_model

    model = load_model(args.model)
    with outputs:
        print(f"tuning {args.model} with {args.method} for {args.solver} at NFE {args.nfe} on {len(seeds)} seeds "
              "(reference solutions are computed once and cached under $FEWSTEP_CACHE)", flush=True)
        recipe = module.tune(model, solver=args.solver, nfe=args.nfe, seeds=seeds, eval_seeds=eval_seeds,
                             progress=not args.no_progress, **options)
        outputs.write(out, (recipe.to_json() + "\n").encode())
        outputs.commit()
    print(f"tuned in {recipe.info.get('tune_seconds', float('nan')):.1f} s: solver {recipe.solver}, "
          f"{recipe.n_steps} steps, sigmas {', '.join(f'{s:.4g}' for s in recipe.sigmas)}")
    q = recipe.quality
    for metric in ("rmse_ref", "fd"):
        if metric in q:
            print(f"  {metric} on held-out seeds {q['eval_seeds']}: {q[metric]:.4g} tuned vs "
                  f"{q['untuned'][metric]:.4g} untuned ({q['untuned']['solver']}, {q['untuned']['schedule']})")
    print(f"wrote {out}")
    return 0
