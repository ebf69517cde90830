"""``fewstep generate`` / ``bench-lm``: bad models, seeds and sampler orders are one clear line (issue 22)."""

import json

import pytest

from fewstep.cli import main

pytest.importorskip("transformers")


@pytest.mark.parametrize("args, message", [
    (["--model", "missing-dir"], "'missing-dir' is neither 'bundled'"),
    (["--draft", "missing-dir"], "'missing-dir' is neither 'bundled'"),
    (["--model", "gpt2"], "hub names are not downloaded"),
    (["--seed", "-1"], "argument --seed: must be an integer in 0.."),
    (["--sampler", "repetition_penalty=0"], "repetition_penalty must be in (0, inf)"),
    (["--stop", ""], "--stop must not be empty"),
    (["--draft", "early-exit"], "--draft early-exit needs a model trained with an exit layer"),
    (["--adaptive-gamma"], "--adaptive-gamma needs --draft"),
])
def test_generate_refuses_in_one_line(capsys, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_bench_lm_sampler_order_error_speaks_cli(capsys):
    assert main(["bench-lm", "--sampler", "top_p=0.9,temperature=0.8", "--prompts", "1", "--batch", "1"]) == 2
    err = capsys.readouterr().err
    assert "--sampler" in err and "Sampler.parse" not in err and err.count("\n") == 1, err


def test_generate_history_processors_and_stop_strings(capsys):
    args = ["generate", "--prompt", "The for statement", "--sampler",
            "repetition_penalty=1.3,no_repeat_ngram_size=2,temperature=1", "--draft", "bundled",
            "--max-new-tokens", "24", "--stop", ".", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    text = out["texts"][0][len("The for statement"):]
    assert "." not in text or text.index(".") >= len(text) - 8  # ends with the token that made the first "."
    assert out["sampler"] == "repetition_penalty=1.3,no_repeat_ngram_size=2,temperature=1"


@pytest.mark.parametrize("draft", ["early-exit", "ngram", "bundled-large"])
def test_generate_with_the_large_pair_and_adaptive_gamma(capsys, draft):
    args = ["generate", "--prompt", "The import statement", "--model", "bundled-large", "--draft", draft,
            "--adaptive-gamma", "--gamma", "6", "--max-new-tokens", "10", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["new_tokens"] <= 10 and 0 <= out["mean_draft_length"] <= 6  # EOS may end it early
