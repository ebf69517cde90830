"""``fewstep generate``: sample text from a language model, optionally with speculative sampling."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="sample text from a language model (the bundled pair by default)",
        description="Sample a continuation of --prompt. With --draft, speculative sampling proposes tokens "
                    "with the draft and verifies them with the model; the output distribution is unchanged.")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--model", default="bundled", help="'bundled' or a local transformers model directory")
    p.add_argument("--sampler", default="temperature=1",
                   help="processor chain applied in the order written, e.g. 'temperature=0.8,min_p=0.05', "
                        "or 'greedy'; names: temperature, top_k, top_p, typical, min_p, epsilon, eta")
    p.add_argument("--order", choices=("given", "hf", "llama.cpp"), default="given",
                   help="'hf' puts temperature first (transformers, vLLM), 'llama.cpp' puts it last")
    p.add_argument("--draft", default=None, help="'bundled' or a local directory: enables speculative sampling")
    p.add_argument("--gamma", type=int, default=4, help="draft tokens per verification round")
    p.add_argument("--num-drafts", type=int, default=1, help="independent draft sequences per round")
    p.add_argument("--selection", default=None,
                   help="how one of several drafts is picked at each position: 'priority' (default) or "
                        "'first_accept'; both keep the output exact (see docs/lm.md)")
    p.add_argument("--draft-vocab", type=int, default=None,
                   help="FR-Spec: restrict the bundled draft's LM head to the N most frequent tokens")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--samples", type=int, default=1, help="continuations to sample as one batch")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def load(name: str, vocab_size: int | None = None):
    """(CausalLM, tokenizer) for 'bundled' (its target or draft) or a local transformers directory."""
    from fewstep.lm import models

    if name in models.BUNDLED:
        return models.load_bundled(name, vocab_size), models.load_tokenizer()
    if vocab_size is not None:
        raise ValueError(f"--draft-vocab needs the bundled draft (its token counts ship with it), got {name!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True)
    return models.TransformersLM(model), AutoTokenizer.from_pretrained(name, local_files_only=True)


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    return list(getattr(ids, "ids", ids))


def eos_id(tokenizer) -> int | None:
    if hasattr(tokenizer, "token_to_id"):
        return tokenizer.token_to_id("<|endoftext|>")
    return tokenizer.eos_token_id


def run(args: argparse.Namespace) -> int:
    import torch

    from fewstep.lm import Sampler, generate, speculative_generate
    from fewstep.lm.multidraft import DEFAULT

    quiet_transformers()

    sampler = Sampler.parse(args.sampler, order=args.order)
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    target, tokenizer = load("target" if args.model == "bundled" else args.model)
    prompt = encode(tokenizer, args.prompt)
    if not prompt:
        raise ValueError("--prompt must not be empty")
    gens = [torch.Generator().manual_seed(args.seed + i) for i in range(args.samples)]
    common = dict(max_new_tokens=args.max_new_tokens, generator=gens, eos_token_id=eos_id(tokenizer))
    if args.draft is None:
        if args.draft_vocab is not None or args.num_drafts != 1:
            raise ValueError("--draft-vocab and --num-drafts need --draft")
        if args.selection is not None:
            raise ValueError("--selection needs --draft")
        result = generate(target, [prompt] * args.samples, sampler, **common)
    else:
        draft, _ = load("draft" if args.draft == "bundled" else args.draft, args.draft_vocab)
        result = speculative_generate(target, draft, [prompt] * args.samples, sampler, gamma=args.gamma,
                                      num_drafts=args.num_drafts, selection=args.selection or DEFAULT, **common)
    texts = [tokenizer.decode(prompt + tokens) for tokens in result.tokens]
    stats = result.stats.to_dict()
    if args.json:
        print(json.dumps({"prompt": args.prompt, "sampler": str(sampler), "model": args.model, "draft": args.draft,
                          "gamma": args.gamma if args.draft else None, "num_drafts": args.num_drafts,
                          "selection": (args.selection or DEFAULT) if args.draft else None,
                          "draft_vocab": args.draft_vocab, "seed": args.seed, "texts": texts, **stats}))
        return 0
    for i, text in enumerate(texts):
        print(text if len(texts) == 1 else f"--- sample {i} (seed {args.seed + i})\n{text}")
    print(f"\n{stats['new_tokens']} tokens in {stats['seconds']:.2f} s ({stats['tokens_per_second']:.0f} tokens/s), "
          f"{stats['target_calls_per_token']:.3f} target calls per token")
    if args.draft is not None:
        positions = " ".join(f"{a:.2f}" for a in stats["acceptance_per_position"])
        print(f"acceptance rate {stats['acceptance_rate']:.3f}, mean acceptance length "
              f"{stats['mean_acceptance_length']:.2f}, per position [{positions}]")
    return 0
