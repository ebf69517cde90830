"""Autoregressive decoding over a ``CausalLM``: per-row randomness, a cache with holes, plain sampling.

Rows are independent. A row's randomness comes from its own ``torch.Generator`` when a list of them
is given (so a seed's output does not depend on which other rows share the batch), or from one
shared generator for the whole batch (faster for many rows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from fewstep.lm.metrics import DecodeStats
from fewstep.lm.models import CausalLM
from fewstep.lm.processors import Sampler

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class Generation:
    """New tokens of every row (prompt excluded) and the run's statistics."""

    tokens: list[list[int]]
    stats: DecodeStats


class Rng:
    """Uniform draws and categorical samples, one generator per row or one for all rows."""

    def __init__(self, generator: Generators, rows: int) -> None:
        if generator is None or isinstance(generator, torch.Generator):
            self.shared, self.gens = generator, None
            return
        gens = list(generator)
        if len(gens) != rows or not all(isinstance(g, torch.Generator) for g in gens):
            raise TypeError(f"generator must be a torch.Generator, None, or a list of {rows} torch.Generators "
                            f"(one per prompt), got {len(gens)} items")
        self.shared, self.gens = None, gens

    def select(self, rows: torch.Tensor) -> Rng:
        out = Rng(self.shared, 0)
        out.gens = None if self.gens is None else [self.gens[i] for i in rows.tolist()]
        return out

    def uniform(self, rows: int, n: int) -> torch.Tensor:
        if self.gens is None:
            return torch.rand(rows, n, generator=self.shared)
        return torch.stack([torch.rand(n, generator=g) for g in self.gens])

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per row from unnormalised probabilities ``[rows, vocab]``."""
        if self.gens is None:
            return torch.multinomial(probs, 1, generator=self.shared).squeeze(1)
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.gens)])


class Stream:
    """A batch of rows fed to one model; ``mask`` marks which cache slots hold real tokens.

    Positions count real tokens only, so holes (left padding, or tokens one row rolled back while
    its neighbours kept theirs) change nothing for the row they sit in (EMS-SD, arXiv 2405.07542).
    """

    def __init__(self, model: CausalLM, rows: int) -> None:
        self.model, self.cache, self.calls = model, None, 0
        self.mask = torch.zeros(rows, 0, dtype=torch.bool)

    def feed(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``tokens`` [rows, T] (``valid`` False = padding) and return their logits [rows, T, V']."""
        valid = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid
        positions = (self.mask.sum(1, keepdim=True) + valid.cumsum(1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, valid], 1)
        logits, self.cache = self.model.logits(tokens, self.mask, positions, self.cache)
        self.calls += 1
        return logits

    def drop(self, n: torch.Tensor) -> None:
        """Forget the last ``n[r]`` slots of row ``r``; columns that became holes in every row are cropped."""
        length = self.mask.shape[1]
        self.mask = self.mask & (torch.arange(length) < (length - n)[:, None])
        keep = length - int(n.min())
        if keep < length:
            self.mask = self.mask[:, :keep]
            self.cache = self.model.crop(self.cache, keep)

    def select(self, rows: torch.Tensor) -> None:
        """Keep or repeat rows (a 1-D index tensor)."""
        self.mask = self.mask[rows]
        if self.cache is not None:
            self.cache = self.model.select(self.cache, rows)


def left_pad(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (tokens, valid), both [len(rows), longest], right-aligned."""
    width = max(len(r) for r in rows)
    tokens = torch.tensor([[0] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    valid = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows], dtype=torch.bool)
    return tokens, valid


def full_probs(model: CausalLM, sampler: Sampler, logits: torch.Tensor) -> torch.Tensor:
    """The sampling distribution over the whole vocabulary (zero outside a reduced LM head)."""
    probs = sampler.probs(logits)
    if model.vocab_ids is None:
        return probs
    full = probs.new_zeros(*probs.shape[:-1], model.vocab_size)
    return full.index_copy_(-1, model.vocab_ids, probs)


def check_prompts(prompts: Any, vocab_size: int) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2:
            raise ValueError(f"a prompt tensor must have shape [batch, length], got {tuple(prompts.shape)}")
        prompts = prompts.tolist()
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise TypeError(f"prompts must be a non-empty list of token-id lists, got {type(prompts).__name__}")
    out = []
    for i, p in enumerate(prompts):
        ids = [int(t) for t in p]
        if not ids or min(ids) < 0 or max(ids) >= vocab_size:
            raise ValueError(f"prompt {i} must be a non-empty list of token ids in [0, {vocab_size}), got {list(p)!r}")
        out.append(ids)
    return out


def check_count(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def append(out: list[list[int]], rows: list[int], new: list[list[int]], max_new_tokens: int,
           eos_token_id: int | None) -> list[bool]:
    """Add each row's new tokens, cut at the length limit or after end-of-sequence; return which rows finished."""
    finished = []
    for b, tokens in zip(rows, new):
        for t in tokens:
            out[b].append(t)
            if len(out[b]) >= max_new_tokens or t == eos_token_id:
                break
        finished.append(len(out[b]) >= max_new_tokens or out[b][-1] == eos_token_id)
    return finished


def generate(model: CausalLM, prompts: Any, sampler: str | Sampler = "", *, max_new_tokens: int = 64,
             generator: Generators = None, eos_token_id: int | None = None) -> Generation:
    """Plain autoregressive sampling, one model call per token, batched with left padding.

    Args:
        model: a ``CausalLM``.
        prompts: list of token-id lists (lengths may differ) or a [batch, length] LongTensor.
        sampler: processor chain, e.g. ``"temperature=0.8,min_p=0.05"`` (see ``Sampler.parse``).
        generator: one ``torch.Generator`` per prompt, or one for the batch.
    """
    sampler = Sampler.parse(sampler)
    prompts = check_prompts(prompts, model.vocab_size)
    check_count("max_new_tokens", max_new_tokens)
    start = time.perf_counter()
    stream, rng = Stream(model, len(prompts)), Rng(generator, len(prompts))
    rows = list(range(len(prompts)))
    out: list[list[int]] = [[] for _ in prompts]
    tokens, valid = left_pad(prompts)
    while rows:
        probs = full_probs(model, sampler, stream.feed(tokens, valid)[:, -1])
        nxt = rng.sample(probs)
        finished = append(out, rows, [[t] for t in nxt.tolist()], max_new_tokens, eos_token_id)
        keep = torch.tensor([i for i, f in enumerate(finished) if not f], dtype=torch.long)
        if len(keep) < len(rows):
            stream.select(keep)
            rng = rng.select(keep)
            rows = [rows[i] for i in keep.tolist()]
        tokens, valid = nxt[keep][:, None], None
    stats = DecodeStats(new_tokens=sum(map(len, out)), seconds=time.perf_counter() - start,
                        target_calls=stream.calls)
    return Generation(out, stats)
