"""``fewstep generate --n K``: several samples of one prompt, checked by a verifier and combined by a vote.

The options of issue 23 for ``fewstep generate``; generate.py adds them and hands over when ``--n``,
``--verify``, ``--vote`` or ``--method`` is given, or ``--model arith``. ``--model arith`` is the bundled addition model
(``fewstep.lm.arith``), whose answers the ``exact`` and ``learned`` verifiers score.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

from fewstep.commands.args import MAX_SAMPLES, int_in, name

METHODS = ("plain", "arithmetic", "priority")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int_in(1, MAX_SAMPLES), default=None, metavar="K",
                   help=f"draw K samples of the prompt (1..{MAX_SAMPLES}), print each with its verifier score and the "
                        "vote; --model arith is the bundled addition model, e.g. --prompt 123+489= (default: off)")
    p.add_argument("--verify", type=name, default=None,
                   help="score each sample: 'exact' (the sum, always right) or 'learned' (an imperfect probe on the "
                        "model's hidden states); both need --model arith (default: none)")
    p.add_argument("--vote", choices=("majority", "weighted", "best"), default=None,
                   help="combine the K answers: most frequent, largest total verifier score, or highest single score "
                        "(best-of-n); 'weighted' and 'best' need --verify (default: majority)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="how the K samples are drawn: independent ('plain'), spread over code space ('arithmetic', "
                        "arXiv 2210.15458) or K distinct ones in decreasing probability ('priority', arXiv 2402.18734)")


def requested(args: argparse.Namespace) -> bool:
    return args.model == "arith" or any(getattr(args, k) is not None for k in ("n", "verify", "vote", "method"))


def run(args: argparse.Namespace, load: Callable) -> int:
    """Sample, verify and vote; ``load(name)`` is generate's loader of a (model, tokenizer) pair by --model name."""
    from fewstep.lm import Sampler, arith
    from fewstep.lm.diverse import arithmetic_sample, priority_sample
    from fewstep.lm.scaling import sample_n, vote

    if args.draft is not None:
        raise ValueError("--n, --verify, --vote and --method sample without a draft; drop --draft")
    for flag, attr in (("--stop", "stop"), ("--adaptive-gamma", "adaptive_gamma")):
        if getattr(args, attr, None):
            raise ValueError(f"{flag} is not supported with --n, --verify, --vote, --method or --model arith")
    if args.samples != 1:
        raise ValueError("--samples is the batch of plain generation; with --n give the number of samples as --n")
    k, method, how = args.n or 1, args.method or "plain", args.vote or "majority"
    if args.verify is not None and args.model != "arith":
        raise ValueError(f"--verify {args.verify} checks the bundled addition model's answers: add --model arith")
    if args.verify is not None and args.verify not in arith.VERIFIERS:
        raise ValueError(f"--verify must be one of {', '.join(arith.VERIFIERS)}, got {args.verify!r}")
    if how != "majority" and args.verify is None:
        raise ValueError(f"--vote {how} weighs answers by a verifier: add --verify exact or --verify learned")
    sampler = Sampler.parse(args.sampler, order=args.order)
    if args.model == "arith":
        model, tokenizer = arith.load_arith(), arith.TOKENIZER
        prompt = [arith.EOS, *tokenizer.encode(args.prompt)]
        arith.parse_prompt(args.prompt)  # a clear error for anything but 'a+b='
        eos = arith.EOS
    else:
        model, tokenizer = load(args.model)
        ids = tokenizer.encode(args.prompt)
        prompt = list(getattr(ids, "ids", ids))
        eos = tokenizer.token_to_id("<|endoftext|>") if hasattr(tokenizer, "token_to_id") else tokenizer.eos_token_id
        if not prompt:
            raise ValueError("--prompt must not be empty")
    common = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos)
    if method == "plain":
        out = sample_n(model, [prompt], k, sampler, seed=args.seed, **common)
        tokens, calls = out.tokens[0], out.calls
    elif method == "arithmetic":
        out = arithmetic_sample(model, [prompt], k, sampler, seed=args.seed, **common)
        tokens, calls = out.tokens[0], out.calls
    else:
        pr = priority_sample(model, [prompt], k, sampler, **common)
        tokens, calls = pr.tokens[0], pr.calls
    texts = [_text(tokenizer, t, eos) for t in tokens]
    scores = None
    if args.verify is not None:
        check = arith.verifier(args.verify, model)
        scores = check([prompt] * len(tokens), tokens).tolist()
    chosen = vote(texts, scores, how)
    result = {"prompt": args.prompt, "model": args.model, "sampler": str(sampler), "method": method, "n": len(texts),
              "seed": args.seed, "samples": texts, "scores": scores, "verify": args.verify, "vote": how,
              "answer": chosen, "distinct": len(set(texts)), "model_calls": calls}
    if args.model == "arith":
        result["correct"] = arith.is_correct(args.prompt, chosen)
    if args.json:
        print(json.dumps(result))
        return 0
    for i, text in enumerate(texts):
        score = "" if scores is None else f"  {args.verify} score {scores[i]:.3f}"
        print(f"{i:3d}  {text!r}{score}")
    right = f" ({'right' if result['correct'] else 'wrong'})" if "correct" in result else ""
    plural = "s" if len(texts) != 1 else ""
    print(f"\n{how} vote over {len(texts)} sample{plural} ({len(set(texts))} distinct, {calls} batched model calls): "
          f"{chosen!r}{right}")
    return 0


def _text(tokenizer, tokens: list[int], eos: int | None) -> str:
    cut = tokens[: tokens.index(eos)] if eos is not None and eos in tokens else tokens
    return tokenizer.decode(cut)
