"""Profile speculative sampling on a bundled pair: where the time of one verification round goes.

Runs ``speculative_generate`` once to warm up, then once under cProfile, and prints a markdown table of
milliseconds per round: the target's and the draft's forward calls (inside ``CausalLM.logits``), and
fewstep's own work around them (processors, sampling, verification, the cache bookkeeping of
``Stream``) with everything else as "other". Numbers are CPU-profile times of one thread.

``--call-costs`` prints instead what bounds speculation on a CPU: the milliseconds of one target and
one draft forward call (with a KV cache of a 64-token context) by the number of new tokens it scores,
1 to ``gamma + 1``, at batch 1 and ``--batch``, median of 30 calls, one thread. Verifying ``gamma``
drafts costs one call of ``gamma + 1`` tokens; speculation pays only as far as that call costs less
than ``gamma + 1`` calls of one token.

    .venv/bin/python scripts/profile_speculative.py [--pair small|large] [--batch 1] [--gamma 4] [--call-costs]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from fewstep.lm import call_seconds, load_bundled, load_tokenizer, speculative_generate

PROMPTS = ("The for statement", "A class definition defines", "The import statement", "Exceptions can be raised",
           "The while statement is used", "Function definitions", "Augmented assignment", "The del statement")
PARTS = {  # (file suffix, function) -> part; cumulative times, so no part contains another
    "processors (Sampler.probs)": [("lm/processors.py", "probs")],
    "sampling (Rng.sample, Rng.uniform)": [("lm/decoding.py", "sample"), ("lm/decoding.py", "uniform")],
    "verification (verify, residual)": [("lm/speculative.py", "verify")],
    "cache bookkeeping (Stream.drop, Stream.select)": [("lm/decoding.py", "drop"), ("lm/decoding.py", "select")],
    "finishing rows (append, stop tests)": [("lm/decoding.py", "append")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=("small", "large"), default="small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--call-costs", action="store_true", help="time forward calls by tokens scored")
    args = parser.parse_args()
    torch.set_num_threads(1)
    suffix = "" if args.pair == "small" else "-large"
    target, draft = load_bundled("target" + suffix), load_bundled("draft" + suffix)
    if args.call_costs:
        call_costs(target, draft, args)
        return
    tok = load_tokenizer()
    prompts = [tok.encode(t).ids for t in PROMPTS[: args.batch]]

    def run():
        gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]
        return speculative_generate(target, draft, prompts, "temperature=1", gamma=args.gamma, eos_token_id=None,
                                    max_new_tokens=args.max_new_tokens, generator=gens)

    run()
    profile = cProfile.Profile()
    profile.enable()
    stats = run().stats
    profile.disable()
    table = pstats.Stats(profile).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    rounds = stats.drafts // args.batch

    def cumulative(pairs):
        return sum(v[3] for (file, _, name), v in table.items() if any(file.endswith(f) and name == n
                                                                       for f, n in pairs))

    total = cumulative([("lm/speculative.py", "speculative_generate")])
    model = {"target forward (CausalLM.logits)": stats.target_seconds, "draft forward": stats.draft_seconds}
    feed = cumulative([("lm/decoding.py", "feed")]) - stats.target_seconds - stats.draft_seconds
    parts = {**model, "Stream.feed around the model (mask, positions)": feed,
             **{name: cumulative(pairs) for name, pairs in PARTS.items()}}
    inside = sum(ct for (file, _, name), v in table.items() if file.endswith("lm/decoding.py")
                 and name in ("sample", "uniform") for (caller, _, _), (_, _, _, ct) in v[4].items()
                 if caller.endswith("lm/speculative.py"))  # draws made inside verify count as sampling
    parts["verification (verify, residual)"] -= inside - sum(
        ct for (file, _, name), v in table.items() if file.endswith("lm/decoding.py") and name in ("sample", "uniform")
        for (caller, _, cname), (_, _, _, ct) in v[4].items()
        if caller.endswith("lm/speculative.py") and cname == "speculative_generate")
    parts["other (the loop, tensor glue)"] = total - sum(parts.values())
    print(f"{args.pair} pair, batch {args.batch}, gamma {args.gamma}, {stats.new_tokens} tokens in {rounds} rounds, "
          f"{stats.seconds:.3f} s under cProfile; torch {torch.__version__}, 1 thread")
    print("\n| part | ms per round | share |\n|---|---|---|")
    for name, seconds in parts.items():
        print(f"| {name} | {1000 * seconds / rounds:.2f} | {100 * seconds / total:.0f}% |")


def call_costs(target, draft, args) -> None:
    batches = sorted({1, args.batch})
    print(f"{args.pair} pair, forward calls after a 64-token context; median ms of 30 calls; torch "
          f"{torch.__version__}, 1 thread\n")
    print("| model | batch | " + " | ".join(f"{k} token{'s' * (k > 1)}" for k in range(1, args.gamma + 2))
          + f" | {args.gamma + 1} tokens / 1 token |")
    print("|---|---|" + "---|" * (args.gamma + 2))
    for name, model in (("target", target), ("draft", draft)):
        for b in batches:
            ms = [1000 * call_seconds(model, b, k, calls=30) for k in range(1, args.gamma + 2)]
            print(f"| {name} | {b} | " + " | ".join(f"{m:.2f}" for m in ms) + f" | {ms[-1] / ms[0]:.2f} |")


if __name__ == "__main__":
    main()
