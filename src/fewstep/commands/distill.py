"""``fewstep distill``: fine-tune a bundled model into a few-step student (``fewstep.distill``) and save it as
``--out`` (JSON) with its weights beside it (``.safetensors``); ``fewstep sample --model PATH.json`` then samples it.

Checkpoints go to ``--out`` with the suffix ``.ckpt`` every ``--checkpoint-every`` steps (written atomically), so a
killed run loses at most one interval; ``--resume`` continues from there to the same weights an uninterrupted run
with the same seed gives.
"""

from __future__ import annotations

import json

from fewstep.commands.args import float_in, int_in, name, output_path, subcommand

MAX_NFE = 16  # fewstep.distill.MAX_NFE (not imported: this module's top stays light)
MAX_STEPS = 1_000_000
MAX_BATCH = 65_536


def add_parser(sub) -> None:
    p = subcommand(sub, "distill",
                   "fine-tune a model into a few-step student (SFD, SFD-v, progressive, consistency, ReFlow, shortcut, "
                   "SiD)")
    p.add_argument("--teacher", type=name, required=True, help="a trained model from 'fewstep list models'")
    p.add_argument("--method", type=name, default="sfd",
                   help="sfd, sfd-v, progressive, cd (consistency distillation), ct (consistency training), reflow, "
                        "shortcut or sid (score identity distillation, one step) (default: sfd)")
    p.add_argument("--nfe", type=int_in(1, MAX_NFE), default=None,
                   help=f"the student's evaluations, 1..{MAX_NFE} (default 2; 1 for sid)")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=300, help="training iterations")
    p.add_argument("--batch", type=int_in(1, MAX_BATCH), default=64, help="trajectories or inputs per iteration")
    p.add_argument("--lr", type=float_in(1e-12, 1.0), default=None, help="Adam's learning rate (default: the method's)")
    p.add_argument("--seed", type=int_in(0, 2**62), default=0, help="training seed")
    p.add_argument("--out", required=True, help="the student's record, NAME.json (weights: NAME.safetensors)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, VALUE in JSON (e.g. substeps=4, rounds=3, nfes=[2,3,4,5]); repeatable")
    p.add_argument("--checkpoint-every", type=int_in(1, MAX_STEPS), default=50, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint of --out")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--ema", type=float_in(0.0, 0.9999), default=0.0,
                   help="save an exponential moving average of the weights with this decay per step (0: the last)")
    p.add_argument("--threads", type=int_in(1, 256), default=1, help="torch threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad --option {item!r}: write KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args) -> int:
    from fewstep.commands.outputs import check_output

    out = output_path(args.out, "--out")
    if out.suffix != ".json":
        raise ValueError(f"--out {args.out!r} must end in .json (the weights go beside it as .safetensors)")
    options = _options(args.option)
    checkpoint = out.with_suffix(".ckpt")
    if args.resume and not checkpoint.is_file():
        raise ValueError(f"--resume: no checkpoint {checkpoint} to continue from; run without --resume")
    for path in (out, out.with_suffix(".safetensors")):
        check_output(path, "--out", args.force or args.resume)

    import torch

    from fewstep.distill import METHODS, distill
    from fewstep.models import list_models, load_model

    if args.method not in METHODS:
        raise ValueError(f"unknown distillation method {args.method!r}; choose one of {', '.join(METHODS)}")
    if args.teacher not in list_models():
        raise ValueError(f"unknown model {args.teacher!r}; choose one of {', '.join(list_models())}")
    torch.set_num_threads(args.threads)
    teacher = load_model(args.teacher)
    student = distill(teacher, args.method, nfe=args.nfe, iterations=args.steps, batch=args.batch, lr=args.lr,
                      seed=args.seed, options=options, out=out, checkpoint_every=args.checkpoint_every,
                      resume=args.resume, progress=not args.no_progress, ema=args.ema)
    checkpoint.unlink(missing_ok=True)
    t = student.record.training
    print(f"distilled {args.teacher} with {args.method} for NFE {', '.join(map(str, student.record.grids))} in "
          f"{t['cpu_seconds'] / 60:.2f} CPU-minutes; final loss {t['final_loss']:.4g}")
    print(f"wrote {out} and {out.with_suffix('.safetensors')}")
    return 0
