"""Drafts without a second model, and a draft length chosen per round.

``NGramDraft``: prompt lookup (as transformers' ``prompt_lookup_num_tokens`` and vLLM's n-gram proposer).
The last ``n`` tokens of a row (``n`` from ``max_ngram`` down to ``min_ngram``) are searched for earlier
in the same row (prompt and generated tokens); the tokens that followed the most recent earlier match
are proposed. The proposal is a deterministic function of the history, so its law is a one-hot ``q``:
verification accepts ``x`` with probability ``p(x)`` and otherwise draws from ``p`` with ``x`` removed,
which is exact (Leviathan et al., arXiv 2211.17192). A row without a match proposes nothing that round
and takes one token from the target, like plain sampling.

``early_exit``: self-speculation from the target's own lower layers (EESD, Liu et al., arXiv 2406.03853;
the exit reads the model's final norm and LM head, as LayerSkip, arXiv 2404.16710, trains it). The
draft shares the target's weights; it keeps its own KV cache of the lower layers (EESD shares the
target's; that saves memory, not calls).

``AdaptiveGamma``: the draft length of each row and round from its running acceptance. A Beta posterior
over the per-token acceptance ``a`` (accepted tokens as successes, the first rejection as a failure,
older rounds discounted by ``decay``) gives the estimate ``a_hat`` (its mean), and ``gamma`` maximises the
expected tokens per unit of cost ``(1 - a^(gamma + 1)) / ((1 - a) (1 + c gamma + v(gamma)))`` with ``c`` the
cost of a draft call relative to a target call (Leviathan et al., arXiv 2211.17192, Sec. 3.4) and ``v(gamma)``
what scoring ``gamma`` drafted tokens adds to the target's call. Leviathan et al. take ``v = 0`` (scoring
``gamma + 1`` tokens costs one call, as on a GPU); on a CPU it does not: a call of the bundled 20M target
costs about 1.5 one-token calls for 2 to 4 tokens and 1.67 for 5 (``measure_verify_cost`` times the curve).
EESD samples ``a`` from the posterior instead (Thompson sampling); we use the mean, so a seed's output does
not depend on a second random stream. Any draft length chosen from past rounds keeps the output exact.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass

import torch

from fewstep.lm.models import CausalLM, TransformersLM


@dataclass(frozen=True)
class NGramDraft:
    """Prompt-lookup draft: propose what followed the last earlier occurrence of the trailing n-gram."""

    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        for name in ("max_ngram", "min_ngram"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram must be <= max_ngram, got {self.min_ngram} > {self.max_ngram}")

    def propose(self, seq: list[int], gamma: int) -> list[int]:
        """Up to ``gamma`` tokens for one row's history ``seq`` (empty when nothing matches)."""
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):  # most recent earlier occurrence first
                if seq[start : start + n] == tail:
                    return seq[start + n : start + n + gamma]
        return []


def early_exit(model: TransformersLM, layers: int | None = None) -> TransformersLM:
    """A draft made of the first ``layers`` decoder layers of ``model``, its final norm and LM head (shared).

    ``layers`` defaults to the model config's ``fewstep_early_exit`` (the bundled ``target-large`` was
    trained with an exit loss there). Works for transformers models whose decoder layers are
    ``model.base_model.layers`` (Llama, Mistral, Qwen and relatives).
    """
    if not isinstance(model, TransformersLM):
        raise TypeError(f"early_exit needs a TransformersLM, got {type(model).__name__}")
    hf, base = model.model, model.model.base_model
    blocks = getattr(base, "layers", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise TypeError(f"early_exit needs a decoder whose layers are base_model.layers; "
                        f"{type(hf).__name__} has none")
    layers = getattr(hf.config, "fewstep_early_exit", None) if layers is None else layers
    if layers is None:
        raise ValueError("early_exit needs layers= (the model's config names no fewstep_early_exit layer)")
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers < len(blocks):
        raise ValueError(f"layers must be an integer in [1, {len(blocks) - 1}] (the model has {len(blocks)} "
                         f"decoder layers), got {layers!r}")
    config = copy.deepcopy(hf.config)
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    with torch.device("meta"):
        shell = type(hf)(config)  # no memory: every tensor is replaced by the target's own below
    for name, child in base.named_children():
        setattr(shell.base_model, name, torch.nn.ModuleList(blocks[:layers]) if name == "layers" else child)
    for name, child in hf.named_children():
        if child is not base:
            setattr(shell, name, child)
    if any(t.is_meta for t in (*shell.parameters(), *shell.buffers())):
        raise TypeError(f"early_exit cannot share every weight of {type(hf).__name__}")
    shell.generation_config = copy.deepcopy(hf.generation_config)
    return TransformersLM(shell.eval(), vocab_ids=model.vocab_ids)


def decoder_layers(model) -> int | None:
    """Number of decoder layers of a ``TransformersLM`` (None for other models)."""
    config = getattr(getattr(model, "model", None), "config", None)
    return getattr(config, "num_hidden_layers", None)


@dataclass(frozen=True)
class AdaptiveGamma:
    """Draft length per row and round from the running acceptance (module docstring).

    Args:
        max_gamma: the longest draft. draft_cost: a draft call's cost relative to a target call
            (``None``: the ratio of decoder layers when both are transformers models, else 0.1; 0 for
            ``NGramDraft``). decay: weight of the previous rounds' evidence (1 = never forget).
        prior: (successes, failures) of the Beta prior. verify_cost: what scoring ``g`` drafted tokens adds
            to the target's call, relative to a one-token call: a number ``v`` (``v g``; 0, the default: free,
            as on a GPU) or one value per ``g = 1 .. max_gamma`` (``measure_verify_cost`` measures them).
    """

    max_gamma: int = 8
    draft_cost: float | None = None
    decay: float = 0.9
    prior: tuple[float, float] = (2.0, 1.0)
    verify_cost: float | tuple[float, ...] = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_gamma, bool) or not isinstance(self.max_gamma, int) or self.max_gamma < 1:
            raise ValueError(f"max_gamma must be an integer >= 1, got {self.max_gamma!r}")
        if self.draft_cost is not None and not (math.isfinite(self.draft_cost) and self.draft_cost >= 0):
            raise ValueError(f"draft_cost must be a finite number >= 0 or None, got {self.draft_cost!r}")
        curve = isinstance(self.verify_cost, (tuple, list))
        costs = self.verify_cost if curve else (self.verify_cost,)
        valid = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                    for v in costs)
        if not valid or (curve and len(costs) != self.max_gamma):
            raise ValueError(f"verify_cost must be a finite number >= 0 or max_gamma ({self.max_gamma}) of them, "
                             f"got {self.verify_cost!r}")
        if isinstance(self.verify_cost, list):
            object.__setattr__(self, "verify_cost", tuple(self.verify_cost))
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay!r}")
        if len(self.prior) != 2 or not all(math.isfinite(v) and v > 0 for v in self.prior):
            raise ValueError(f"prior must be two positive numbers (successes, failures), got {self.prior!r}")

    def cost(self, target, draft) -> float:
        if self.draft_cost is not None:
            return float(self.draft_cost)
        if isinstance(draft, NGramDraft):
            return 0.0
        t, d = decoder_layers(target), decoder_layers(draft)
        return d / t if t and d else 0.1

    def choose(self, successes: torch.Tensor, failures: torch.Tensor, cost: float) -> torch.Tensor:
        """Draft length [B] maximising expected tokens per cost at the posterior mean acceptance."""
        a = ((successes + self.prior[0]) / (successes + failures + sum(self.prior))).clamp(max=1 - 1e-9)
        g = torch.arange(1, self.max_gamma + 1, dtype=a.dtype)
        extra = (torch.tensor(self.verify_cost, dtype=a.dtype) if isinstance(self.verify_cost, tuple)
                 else self.verify_cost * g)
        value = (1 - a[:, None] ** (g + 1)) / ((1 - a[:, None]) * (1 + cost * g + extra))
        return value.argmax(1) + 1

    def update(self, successes: torch.Tensor, failures: torch.Tensor, accepted: torch.Tensor,
               proposed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior counts after a round that accepted ``accepted`` of ``proposed`` tokens per row."""
        rejected = (accepted < proposed).to(successes.dtype)
        return self.decay * successes + accepted, self.decay * failures + rejected


@torch.inference_mode()
def call_seconds(model: CausalLM, batch: int, tokens: int, context: int = 64, calls: int = 10) -> float:
    """Median seconds of one cached forward call of ``model`` scoring ``tokens`` new tokens per row.

    The cache first holds ``context`` random tokens per row; each timed call is cropped back to them, so
    all calls see the same context. Two untimed calls warm up.
    """
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.vocab_size, (batch, context + tokens), generator=gen)
    positions = torch.arange(context + tokens).expand(batch, -1)
    _, cache = model.logits(ids[:, :context], torch.ones(batch, context, dtype=torch.bool), positions[:, :context],
                            None)
    mask = torch.ones(batch, context + tokens, dtype=torch.bool)
    times = []
    for _ in range(calls + 2):
        start = time.perf_counter()
        _, cache = model.logits(ids[:, context:], mask, positions[:, context:], cache)
        times.append(time.perf_counter() - start)
        cache = model.crop(cache, context)
    return statistics.median(times[2:])


def measure_verify_cost(target: CausalLM, max_gamma: int = 8, batch: int = 1, calls: int = 10) -> tuple[float, ...]:
    """``AdaptiveGamma``'s ``verify_cost`` on this machine: ``T(1 + g) / T(1) - 1`` for ``g = 1 .. max_gamma``.

    ``T(k)``: the median time of a target call scoring ``k`` tokens per row (``call_seconds``). Timing
    varies between runs, and so would the draft lengths chosen with it (the output law stays exact).
    """
    one = call_seconds(target, batch, 1, calls=calls)
    return tuple(round(max(0.0, call_seconds(target, batch, 1 + g, calls=calls) / one - 1), 4)
                 for g in range(1, max_gamma + 1))
