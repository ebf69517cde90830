"""``fewstep sample``: draw samples from a bundled model and write a PNG grid and an ``.npz``."""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

DEFAULT_MODEL = "digits-edm"
DEFAULT_SOLVER = "unipc"
DEFAULT_NFE = 8


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a model and write a PNG grid and an .npz",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help=f"a name from `fewstep list models` (default: {DEFAULT_MODEL}, "
                   "or the recipe's)")
    p.add_argument("--solver", default=None, help=f"a name from `fewstep list solvers` (default: {DEFAULT_SOLVER})")
    p.add_argument("--nfe", type=int, default=None,
                   help=f"model evaluations per sample, at most (default: {DEFAULT_NFE}, or the recipe's)")
    p.add_argument("--schedule", default=None, help="a name from `fewstep list schedules` (default: the model's)")
    p.add_argument("--seeds", default="0-63", help="seeds, e.g. 0-63 or 1,5,9; one sample per seed")
    p.add_argument("--out", default="fewstep-out/samples", help="output path without extension (.png and .npz)")
    p.add_argument("--recipe", default=None, metavar="PATH", help="a tuned recipe from `fewstep tune` (fixes the "
                   "solver and sigmas)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files; use a recipe made for "
                   "another model or NFE (with a warning)")
    p.add_argument("--class", dest="class_labels", default=None, metavar="Y",
                   help="classes of a conditional model: 3, 0-9 or 1,4,7 (one per seed, cycling)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = conditional)")
    p.add_argument("--cads", action="store_true", help="condition-annealed sampling (CADS) for diversity")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI", help="guide only for sigma in (LO, HI]")


def run(args) -> int:
    from fewstep.commands.args import claim_outputs, parse_seeds

    recipe = _resolve_recipe(args)
    seeds = parse_seeds(args.seeds)
    out = Path(args.out)
    if out.suffix in (".png", ".npz"):
        out = out.with_suffix("")
    png, npz = out.with_suffix(".png"), out.with_suffix(".npz")
    from fewstep.bench.distributed import is_main

    if is_main():
        claim_outputs([png, npz], args.force)

    import numpy as np

    from fewstep.bench.distributed import sharded
    from fewstep.bench.image import save_grid
    from fewstep.diffusion.denoiser import CountingDenoiser
    from fewstep.diffusion.guidance import cli_conditioning
    from fewstep.diffusion.sampling import sample
    from fewstep.diffusion.solvers import get_solver
    from fewstep.models import load_model

    if recipe is not None:  # the library resolves the recipe and refuses --schedule or another --solver beside it
        sample = functools.partial(sample, recipe=recipe, force=args.force)
    get_solver(args.solver)
    model = CountingDenoiser(load_model(args.model))
    denoiser, cond_for = cli_conditioning(model, seeds, args.class_labels, args.cfg, args.cads,
                                          args.guidance_interval)
    t0 = time.perf_counter()
    calls_per_batch = []

    def run_seeds(ids):
        before = model.calls
        x = sample(denoiser, solver=None if recipe else args.solver, nfe=args.nfe, schedule=args.schedule, seeds=ids,
                   cond=cond_for(ids))
        calls_per_batch.append(model.calls - before)
        return x

    x = sharded(run_seeds, seeds)
    seconds = time.perf_counter() - t0
    if x is None:  # not rank 0
        return 0
    images = x.reshape(len(seeds), *(model.shape or x.shape[1:]))
    labels = {} if args.class_labels is None else {"class_labels": cond_for(seeds)["class_labels"]}
    np.savez_compressed(npz, samples=images.numpy(), seeds=np.asarray(seeds), model=args.model, solver=args.solver,
                        nfe=calls_per_batch[0], **labels)
    if images.ndim == 4:
        save_grid(images, png)
    else:
        _scatter_png(images, png)
    print(f"sampled {len(seeds)} x {args.model} with {args.solver} in {calls_per_batch[0]} model evaluations "
          f"(budget {args.nfe}) in {seconds:.2f} s")
    print(f"wrote {png}")
    print(f"wrote {npz}")
    return 0


def _resolve_recipe(args):
    """Load ``--recipe`` (its model, solver and NFE become the defaults) and fill in the other defaults."""
    recipe = None
    if args.recipe:
        from fewstep.diffusion.recipe import Recipe

        recipe = Recipe.load(args.recipe)
        if args.solver not in (None, recipe.solver):  # refused before any output file is claimed
            raise ValueError(f"--solver {args.solver} conflicts with the recipe's solver {recipe.solver}; leave it out")
        if args.schedule is not None:
            raise ValueError("--schedule cannot be combined with --recipe: the recipe fixes the sigmas")
        args.model = args.model or recipe.model
        args.solver = recipe.solver
        args.nfe = recipe.nfe if args.nfe is None else args.nfe
    args.model = args.model or DEFAULT_MODEL
    args.solver = args.solver or DEFAULT_SOLVER
    args.nfe = DEFAULT_NFE if args.nfe is None else args.nfe
    return recipe


def _scatter_png(points, path) -> None:
    """Low-dimensional samples: a 2-D scatter of the first two coordinates, drawn into a grid image."""
    import torch

    from fewstep.bench.image import save_grid

    p = points.reshape(points.shape[0], -1)[:, :2].double()
    if p.shape[1] < 2:
        p = torch.cat([p, torch.zeros_like(p)], 1)
    lim = float(p.abs().max()) * 1.05 + 1e-9
    size = 128
    img = torch.ones(1, 1, size, size)
    ij = ((p / lim + 1) / 2 * (size - 1)).round().long().clamp(0, size - 1)
    img[0, 0, size - 1 - ij[:, 1], ij[:, 0]] = 0.0
    save_grid(img * 2 - 1, path, scale=2)
