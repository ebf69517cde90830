"""fewstep's NUTS against BlackJAX's NUTS in ESS per gradient evaluation, over repeated seeds (issue 21).

One run of ``benchmarks/mcmc.py`` rests, on ``banana`` and ``funnel``, on a few dozen effective draws (4 chains x
300 draws), so its ESS per gradient evaluation moves by tens of percent from seed to seed, and a 20 % comparison
needs repeats. For each target and seed this script runs the benchmark's exact setting (4 chains from the same
uniform starts, 300 warm-up iterations with Stan's windows, 300 draws, target acceptance 0.8) for fewstep's NUTS
with each U-turn rule (``turn="trapezoid"``, the default, as NumPyro and BlackJAX; ``turn="sum"``, Stan's) and for
BlackJAX's NUTS, and reports the mean over seeds of the min bulk ESS per gradient evaluation after warm-up, its
standard error, the mean leapfrog steps per draw, and the ratio of each fewstep rule's mean to BlackJAX's with a
two-standard-error interval (delta method), and the median over seeds of the per-seed ratio (the ESS of a short
chain is heavy-tailed, and one seed can move the mean).

    .venv/bin/python benchmarks/mcmc_nuts_repeats.py --targets banana --seeds 0-5 --json banana.json
    .venv/bin/python benchmarks/mcmc_nuts_repeats.py --from-json banana.json,funnel.json --update-docs docs/mcmc.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import fewstep.mcmc as mcmc
from fewstep.bench.report import markers, replace_section
from fewstep.seeds import parse_seeds, seed_text

_spec = importlib.util.spec_from_file_location("mcmc_bench", Path(__file__).with_name("mcmc.py"))
B = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(B)

RULES = ("trapezoid", "sum")
SECTION = "mcmc-nuts-repeats"


def measure(name: str, seeds: list[int], out: Path | None, rows: list[dict], rules=RULES) -> list[dict]:
    """Append this target's rows to ``rows`` (written to ``out`` after every seed) and return them."""
    spec = dict(B.TARGETS)[name]
    target = mcmc.make_target(name, **spec)
    for seed in seeds:
        x0 = torch.from_numpy(B._init(target, seed, B.CHAINS))
        for rule in rules:
            t0 = time.perf_counter()
            r = mcmc.run_sampler("nuts", target, chains=B.CHAINS, draws=B.DRAWS, warmup=B.WARMUP, seed=seed,
                                 init=x0, turn=rule)
            grads = int((r.n_grad - r.n_grad_warmup).sum())
            rows.append(dict(target=name, seed=seed, sampler=f"fewstep turn={rule}", grads=grads,
                             ess=float(mcmc.ess_bulk(r.draws.numpy()).min()),
                             seconds=round(time.perf_counter() - t0, 1)))
            print(json.dumps(rows[-1]), flush=True)
        xs, grads, seconds = B.blackjax_run("nuts", target, B.DRAWS, B.WARMUP, seed)
        rows.append(dict(target=name, seed=seed, sampler="blackjax", grads=grads,
                         ess=float(mcmc.ess_bulk(xs).min()), seconds=round(seconds, 1)))
        print(json.dumps(rows[-1]), flush=True)
        if out is not None:
            out.write_text(json.dumps(rows, indent=1))
    return rows


def _mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"Made by `{command}` (each seed: 4 chains x 300 draws after 300 warm-up iterations, the setting of "
             "`benchmarks/mcmc.py`). ESS/grad: min bulk ESS over the coordinates per gradient evaluation after "
             "warm-up, mean over seeds +- its standard error; the ratio's interval is +- two standard errors "
             "(delta method); the median of the per-seed ratios is less moved by one seed's outlying ESS.", "",
             "| target | seeds | sampler | ESS/grad | leapfrog steps per draw | ratio to BlackJAX | median of the "
             "per-seed ratios |",
             "|---|---|---|---:|---:|---|---:|"]
    for name in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == name]
        seeds = sorted({r["seed"] for r in mine})
        per = {s: [r for r in mine if r["sampler"] == s] for s in dict.fromkeys(r["sampler"] for r in mine)}
        ref_m, ref_se = _mean_se([r["ess"] / r["grads"] for r in per["blackjax"]])
        for sampler, got in per.items():
            m, se = _mean_se([r["ess"] / r["grads"] for r in got])
            steps = np.mean([r["grads"] / (B.CHAINS * B.DRAWS) for r in got])
            ratio = median = ""
            if sampler != "blackjax":
                q = m / ref_m
                dq = q * math.sqrt((se / m) ** 2 + (ref_se / ref_m) ** 2)
                ratio = f"{q:.2f} ({q - 2 * dq:.2f}-{q + 2 * dq:.2f})"
                theirs = {r["seed"]: r["ess"] / r["grads"] for r in per["blackjax"]}
                median = f"{np.median([r['ess'] / r['grads'] / theirs[r['seed']] for r in got]):.2f}"
            lines.append(f"| {name} | {seed_text(seeds)} | {sampler} | {m:.2e} +- {se:.1e} | {steps:.0f} | {ratio} "
                         f"| {median} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="banana,funnel", help=f"comma-separated, of {', '.join(dict(B.TARGETS))}")
    p.add_argument("--seeds", default="0-5")
    p.add_argument("--rules", default=",".join(RULES), help="fewstep's U-turn rules to run, comma-separated")
    p.add_argument("--json", type=Path, default=None, help="write the rows here as they come")
    p.add_argument("--from-json", default=None, help="print the table of these files' rows, measure nothing")
    p.add_argument("--update-docs", type=Path, default=None, help="write the table into this file's section")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.from_json:
        rows = [r for f in args.from_json.split(",") for r in json.loads(Path(f).read_text())]
        command = "benchmarks/mcmc_nuts_repeats.py`, one run per target and seed range, then `--from-json"
    else:
        names = args.targets.split(",")
        unknown = [n for n in names if n not in dict(B.TARGETS)]
        if unknown:
            raise SystemExit(f"mcmc_nuts_repeats.py: unknown target(s) {unknown}; choose from "
                             f"{', '.join(dict(B.TARGETS))}")
        rules = args.rules.split(",")
        if not rules or set(rules) - set(RULES):
            raise SystemExit(f"mcmc_nuts_repeats.py: --rules takes {', '.join(RULES)}; got {args.rules!r}")
        rows = []
        for n in names:
            measure(n, parse_seeds(args.seeds), args.json, rows, rules)
        command = f"benchmarks/mcmc_nuts_repeats.py --targets {args.targets} --seeds {args.seeds}"
    text = markdown(rows, command)
    print(text)
    if args.update_docs is not None:
        begin, end = markers(SECTION)
        try:
            page = replace_section(args.update_docs.read_text(), begin, end, f"{begin}\n{text}\n{end}", append=False)
        except ValueError as exc:
            raise SystemExit(f"{args.update_docs}: {exc}") from None
        args.update_docs.write_text(page)
        print(f"wrote {args.update_docs}")


if __name__ == "__main__":
    main()
