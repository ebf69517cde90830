"""``fewstep mcmc``: run an MCMC sampler on a bundled target and write the draws (.npz) and a JSON summary.

The summary holds ESS (bulk and tail), R-hat, acceptance, the density and gradient evaluations, and, for a target
with an exact sampler, the MMD^2, sliced W2 and (mixtures) mode weights against exact samples. A log-density that
turns NaN mid-run is reported with its iteration (exit 1); the draws made before it are still written.
"""

from __future__ import annotations

import json
import sys
import time

from fewstep.commands.args import MAX_SEED, int_in, name, output_path, subcommand

MAX_CHAINS = 4096
MAX_DRAWS = 1_000_000
MAX_REFERENCE = 100_000


def add_parser(sub) -> None:
    p = subcommand(sub, "mcmc", "run an MCMC sampler on a bundled target; write draws (.npz) and a summary (.json)",
                   description="Run --sampler on --target and write the draws and a JSON summary (ESS, R-hat, "
                               "acceptance, evaluation counts, distance to exact samples). See docs/mcmc.md.")
    p.add_argument("--target", type=name, required=True, metavar="NAME[:OPT=V,...]",
                   help="gaussian, mixture, funnel, banana, student_t or logistic, with options, e.g. "
                        "mixture:dim=16,modes=4")
    p.add_argument("--sampler", type=name, default="nuts", metavar="NAME[:OPT=V,...]",
                   help="rwm, mala, hmc, nuts, elliptical_slice, polar_slice, rdmc, walk_jump or data_init, with "
                        "options, e.g. hmc:n_leapfrog=8")
    p.add_argument("--chains", type=int_in(1, MAX_CHAINS), default=4, help=f"chains, 1..{MAX_CHAINS}")
    p.add_argument("--draws", type=int_in(4, MAX_DRAWS), default=1000,
                   help=f"draws per chain after warm-up, 4..{MAX_DRAWS:,}")
    p.add_argument("--warmup", type=int_in(0, MAX_DRAWS), default=None,
                   help=f"warm-up iterations per chain (step size and mass adaptation), 0..{MAX_DRAWS:,}; default "
                        "1000, and 0 for the samplers whose draws are independent runs (rdmc, walk_jump, data_init)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED - MAX_CHAINS), default=0, help="chain c uses seed + c")
    p.add_argument("--reference", type=int_in(0, MAX_REFERENCE), default=4000,
                   help=f"exact samples to measure the distance to (targets with an exact sampler), "
                        f"0..{MAX_REFERENCE:,}")
    p.add_argument("--threads", type=int_in(1, 256), default=1,
                   help="torch threads, 1..256; the samplers work on small tensors, where one thread is fastest")
    p.add_argument("--out", default="fewstep-out/mcmc", help="output path without extension: writes .npz and .json")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def _spec(text: str, flag: str, known: dict, options_of) -> tuple[str, dict]:
    """``NAME[:k=v,...]`` checked against the known names and each one's options (typed by their defaults)."""
    head, _, rest = text.partition(":")
    head = head.strip()
    if head not in known:
        raise ValueError(f"{flag}: unknown name {head!r}; choose from {', '.join(known)}")
    allowed, options = options_of(head), {}
    for part in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq or key not in allowed:
            raise ValueError(f"{flag}: bad option {part!r} for {head}; write key=value with key one of "
                             f"{', '.join(allowed) or '(none)'}")
        default = allowed[key]
        if isinstance(default, str):  # a choice, e.g. nuts:turn=sum; the sampler checks it
            options[key] = value
            continue
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{flag}: option {key} must be true or false; got {value!r}")
            options[key] = value.lower() in ("true", "1")
            continue
        try:
            options[key] = int(value) if isinstance(default, int) else float(value)
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"{flag}: option {key} must be {kind}; got {value!r}") from None
    return head, options


def _finite(value):
    """The summary with NaN and infinities as null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not (value - value == 0):
        return None
    return value


def run(args) -> int:
    from fewstep.commands.outputs import Outputs

    out = output_path(args.out, "--out")
    if out.suffix in (".npz", ".json"):
        out = out.with_suffix("")
    npz, summary_path = out.with_name(out.name + ".npz"), out.with_name(out.name + ".json")
    outputs = Outputs({"--out": [npz, summary_path]}, args.force)

    import math

    import numpy as np
    import torch

    from fewstep import mcmc
    from fewstep.mcmc.registry import sampler_options, target_options

    torch.set_num_threads(args.threads)
    target_name, target_kw = _spec(args.target, "--target", mcmc.TARGETS, target_options)
    sampler_name, sampler_kw = _spec(args.sampler, "--sampler", mcmc.SAMPLERS, sampler_options)
    target = mcmc.make_target(target_name, **target_kw)
    warmup = args.warmup if args.warmup is not None else 0 if mcmc.SAMPLERS[sampler_name][1].independent else 1000
    kw = dict(chains=args.chains, draws=args.draws, warmup=warmup, seed=args.seed, **sampler_kw)
    error = None
    t0 = time.perf_counter()
    try:
        result = mcmc.run_sampler(sampler_name, target, **kw)
    except mcmc.NonFiniteDensityError as exc:
        result, error = exc.result, str(exc)
    seconds = time.perf_counter() - t0
    reference = None
    if target.has_exact and args.reference:
        reference = target.sample(args.reference, torch.Generator().manual_seed(2**40 + args.seed))
    summary = mcmc.summarize(result, target, reference if result.n_recorded >= 2 else None)
    summary.update(seconds=seconds, sampler_options=sampler_kw, target_options=target_kw, error=error,
                   reference_samples=args.reference if reference is not None else 0)
    n = result.n_recorded
    with outputs:
        with outputs.open(npz) as fh:
            np.savez_compressed(fh, draws=result.draws[:, :n].numpy(), log_prob=result.log_prob[:, :n].numpy(),
                                accept=result.accept[:, :n].numpy(), n_density=result.n_density.numpy(),
                                n_grad=result.n_grad.numpy(), seeds=np.asarray(result.seeds),
                                sampler=sampler_name, target=target_name)
        outputs.write(summary_path, (json.dumps(_finite(summary), indent=2) + "\n").encode())
        outputs.commit()
    if error is not None:
        print(f"fewstep mcmc: error: {error}; wrote the {n} draws before it to {npz}", file=sys.stderr)
        return 1
    ess = summary.get("ess_bulk", {}).get("min", math.nan)
    line = (f"{sampler_name} on {target_name} (dim {target.dim}): {args.chains} chains x {n} draws in {seconds:.1f} s, "
            f"{summary['n_grad'] or summary['n_density']:,} {'gradient' if summary['n_grad'] else 'density'} "
            f"evaluations, min bulk ESS {ess:.0f}, max R-hat {summary.get('rhat', {}).get('max', math.nan):.3f}, "
            f"acceptance {summary['accept_rate']:.2f}")
    if "mmd2" in summary:
        line += f", MMD^2 {summary['mmd2']:.2g}, sliced W2 {summary['sliced_w2']:.3g}"
    if "mode_weight_error" in summary:
        line += f", mode-weight error {summary['mode_weight_error']:.3f}"
    print(line)
    print(f"wrote {npz}")
    print(f"wrote {summary_path}")
    return 0
