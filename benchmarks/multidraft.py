"""Acceptance of the multi-draft selection rules (``fewstep.lm.multidraft``), exactly and end to end.

1. Exact one-position acceptance ``sum min(p, p_I)`` on random target/draft pairs shaped like LM
   laws (softmax of Gaussian logits at temperature 1, the draft's logits perturbed, both cut at
   top-p 0.95), for single draft, ``first_accept`` and ``priority``, against the bound
   ``min_S p(S) + 1 - q(S)^k``, which no rule beats (equal to the LP optimum where the tests solve the LP).
2. Speculative sampling on the bundled pair (gamma 4, ``temperature=1``, 8 prompts x 96 tokens, seeds
   0..7, one thread): acceptance rate and target calls per token.

The numbers in docs/design.md ("Multi-draft selection") come from::

    .venv/bin/python benchmarks/multidraft.py
"""

from __future__ import annotations

import argparse

import torch

from fewstep.lm import SELECTIONS, selection_law
from fewstep.lm.multidraft import acceptance_bound


def lm_like(g: torch.Generator, rows: int, vocab: int, noise: float, top_p: float = 0.95):
    def law(logits):
        probs = torch.softmax(logits, 1)
        ranked, order = probs.sort(1, descending=True)
        keep = torch.zeros_like(probs).scatter(1, order, ((ranked.cumsum(1) - ranked) < top_p).double())
        return probs * keep / (probs * keep).sum(1, keepdim=True)

    z = 3 * torch.randn(rows, vocab, generator=g, dtype=torch.float64)
    return law(z), law(z + noise * torch.randn(rows, vocab, generator=g, dtype=torch.float64))


def exact_table(rows: int) -> None:
    print("| vocab | draft noise | k | single | first_accept | priority | bound | max gap |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for vocab, noise in [(50, 1.0), (1024, 0.5), (1024, 2.0)]:
        p, q = lm_like(g, rows, vocab, noise)
        for k in (2, 3, 4):
            m = torch.full((rows,), k)
            acc = {s: torch.minimum(p, selection_law(p, q, m, s)).sum(1) for s in SELECTIONS}
            best = acceptance_bound(p, q, m)
            print(f"| {vocab} | {noise} | {k} | {torch.minimum(p, q).sum(1).mean():.4f} | "
                  f"{acc['first_accept'].mean():.4f} | {acc['priority'].mean():.4f} | {best.mean():.4f} | "
                  f"{(best - acc['priority']).max():.4f} |")


def bundled_table() -> None:
    from fewstep.commands.bench_lm import PROMPTS
    from fewstep.commands.generate import encode, quiet_transformers
    from fewstep.lm import load_bundled, load_tokenizer, speculative_generate

    quiet_transformers()
    target, draft, tok = load_bundled("target"), load_bundled("draft"), load_tokenizer()
    prompts = [encode(tok, text) for text in PROMPTS[:8]]
    print("| drafts | selection | acceptance rate | target calls / token |")
    print("|---:|---|---:|---:|")
    for k, selection in [(1, "-"), (2, "first_accept"), (2, "priority"), (3, "first_accept"), (3, "priority")]:
        accepted = proposed = tokens = calls = 0
        for seed, prompt in enumerate(prompts):
            out = speculative_generate(target, draft, [prompt], "temperature=1", gamma=4, num_drafts=k,
                                       selection="priority" if k == 1 else selection, max_new_tokens=96,
                                       generator=[torch.Generator().manual_seed(seed)])
            accepted, proposed = accepted + out.stats.accepted_tokens, proposed + out.stats.draft_tokens
            tokens, calls = tokens + out.stats.new_tokens, calls + out.stats.target_calls
        print(f"| {k} | {selection} | {accepted / proposed:.3f} | {calls / tokens:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500, help="random law pairs per exact row")
    parser.add_argument("--skip-bundled", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    exact_table(args.rows)
    if not args.skip_bundled:
        print()
        bundled_table()


if __name__ == "__main__":
    main()
