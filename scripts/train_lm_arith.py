"""Train the bundled addition model of ``fewstep.lm.arith`` and its two probes, deterministically, on one CPU thread.

1. A Llama (``LlamaConfig`` as in ``scripts/train_lm.py``, 2 layers, width 64) learns ``<eos>a+b=s<eos>`` for
   three-digit ``a, b`` (loss on the answer and its end token only), AdamW, a constant learning rate after
   a short warm-up, for ``--steps`` steps of 128 fresh random problems. The step count is set so that one
   sample at temperature 1 is right about half of the time on held-out problems: well below 1, so that
   more samples help.
2. The model samples 4 answers at temperature 1 for each of 2,000 probe-training problems; the exact
   verifier labels them. Two logistic-regression probes on ``fewstep.lm.arith.answer_features`` (hidden
   states and answer log-probabilities) are fitted: ``learned`` on the whole answer (a deliberately
   imperfect verifier) and ``restart`` after the first two answer tokens (the mid-generation restart
   predictor). Both are evaluated on 1,000 other problems.

Writes ``src/fewstep/lm/data/arith/{model/, probes.safetensors, record.json}`` and prints the SHA-256 of
every file (for ``fewstep/_verify.py``).

    nice -n 5 .venv/bin/python scripts/train_lm_arith.py [--out DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from fewstep.lm import generate
from fewstep.lm.arith import (
    DIGITS,
    EOS,
    RESTART_AFTER,
    TOKENIZER,
    VOCAB,
    answer_features,
    fit_probe,
    is_correct,
    problems,
    prompt_ids,
)
from fewstep.lm.models import TransformersLM

SEED = 0
BATCH = 128
CONFIG = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4)
LR = 3e-3
HELD_OUT_SEED, PROBE_TRAIN_SEED, PROBE_TEST_SEED = 1, 2, 3  # problems(n, seed) streams; training draws with torch


def make_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(VOCAB), **CONFIG, num_key_value_heads=CONFIG["num_attention_heads"],
                         max_position_embeddings=32, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=None, pad_token_id=EOS)
    return LlamaForCausalLM(config)


def batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """128 random problems as right-padded ids, with labels only on the answer and its end token."""
    low, high = 10 ** (DIGITS - 1), 10**DIGITS
    ab = torch.randint(low, high, (BATCH, 2), generator=gen).tolist()
    rows, labels = [], []
    for a, b in ab:
        prompt = prompt_ids((a, b))
        target = TOKENIZER.encode(str(a + b)) + [EOS]
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(map(len, rows))
    ids = torch.tensor([r + [EOS] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return ids, lab[:, 1:]


def train(model, steps: int, gen: torch.Generator, lm: TransformersLM, every: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = 100
    for step in range(steps):
        for group in opt.param_groups:  # constant after warm-up: a run's first N steps are a shorter run
            group["lr"] = LR * min(1.0, (step + 1) / warmup)
        model.train()
        ids, labels = batch(gen)
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if every and ((step + 1) % every == 0 or step == steps - 1):
            model.eval()
            print(f"  step {step + 1:5d}  loss {loss.item():.3f}  held-out accuracy {accuracy(lm, 256):.3f}",
                  flush=True)


def accuracy(lm: TransformersLM, n: int, sampler: str = "temperature=1") -> float:
    probs = problems(n, HELD_OUT_SEED)
    prompts = [prompt_ids(p) for p in probs]
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    out = generate(lm, prompts, sampler, max_new_tokens=DIGITS + 2, generator=gens, eos_token_id=EOS)
    return sum(is_correct(p, t) for p, t in zip(prompts, out.tokens)) / n


def probe_data(lm: TransformersLM, n: int, seed: int, samples: int = 4):
    """(end features, first-token features, labels) of ``samples`` answers per problem at temperature 1."""
    prompts = [prompt_ids(p) for p in problems(n, seed) for _ in range(samples)]
    gens = [torch.Generator().manual_seed(seed * 10**6 + i) for i in range(len(prompts))]
    out = generate(lm, prompts, "temperature=1", max_new_tokens=DIGITS + 2, generator=gens, eos_token_id=EOS)
    labels = torch.tensor([float(is_correct(p, t)) for p, t in zip(prompts, out.tokens)], dtype=torch.float64)
    heads = [t[:RESTART_AFTER] for t in out.tokens]
    return answer_features(lm, prompts, out.tokens), answer_features(lm, prompts, heads), labels


def rates(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    accept, right = scores >= 0.5, labels > 0.5
    return {"false_positive_rate": float((accept & ~right).sum() / (~right).sum()),
            "false_negative_rate": float((~accept & right).sum() / right.sum()),
            "accuracy": float((accept == right).double().mean()), "positives": float(right.double().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/fewstep/lm/data/arith")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=0, help="print held-out accuracy every N steps (0: never)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # deterministic reductions
    torch.use_deterministic_algorithms(True)
    start, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(SEED)
    model = make_model()
    lm = TransformersLM(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params} parameters, {args.steps} steps of {BATCH} problems", flush=True)
    train(model, args.steps, torch.Generator().manual_seed(SEED + 1), lm, args.eval_every)
    model.eval()
    train_cpu = time.process_time() - cpu
    sample_acc, greedy_acc = accuracy(lm, 1000), accuracy(lm, 1000, "greedy")
    print(f"held-out accuracy: one sample at temperature 1 {sample_acc:.3f}, greedy {greedy_acc:.3f}", flush=True)

    end_tr, head_tr, y_tr = probe_data(lm, 2000, PROBE_TRAIN_SEED)
    end_te, head_te, y_te = probe_data(lm, 1000, PROBE_TEST_SEED)
    learned, restart = fit_probe(end_tr, y_tr), fit_probe(head_tr, y_tr)
    probes = {"learned": rates(learned(end_te), y_te), "restart": rates(restart(head_te), y_te)}
    print(f"probes on held-out samples: {json.dumps(probes)}", flush=True)

    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out / "model", safe_serialization=True)
    save_file({**learned.tensors("learned"), **restart.tensors("restart")}, str(args.out / "probes.safetensors"))
    rec = {"script": "scripts/train_lm_arith.py", "parameters": n_params, "config": CONFIG, "steps": args.steps,
           "batch": BATCH, "torch": torch.__version__,
           "held_out_accuracy": {"temperature=1": sample_acc, "greedy": greedy_acc, "problems": 1000},
           "probes": {**probes, "threshold": 0.5, "train_samples": len(y_tr), "test_samples": len(y_te)}}
    (args.out / "record.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps(rec))
    print(f"CPU time: training {train_cpu:.1f} s, all {time.process_time() - cpu:.1f} s; wall clock "
          f"{time.perf_counter() - start:.1f} s (not in the record, so that its bytes are reproducible)")
    for path in sorted(args.out.rglob("*")):
        if path.is_file():
            print(f'"lm/data/arith/{path.relative_to(args.out).as_posix()}": '
                  f'"{hashlib.sha256(path.read_bytes()).hexdigest()}",')


if __name__ == "__main__":
    main()
