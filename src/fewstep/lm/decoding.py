"""Autoregressive decoding over a ``CausalLM``: per-row randomness, a cache with holes, plain sampling.

Rows are independent. A row's randomness comes from its own ``torch.Generator`` when a list of them
is given (so a seed's output does not depend on which other rows share the batch), or from one
shared generator for the whole batch (faster for many rows).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from fewstep.lm.metrics import DecodeStats
from fewstep.lm.models import CausalLM
from fewstep.lm.processors import History, Sampler

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

    def uniform(self, rows: int, n: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """[rows, n] uniforms; with per-row generators, row ``r`` draws only ``lengths[r]`` (the rest are 1)."""
        if self.gens is None:
            return torch.rand(rows, n, generator=self.shared)
        if lengths is None:
            return torch.stack([torch.rand(n, generator=g) for g in self.gens])
        return torch.stack([torch.cat([torch.rand(int(m), generator=g), torch.ones(n - int(m))])
                            for g, m in zip(self.gens, lengths.tolist())])

    def sample(self, probs: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row from unnormalised probabilities ``[rows, vocab]``, by inverting the CDF.

        One uniform per row (from the row's own generator, if any), then one vectorised search over the
        float64 cumulative sums: no per-row ``multinomial`` call. With per-row generators, rows where
        ``active`` is False draw nothing and get token 0.
        """
        rows = probs.shape[0]
        if self.gens is None:
            u = torch.rand(rows, 1, generator=self.shared, dtype=torch.float64)
        elif active is None:
            u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.gens])[:, None]
        else:
            u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) if a else torch.zeros(1, dtype=torch.float64)
                           for g, a in zip(self.gens, active.tolist())])[:, None]
        cdf = probs.double().cumsum(-1)
        token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
        last = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(-1)  # rounding at the top end
        token = torch.minimum(token, last)
        return token if active is None else torch.where(active, token, 0)


class Stream:
    """A batch of rows fed to one model; ``mask`` marks which cache slots hold real tokens.

    Positions count real tokens only, so holes (left padding, or tokens one row rolled back while
    its neighbours kept theirs) change nothing for the row they sit in (EMS-SD, arXiv 2405.07542).
    """

    def __init__(self, model: CausalLM, rows: int) -> None:
        self.model, self.cache, self.calls, self.seconds = model, None, 0, 0.0
        self.mask = torch.zeros(rows, 0, dtype=torch.bool)
        self.length = torch.zeros(rows, dtype=torch.long)  # real tokens per row (the next position id)

    def feed(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``tokens`` [rows, T] (``valid`` False = padding) and return their logits [rows, T, V']."""
        valid = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid
        counts = valid.cumsum(1)
        positions = (self.length[:, None] + counts - 1).clamp(min=0)
        self.length = self.length + counts[:, -1]
        self.mask = torch.cat([self.mask, valid], 1)
        start = time.perf_counter()
        logits, self.cache = self.model.logits(tokens, self.mask, positions, self.cache)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return logits

    def drop(self, n: torch.Tensor) -> None:
        """Forget the last ``n[r]`` slots of row ``r``; columns that became holes in every row are cropped."""
        length = self.mask.shape[1]
        dropped = self.mask & (torch.arange(length) >= (length - n)[:, None])
        self.length = self.length - dropped.sum(1)
        self.mask = self.mask & ~dropped
        keep = length - int(n.min())
        if keep < length:
            self.mask = self.mask[:, :keep]
            self.cache = self.model.crop(self.cache, keep)

    def select(self, rows: torch.Tensor) -> None:
        """Keep or repeat rows (a 1-D index tensor)."""
        self.mask, self.length = self.mask[rows], self.length[rows]
        if self.cache is not None:
            self.cache = self.model.select(self.cache, rows)


def left_pad(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (tokens, valid), both [len(rows), longest], right-aligned."""
    width = max(len(r) for r in rows)
    tokens = torch.tensor([[0] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    valid = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows], dtype=torch.bool)
    return tokens, valid


def full_probs(model: CausalLM, sampler: Sampler, logits: torch.Tensor, history: History | None = None) -> torch.Tensor:
    """The sampling distribution over the whole vocabulary (zero outside a reduced LM head).

    With a reduced head the history processors see full-vocabulary logits (``-inf`` outside the head).
    """
    if model.vocab_ids is not None and history is not None:
        full = logits.new_full((*logits.shape[:-1], model.vocab_size), -torch.inf)
        return sampler.probs(full.index_copy_(-1, model.vocab_ids, logits), history)
    probs = sampler.probs(logits, history)
    if model.vocab_ids is None:
        return probs
    full = probs.new_zeros(*probs.shape[:-1], model.vocab_size)
    return full.index_copy_(-1, model.vocab_ids, probs)


def histories(prompts: list[list[int]], out: list[list[int]], rows: list[int], eos: tuple[int, ...],
              drafted: torch.Tensor | None = None) -> History:
    """The ``History`` of ``rows``: prompt + generated tokens, then the ``drafted`` ones [len(rows), n] if any."""
    seqs = [prompts[b] + out[b] for b in rows]
    width = max(map(len, seqs))
    tokens = torch.tensor([[-1] * (width - len(s)) + s for s in seqs], dtype=torch.long)
    if drafted is not None:
        tokens = torch.cat([tokens, drafted], 1)
    return History(tokens, torch.tensor([len(out[b]) for b in rows], dtype=torch.long), eos)


def check_prompts(prompts: Any, vocab_size: int) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2:
            raise ValueError(f"a prompt tensor must have shape [batch, length], got {tuple(prompts.shape)}")
        prompts = prompts.tolist()
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise TypeError(f"prompts must be a non-empty list of token-id lists, got {type(prompts).__name__}")
    if not isinstance(prompts[0], (Sequence, torch.Tensor)) or isinstance(prompts[0], (str, bytes)):
        raise TypeError(f"prompts must be a list of token-id lists (one per row), got a list whose first item is "
                        f"{prompts[0]!r}; for one prompt write [[1, 2, 3]], not [1, 2, 3]")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, (Sequence, torch.Tensor)) or isinstance(p, (str, bytes)):
            raise TypeError(f"prompt {i} must be a list of token ids, got {p!r}")
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
           eos_token_id: int | Sequence[int] | None, stop: Callable[[list[int]], bool] | None = None) -> list[bool]:
    """Add each row's new tokens, cut at the length limit, after end-of-sequence or where ``stop`` says so;
    return which rows finished."""
    eos = eos_ids(eos_token_id)
    finished = []
    for b, tokens in zip(rows, new):
        done = False
        for t in tokens:
            out[b].append(t)
            done = len(out[b]) >= max_new_tokens or t in eos or (stop is not None and stop(out[b]))
            if done:
                break
        finished.append(done)
    return finished


MODEL = "model"  # eos_token_id: read the end-of-sequence ids from the model (its generation_config)


def eos_ids(eos_token_id: Any, model: Any = None) -> tuple[int, ...]:
    """End-of-sequence ids: ``"model"`` = the model's ``eos_token_ids`` (none if it has no such attribute)."""
    if isinstance(eos_token_id, tuple) and all(type(i) is int for i in eos_token_id):
        return eos_token_id
    if eos_token_id == MODEL:
        return tuple(getattr(model, "eos_token_ids", ()) or ())
    if eos_token_id is None:
        return ()
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"eos_token_id must be an int, a list of ints, None or 'model', got {eos_token_id!r}")
    return tuple(ids)


def stop_rule(stop: Sequence[Sequence[int] | str], decode: Callable[[list[int]], str] | None):
    """A ``stop(tokens) -> bool`` test: the new tokens end with a stop sequence or their text holds a stop string.

    Stop strings are matched on ``decode`` of the last few tokens (as transformers' ``stop_strings``); the
    row ends with the token that completed the string, which stays in the output.
    """
    if isinstance(stop, (str, bytes)):
        stop = [stop]
    stop = list(stop)
    if not stop:
        return None
    strings = [s for s in stop if isinstance(s, str)]
    seqs = [list(map(int, s)) for s in stop if not isinstance(s, str)]
    if any(not s for s in strings + seqs):
        raise ValueError("stop sequences and stop strings must not be empty")
    if strings and decode is None:
        raise ValueError("stop strings need decode= (token ids -> text), e.g. a tokenizer's decode")

    def test(tokens: list[int]) -> bool:
        if any(tokens[-len(s):] == s for s in seqs):
            return True
        return any(s in decode(tokens[-(len(s) + 2):]) for s in strings)

    return test


def check_positions(model: CausalLM, prompts: list[list[int]], needed: int) -> None:
    """Warn when the longest prompt plus ``needed`` tokens run past the model's position embeddings."""
    limit = getattr(model, "max_positions", None)
    longest = max(map(len, prompts))
    if limit is not None and longest + needed > limit:
        warnings.warn(f"the longest prompt ({longest} tokens) plus {needed} new tokens exceeds the model's "
                      f"{limit} positions (max_position_embeddings); quality degrades past it", stacklevel=3)


def generate(model: CausalLM, prompts: Any, sampler: str | Sampler = "", *, max_new_tokens: int = 64,
             generator: Generators = None, eos_token_id: int | Sequence[int] | None | str = MODEL,
             stop: Sequence[Sequence[int] | str] = (), decode: Callable[[list[int]], str] | None = None) -> Generation:
    """Plain autoregressive sampling, one model call per token, batched with left padding.

    Args:
        model: a ``CausalLM``.
        prompts: list of token-id lists (lengths may differ) or a [batch, length] LongTensor.
        sampler: processor chain, e.g. ``"temperature=0.8,min_p=0.05"`` (see ``Sampler.parse``); history
            processors (``repetition_penalty``, ``no_repeat_ngram_size``, ``min_new_tokens``) compose with it.
        generator: one ``torch.Generator`` per prompt, or one for the batch.
        eos_token_id: id(s) that end a row; ``"model"`` (default) reads them from the model's
            ``generation_config`` (``TransformersLM.eos_token_ids``), ``None`` never ends early.
        stop: token-id sequences or strings (strings need ``decode``) that end a row once generated.
    """
    sampler = Sampler.parse(sampler)
    prompts = check_prompts(prompts, model.vocab_size)
    check_count("max_new_tokens", max_new_tokens)
    eos, stop_test = eos_ids(eos_token_id, model), stop_rule(stop, decode)
    check_positions(model, prompts, max_new_tokens)
    start = time.perf_counter()
    stream, rng = Stream(model, len(prompts)), Rng(generator, len(prompts))
    rows = list(range(len(prompts)))
    out: list[list[int]] = [[] for _ in prompts]
    tokens, valid = left_pad(prompts)
    while rows:
        history = histories(prompts, out, rows, eos) if sampler.needs_history else None
        probs = full_probs(model, sampler, stream.feed(tokens, valid)[:, -1], history)
        nxt = rng.sample(probs)
        finished = append(out, rows, [[t] for t in nxt.tolist()], max_new_tokens, eos, stop_test)
        keep = torch.tensor([i for i, f in enumerate(finished) if not f], dtype=torch.long)
        if len(keep) < len(rows):
            stream.select(keep)
            rng = rng.select(keep)
            rows = [rows[i] for i in keep.tolist()]
        tokens, valid = nxt[keep][:, None], None
    stats = DecodeStats(new_tokens=sum(map(len, out)), seconds=time.perf_counter() - start,
                        target_calls=stream.calls, target_seconds=stream.seconds)
    return Generation(out, stats)
