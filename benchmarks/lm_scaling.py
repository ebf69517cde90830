"""Inference-time compute on the bundled addition model (issue 23): every method against samples and model calls.

    .venv/bin/python benchmarks/lm_scaling.py --write docs/benchmarks.md   # the published numbers (~2.5 CPU-minutes)
    .venv/bin/python benchmarks/lm_scaling.py --from-json --write docs/benchmarks.md   # section and plots again

Rewrites the section between ``<!-- lm_scaling:begin -->`` and ``<!-- lm_scaling:end -->`` of the given file,
the plots ``docs/img/lm_scaling_*.png`` and ``benchmarks/data/lm_scaling.json``. One torch thread, seed 0.

1. Coverage and accuracy against samples per problem (600 held-out problems, 64 samples each at
   temperature 1): coverage with the exact verifier (pass@k, unbiased), majority vote, and weighted vote and
   best-of-n with the exact and with the learned (imperfect) verifier; then restarts (the learned
   mid-generation probe) against one sample and best-of-2 at their measured token cost.
2. Compute allocation (OSCA): six sampler configurations; success rates from 600 training problems x 32
   samples; held-out coverage of the learned allocation against every single configuration at budgets 1-32.
3. Conformal sets: nonconformity of the 600 problems (k_max = 64, learned verifier as quality, noisy-or set
   confidence); 1000 random splits into 300 calibration and 300 test problems; mean test coverage against
   the nominal 1 - alpha = 0.8 and 0.9 with its Monte Carlo error; also Learn-then-Test (delta = 0.1) and a
   negative control (the threshold calibrated for 1 - 2 alpha).
4. Diversity: distinct answers and coverage among k samples for plain, arithmetic and priority sampling.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from fewstep.bench.report import markers, replace_section
from fewstep.lm import arith
from fewstep.lm.conformal import StoppingRule, build_set, calibrate, covered, nonconformity
from fewstep.lm.diverse import arithmetic_sample, priority_sample
from fewstep.lm.scaling import (
    allocate,
    allocate_verified,
    allocation_coverage,
    coverage,
    held_out_coverage,
    sample_n,
    sample_with_restarts,
    vote_accuracy,
)

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = markers("lm_scaling")
KS = (1, 2, 4, 8, 16, 32, 64)
CONFIGS = ("temperature=0.5", "temperature=0.8", "temperature=1", "temperature=1.3", "temperature=1.3,top_k=3",
           "temperature=2,min_p=0.05")
BUDGETS = (1, 2, 4, 8, 16, 32)
COMMAND = ".venv/bin/python benchmarks/lm_scaling.py --write docs/benchmarks.md"
MAX_NEW = 5  # four answer digits and <eos>


def verified(prompts, tokens) -> torch.Tensor:
    return torch.tensor([[arith.is_correct(p, t) for t in row] for p, row in zip(prompts, tokens)])


def learned_scores(model, prompts, tokens) -> torch.Tensor:
    check = arith.verifier("learned", model)
    flat = check([p for p, row in zip(prompts, tokens) for _ in row], [t for row in tokens for t in row])
    return flat.view(len(prompts), -1)


def part_scaling(model, prompts, samples, correct, learned, exact) -> dict:
    truth = [str(sum(arith.parse_prompt(p))) for p in prompts]
    answers = [[arith.answer(t) for t in row] for row in samples.tokens]
    rows = {"coverage (exact verifier, pass@k)": [coverage(correct, k) for k in KS]}
    for name, method, scores in [("majority vote", "majority", None), ("weighted vote, learned verifier", "weighted",
                                 learned), ("best-of-n, learned verifier", "best", learned),
                                 ("best-of-n, exact verifier", "best", exact)]:
        rows[name] = [vote_accuracy(answers, truth, k, method, scores, draws=16, seed=0) for k in KS]
    tokens_per_sample = samples.new_tokens / (len(prompts) * samples.tokens[0].__len__())
    return {"ks": KS, "rows": rows, "tokens_per_sample": tokens_per_sample,
            "learned_precision": float(correct[learned >= 0.5].double().mean()),
            "learned_recall": float((learned[correct] >= 0.5).double().mean())}


def part_restarts(model, prompts, correct, learned) -> list[dict]:
    predictor, whole = arith.predictor(model, "restart"), arith.predictor(model, "learned")
    out = [{"method": "one sample", "accuracy": float(correct[:, 0].double().mean()), "samples": 1.0}]
    pick = learned[:, :2].argmax(1)
    out.append({"method": "best-of-2, learned verifier", "samples": 2.0,
                "accuracy": float(correct[:, :2].gather(1, pick[:, None]).double().mean())})
    runs = [(f"restart after two digits below {t} (restart probe)", predictor, arith.RESTART_AFTER, t)
            for t in (0.3, 0.4, 0.5)]
    runs += [(f"resample whole answers below {t} (learned verifier)", whole, MAX_NEW, t) for t in (0.5, 0.7)]
    for name, pred, after, threshold in runs:
        r = sample_with_restarts(model, prompts, pred, threshold, after=after, max_attempts=4, sampler="temperature=1",
                                 max_new_tokens=MAX_NEW, eos_token_id=arith.EOS)
        acc = sum(arith.is_correct(p, t) for p, t in zip(prompts, r.tokens)) / len(prompts)
        out.append({"method": name + ", up to 4 attempts", "accuracy": acc,
                    "samples": sum(r.attempts) / len(prompts), "tokens_per_problem": r.new_tokens / len(prompts)})
    return out


def part_allocation(model, test_prompts, plain_correct) -> dict:
    train = [arith.prompt_ids(p) for p in arith.problems(600, 101)]
    success, train_tables, tables = [], [], []
    for c, config in enumerate(CONFIGS):
        tr = sample_n(model, train, 32, config, seed=1000 + c, max_new_tokens=MAX_NEW, eos_token_id=arith.EOS)
        train_tables.append(verified(train, tr.tokens))
        success.append(train_tables[-1].double().mean(1))
        if config == "temperature=1":
            tables.append(plain_correct[:, :32])
        else:
            te = sample_n(model, test_prompts, 32, config, seed=2000 + c, max_new_tokens=MAX_NEW,
                          eos_token_id=arith.EOS)
            tables.append(verified(test_prompts, te.tokens))
    success_t = torch.stack(success, 1)
    rows = []
    for b in BUDGETS:
        counts, plug_in = allocate_verified(train_tables, b), allocate(success_t, b)
        single = [[b if i == c else 0 for i in range(len(CONFIGS))] for c in range(len(CONFIGS))]
        singles = [held_out_coverage(tables, n) for n in single]
        on_train = max(range(len(CONFIGS)), key=lambda c: held_out_coverage(train_tables, single[c]))
        rows.append({"budget": b, "allocation": dict(zip(CONFIGS, counts)),
                     "held_out": held_out_coverage(tables, counts), "train": held_out_coverage(train_tables, counts),
                     "plug_in_allocation": dict(zip(CONFIGS, plug_in)),
                     "plug_in_held_out": held_out_coverage(tables, plug_in),
                     "plug_in_train": allocation_coverage(success_t, plug_in),
                     "single_chosen_on_train": CONFIGS[on_train], "singles": dict(zip(CONFIGS, singles))})
    return {"rows": rows, "train_accuracy": dict(zip(CONFIGS, success_t.mean(0).tolist()))}


def part_conformal(answers, learned, correct, splits: int = 1000, n_cal: int = 300) -> dict:
    rule = StoppingRule(0.0, 64, "noisy_or")
    scores = [nonconformity(a, q.tolist(), c.tolist(), rule) for a, q, c in zip(answers, learned, correct)]
    rng = random.Random(0)
    out = {"k_max": 64, "n_cal": n_cal, "n_test": len(scores) - n_cal, "splits": splits,
           "reachable_coverage": float(np.mean([not math.isinf(s) or s < 0 for s in scores])), "levels": []}
    for alpha in (0.2, 0.1):
        for delta in (None, 0.1, "control"):  # control: calibrated for 1 - 2 alpha, i.e. miscalibrated
            cov, size, used, unreachable = [], [], [], 0
            for _ in range(splits):
                idx = list(range(len(scores)))
                rng.shuffle(idx)
                cal, test = idx[:n_cal], idx[n_cal:]
                c = (calibrate([scores[i] for i in cal], 2 * alpha) if delta == "control" else
                     calibrate([scores[i] for i in cal], alpha, delta))
                unreachable += not c.reachable
                cov.append(np.mean([covered(scores[i], c.threshold) for i in test]))
                if len(size) < 50:  # set sizes of the first 50 splits (building sets is the slow part)
                    r = StoppingRule(c.threshold, 64, "noisy_or")
                    built = [build_set(answers[i], learned[i].tolist(), r) for i in test]
                    size.append(np.mean([len(s) for s, _ in built]))
                    used.append(np.mean([u for _, u in built]))
            cov = np.array(cov)
            out["levels"].append({"nominal": 1 - alpha, "delta": delta, "mean_coverage": float(cov.mean()),
                                  "mc_error": float(cov.std(ddof=1) / math.sqrt(splits)),
                                  "upper": 1 - alpha + 1 / (n_cal + 1),
                                  "share_below_nominal": float((cov < 1 - alpha).mean()),
                                  "set_size": float(np.mean(size)), "samples": float(np.mean(used)),
                                  "unreachable_splits": unreachable, "coverages": cov.tolist()})
    return out


def part_diversity(model, prompts, samples, correct) -> dict:
    rows = {name: {"distinct": [], "coverage": []} for name in ("plain", "arithmetic", "priority")}

    def add(name, tokens, ok):
        rows[name]["distinct"].append(float(np.mean([len({arith.answer(t) for t in row}) for row in tokens])))
        rows[name]["coverage"].append(float(ok.any(1).double().mean()))

    pr = priority_sample(model, prompts, max(KS), "temperature=1", max_new_tokens=MAX_NEW, eos_token_id=arith.EOS)
    pr_correct = verified(prompts, pr.tokens)
    for k in KS[1:]:
        add("plain", [row[:k] for row in samples.tokens], correct[:, :k])
        ar = arithmetic_sample(model, prompts, k, "temperature=1", seed=0, max_new_tokens=MAX_NEW,
                               eos_token_id=arith.EOS)
        add("arithmetic", ar.tokens, verified(prompts, ar.tokens))
        add("priority", [row[:k] for row in pr.tokens], pr_correct[:, :k])
    return {"ks": KS[1:], "rows": rows, "priority_calls_64": pr.calls, "priority_decodes": pr.decodes[0]}


def plots(res: dict, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 1, figsize=(6.4, 4.2))
    sc = res["scaling"]
    for name, ys in sc["rows"].items():
        ax.plot(sc["ks"], ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel=f"samples per problem (x {sc['tokens_per_sample']:.2f} model calls each)", ylabel="share of problems",
           title="Coverage and accuracy, 600 held-out problems")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "lm_scaling_coverage.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(1, 1, figsize=(6.4, 4.2))
    al = res["allocation"]["rows"]
    for config in CONFIGS:
        ax.plot(BUDGETS, [r["singles"][config] for r in al], marker=".", lw=1, label=config)
    ax.plot(BUDGETS, [r["held_out"] for r in al], marker="o", lw=2.5, color="black", label="OSCA allocation")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="samples per problem (budget)", ylabel="held-out coverage", title="Compute allocation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "lm_scaling_allocation.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(1, 1, figsize=(6.4, 4.2))
    levels = [lv for lv in res["conformal"]["levels"] if lv["delta"] is None]
    ax.hist([lv["coverages"] for lv in levels], bins=40, label=[f"nominal {lv['nominal']:.1f}" for lv in levels])
    for lv in levels:
        ax.axvline(lv["nominal"], color="black", lw=1, ls="--")
        ax.axvline(lv["mean_coverage"], color="red", lw=1)
    ax.set(xlabel="test coverage of one calibration split", ylabel="splits",
           title="Conformal sets: 1000 splits (dashed: nominal, red: mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "lm_scaling_conformal.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    dv = res["diversity"]
    for name, r in dv["rows"].items():
        axes[0].plot(dv["ks"], r["distinct"], marker="o", label=name)
        axes[1].plot(dv["ks"], r["coverage"], marker="o", label=name)
    for ax, label in zip(axes, ("distinct answers among k samples", "coverage (exact verifier)")):
        ax.set_xscale("log", base=2)
        ax.set(xlabel="k samples per problem", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "lm_scaling_diversity.png", dpi=110)
    plt.close(fig)


def section(res: dict) -> str:
    sc, env = res["scaling"], res["env"]
    lines = [BEGIN, "## Inference-time compute (`fewstep.lm.scaling`, `conformal`, `diverse`)", "",
             f"Generated by `{COMMAND}` ({env['cpu_seconds']:.0f} CPU-seconds, one torch thread, torch {env['torch']}, "
             f"Python {env['python']}). Bundled addition model (`fewstep.lm.arith`, 107,648 parameters), 600 held-out "
             f"problems, 64 samples each at temperature 1 ({sc['tokens_per_sample']:.2f} new tokens, i.e. model calls, "
             "per sample). Method and plots: `docs/lm_scaling.md`.", "",
             "**Coverage and accuracy against samples per problem** (`docs/img/lm_scaling_coverage.png`). Accuracy of "
             "a vote is averaged over 16 random subsets of k of the 64 samples.", "",
             "| method | " + " | ".join(f"k={k}" for k in sc["ks"]) + " |", "|---" * (len(sc["ks"]) + 1) + "|"]
    for name, ys in sc["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{y:.3f}" for y in ys) + " |")
    lines += ["", f"The learned verifier accepts (score >= 0.5) with precision {sc['learned_precision']:.3f} and "
              f"recall {sc['learned_recall']:.3f} on these samples.", "",
              "**Restarts** (Adaptive Inference-Time Compute): a sample is abandoned and restarted when a predictor "
              "scores it below a threshold, mid-generation (the `restart` probe after two answer digits) or "
              "at the end (the learned verifier); the last attempt always runs to the end, and a problem rejected "
              "up to its last attempt keeps its best-scored finished attempt:", "",
              "| method | accuracy | samples started per problem | new tokens per problem |", "|---|---|---|---|"]
    for r in res["restarts"]:
        tok = r.get("tokens_per_problem", r["samples"] * sc["tokens_per_sample"])
        lines.append(f"| {r['method']} | {r['accuracy']:.3f} | {r['samples']:.2f} | {tok:.2f} |")
    al = res["allocation"]
    lines += ["", "**Compute allocation** (`docs/img/lm_scaling_allocation.png`): held-out coverage (pass@k per "
              "configuration, unbiased from 32 samples each of the 600 test problems) of the allocation learned on "
              "600 other problems (32 samples per configuration): `allocate_verified` (objective: the unbiased "
              "coverage estimate) and `allocate` (objective: estimated rates plugged into 1 - prod (1 - p)^n), "
              "against the single configuration chosen on the training problems and the best single one on the "
              "test problems themselves (an oracle).", "",
              "| budget | allocation (`allocate_verified`) | coverage | `allocate` (plug-in) | single chosen on "
              "training | best single on test (oracle) |", "|---|---|---|---|---|---|"]
    for r in al["rows"]:
        best = max(r["singles"], key=r["singles"].get)
        train_pick = r["single_chosen_on_train"]
        mix = ", ".join(f"{k}: {v}" for k, v in r["allocation"].items() if v)
        lines.append(f"| {r['budget']} | {mix} | {r['held_out']:.3f} | {r['plug_in_held_out']:.3f} | "
                     f"{r['singles'][train_pick]:.3f} ({train_pick}) | {r['singles'][best]:.3f} ({best}) |")
    wins = sum(r["held_out"] >= r["singles"][r["single_chosen_on_train"]] - 1e-12 for r in al["rows"])
    oracle = sum(r["held_out"] >= max(r["singles"].values()) - 1e-12 for r in al["rows"])
    gap = max(max(r["singles"].values()) - r["held_out"] for r in al["rows"])
    lines += ["", f"Target (allocation >= best single configuration at every budget): met at {wins} of "
              f"{len(al['rows'])} budgets against the single configuration chosen on the training problems, and at "
              f"{oracle} of {len(al['rows'])} against the oracle (largest shortfall {max(gap, 0):.3f})."]
    cf = res["conformal"]
    lines += ["", f"**Conformal sets** (`docs/img/lm_scaling_conformal.png`): {cf['splits']} random splits of the 600 "
              f"problems into {cf['n_cal']} calibration and {cf['n_test']} test problems; k_max = {cf['k_max']} "
              f"samples reach a right answer on {cf['reachable_coverage']:.3f} of the problems.", "",
              "| nominal 1 - alpha | calibration | mean test coverage | Monte Carlo error | guarantee band | splits "
              "below nominal | mean set size | mean samples drawn |", "|---|---|---|---|---|---|---|---|"]
    for lv in cf["levels"]:
        if lv["delta"] is None:
            how, band = "split conformal", f"[{lv['nominal']:.3f}, {lv['upper']:.3f}]"
        elif lv["delta"] == "control":
            how, band = "negative control: split conformal for 1 - 2 alpha", "none (should fail)"
        else:
            how, band = f"Learn-then-Test, delta = {lv['delta']}", f"risk <= alpha w.p. >= {1 - lv['delta']:.1f}"
        lines.append(f"| {lv['nominal']:.1f} | {how} | {lv['mean_coverage']:.4f} | {lv['mc_error']:.4f} | {band} | "
                     f"{lv['share_below_nominal']:.3f} | {lv['set_size']:.2f} | {lv['samples']:.2f} |")
    dv = res["diversity"]
    lines += ["", "**Diversity at equal samples** (`docs/img/lm_scaling_diversity.png`): distinct answers (and "
              "coverage) among k samples per problem.", "",
              "| sampler | " + " | ".join(f"k={k}" for k in dv["ks"]) + " |", "|---" * (len(dv["ks"]) + 1) + "|"]
    for name, r in dv["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{d:.2f} ({c:.3f})" for d, c in zip(r["distinct"], r["coverage"]))
                     + " |")
    lines += ["", f"Priority sampling ran exactly {dv['priority_decodes']} decodes per problem for k = 64 "
              f"({dv['priority_calls_64']} batched model calls for all 600 problems; plain and arithmetic sampling "
              "decode all k samples of all problems in one batch of 5 calls).", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, default=None, metavar="MD", help="rewrite this file's lm_scaling section")
    parser.add_argument("--problems", type=int, default=600)
    parser.add_argument("--from-json", action="store_true",
                        help="rebuild the section and plots from benchmarks/data/lm_scaling.json without sampling")
    args = parser.parse_args()
    if args.from_json:
        write(json.loads((ROOT / "benchmarks/data/lm_scaling.json").read_text()), args.write)
        return
    torch.set_num_threads(1)
    cpu, wall = time.process_time(), time.perf_counter()
    model = arith.load_arith()
    prompts = [arith.prompt_ids(p) for p in arith.problems(args.problems, 100)]
    samples = sample_n(model, prompts, max(KS), "temperature=1", seed=0, max_new_tokens=MAX_NEW, eos_token_id=arith.EOS)
    correct = verified(prompts, samples.tokens)
    learned = learned_scores(model, prompts, samples.tokens)
    answers = [[arith.answer(t) for t in row] for row in samples.tokens]
    res = {"scaling": part_scaling(model, prompts, samples, correct, learned, correct.double())}
    print("scaling", json.dumps(res["scaling"]), flush=True)
    res["restarts"] = part_restarts(model, prompts, correct, learned)
    print("restarts", json.dumps(res["restarts"]), flush=True)
    res["allocation"] = part_allocation(model, prompts, correct)
    print("allocation", json.dumps(res["allocation"]["rows"]), flush=True)
    res["conformal"] = part_conformal(answers, learned, correct, n_cal=args.problems // 2)
    levels = [{k: v for k, v in lv.items() if k != "coverages"} for lv in res["conformal"]["levels"]]
    print("conformal", json.dumps(levels), flush=True)
    res["diversity"] = part_diversity(model, prompts, samples, correct)
    print("diversity", json.dumps(res["diversity"]), flush=True)
    res["env"] = {"cpu_seconds": time.process_time() - cpu, "wall_seconds": time.perf_counter() - wall,
                  "torch": torch.__version__, "python": platform.python_version(), "command": COMMAND}
    print(f"CPU {res['env']['cpu_seconds']:.0f} s, wall {res['env']['wall_seconds']:.0f} s")
    if args.write is not None:
        (ROOT / "benchmarks/data").mkdir(exist_ok=True)
        (ROOT / "benchmarks/data/lm_scaling.json").write_text(json.dumps(res) + "\n")
        write(res, args.write)


def write(res: dict, doc: Path | None) -> None:
    """The plots under docs/img and, when ``doc`` is given, its lm_scaling section."""
    plots(res, ROOT / "docs/img")
    if doc is None:
        return
    doc.write_text(replace_section(doc.read_text() if doc.exists() else None, BEGIN, END, section(res)))
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
