"""The larger bundled pair (issue 22): checksummed offline weights, an early-exit layer, EOS from its
generation_config, a distilled draft that agrees with the target, and ``bench-lm --pair large``."""

import json

import pytest
import torch

from fewstep._verify import BUNDLED_SHA256, ChecksumError, verify_bundled
from fewstep.cli import main
from fewstep.lm import NGramDraft, early_exit, generate, load_bundled, load_tokenizer, speculative_generate
from fewstep.lm.models import DATA

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_bundled("target-large"), load_bundled("draft-large")
    torch.set_num_threads(threads)


def test_weights_are_checksummed_small_and_offline(pair, tmp_path, monkeypatch):
    target, draft = pair
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + ["model.safetensors.index.json"]
    for name, weights in (("target-large", shards), ("draft-large", ["model.safetensors"])):
        files = sorted(p.name for p in (DATA / name).iterdir())
        assert files == sorted(["config.json", "generation_config.json", *weights])
        assert all(f"lm/data/{name}/{f}" in BUNDLED_SHA256 for f in files)
    files = [p for name in ("target-large", "draft-large") for p in (DATA / name).iterdir()]
    assert all(p.stat().st_size < 20_000_000 for p in files)
    sizes = [sum(p.numel() for p in m.model.parameters()) for m in pair]
    assert 3_000_000 <= sizes[0] <= 40_000_000 and sizes[1] * 10 <= sizes[0]
    assert target.model.config.num_hidden_layers == 8 and target.model.config.fewstep_early_exit == 2
    assert target.eos_token_ids == (0,) and target.vocab_size == draft.vocab_size == 1024
    monkeypatch.setitem(BUNDLED_SHA256, "lm/data/draft-large/model.safetensors", "0" * 64)
    with pytest.raises(ChecksumError):
        verify_bundled("lm/data/draft-large/")


def test_draft_and_early_exit_agree_with_the_target_and_greedy_is_identical(pair):
    target, draft = pair
    tok = load_tokenizer()
    prompts = [tok.encode(t).ids for t in ("The for statement", "Exceptions can be raised")]
    greedy = generate(target, prompts, "greedy", max_new_tokens=16, eos_token_id=None).tokens
    for d in (draft, early_exit(target), NGramDraft()):
        out = speculative_generate(target, d, prompts, "greedy", gamma="adaptive", max_new_tokens=16,
                                   eos_token_id=None)
        assert out.tokens == greedy, type(d).__name__
    stats = speculative_generate(target, draft, prompts * 2, "temperature=1", gamma=4, max_new_tokens=24,
                                 eos_token_id=None, generator=torch.Generator().manual_seed(0)).stats
    assert stats.acceptance_per_position[0] > 0.4  # chance is ~1/1024


def test_bench_lm_pair_large_rows_and_docs_section(capsys, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- lm:begin -->\nsmall pair\n<!-- lm:end -->\n")
    args = ["bench-lm", "--pair", "large", "--prompts", "2", "--batches", "1,2", "--max-new-tokens", "3",
            "--repeats", "1", "--json", "--update-docs", str(doc)]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 18 and {r["batch"] for r in rows} == {1, 2}
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["tokens"] == 2 * 3 and r["speedup_vs_plain"][1] <= r["speedup_vs_plain"][2] for r in ok)
    spec = [r for r in ok if r["engine"] == "fewstep" and r["config"] != "plain"]
    assert len(spec) == 10 and all(len(r["time_split"]) == 3 and r["acceptance_per_position"] for r in spec)
    assert sum("measured call costs" in r["config"] for r in spec) == 2
    assert all(r["engine"] == "transformers" for r in rows if r["status"] != "ok")
    text = doc.read_text()
    assert "small pair" in text and "| n-gram lookup" in text
    assert text.count("<!-- lm-large temperature=1:begin -->") == 1
    assert main(["bench-lm", "--pair", "large", "--prompts", "2", "--batches", "3"]) == 2
    assert "--batches must be positive integers dividing --prompts (2)" in capsys.readouterr().err
