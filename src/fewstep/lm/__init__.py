"""Language-model decoding: composable truncation samplers and exact speculative sampling.

    from fewstep.lm import Sampler, load_bundled, speculative_generate
    target, draft = load_bundled("target"), load_bundled("draft")
    out = speculative_generate(target, draft, [[0, 17, 42]], "temperature=0.8,min_p=0.05", gamma=4)

Only torch is imported here; transformers loads when a transformers model is loaded.
"""

from fewstep.lm.arith import load_arith
from fewstep.lm.conformal import StoppingRule, calibrate, conformal_sample
from fewstep.lm.decoding import Generation, generate
from fewstep.lm.diverse import arithmetic_sample, priority_sample
from fewstep.lm.drafts import AdaptiveGamma, NGramDraft, call_seconds, early_exit, measure_verify_cost
from fewstep.lm.metrics import DecodeStats
from fewstep.lm.models import (
                               CausalLM,
                               TransformersLM,
                               bundled_token_counts,
                               count_tokens,
                               frequent_tokens,
                               load_bundled,
                               load_tokenizer,
)
from fewstep.lm.multidraft import SELECTIONS, selection_law
from fewstep.lm.processors import (
                               ORDERS,
                               PROCESSORS,
                               History,
                               Sampler,
                               epsilon,
                               eta,
                               min_new_tokens,
                               min_p,
                               no_repeat_ngram_size,
                               repetition_penalty,
                               temperature,
                               top_k,
                               top_p,
                               typical,
)
from fewstep.lm.scaling import allocate, best_of_n_law, pass_at_k, sample_n, sample_with_restarts, vote
from fewstep.lm.speculative import speculative_generate, verify

__all__ = [
    "CausalLM", "DecodeStats", "Generation", "ORDERS", "PROCESSORS", "SELECTIONS", "Sampler", "TransformersLM",
    "bundled_token_counts", "count_tokens", "epsilon", "eta", "frequent_tokens", "generate", "load_bundled",
    "load_tokenizer", "min_p", "selection_law", "speculative_generate", "temperature", "top_k", "top_p",
    "typical", "verify",
    "AdaptiveGamma", "History", "NGramDraft", "call_seconds", "early_exit", "measure_verify_cost", "min_new_tokens",
    "no_repeat_ngram_size", "repetition_penalty",
    "StoppingRule", "allocate", "arithmetic_sample", "best_of_n_law", "calibrate", "conformal_sample", "load_arith",
    "pass_at_k", "priority_sample", "sample_n", "sample_with_restarts", "vote",
]
