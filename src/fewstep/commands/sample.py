"""``fewstep sample``: draw samples from a bundled model and write a PNG grid and an ``.npz``.

Every input is checked before the first model evaluation: the paths, the names, the recipe against the model, and
whether the outputs can be written. Seeds run in chunks of ``--batch`` (each sample has its own generator, so a
seed's sample does not depend on the chunk it runs in) and the samples are gathered into one array, so the memory
beyond the samples themselves does not grow with the number of seeds.
"""

from __future__ import annotations

import sys
import time
import warnings

from fewstep.commands import sample_steer
from fewstep.commands.args import (
    MAX_BATCH,
    MAX_CFG,
    MAX_GRID,
    MAX_NFE,
    float_in,
    input_file,
    int_in,
    name,
    output_path,
    parse_seeds,
    subcommand,
)

DEFAULT_MODEL = "digits-edm"
DEFAULT_SOLVER = "unipc"
DEFAULT_NFE = 8
DEFAULT_BATCH = 256


def add_parser(sub) -> None:
    p = subcommand(sub, "sample", "sample a model and write a PNG grid and an .npz")
    p.add_argument("--model", type=name, default=None,
                   help=f"a name from 'fewstep list models' or a distilled student's PATH.json (default: "
                        f"{DEFAULT_MODEL}, or the recipe's)")
    p.add_argument("--solver", type=name, default=None,
                   help=f"a name from 'fewstep list solvers' (default: {DEFAULT_SOLVER}, or the recipe's)")
    p.add_argument("--nfe", type=int_in(1, MAX_NFE), default=None,
                   help=f"model evaluations per sample, at most; 1..{MAX_NFE:,} (default: {DEFAULT_NFE}, "
                        "or the recipe's)")
    p.add_argument("--schedule", type=name, default=None,
                   help="a name from 'fewstep list schedules' (default: the model's)")
    p.add_argument("--seeds", default="0-63", help="seeds, e.g. 0-63 or 1,5,9; one sample per seed")
    p.add_argument("--batch", type=int_in(1, MAX_BATCH), default=DEFAULT_BATCH,
                   help=f"seeds evaluated together, 1..{MAX_BATCH:,}; the samples do not depend on it")
    p.add_argument("--out", default="fewstep-out/samples",
                   help=f"output path without extension: writes .png (the first {MAX_GRID} samples) and .npz (all)")
    p.add_argument("--recipe", default=None, metavar="PATH",
                   help="a tuned recipe from 'fewstep tune' (it fixes the solver and the sigmas)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="use a recipe made for another model or NFE as it is (with a warning)")
    p.add_argument("--class", dest="class_labels", default=None, metavar="Y",
                   help="classes of a conditional model: 3, 0-9 or 1,4,7 (one per seed, cycling)")
    p.add_argument("--cfg", type=float_in(0, MAX_CFG), default=None,
                   help=f"classifier-free guidance scale, 0..{MAX_CFG:g} (1 = conditional)")
    p.add_argument("--cads", action="store_true", help="condition-annealed sampling (CADS) for diversity")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI", help="guide only for sigma in (LO, HI]")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample_steer.add_arguments(p)  # --reward, --steer, --particles, --temperature (docs/steering.md)


def run(args) -> int:
    from fewstep.commands.outputs import Outputs

    seeds = parse_seeds(args.seeds)
    out = output_path(args.out, "--out")
    if out.suffix in (".png", ".npz"):
        out = out.with_suffix("")
    png, npz = out.with_name(out.name + ".png"), out.with_name(out.name + ".npz")
    recipe_file = None if args.recipe is None else input_file(args.recipe, "--recipe")
    outputs = Outputs({"--out": [png, npz]}, args.force)  # checked now; made after every other input is checked

    import numpy as np
    from tqdm import tqdm

    from fewstep.bench.distributed import is_main, sharded
    from fewstep.diffusion.denoiser import CountingDenoiser
    from fewstep.diffusion.guidance import cli_conditioning
    from fewstep.diffusion.sampling import plan, sample
    from fewstep.models import load_model

    steering = sample_steer.check(args, DEFAULT_SOLVER)  # --steer: its checks and default solver, before the others
    student, student_kw = _student(args)  # a distilled student fixes its sampler, NFE and grid
    recipe = _resolve_recipe(args, recipe_file)
    model = CountingDenoiser(student or load_model(args.model))
    if steering is not None:
        steering.bind(model.inner)  # the reward, tried on the model's shape
    denoiser, cond_for = cli_conditioning(model, seeds, args.class_labels, args.cfg, args.cads,
                                          args.guidance_interval)
    kw = dict(solver=None if recipe else args.solver, nfe=args.nfe, schedule=args.schedule, recipe=recipe,
              force=args.allow_mismatch, **student_kw)
    with warnings.catch_warnings(record=True) as caught:  # resolves every name and the recipe, evaluates nothing
        warnings.simplefilter("always")
        try:
            plan(denoiser, **kw)
        except ValueError as exc:  # the library's hint names its keyword; this command's flag is --allow-mismatch
            raise ValueError(str(exc).replace("force=True", "--allow-mismatch")) from None
    for w in caught:
        print(f"fewstep sample: warning: {w.message}", file=sys.stderr)

    main = is_main()
    outputs.enabled = main
    with outputs, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="recipe mismatch")  # said once above
        t0 = time.perf_counter()
        calls, samples, rows = [], None, model.samples
        bar = tqdm(total=len(seeds), desc="sample", unit="sample",
                   disable=args.no_progress or not main or len(seeds) <= args.batch)
        for start in range(0, len(seeds), args.batch):
            ids, before = seeds[start:start + args.batch], model.calls
            if steering is None:
                x = sharded(lambda mine: sample(denoiser, seeds=mine, cond=cond_for(mine), **kw), ids)
            else:
                x = sharded(lambda mine: steering.run(denoiser, mine, cond_for(mine), kw), ids)
            calls.append(model.calls - before)
            if x is not None:  # rank 0: the chunk's rows, in seed order
                x = x.detach().cpu().numpy()
                if samples is None:
                    samples = np.empty((len(seeds), *(model.shape or x.shape[1:])), dtype=x.dtype)
                samples[start:start + len(ids)] = x.reshape(len(ids), *samples.shape[1:])
            bar.update(len(ids))
        bar.close()
        seconds = time.perf_counter() - t0
        if not main:
            return 0
        labels = {} if args.class_labels is None else {"class_labels": cond_for(seeds)["class_labels"].numpy()}
        if steering is not None:  # the reward of each written sample, and the evaluations per sample
            labels.update(steering.record(samples, (model.samples - rows) / len(seeds)))
        with outputs.open(npz) as fh:
            np.savez_compressed(fh, samples=samples, seeds=np.asarray(seeds), model=args.model, solver=args.solver,
                                nfe=calls[0], **labels)
        outputs.write(png, _picture(samples))
        outputs.commit()
    if steering is None:
        print(f"sampled {len(seeds)} x {args.model} with {args.solver} in {calls[0]} model evaluations "
              f"(budget {args.nfe}) in {seconds:.2f} s")
    else:
        print(steering.report(len(seeds), args.model, args.solver, calls[0], args.nfe, seconds))
    print(f"wrote {png}")
    print(f"wrote {npz}")
    return 0


def _student(args):
    """For ``--model PATH.json`` or a bundled student's name: the distilled student at ``--nfe`` (default: its own)
    and the ``sample`` keywords of its grid; ``(None, {})`` for another bundled model's name."""
    from fewstep.models import list_models
    from fewstep.models.student import BUNDLED, load_student

    if args.model is None:
        return None, {}
    if args.model.endswith(".json"):
        path = input_file(args.model, "--model")
    elif getattr(list_models().get(args.model), "kind", None) == "student":
        path = BUNDLED / f"{args.model}.json"
    else:
        return None, {}
    clash = [flag for flag, value in (("--solver", args.solver), ("--schedule", args.schedule),
                                      ("--recipe", args.recipe)) if value is not None]
    if clash:
        raise ValueError(f"{', '.join(clash)} cannot be combined with a distilled student (--model {args.model}): "
                         "it samples with the sampler and grid it was trained for; leave them out")
    student = load_student(path, nfe=args.nfe)
    plan = student.sampling
    args.solver, args.nfe, args.schedule = plan["solver"], plan["nfe"], plan["schedule"]
    return student, {"solver_options": plan["solver_options"], "schedule_options": plan["schedule_options"],
                     "afs": plan["afs"]}


def _resolve_recipe(args, path):
    """Load ``--recipe`` (its model, solver and NFE become the defaults) and fill in the other defaults."""
    recipe = None
    if path is not None:
        from fewstep.diffusion.recipe import Recipe

        recipe = Recipe.load(path)
        if args.solver not in (None, recipe.solver):  # refused before any output file is made
            raise ValueError(f"--solver {args.solver} conflicts with the recipe's solver {recipe.solver}; leave it out")
        if args.schedule is not None:
            raise ValueError("--schedule cannot be combined with --recipe: the recipe fixes the sigmas")
        args.model = recipe.model if args.model is None else args.model
        args.solver = recipe.solver
        args.nfe = recipe.nfe if args.nfe is None else args.nfe
    args.model = DEFAULT_MODEL if args.model is None else args.model
    args.solver = DEFAULT_SOLVER if args.solver is None else args.solver
    args.nfe = DEFAULT_NFE if args.nfe is None else args.nfe
    return recipe


def _picture(samples) -> bytes:
    """The PNG: a grid of the first ``MAX_GRID`` images, or for low-dimensional samples a 2-D scatter of all."""
    import torch

    from fewstep.bench.image import grid_png

    x = torch.from_numpy(samples)
    if x.ndim == 4:
        return grid_png(x[:MAX_GRID])
    p = x.reshape(x.shape[0], -1)[:, :2].double()
    if p.shape[1] < 2:
        p = torch.cat([p, torch.zeros_like(p)], 1)
    p = p[torch.isfinite(p).all(1)]
    lim = float(p.abs().max()) * 1.05 + 1e-9 if len(p) else 1.0
    size = 128
    img = torch.ones(1, 1, size, size)
    ij = ((p / lim + 1) / 2 * (size - 1)).round().long().clamp(0, size - 1)
    img[0, 0, size - 1 - ij[:, 1], ij[:, 0]] = 0.0
    return grid_png(img * 2 - 1, scale=2)
