"""The CausalLM adapter for transformers (cache holes, row selection), the bundled pair, FR-Spec heads."""

import json

import pytest
import torch

from fewstep.lm import (
    CausalLM,
    TransformersLM,
    count_tokens,
    frequent_tokens,
    generate,
    load_bundled,
    load_tokenizer,
    speculative_generate,
)
from fewstep.lm.decoding import Stream, left_pad
from fewstep.lm.models import DATA, bundled_token_counts

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return TransformersLM(transformers.LlamaForCausalLM(config))


@pytest.fixture(scope="module")
def pair():
    return load_bundled("target"), load_bundled("draft")


def last_logits(lm, seq):
    return Stream(lm, 1).feed(torch.tensor([seq]))[0, -1]


def test_cache_with_holes_gives_the_logits_of_a_clean_run(tiny):
    """Left padding, per-row rollback and row selection leave every row's logits as if it ran alone."""
    a, b = [1, 2, 3, 4, 5], [7]
    s = Stream(tiny, 2)
    out = s.feed(*left_pad([a, b]))[:, -1]
    torch.testing.assert_close(out, torch.stack([last_logits(tiny, a), last_logits(tiny, b)]))
    s.feed(torch.tensor([[10, 11, 12], [20, 21, 22]]))
    s.drop(torch.tensor([2, 0]))  # row 0 rejects two tokens, row 1 keeps all: a hole in row 0
    out = s.feed(torch.tensor([[30], [31]]))[:, -1]
    torch.testing.assert_close(out, torch.stack([last_logits(tiny, a + [10, 30]),
                                                 last_logits(tiny, b + [20, 21, 22, 31])]))
    s.select(torch.tensor([1, 1, 0]))
    out = s.feed(torch.tensor([[1], [2], [3]]))[:, -1]
    expected = [b + [20, 21, 22, 31, 1], b + [20, 21, 22, 31, 2], a + [10, 30, 3]]
    torch.testing.assert_close(out, torch.stack([last_logits(tiny, e) for e in expected]))


def test_reduced_head_is_a_slice_of_the_full_head(tiny):
    ids = torch.tensor([3, 1, 40, 7])
    reduced = TransformersLM(tiny.model, vocab_ids=ids)
    assert reduced.vocab_ids.tolist() == [1, 3, 7, 40]
    torch.testing.assert_close(last_logits(reduced, [5, 6, 7]), last_logits(tiny, [5, 6, 7])[reduced.vocab_ids])
    with pytest.raises(ValueError, match=r"vocab_ids must lie in \[0, 50\)"):
        TransformersLM(tiny.model, vocab_ids=[0, 50])
    with pytest.raises(TypeError, match="linear LM head"):
        TransformersLM(torch.nn.Linear(2, 2))


def test_frequency_ranking():
    counts = count_tokens([[1, 1, 2, 3, 3, 3], [0, 2]], vocab_size=5)
    assert counts.tolist() == [1, 2, 2, 3, 0]
    assert frequent_tokens(counts, 2).tolist() == [1, 3]  # tie between 1 and 2 goes to the smaller id
    with pytest.raises(ValueError, match=r"integer in \[1, 5\], got 9"):
        frequent_tokens(counts, 9)


def test_bundled_pair_is_small_offline_safetensors(pair):
    target, draft = pair
    assert isinstance(target, CausalLM) and target.vocab_size == draft.vocab_size == 1024
    sizes = {name: sum(p.numel() for p in m.model.parameters()) for name, m in zip(("target", "draft"), pair)}
    assert 1_000_000 <= sizes["target"] <= 3_000_000 and sizes["draft"] * 8 <= sizes["target"]
    files = [f for f in DATA.rglob("*") if f.is_file()]
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".pkl", ".pth")]
    small = [f for f in files if f.parent.name in ("target", "draft")]
    assert sum(f.stat().st_size for f in small) < 6_000_000
    assert json.loads((DATA / "target" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    counts = bundled_token_counts()
    assert counts.shape == (1024,) and counts.sum() > 100_000


def test_tokenizer_round_trip():
    tok = load_tokenizer()
    text = "def f(x):\n    return x ** 2  # squares"
    assert tok.decode(tok.encode(text).ids) == text and tok.token_to_id("<|endoftext|>") == 0


def test_greedy_speculative_equals_greedy_token_for_token(pair):
    """Batch of prompts with different lengths (left padding, per-row holes), 1 and 2 drafts, FR-Spec head."""
    target, draft = pair
    tok = load_tokenizer()
    prompts = [tok.encode(t).ids for t in ("The for statement", "Exceptions", "A class definition defines")]
    greedy = [generate(target, [p], "greedy", max_new_tokens=24).tokens[0] for p in prompts]
    for d, k in ((draft, 1), (draft, 2), (load_bundled("draft", 128), 1)):
        out = speculative_generate(target, d, prompts, "greedy", gamma=4, num_drafts=k, max_new_tokens=24)
        assert out.tokens == greedy
        assert out.stats.target_calls < 24  # drafts were accepted, so fewer target calls than tokens


def test_bundled_draft_approximates_the_target(pair):
    target, draft = pair
    tok = load_tokenizer()
    out = speculative_generate(target, draft, [tok.encode("The import statement").ids] * 4, "temperature=1",
                               gamma=4, max_new_tokens=48, generator=torch.Generator().manual_seed(0))
    # chance is about 1/1024 per token; the first draft token is accepted more often than not
    assert out.stats.acceptance_per_position[0] > 0.45 and out.stats.acceptance_rate > 0.2
    assert out.stats.target_calls_per_token < 0.6
