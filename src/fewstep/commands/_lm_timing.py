"""The pieces both LM speed benchmarks use (``bench-lm`` on the small pair, ``bench-lm --pair large``): a forward
call counter, transformers' ``generate`` run with fewstep's sampler and seed, and the timed loop over prompts."""

from __future__ import annotations

import time


class Counter:
    """Counts forward calls of a module through a pre-hook."""

    def __init__(self, module) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self._hook)

    def _hook(self, *_) -> None:
        self.calls += 1


def hf_generate(model, prompts, sampler, gens, *, assistant=None, gamma=None, lookup=None,
                fixed_length: bool = False):
    """transformers' ``generate`` with the same sampler, seeded per call: plain, assisted by ``assistant`` (a
    constant ``gamma`` tokens, or transformers' defaults, 20 tokens with a 0.4 confidence threshold, when ``gamma``
    is ``None``) or prompt lookup of ``lookup`` tokens; ``fixed_length`` makes every row ``max_new_tokens`` long."""
    import torch

    from fewstep.lm.decoding import left_pad

    tokens, valid = left_pad(prompts)
    kwargs = dict(max_new_tokens=gens["max_new_tokens"], pad_token_id=0, **sampler.to_hf())
    if fixed_length:
        kwargs["min_new_tokens"] = gens["max_new_tokens"]
    if assistant is not None:
        config = assistant.generation_config
        config.num_assistant_tokens = gamma or 20
        config.num_assistant_tokens_schedule = "constant"
        config.assistant_confidence_threshold = 0.0 if gamma else 0.4
        kwargs["assistant_model"] = assistant
    if lookup is not None:
        kwargs["prompt_lookup_num_tokens"] = lookup
    torch.manual_seed(gens["generator"][0].initial_seed())
    out = model.generate(input_ids=tokens, attention_mask=valid.long(), **kwargs)
    return out[:, tokens.shape[1]:].tolist()


def run_timed(runner, encoded, batch, max_new_tokens):
    """``runner(prompts, gens)`` over ``encoded`` in batches, seeds ``i + j``: tokens made, wall and CPU seconds, and
    the fewstep runs' statistics."""
    import torch

    tokens, start, cpu = 0, time.perf_counter(), time.process_time()
    stats = []
    for i in range(0, len(encoded), batch):
        gens = [torch.Generator().manual_seed(i + j) for j in range(batch)]
        result = runner(encoded[i : i + batch], {"generator": gens, "max_new_tokens": max_new_tokens})
        rows = result if isinstance(result, list) else result.tokens
        tokens += sum(map(len, rows))
        if not isinstance(result, list):
            stats.append(result.stats)
    return tokens, time.perf_counter() - start, time.process_time() - cpu, stats
