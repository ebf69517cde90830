"""``fewstep bench-lm``: fewstep's decoding against transformers' on the bundled pair, side by side.

Every configuration runs the same prompts with the same per-prompt seeds. Target and draft calls are
counted by forward hooks on the models themselves, the same way for both libraries. transformers'
assisted generation runs with the same draft length (constant schedule, no confidence cut-off) and
with its defaults. Configurations are interleaved over ``--repeats`` to spread machine noise; the
wall-clock rate is the median over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from fewstep.bench.report import markers, replace_section
from fewstep.commands import _bench_lm_pairs, _bench_lm_scaling
from fewstep.commands._lm_timing import Counter, hf_generate, run_timed
from fewstep.commands.args import MAX_GAMMA, MAX_NEW_TOKENS, MAX_REPEATS, MAX_THREADS, int_in, output_path, subcommand

PROMPTS = ("The for statement", "A class definition defines", "The import statement", "Exceptions can be raised",
           "The while statement is used", "Function definitions", "Augmented assignment", "The del statement",
           "Comparisons", "Boolean operations", "The with statement", "Lambda expressions")
BEGIN, END = markers("lm")


def add_parser(subparsers) -> None:
    p = subcommand(subparsers, "bench-lm", "benchmark speculative sampling against transformers",
                   description="fewstep's decoding against transformers' on the bundled pair, side by side: the same "
                               "prompts and per-prompt seeds, calls counted by forward hooks on both models.")
    p.add_argument("--sampler", default="temperature=1", help="processor chain, in transformers' order")
    p.add_argument("--gamma", type=int_in(1, MAX_GAMMA), default=4, help=f"draft tokens per round, 1..{MAX_GAMMA}")
    p.add_argument("--batch", type=int_in(1, len(PROMPTS)), default=4,
                   help=f"batch size of the batched configurations, 1..{len(PROMPTS)}, dividing --prompts")
    p.add_argument("--prompts", type=int_in(1, len(PROMPTS)), default=8,
                   help=f"how many of the {len(PROMPTS)} built-in prompts")
    p.add_argument("--max-new-tokens", type=int_in(1, MAX_NEW_TOKENS), default=64,
                   help=f"tokens to generate per prompt, 1..{MAX_NEW_TOKENS:,}")
    p.add_argument("--repeats", type=int_in(1, MAX_REPEATS), default=3,
                   help=f"timed repeats after a warm-up, 1..{MAX_REPEATS}; the rate is their median")
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=1, help=f"torch CPU threads, 1..{MAX_THREADS}")
    p.add_argument("--json", action="store_true", help="print one JSON object per configuration")
    p.add_argument("--update-docs", default=None, metavar="PATH",
                   help="rewrite the lm section of this markdown file, e.g. docs/benchmarks.md (default: none)")
    _bench_lm_scaling.add_arguments(p)  # --scaling, --problems, --samples (issue 23)
    _bench_lm_pairs.add_arguments(p)  # --pair, --batches (issue 22)


def _configs(args, target, draft, fr_draft, hf_target, hf_draft, sampler):
    from fewstep.lm import generate, speculative_generate

    b, g = args.batch, args.gamma
    spec = dict(sampler=sampler, gamma=g)

    def speculative(p, gens):
        return speculative_generate(target, draft, p, **spec, **gens)

    def assisted(p, gens):
        return hf_generate(hf_target, p, sampler, gens, assistant=hf_draft, gamma=g, fixed_length=True)

    return [
        ("fewstep", "plain", 1, lambda p, gens: generate(target, p, sampler, **gens)),
        ("transformers", "plain", 1, lambda p, gens: hf_generate(hf_target, p, sampler, gens, fixed_length=True)),
        ("fewstep", f"speculative gamma={g}", 1, speculative),
        ("transformers", f"assisted gamma={g} constant", 1, assisted),
        ("transformers", "assisted (defaults)", 1,
         lambda p, gens: hf_generate(hf_target, p, sampler, gens, assistant=hf_draft, fixed_length=True)),
        ("fewstep", f"speculative gamma={g} k=2 drafts", 1,
         lambda p, gens: speculative_generate(target, draft, p, **spec, num_drafts=2, **gens)),
        ("fewstep", f"speculative gamma={g} k=2 drafts first_accept", 1,
         lambda p, gens: speculative_generate(target, draft, p, **spec, num_drafts=2, selection="first_accept",
                                              **gens)),
        ("fewstep", f"speculative gamma={g} FR-Spec draft vocab 256", 1,
         lambda p, gens: speculative_generate(target, fr_draft, p, **spec, **gens)),
        ("fewstep", "plain", b, lambda p, gens: generate(target, p, sampler, **gens)),
        ("fewstep", f"speculative gamma={g}", b, speculative),
        ("transformers", f"assisted gamma={g} constant", b, assisted),
    ]


def run(args: argparse.Namespace) -> int:
    from fewstep.commands.outputs import Outputs

    if args.scaling:
        return _bench_lm_scaling.run(args)
    if _bench_lm_pairs.requested(args):
        return _bench_lm_pairs.run(args)
    if args.prompts % args.batch:
        raise ValueError(f"--prompts must be a multiple of --batch, got {args.prompts} and {args.batch}")
    doc = None if args.update_docs is None else output_path(args.update_docs, "--update-docs")
    outputs = Outputs({} if doc is None else {"--update-docs": [doc]}, force=True)  # it updates the file in place
    old_text = None if doc is None else _read_doc(doc)

    from fewstep.commands.generate import quiet_transformers
    from fewstep.lm import Sampler

    quiet_transformers()
    sampler = Sampler.parse(args.sampler)
    try:
        sampler.to_hf()  # raises unless transformers can apply the same chain
    except ValueError as exc:
        raise ValueError(f"--sampler: {str(exc).split('; write')[0]}; write the steps in that order, "
                         "e.g. 'temperature=0.8,top_p=0.9'") from None
    with outputs:
        rows, env = _measure(args, sampler)
        if doc is not None:
            outputs.write(doc, _updated_docs(old_text, rows, env, args).encode())
        outputs.commit()
    if args.json:
        for row in rows:
            print(json.dumps({**row, **env}))
    else:
        print(_table(rows))
        if doc is not None:
            print(f"wrote {doc}")
    return 0


def _read_doc(path: Path) -> str | None:
    """The markdown file ``--update-docs`` rewrites (None when it does not exist yet), read before any work."""
    try:
        if not path.exists():
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--update-docs {path}: cannot read it as UTF-8 text ({exc})") from None


def _measure(args, sampler):
    """Every configuration's row, and the environment they ran in."""
    import torch
    import transformers

    from fewstep.lm import load_bundled, load_tokenizer

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    tok = load_tokenizer()
    encoded = [tok.encode(text).ids for text in PROMPTS[: args.prompts]]
    target, draft, fr_draft = load_bundled("target"), load_bundled("draft"), load_bundled("draft", 256)
    hf_target, hf_draft = target.model, draft.model
    target_calls = Counter(hf_target.base_model)
    draft_counters = [Counter(hf_draft.base_model), Counter(fr_draft.model.base_model)]
    configs = _configs(args, target, draft, fr_draft, hf_target, hf_draft, sampler)
    results = {i: dict(seconds=[], cpu=[], tokens=0, target=0, draft=0, stats=[]) for i in range(len(configs))}
    refused = {}
    for repeat in range(args.repeats + 1):  # repeat 0 is a short warm-up and is not recorded
        for i, (_, _, batch, runner) in enumerate(configs):
            if i in refused:
                continue
            t0, d0 = target_calls.calls, sum(c.calls for c in draft_counters)
            try:
                tokens, seconds, cpu, stats = run_timed(runner, encoded if repeat else encoded[:batch], batch,
                                                          args.max_new_tokens if repeat else 8)
            except ValueError as exc:  # transformers refuses (assisted generation at batch size > 1)
                refused[i] = str(exc).splitlines()[0]
                continue
            if repeat:
                r = results[i]
                r["seconds"].append(seconds)
                r["cpu"].append(cpu)
                r["tokens"], r["target"] = tokens, target_calls.calls - t0
                r["draft"] = sum(c.calls for c in draft_counters) - d0
                r["stats"] = stats
    rows = [_row(configs[i], results[i], refused.get(i), args) for i in range(len(configs))]
    env = dict(load=f"{load_start:.1f} -> {os.getloadavg()[0]:.1f}", torch=torch.__version__,
               transformers=transformers.__version__, python=platform.python_version(),
               machine=platform.machine(), threads=args.threads, command="fewstep " + " ".join(sys.argv[1:]))
    spec, assisted = results[2]["seconds"], results[3]["seconds"]  # the same repeats, interleaved
    env["fewstep_vs_assisted"] = (_bench_lm_pairs._spread(assisted, spec) if spec and len(spec) == len(assisted)
                                  else None)
    return rows, env


def _row(config, result, refused, args) -> dict:
    engine, name, batch, _ = config
    row = dict(engine=engine, config=name, batch=batch, sampler=args.sampler, max_new_tokens=args.max_new_tokens)
    if refused:
        return {**row, "status": f"refused: {refused}"}
    tokens, target, draft = result["tokens"], result["target"], result["draft"]
    accepted = sum(s.accepted_tokens for s in result["stats"])
    drafted = sum(s.draft_tokens for s in result["stats"])
    return {**row, "status": "ok", "tokens": tokens,
            "tokens_per_second": statistics.median(tokens / s for s in result["seconds"]),
            "tokens_per_cpu_second": statistics.median(tokens / s for s in result["cpu"]),
            "target_calls_per_token": target / tokens, "draft_calls_per_token": draft / tokens,
            # transformers does not report acceptance: a round emits accepted + 1 tokens, every draft call proposes one
            "acceptance_rate": (accepted / drafted if drafted else (tokens - target) / draft) if draft else None,
            "acceptance_per_position": _per_position(result["stats"])}


def _per_position(stats) -> list[float] | None:
    if not stats or not stats[0].accepted_per_position:
        return None
    drafts = sum(s.drafts for s in stats)
    return [round(sum(col) / drafts, 3) for col in zip(*(s.accepted_per_position for s in stats))]


def _table(rows) -> str:
    lines = ["| engine | configuration | batch | tokens/s (wall) | tokens/CPU-s | target calls/token | "
             "draft calls/token | acceptance rate |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['engine']} | {r['config']} | {r['batch']} | {r['status']} | | | | |")
            continue
        rate = "" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.3f}"
        lines.append(f"| {r['engine']} | {r['config']} | {r['batch']} | {r['tokens_per_second']:.0f} | "
                     f"{r['tokens_per_cpu_second']:.0f} | {r['target_calls_per_token']:.3f} | "
                     f"{r['draft_calls_per_token']:.3f} | {rate} |")
    return "\n".join(lines)


def _updated_docs(text: str | None, rows, env, args) -> str:
    """``text`` (the markdown file, or None for a new one) with its lm section replaced or appended."""
    per_position = next((r["acceptance_per_position"] for r in rows if r.get("acceptance_per_position")), None)
    section = "\n".join([
        BEGIN, "## Language-model decoding (`fewstep.lm`)", "",
        f"Generated by `{env['command']}` (CPU, {env['machine']}, {env['threads']} torch thread(s), "
        f"torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}; 1-minute load "
        f"average {env['load']} during the run: other jobs shared the cores, so tokens per CPU-second, "
        "the process's own CPU time, is the steadier rate).",
        f"Bundled pair (target ~1.1M parameters, draft ~0.05M), {args.prompts} prompts x {args.max_new_tokens} "
        f"new tokens, sampler `{args.sampler}`, seeds 0..{args.prompts - 1} per prompt, median of "
        f"{args.repeats} interleaved repeats after a warm-up. Calls are counted by forward hooks on both models.",
        "", _table(rows), "",
        f"Acceptance per draft position (fewstep, batch 1, gamma={args.gamma}): {per_position}.",
        "transformers' acceptance rate is derived from call counts: (tokens - target calls) / draft calls.",
        *([] if not env.get("fewstep_vs_assisted") else [
            f"fewstep speculative gamma={args.gamma} against transformers' assisted generation (batch 1): "
            f"{env['fewstep_vs_assisted'][0]:.2f}x, min {env['fewstep_vs_assisted'][1]:.2f}x, max "
            f"{env['fewstep_vs_assisted'][2]:.2f}x over {args.repeats} repeats (a ratio per repeat; the machine "
            "is shared, so one run's ratio is not the answer)."]),
        END])
    return replace_section(text, BEGIN, END, section)
