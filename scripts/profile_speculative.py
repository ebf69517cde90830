"""Profile speculative sampling on a bundled pair: where the time of one verification round goes.

Runs ``speculative_generate`` once to warm up, then once under cProfile, and prints a markdown table of
milliseconds per round: the target's and the draft's forward calls (inside ``CausalLM.logits``), and
fewstep's own work around them (processors, sampling, verification, the cache bookkeeping of
``Stream``) with everything else as "other". Numbers are CPU-profile times of one thread.

    .venv/bin/python scripts/profile_speculative.py [--pair small|large] [--batch 1] [--gamma 4]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from fewstep.lm import load_bundled, load_tokenizer, speculative_generate

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
    args = parser.parse_args()
    torch.set_num_threads(1)
    suffix = "" if args.pair == "small" else "-large"
    target, draft = load_bundled("target" + suffix), load_bundled("draft" + suffix)
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


if __name__ == "__main__":
    main()
