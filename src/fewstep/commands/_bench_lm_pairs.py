"""``fewstep bench-lm --pair large``: speculative sampling on the larger bundled pair (issue 22).

Rows at every batch size of ``--batches``: plain sampling (fewstep, transformers), speculative sampling
with the distilled draft at a fixed and an adaptive gamma (with ``verify_cost`` 0, and with the target's
call costs measured on this machine by ``measure_verify_cost`` at the start of the run), n-gram lookup,
early exit from the target's own lower layers, transformers' assisted generation and prompt lookup.
Configurations run interleaved over ``--repeats``; every speed ratio is taken within one repeat (the
same stretch of machine load) and reported as its median with the min..max over repeats. fewstep rows
also split their wall time into the target's forward calls, the draft's (or the n-gram lookup) and the
rest (sampling, verification, cache bookkeeping). EOS is switched off for every engine, so each row
makes exactly the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

from fewstep.bench.report import markers, replace_section
from fewstep.commands._lm_timing import Counter, hf_generate, run_timed
from fewstep.commands.args import output_path


def section_markers(sampler: str) -> tuple[str, str]:
    """The docs section's markers: one section per sampler."""
    return markers(f"lm-large {sampler}")

PROMPTS = ("The for statement", "A class definition defines", "The import statement", "Exceptions can be raised",
           "The while statement is used", "Function definitions", "Augmented assignment", "The del statement")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", choices=("small", "large"), default="small",
                   help="'small': the ~1.1M target and its draft (fewstep against transformers); 'large': the "
                        "~20M 8-layer target with its distilled, n-gram and early-exit drafts and adaptive gamma")
    p.add_argument("--batches", default="1,4,8",
                   help="batch sizes for --pair large, comma-separated, each dividing --prompts (at most 8)")


def requested(args: argparse.Namespace) -> bool:
    return args.pair == "large"


def _batches(text: str, prompts: int) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--batches must be comma-separated integers, got {text!r}") from None
    if not sizes or any(b < 1 or prompts % b for b in sizes):
        raise ValueError(f"--batches must be positive integers dividing --prompts ({prompts}), got {text!r}")
    return sizes


def _configs(args, target, draft, exit_draft, sampler):
    from fewstep.lm import AdaptiveGamma, NGramDraft, generate, measure_verify_cost, speculative_generate

    g = args.gamma
    common = dict(eos_token_id=None)
    hf_t, hf_d = target.model, draft.model
    adaptive = AdaptiveGamma(max_gamma=2 * g)
    costed = AdaptiveGamma(max_gamma=2 * g, verify_cost=measure_verify_cost(target, 2 * g))  # on this machine

    def spec(d, gamma):
        return lambda p, gens: speculative_generate(target, d, p, sampler, gamma=gamma, **gens, **common)

    return [
        ("fewstep", "plain", lambda p, gens: generate(target, p, sampler, **gens, **common)),
        ("transformers", "plain", lambda p, gens: hf_generate(hf_t, p, sampler, gens)),
        ("fewstep", f"speculative gamma={g}, distilled draft", spec(draft, g)),
        ("fewstep", f"speculative adaptive gamma<={2 * g}, distilled draft", spec(draft, adaptive)),
        ("fewstep", f"speculative adaptive gamma<={2 * g} with measured call costs, distilled draft",
         spec(draft, costed)),
        ("transformers", f"assisted gamma={g} constant, distilled draft",
         lambda p, gens: hf_generate(hf_t, p, sampler, gens, assistant=hf_d, gamma=g)),
        ("fewstep", f"n-gram lookup gamma={g}", spec(NGramDraft(), g)),
        ("transformers", f"prompt lookup {g} tokens", lambda p, gens: hf_generate(hf_t, p, sampler, gens, lookup=g)),
        ("fewstep", f"early exit (layers 1-{exit_draft.model.config.num_hidden_layers}) adaptive gamma<={2 * g}",
         spec(exit_draft, adaptive)),
    ]


def _measure(args, sampler, batches):
    import torch
    import transformers

    from fewstep.lm import early_exit, load_bundled, load_tokenizer

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    tok = load_tokenizer()
    encoded = [tok.encode(text).ids for text in PROMPTS[: args.prompts]]
    target, draft = load_bundled("target-large"), load_bundled("draft-large")
    exit_draft = early_exit(target)
    for model in (target.model, draft.model):
        model.generation_config.eos_token_id = None  # every engine makes exactly max_new_tokens tokens
    counters = {"target": Counter(target.model.base_model), "draft": Counter(draft.model.base_model),
                "exit": Counter(exit_draft.model.base_model)}
    configs = _configs(args, target, draft, exit_draft, sampler)
    cells = [(b, i) for b in batches for i in range(len(configs))]
    results = {cell: dict(seconds=[], cpu=[], stats=[], tokens=0, target=0, draft=0) for cell in cells}
    refused: dict = {}
    for repeat in range(args.repeats + 1):  # repeat 0: a short warm-up, not recorded
        for cell in cells:
            b, i = cell
            if cell in refused:
                continue
            before = {name: c.calls for name, c in counters.items()}
            try:
                tokens, seconds, cpu, stats = run_timed(configs[i][2], encoded if repeat else encoded[:b], b,
                                                   args.max_new_tokens if repeat else 4)
            except ValueError as exc:  # transformers refuses assisted generation / prompt lookup at batch > 1
                refused[cell] = str(exc).strip().splitlines()[0]
                continue
            if repeat:
                r = results[cell]
                r["seconds"].append(seconds)
                r["cpu"].append(cpu)
                r["stats"], r["tokens"] = stats, tokens
                r["target"] = counters["target"].calls - before["target"]
                r["draft"] = sum(counters[n].calls - before[n] for n in ("draft", "exit"))
    rows = []
    for b, i in cells:
        plain = results[(b, 0)]
        rows.append(_row(configs[i], b, results[(b, i)], plain, refused.get((b, i)), args))
    assisted = results.get((1, 4)), results.get((1, 2))
    env = dict(load=f"{load_start:.1f} -> {os.getloadavg()[0]:.1f}", torch=torch.__version__,
               transformers=transformers.__version__, python=platform.python_version(),
               machine=platform.machine(), threads=args.threads, command="fewstep " + " ".join(sys.argv[1:]),
               fewstep_vs_assisted=None if (1, 4) in refused or not assisted[0] or not assisted[0]["seconds"]
               else _spread(assisted[0]["seconds"], assisted[1]["seconds"]))
    return rows, env


def _spread(slow: list[float], fast: list[float]) -> list[float]:
    """Per-repeat ratios ``slow / fast`` (a speed-up of ``fast``): [median, min, max]."""
    ratios = [s / f for s, f in zip(slow, fast)]
    return [round(statistics.median(ratios), 3), round(min(ratios), 3), round(max(ratios), 3)]


def _row(config, batch, result, plain, refused, args) -> dict:
    engine, name, _ = config
    row = dict(engine=engine, config=name, batch=batch, sampler=args.sampler, max_new_tokens=args.max_new_tokens,
               pair="large")
    if refused:
        return {**row, "status": f"refused: {refused}"}
    tokens, stats = result["tokens"], result["stats"]
    row.update(status="ok", tokens=tokens,
               tokens_per_second=statistics.median(tokens / s for s in result["seconds"]),
               speedup_vs_plain=_spread(plain["seconds"], result["seconds"]),
               tokens_per_cpu_second=statistics.median(tokens / s for s in result["cpu"]),
               target_calls_per_token=result["target"] / tokens, draft_calls_per_token=result["draft"] / tokens)
    if stats:
        seconds = sum(s.seconds for s in stats)
        row["time_split"] = [round(sum(s.target_seconds for s in stats) / seconds, 3),
                             round(sum(s.draft_seconds for s in stats) / seconds, 3),
                             round(sum(s.overhead_seconds for s in stats) / seconds, 3)]
        drafts = sum(s.drafts for s in stats)
        if drafts:
            accepted = [sum(col) for col in zip(*(s.accepted_per_position for s in stats))]
            drafted = [sum(col) for col in zip(*(s.drafted_per_position for s in stats))]
            row["acceptance_per_position"] = [round(a / d, 3) if d else None for a, d in zip(accepted, drafted)]
            row["mean_draft_length"] = round(sum(s.draft_tokens for s in stats) / drafts, 2)
            proposed = sum(s.draft_tokens for s in stats)
            row["acceptance_rate"] = round(sum(s.accepted_tokens for s in stats) / proposed, 3) if proposed else None
    return row


def _table(rows) -> str:
    lines = ["| engine | configuration | batch | tokens/s | vs plain: median (min-max) | tokens/CPU-s | "
             "target calls/token | mean draft length | acceptance per position | time target/draft/other |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['engine']} | {r['config']} | {r['batch']} | {r['status']} | | | | | | |")
            continue
        med, low, high = r["speedup_vs_plain"]
        acc = r.get("acceptance_per_position")
        acc = "" if not acc else " ".join("-" if a is None else f"{a:.2f}" for a in acc)
        split = r.get("time_split")
        split = "" if not split else "/".join(f"{100 * x:.0f}%" for x in split)
        length = r.get("mean_draft_length", "")
        lines.append(f"| {r['engine']} | {r['config']} | {r['batch']} | {r['tokens_per_second']:.0f} | "
                     f"{med:.2f}x ({low:.2f}-{high:.2f}) | {r['tokens_per_cpu_second']:.0f} | "
                     f"{r['target_calls_per_token']:.3f} | {length} | {acc} | {split} |")
    return "\n".join(lines)


def _section(rows, env, args) -> str:
    vs = env["fewstep_vs_assisted"]
    line = ("" if vs is None else f"fewstep speculative gamma={args.gamma} against transformers' assisted generation "
            f"(same draft and gamma, batch 1): {vs[0]:.2f}x, min {vs[1]:.2f}x, max {vs[2]:.2f}x over "
            f"{args.repeats} repeats.")
    begin, end = section_markers(args.sampler)
    return "\n".join([
        begin, f"## Language-model decoding, the larger pair (`target-large`; issue 22), sampler `{args.sampler}`", "",
        f"Generated by `{env['command']}` (CPU, {env['machine']}, {env['threads']} torch thread(s), torch "
        f"{env['torch']}, transformers {env['transformers']}, Python {env['python']}; 1-minute load average "
        f"{env['load']} from start to end, the benchmark itself counting 1). {args.prompts} prompts x "
        f"{args.max_new_tokens} new tokens, sampler `{args.sampler}`, EOS off, {args.repeats} interleaved "
        "repeats after a warm-up; tokens/s is the median; the ratio to fewstep plain sampling at the same "
        "batch size is taken within each repeat. Time split: share of wall time in the target's forward "
        "calls / the draft's (or the n-gram lookup) / everything else.", "", _table(rows), "", line, end])


def run(args: argparse.Namespace) -> int:
    from fewstep.commands.generate import quiet_transformers
    from fewstep.commands.outputs import Outputs
    from fewstep.lm import Sampler

    if args.prompts > len(PROMPTS):
        raise ValueError(f"--pair large has {len(PROMPTS)} prompts; --prompts must be at most {len(PROMPTS)}")
    batches = _batches(args.batches, args.prompts)
    doc = None if args.update_docs is None else output_path(args.update_docs, "--update-docs")
    outputs = Outputs({} if doc is None else {"--update-docs": [doc]}, force=True)
    try:
        old = None if doc is None or not doc.exists() else doc.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--update-docs {doc}: cannot read it as UTF-8 text ({exc})") from None
    quiet_transformers()
    sampler = Sampler.parse(args.sampler)
    try:
        sampler.to_hf()
    except ValueError as exc:
        raise ValueError(f"--sampler: {str(exc).split('; write')[0]}; write the steps in that order, "
                         "e.g. 'temperature=0.8,top_p=0.9'") from None
    with outputs:
        rows, env = _measure(args, sampler, batches)
        if doc is not None:
            text = replace_section(old, *section_markers(args.sampler), _section(rows, env, args))
            outputs.write(doc, text.encode())
        outputs.commit()
    if args.json:
        for row in rows:
            print(json.dumps({**row, **env}))
    else:
        print(_table(rows))
        if env["fewstep_vs_assisted"]:
            print(f"fewstep vs transformers assisted (batch 1): {env['fewstep_vs_assisted']}")
    return 0
