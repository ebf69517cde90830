"""Train the larger bundled pair of ``fewstep.lm``: a target on which speculative sampling pays, and a
draft distilled from it. Deterministic (a fixed thread count, fixed seeds), CPU only.

Corpus and tokenizer: the same as ``scripts/train_lm.py`` (CPython's ``pydoc_data`` help topics, every
20th document held out; the bundled 1024-token BPE tokenizer is reused, so both pairs share token ids).

1. ``target-large``: a Llama with 8 layers of width 448 (~20M parameters, 7 heads, MLP 1216), trained for
   500 steps on random 16 x 128-token windows (about 6.5 passes over the 157k training tokens; the
   validation loss, printed every 100 steps, was still falling). An auxiliary loss reads the output of
   layer ``EXIT`` through the model's own final norm and tied LM head (the LayerSkip recipe, arXiv
   2404.16710), so that the first ``EXIT`` layers are a usable early-exit draft (EESD, arXiv 2406.03853);
   ``config.json`` records the layer as ``fewstep_early_exit``. Its ``generation_config.json`` names
   ``<|endoftext|>`` (id 0) as EOS. It is rounded to float16, the precision it ships in, before step 2.
2. ``draft-large``: a 1-layer Llama of width 256 (~1.1M parameters; on this CPU a call of a 1-layer model
   costs the same at widths 128-256, the framework's per-layer overhead), distilled from the target
   (DistillSpec, arXiv 2310.08461): forward KL ``KL(p_target || q_draft)`` per token, on the target's own
   samples (temperature 1, continuing 16-token prefixes of the training text) and on training windows,
   with the target's full next-token distributions as soft labels. ``--target DIR`` runs this step alone
   for a trained target (the committed draft was made so, from the committed target).

Writes ``src/fewstep/lm/data/{target-large,draft-large}/`` (float16 safetensors, the target in
three shards with their index) and prints the validation losses, the draft's agreement with the
target (``sum min(p, q)``, the acceptance of speculative sampling at temperature 1 on the validation
text) and the run time. Two torch threads (a fixed count, so the reductions are the same on every
run); the recorded run is in docs/lm.md.

    .venv/bin/python scripts/train_lm_large.py [--out DIR] [--target-steps N] [--draft-steps N] [--target DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_lm import BATCH, EOS, SEED, WINDOW, corpus, stream  # noqa: E402  (the shared corpus)

THREADS = 2
EXIT = 2  # early-exit layer
EXIT_WEIGHT = 0.3
TARGET = dict(hidden_size=448, intermediate_size=1216, num_hidden_layers=8, num_attention_heads=7, lr=2e-3)
DRAFT = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=1, num_attention_heads=4, lr=4e-3)
TARGET_BATCH = 16
SAMPLES, PREFIX = 768, 16  # target samples for distillation, each continuing a PREFIX-token window
DATA_WINDOWS = 256  # training windows scored by the target, mixed with its samples
SHARD = "19MB"  # the 40 MB target is written in shards of at most 19 MB (no committed file over 20 MB)


def make_model(vocab_size: int, eos: int | None, hidden_size, intermediate_size, num_hidden_layers,
               num_attention_heads, **_):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                         num_key_value_heads=num_attention_heads, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=eos, pad_token_id=0)
    return LlamaForCausalLM(config)


def losses(model, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(final-layer, early-exit) next-token cross-entropies of ``batch`` [B, T]."""
    out = model(input_ids=batch, output_hidden_states=True)
    exit_logits = model.lm_head(model.model.norm(out.hidden_states[EXIT]))
    ce = lambda logits: torch.nn.functional.cross_entropy(  # noqa: E731
        logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten())
    return ce(out.logits), ce(exit_logits)


def schedule(opt, lr: float, step: int, steps: int) -> None:
    scale = min(1.0, (step + 1) / max(1, steps // 20)) * 0.5 * (1 + math.cos(math.pi * step / steps))
    for group in opt.param_groups:
        group["lr"] = lr * scale


def train_target(model, ids: torch.Tensor, steps: int, gen: torch.Generator, val_ids: torch.Tensor) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=TARGET["lr"], betas=(0.9, 0.98), weight_decay=0.05)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        schedule(opt, TARGET["lr"], step, steps)
        starts = torch.randint(0, len(ids) - WINDOW, (TARGET_BATCH,), generator=gen)
        batch = torch.stack([ids[s : s + WINDOW] for s in starts.tolist()])
        final, early = losses(model, batch)
        opt.zero_grad(set_to_none=True)
        (final + EXIT_WEIGHT * early).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"  target step {step:4d}  loss {final.item():.3f}  exit-{EXIT} loss {early.item():.3f}  "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        if step % 100 == 99:
            model.eval()
            val = validation(model, val_ids)
            model.train()
            print(f"  target step {step:4d}  validation loss {val[0]:.3f}  exit-{EXIT} {val[1]:.3f}", flush=True)
    model.eval()


@torch.no_grad()
def validation(model, val_ids: torch.Tensor) -> tuple[float, float]:
    """Mean (final-layer, early-exit) validation losses over the held-out ``WINDOW``-token windows."""
    windows = val_ids[: len(val_ids) // WINDOW * WINDOW].view(-1, WINDOW)
    pairs = [losses(model, w) for w in windows.split(BATCH)]
    return tuple(float(torch.stack(x).mean()) for x in zip(*pairs))


@torch.no_grad()
def target_samples(model, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``SAMPLES`` sequences of ``WINDOW`` tokens: a training prefix, then the target's own continuation."""
    from transformers import DynamicCache

    out = []
    for chunk in range(0, SAMPLES, 64):
        starts = torch.randint(0, len(ids) - PREFIX, (64,), generator=gen)
        seq = torch.stack([ids[s : s + PREFIX] for s in starts.tolist()])
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=seq, cache=cache, use_cache=True).logits[:, -1]
        while seq.shape[1] < WINDOW:
            nxt = torch.multinomial(logits.float().softmax(-1), 1, generator=gen)
            seq = torch.cat([seq, nxt], 1)
            logits = model(input_ids=nxt, cache=cache, use_cache=True).logits[:, -1]
        out.append(seq)
        print(f"  sampled {chunk + 64} / {SAMPLES} target sequences", flush=True)
    return torch.cat(out)


@torch.no_grad()
def soft_labels(model, windows: torch.Tensor) -> torch.Tensor:
    """The target's next-token log-probabilities [N, WINDOW - 1, V] (float16 to halve the memory)."""
    return torch.cat([model(input_ids=w).logits[:, :-1].float().log_softmax(-1).half()
                      for w in windows.split(32)])


def distill(draft, windows: torch.Tensor, labels: torch.Tensor, steps: int, gen: torch.Generator) -> None:
    opt = torch.optim.AdamW(draft.parameters(), lr=DRAFT["lr"], betas=(0.9, 0.98), weight_decay=0.05)
    draft.train()
    for step in range(steps):
        schedule(opt, DRAFT["lr"], step, steps)
        rows = torch.randint(0, len(windows), (BATCH,), generator=gen)
        logp = labels[rows].float()
        logq = draft(input_ids=windows[rows]).logits[:, :-1].float().log_softmax(-1)
        loss = (logp.exp() * (logp - logq)).sum(-1).mean()  # KL(p || q) per token
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  draft step {step:4d}  KL {loss.item():.3f}", flush=True)
    draft.eval()


@torch.no_grad()
def evaluate(target, draft, val_ids: torch.Tensor) -> dict:
    windows = val_ids[: len(val_ids) // WINDOW * WINDOW].view(-1, WINDOW)
    final, early, drafted, agree = [], [], [], []
    for w in windows.split(BATCH):
        f, e = losses(target, w)
        final.append(f)
        early.append(e)
        p = target(input_ids=w).logits[:, :-1].float().softmax(-1)
        q_logits = draft(input_ids=w).logits[:, :-1].float()
        drafted.append(torch.nn.functional.cross_entropy(q_logits.flatten(0, 1), w[:, 1:].flatten()))
        agree.append(torch.minimum(p, q_logits.softmax(-1)).sum(-1).mean())
    mean = lambda xs: round(float(torch.stack(xs).mean()), 4)  # noqa: E731
    return {"target_loss": mean(final), f"exit_{EXIT}_loss": mean(early), "draft_loss": mean(drafted),
            "draft_agreement": mean(agree)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = Path(__file__).resolve().parents[1] / "src/fewstep/lm/data"
    parser.add_argument("--out", type=Path, default=data)
    parser.add_argument("--target-steps", type=int, default=500)
    parser.add_argument("--draft-steps", type=int, default=1200)
    parser.add_argument("--target", type=Path, default=None,
                        help="a trained target-large folder: distil only the draft for it (step 2)")
    args = parser.parse_args()

    from tokenizers import Tokenizer

    torch.set_num_threads(THREADS)  # a fixed thread count: the same reductions on every run
    torch.use_deterministic_algorithms(True)
    start, cpu = time.perf_counter(), time.process_time()
    tok = Tokenizer.from_file(str(data / "tokenizer.json"))
    train_docs, val_docs = corpus()
    train_ids, val_ids = stream(tok, train_docs), stream(tok, val_docs)
    vocab, eos = tok.get_vocab_size(), tok.token_to_id(EOS)

    if args.target is None:
        torch.manual_seed(SEED)
        target = make_model(vocab, eos, **TARGET)
        target.config.fewstep_early_exit = EXIT
        print(f"target: {sum(p.numel() for p in target.parameters())} parameters, {args.target_steps} steps of "
              f"{TARGET_BATCH}x{WINDOW} tokens", flush=True)
        train_target(target, train_ids, args.target_steps, torch.Generator().manual_seed(SEED + 1), val_ids)
        target = target.half().float()  # the draft learns the weights that ship (float16), as --target loads them
    else:
        from transformers import AutoModelForCausalLM

        target = AutoModelForCausalLM.from_pretrained(args.target, local_files_only=True, dtype=torch.float32).eval()

    gen = torch.Generator().manual_seed(SEED + 2)
    samples = target_samples(target, train_ids, gen)
    starts = torch.randint(0, len(train_ids) - WINDOW, (DATA_WINDOWS,), generator=gen)
    windows = torch.cat([samples, torch.stack([train_ids[s : s + WINDOW] for s in starts.tolist()])])
    labels = soft_labels(target, windows)
    torch.manual_seed(SEED + 3)
    draft = make_model(vocab, eos, **DRAFT)
    print(f"draft: {sum(p.numel() for p in draft.parameters())} parameters, {args.draft_steps} steps of "
          f"{BATCH}x{WINDOW} tokens on {len(windows)} scored windows", flush=True)
    distill(draft, windows, labels, args.draft_steps, torch.Generator().manual_seed(SEED + 4))

    report = evaluate(target, draft, val_ids)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, model in (("target-large", target), ("draft-large", draft)):
        model.generation_config.eos_token_id = eos
        model.half().save_pretrained(args.out / name, safe_serialization=True, max_shard_size=SHARD)
    report.update(wall_seconds=round(time.perf_counter() - start), cpu_seconds=round(time.process_time() - cpu),
                  torch=torch.__version__)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
