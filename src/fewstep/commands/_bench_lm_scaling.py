"""``fewstep bench-lm --scaling``: a quick inference-time compute table on the bundled addition model (issue 23).

For ``--problems`` held-out problems and ``--samples`` K samples each: coverage with the exact verifier
(pass@k), majority vote and best-of-n with the learned verifier at k = 1, 2, 4, ..., K, and the distinct
answers and coverage of K plain, arithmetic and priority samples, each with its model calls and CPU time.
``benchmarks/lm_scaling.py`` is the full study behind ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import time

from fewstep.commands.args import int_in

MAX_PROBLEMS, MAX_K = 10_000, 256


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scaling", action="store_true",
                   help="instead of the decoding comparison: coverage, votes and diverse samplers on the bundled "
                        "addition model (fewstep.lm.arith); see docs/lm_scaling.md")
    p.add_argument("--problems", type=int_in(1, MAX_PROBLEMS), default=200,
                   help=f"with --scaling: held-out problems, 1..{MAX_PROBLEMS:,}")
    p.add_argument("--samples", type=int_in(1, MAX_K), default=16,
                   help=f"with --scaling: samples per problem K, 1..{MAX_K}")


def run(args: argparse.Namespace) -> int:
    import torch

    from fewstep.commands.generate import quiet_transformers
    from fewstep.lm import arith
    from fewstep.lm.diverse import arithmetic_sample, priority_sample
    from fewstep.lm.scaling import coverage, sample_n, vote_accuracy

    if args.update_docs is not None:
        raise ValueError("--update-docs rewrites the decoding section; the --scaling numbers of docs/benchmarks.md "
                         "come from benchmarks/lm_scaling.py --write docs/benchmarks.md")
    quiet_transformers()
    torch.set_num_threads(args.threads)
    model = arith.load_arith()
    prompts = [arith.prompt_ids(p) for p in arith.problems(args.problems, 100)]
    truth = [str(sum(arith.parse_prompt(p))) for p in prompts]
    common = dict(max_new_tokens=5, eos_token_id=arith.EOS)
    k_max = args.samples
    runs = {}
    for name in ("plain", "arithmetic", "priority"):
        cpu = time.process_time()
        if name == "plain":
            out = sample_n(model, prompts, k_max, "temperature=1", seed=0, **common)
        elif name == "arithmetic":
            out = arithmetic_sample(model, prompts, k_max, "temperature=1", seed=0, **common)
        else:
            out = priority_sample(model, prompts, k_max, "temperature=1", **common)
        correct = torch.tensor([[arith.is_correct(p, t) for t in row] for p, row in zip(prompts, out.tokens)])
        runs[name] = dict(tokens=out.tokens, correct=correct, calls=out.calls, new_tokens=out.new_tokens,
                          cpu=time.process_time() - cpu)
    plain = runs["plain"]
    check = arith.verifier("learned", model)
    scores = check([p for p, row in zip(prompts, plain["tokens"]) for _ in row],
                   [t for row in plain["tokens"] for t in row]).view(len(prompts), -1)
    answers = [[arith.answer(t) for t in row] for row in plain["tokens"]]
    rows = []
    for k in [2**i for i in range(k_max.bit_length()) if 2**i <= k_max]:
        rows.append({"k": k, "coverage_exact": coverage(plain["correct"], k),
                     "majority": vote_accuracy(answers, truth, k, "majority", draws=8),
                     "best_of_n_learned": vote_accuracy(answers, truth, k, "best", scores, draws=8),
                     "model_calls_per_problem": k * plain["new_tokens"] / (k_max * len(prompts))})
    diversity = [{"sampler": name, "samples": k_max,
                  "distinct_answers": sum(len({arith.answer(t) for t in row}) for row in r["tokens"]) / len(prompts),
                  "coverage": float(r["correct"].any(1).double().mean()), "batched_calls": r["calls"],
                  "new_tokens_per_problem": r["new_tokens"] / len(prompts), "cpu_seconds": r["cpu"]}
                 for name, r in runs.items()]
    if args.json:
        for row in rows:
            print(json.dumps({"part": "votes", "problems": len(prompts), **row}))
        for row in diversity:
            print(json.dumps({"part": "diversity", "problems": len(prompts), **row}))
        return 0
    print(f"bundled addition model, {len(prompts)} held-out problems, temperature 1\n")
    print("| k | coverage (exact verifier) | majority vote | best-of-k (learned verifier) | model calls per problem |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['coverage_exact']:.3f} | {r['majority']:.3f} | {r['best_of_n_learned']:.3f} | "
              f"{r['model_calls_per_problem']:.1f} |")
    print(f"\n| sampler ({k_max} samples) | distinct answers | coverage | batched calls | new tokens per problem | "
          "CPU s |\n|---|---|---|---|---|---|")
    for r in diversity:
        print(f"| {r['sampler']} | {r['distinct_answers']:.2f} | {r['coverage']:.3f} | {r['batched_calls']} | "
              f"{r['new_tokens_per_problem']:.1f} | {r['cpu_seconds']:.1f} |")
    return 0
