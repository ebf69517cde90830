"""A tiny known ``CausalLM`` for exact tests: its next-token law is a table lookup, so every sequence
probability can be enumerated. It depends on the whole history (a count of token 0 so far), so a
cache that is rolled back wrongly changes the distribution."""

from __future__ import annotations

import itertools

import torch

from fewstep.lm.processors import Sampler


class TableLM:
    def __init__(self, seed: int, vocab: int = 4, scale: float = 1.5, vocab_ids=None):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab
        self.vocab_ids = None if vocab_ids is None else torch.as_tensor(vocab_ids).long()
        self.table = scale * torch.randn(vocab, vocab, generator=g, dtype=torch.float64).float()
        self.position = 0.5 * torch.randn(8, vocab, generator=g, dtype=torch.float64).float()
        self.count_weight = 0.8

    def logits(self, input_ids, attention_mask, position_ids, cache):
        history = input_ids if cache is None else torch.cat([cache, input_ids], 1)
        zeros = ((history == 0) & attention_mask.bool()).cumsum(1)[:, -input_ids.shape[1]:]
        logits = self.table[input_ids] + self.position[position_ids % 8]
        logits[..., 1] += self.count_weight * zeros
        if self.vocab_ids is not None:
            logits = logits[..., self.vocab_ids]
        return logits, history

    def crop(self, cache, length):
        return cache[:, :length]

    def select(self, cache, rows):
        return cache[rows]


def sequence_law(model: TableLM, sampler: Sampler, prompt: list[int], length: int) -> dict[tuple, float]:
    """Exact probability of every continuation of ``length`` tokens under ``model`` and ``sampler``."""
    seqs = torch.tensor(list(itertools.product(range(model.vocab_size), repeat=length)))
    full = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], 1)
    mask = torch.ones_like(full, dtype=torch.bool)
    logits, _ = model.logits(full, mask, torch.arange(full.shape[1]).expand_as(full), None)
    probs = sampler.probs(logits[:, len(prompt) - 1 : -1].double())
    law = probs.gather(-1, seqs[..., None]).squeeze(-1).prod(1)
    return {tuple(s): float(w) for s, w in zip(seqs.tolist(), law)}


def total_variation(law: dict[tuple, float], samples: list[list[int]]) -> float:
    counts: dict[tuple, int] = {}
    for s in samples:
        counts[tuple(s)] = counts.get(tuple(s), 0) + 1
    n = len(samples)
    keys = set(law) | set(counts)
    return 0.5 * sum(abs(law.get(key, 0.0) - counts.get(key, 0) / n) for key in keys)


def expected_tv(law: dict[tuple, float], n: int) -> float:
    """E[TV] of n exact samples, to first order: 0.5 * sum sqrt(2 p (1 - p) / (pi n))."""
    return 0.5 * sum((2 * w * (1 - w) / (torch.pi * n)) ** 0.5 for w in law.values())


def random_law(g: torch.Generator, vocab: int, zeros: int = 0) -> torch.Tensor:
    """A random float64 law on ``vocab`` tokens, peaked (cubed uniforms), with ``zeros`` tokens of mass 0."""
    w = torch.rand(vocab, generator=g, dtype=torch.float64) ** 3
    w[torch.randperm(vocab, generator=g)[:zeros]] = 0
    return w / w.sum()
