"""Language models as next-token logits with a KV cache: the ``CausalLM`` contract and its adapters.

A ``CausalLM`` sees a batch of rows whose cache may hold *holes*: slots that the attention mask
switches off (left padding of short prompts, or draft tokens that one row rejected while another
row accepted them). Position ids are therefore passed explicitly, counted over real tokens only.
This is what lets speculative decoding keep a different acceptance length per row with one shared
cache (EMS-SD, arXiv 2405.07542) instead of re-running the target to re-align the rows.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from fewstep._verify import read_bundled, verify_bundled

DATA = Path(__file__).parent / "data"
BUNDLED = ("target", "draft", "target-large", "draft-large")


@runtime_checkable
class CausalLM(Protocol):
    """Next-token logits with a KV cache that the caller rolls back and reorders.

    ``vocab_size`` is the size of the token-id space. ``vocab_ids`` is ``None`` when the logits cover
    the whole vocabulary, or the sorted token ids that the logits' last dimension stands for (a
    reduced LM head, FR-Spec arXiv 2502.14856); tokens outside it have probability zero.
    """

    vocab_size: int
    vocab_ids: torch.Tensor | None

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               cache: Any) -> tuple[torch.Tensor, Any]:
        """``input_ids`` [rows, T]; ``attention_mask`` [rows, cached + T] (0 = hole); ``position_ids`` [rows, T].

        Returns logits [rows, T, len(vocab_ids) or vocab_size] and the cache extended by T slots.
        ``cache`` is ``None`` on the first call.
        """
        ...

    def crop(self, cache: Any, length: int) -> Any:
        """Keep the first ``length`` slots of every row."""
        ...

    def select(self, cache: Any, rows: torch.Tensor) -> Any:
        """Keep (or repeat) the rows ``rows``, a 1-D LongTensor of row indices."""
        ...


class TransformersLM:
    """``CausalLM`` adapter for a transformers causal LM and its ``DynamicCache``.

    Args:
        model: a ``*ForCausalLM`` (e.g. ``LlamaForCausalLM``); put in eval mode.
        vocab_ids: optional token ids the LM head is restricted to (FR-Spec, arXiv 2502.14856): only
            those rows of the output embedding are multiplied, which is where the saving comes from.
    """

    def __init__(self, model: Any, vocab_ids: torch.Tensor | None = None) -> None:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(head, torch.nn.Linear):
            raise TypeError(f"model must be a transformers causal LM with a linear LM head, got {type(model).__name__}")
        self.model = model.eval()
        self.vocab_size = int(head.out_features)
        self.vocab_ids = None if vocab_ids is None else _check_ids(vocab_ids, self.vocab_size)
        self._head = head
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        # end-of-sequence ids from the model's generation_config, as transformers' generate reads them
        self.eos_token_ids: tuple[int, ...] = () if eos is None else tuple([eos] if isinstance(eos, int) else eos)
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # transformers 4.x
            return DynamicCache()

    @torch.inference_mode()
    def logits(self, input_ids, attention_mask, position_ids, cache):
        cache = self._new_cache() if cache is None else cache
        # without holes, no mask lets transformers skip building one (a measurable share of a tiny model's call)
        mask = None if bool(attention_mask.all()) else attention_mask.long()
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids,
                  self._cache_kw: cache, "use_cache": True}
        if self.vocab_ids is None:
            return self.model(**kwargs).logits, cache
        hidden = self.model.base_model(**kwargs).last_hidden_state
        weight = self._head.weight[self.vocab_ids]
        bias = None if self._head.bias is None else self._head.bias[self.vocab_ids]
        return torch.nn.functional.linear(hidden, weight, bias), cache

    def crop(self, cache, length):
        extra = cache.get_seq_length() - length
        if extra > 0:
            cache.crop(-extra)  # a negative argument removes that many slots in transformers 4 and 5
        return cache

    def select(self, cache, rows):
        cache.batch_select_indices(rows)
        return cache


def _check_ids(vocab_ids: Any, vocab_size: int) -> torch.Tensor:
    ids = torch.as_tensor(vocab_ids)
    if ids.ndim != 1 or ids.numel() == 0 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"vocab_ids must be a non-empty 1-D tensor of token ids, got shape {tuple(ids.shape)} "
                         f"and dtype {ids.dtype}")
    ids = ids.long().unique()  # sorted
    if ids[0] < 0 or ids[-1] >= vocab_size:
        raise ValueError(f"vocab_ids must lie in [0, {vocab_size}), got values from {int(ids[0])} to {int(ids[-1])}")
    return ids


def count_tokens(sequences: Any, vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in ``sequences`` (an iterable of id lists), as a [vocab_size] tensor."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for seq in sequences:
        ids = torch.as_tensor(list(seq), dtype=torch.long)
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"token ids must lie in [0, {vocab_size}), got {int(ids.min())}..{int(ids.max())}")
        counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def frequent_tokens(counts: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` most frequent token ids, sorted by id: FR-Spec's reduced draft vocabulary (arXiv 2502.14856)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= counts.numel():
        raise ValueError(f"the reduced vocabulary size must be an integer in [1, {counts.numel()}], got {n!r}")
    order = torch.argsort(counts, descending=True, stable=True)  # ties go to the smaller id
    return order[:n].sort().values


def load_bundled(name: str = "target", vocab_size: int | None = None) -> TransformersLM:
    """A bundled Llama-architecture model, all on the same tokenizer.

    ``"target"`` (~1.1M parameters) and ``"draft"`` (~0.05M), trained by ``scripts/train_lm.py``: the
    small pair for fast tests. ``"target-large"`` (~20M parameters, 8 layers, an early-exit layer for
    ``fewstep.lm.early_exit``, EOS in its generation_config) and ``"draft-large"`` (~1.1M, 1 layer,
    distilled from it), trained by ``scripts/train_lm_large.py``: the pair meant to make speculation pay.

    ``vocab_size`` restricts the LM head to that many most frequent tokens of the training corpus.
    Loads offline from safetensors (no pickle); needs ``transformers``.
    """
    if name not in BUNDLED:
        raise ValueError(f"bundled model must be one of {', '.join(BUNDLED)}, got {name!r}")
    from transformers import AutoModelForCausalLM

    verify_bundled(f"lm/data/{name}/")  # transformers reads the directory itself: check every file first
    model = AutoModelForCausalLM.from_pretrained(DATA / name, local_files_only=True, dtype=torch.float32,
                                                 use_safetensors=True)
    ids = None if vocab_size is None else frequent_tokens(bundled_token_counts(), vocab_size)
    return TransformersLM(model, vocab_ids=ids)


def bundled_token_counts() -> torch.Tensor:
    """Token frequencies of the bundled training corpus (CPython's ``pydoc_data``)."""
    return torch.tensor(json.loads(read_bundled("lm/data/token_counts.json"))["counts"], dtype=torch.long)


def load_tokenizer() -> Any:
    """The bundled byte-level BPE tokenizer (a ``tokenizers.Tokenizer``)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(read_bundled("lm/data/tokenizer.json").decode())
