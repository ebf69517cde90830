"""Train the bundled language-model pair of ``fewstep.lm`` from scratch, deterministically, on CPU.

Corpus: the text of CPython's ``pydoc_data`` (the help topics), one document per topic, sorted by
name. Every 20th document is held out for the validation loss. Steps:

1. a byte-level BPE tokenizer (1024 tokens, ``<|endoftext|>`` = 0) trained on the training documents;
2. a target Llama (3 layers, width 160, ~1.1M parameters) and a draft Llama (1 layer, width 32,
   ~0.05M parameters), both from a config, trained on random 128-token windows with AdamW, in two
   processes at once (one core each: two single-threaded runs beat one two-threaded run on 2 cores);
3. token frequencies of the training corpus, for FR-Spec's reduced draft vocabulary.

Writes ``src/fewstep/lm/data/{tokenizer.json, token_counts.json, target/, draft/}`` (weights as
float16 safetensors) and prints the validation loss of each model and the run time.

    .venv/bin/python scripts/train_lm.py [--out DIR] [--target-steps N] [--draft-steps N]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

SEED = 0
WINDOW = 128
BATCH = 32
EOS = "<|endoftext|>"
CONFIGS = {
    "target": dict(hidden_size=160, intermediate_size=432, num_hidden_layers=3, num_attention_heads=5, lr=5e-3),
    "draft": dict(hidden_size=32, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2, lr=6e-3),
}


def corpus() -> tuple[list[str], list[str]]:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    docs = [topics[name] for name in sorted(topics)]
    return [d for i, d in enumerate(docs) if i % 20 != 19], [d for i, d in enumerate(docs) if i % 20 == 19]


def train_tokenizer(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return tok


def stream(tok, docs: list[str]) -> torch.Tensor:
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for doc in docs:
        ids += tok.encode(doc).ids + [eos]
    return torch.tensor(ids, dtype=torch.long)


def make_model(vocab_size: int, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, **_):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                         num_key_value_heads=num_attention_heads, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(config)


@torch.no_grad()
def validation_loss(model, ids: torch.Tensor) -> float:
    model.eval()
    windows = ids[: len(ids) // WINDOW * WINDOW].view(-1, WINDOW)
    losses = [model(input_ids=w, labels=w).loss for w in windows.split(BATCH)]
    model.train()
    return float(torch.stack(losses).mean())


def train(model, ids: torch.Tensor, steps: int, lr: float, gen: torch.Generator) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    warmup = max(1, steps // 20)
    model.train()
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        starts = torch.randint(0, len(ids) - WINDOW, (BATCH,), generator=gen)
        batch = torch.stack([ids[s : s + WINDOW] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.3f}", flush=True)


def train_one(name: str, vocab_size: int, train_ids, val_ids, steps: int, out: Path):
    torch.set_num_threads(1)  # deterministic reductions
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    model = make_model(vocab_size, **CONFIGS[name])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n_params} parameters, {steps} steps of {BATCH}x{WINDOW} tokens", flush=True)
    train(model, train_ids, steps, CONFIGS[name]["lr"], torch.Generator().manual_seed(SEED + 1))
    val = validation_loss(model, val_ids)
    model.half().save_pretrained(out / name, safe_serialization=True)
    return name, n_params, val, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/fewstep/lm/data")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--target-steps", type=int, default=280)
    parser.add_argument("--draft-steps", type=int, default=300)
    args = parser.parse_args()

    start = time.perf_counter()
    train_docs, val_docs = corpus()
    tok = train_tokenizer(train_docs, args.vocab_size)
    train_ids, val_ids = stream(tok, train_docs), stream(tok, val_docs)
    print(f"tokenizer: {tok.get_vocab_size()} tokens; corpus {len(train_ids)} train / {len(val_ids)} val tokens")
    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out / "tokenizer.json"))
    counts = torch.bincount(train_ids, minlength=tok.get_vocab_size())
    (args.out / "token_counts.json").write_text(json.dumps({"corpus": "pydoc_data.topics (training documents)",
                                                            "counts": counts.tolist()}))
    jobs = (("target", args.target_steps), ("draft", args.draft_steps))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_one, name, tok.get_vocab_size(), train_ids, val_ids, steps, args.out)
                   for name, steps in jobs]
        for future in futures:
            name, n_params, val, seconds = future.result()
            print(f"{name}: {n_params} parameters, validation loss {val:.3f} nats/token, trained in {seconds:.0f} s")
    print(f"total run time {time.perf_counter() - start:.0f} s (torch {torch.__version__}, 2 processes x 1 thread)")


if __name__ == "__main__":
    main()
