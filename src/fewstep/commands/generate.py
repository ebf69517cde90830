"""``fewstep generate``: sample text from a language model, optionally with speculative sampling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewstep.commands import _generate_many
from fewstep.commands.args import (
    MAX_DRAFTS,
    MAX_GAMMA,
    MAX_NEW_TOKENS,
    MAX_PROMPT_TOKENS,
    MAX_SAMPLES,
    MAX_SEED,
    int_in,
    name,
    subcommand,
)


def add_parser(subparsers) -> None:
    p = subcommand(
        subparsers, "generate", "sample text from a language model (the bundled pair by default)",
        description="Sample a continuation of --prompt. With --draft, speculative sampling proposes tokens "
                    "with the draft and verifies them with the model; the output distribution is unchanged.")
    p.add_argument("--prompt", required=True, help=f"text to continue, at most {MAX_PROMPT_TOKENS:,} tokens")
    p.add_argument("--model", type=name, default="bundled",
                   help="'bundled' (the small pair's target), 'bundled-large' (the 10M target) or a local folder "
                        "holding a transformers causal LM")
    p.add_argument("--sampler", default="temperature=1",
                   help="processor chain applied in the order written, e.g. 'temperature=0.8,min_p=0.05', "
                        "or 'greedy'; names: temperature, top_k, top_p, typical, min_p, epsilon, eta, "
                        "repetition_penalty, no_repeat_ngram_size, min_new_tokens")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end a sample once its text holds TEXT (repeatable; the token that completes it is kept)")
    p.add_argument("--order", choices=("given", "hf", "llama.cpp"), default="given",
                   help="'hf' puts temperature first (transformers, vLLM), 'llama.cpp' puts it last")
    p.add_argument("--draft", type=name, default=None,
                   help="enables speculative sampling: 'bundled' (the small pair's draft), 'bundled-large' (the "
                        "draft distilled from the 10M target), 'ngram' (prompt lookup, no second model), "
                        "'early-exit' (the model's own lower layers) or a local folder holding a transformers "
                        "causal LM (default: none)")
    p.add_argument("--gamma", type=int_in(1, MAX_GAMMA), default=4,
                   help=f"draft tokens per verification round, 1..{MAX_GAMMA} (the longest with --adaptive-gamma)")
    p.add_argument("--adaptive-gamma", action="store_true",
                   help="choose each sample's draft length per round from its running acceptance, up to --gamma")
    p.add_argument("--num-drafts", type=int_in(1, MAX_DRAFTS), default=1,
                   help=f"independent draft sequences per round, 1..{MAX_DRAFTS}")
    p.add_argument("--selection", type=name, default=None,
                   help="how one of several drafts is picked at each position: 'priority' (default) or "
                        "'first_accept'; both keep the output exact (see docs/lm.md)")
    p.add_argument("--draft-vocab", type=int_in(1, 2**31 - 1), default=None, metavar="N",
                   help="FR-Spec: restrict the bundled draft's LM head to the N most frequent tokens, N from 1 to "
                        "its vocabulary size (1024) (default: the whole vocabulary)")
    p.add_argument("--max-new-tokens", type=int_in(1, MAX_NEW_TOKENS), default=64,
                   help=f"tokens to generate per sample, 1..{MAX_NEW_TOKENS:,}")
    p.add_argument("--samples", type=int_in(1, MAX_SAMPLES), default=1,
                   help=f"continuations to sample as one batch, 1..{MAX_SAMPLES}")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0,
                   help=f"sample i uses seed + i; 0..{MAX_SEED:,} (2^63 - 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _generate_many.add_arguments(p)  # --n, --verify, --vote, --method (issue 23)


def load(name: str, vocab_size: int | None = None):
    """(CausalLM, tokenizer) for 'bundled' (its target or draft) or a local transformers directory."""
    from fewstep.lm import models

    if name in models.BUNDLED:
        return models.load_bundled(name, vocab_size), models.load_tokenizer()
    if vocab_size is not None:
        raise ValueError(f"--draft-vocab needs the bundled draft (its token counts ship with it), got {name!r}")
    folder = Path(name)
    try:
        is_dir = folder.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        raise ValueError(f"{name!r} is neither 'bundled', 'bundled-large' nor a folder holding a transformers "
                         "causal LM; hub names are not downloaded (fewstep runs offline): download the model "
                         "and pass its folder")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # transformers' ways of saying "not a model here"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot load a transformers causal LM from {name}: {first}") from None
    return models.TransformersLM(model), tokenizer


BUNDLED_NAMES = {"bundled": ("target", "draft"), "bundled-large": ("target-large", "draft-large")}


def load_draft(name: str, vocab_size: int | None, target):
    """The ``--draft``: a bundled draft, 'ngram', 'early-exit' (of ``target``) or a local transformers folder."""
    from fewstep.lm import NGramDraft, early_exit

    if name in ("ngram", "early-exit") and vocab_size is not None:
        raise ValueError(f"--draft-vocab needs a bundled model draft, got --draft {name}")
    if name == "ngram":
        return NGramDraft()
    if name == "early-exit":
        if getattr(getattr(getattr(target, "model", None), "config", None), "fewstep_early_exit", None) is None:
            raise ValueError("--draft early-exit needs a model trained with an exit layer (its config names "
                             "fewstep_early_exit), e.g. --model bundled-large")
        return early_exit(target)
    return load(BUNDLED_NAMES[name][1] if name in BUNDLED_NAMES else name, vocab_size)[0]


def stop_options(stop: list[str] | None, tokenizer) -> dict:
    """``stop`` and ``decode`` keywords for --stop strings."""
    return {} if not stop else {"stop": list(stop), "decode": tokenizer.decode}


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

    from fewstep.lm import AdaptiveGamma, Sampler, generate, speculative_generate
    from fewstep.lm.multidraft import DEFAULT

    quiet_transformers()
    if _generate_many.requested(args):
        return _generate_many.run(args, lambda name: load(BUNDLED_NAMES.get(name, (name,))[0]))

    sampler = Sampler.parse(args.sampler, order=args.order)
    if args.seed + args.samples - 1 > MAX_SEED:
        raise ValueError(f"--seed + --samples - 1 must be at most {MAX_SEED}; got {args.seed + args.samples - 1}")
    if args.draft is None and (args.draft_vocab is not None or args.num_drafts != 1 or args.selection is not None):
        raise ValueError("--draft-vocab, --num-drafts and --selection need --draft")
    if args.draft is None and args.adaptive_gamma:
        raise ValueError("--adaptive-gamma needs --draft")
    if any(not text for text in args.stop or ()):
        raise ValueError("--stop must not be empty")
    target, tokenizer = load(BUNDLED_NAMES[args.model][0] if args.model in BUNDLED_NAMES else args.model)
    prompt = encode(tokenizer, args.prompt)
    if not prompt:
        raise ValueError("--prompt must not be empty")
    if len(prompt) > MAX_PROMPT_TOKENS:
        raise ValueError(f"--prompt must be at most {MAX_PROMPT_TOKENS:,} tokens; it has {len(prompt):,}")
    gens = [torch.Generator().manual_seed(args.seed + i) for i in range(args.samples)]
    common = dict(max_new_tokens=args.max_new_tokens, generator=gens, eos_token_id=eos_id(tokenizer),
                  **stop_options(args.stop, tokenizer))
    if args.draft is None:
        result = generate(target, [prompt] * args.samples, sampler, **common)
    else:
        draft = load_draft(args.draft, args.draft_vocab, target)
        gamma = AdaptiveGamma(max_gamma=args.gamma) if args.adaptive_gamma else args.gamma
        result = speculative_generate(target, draft, [prompt] * args.samples, sampler, gamma=gamma,
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
