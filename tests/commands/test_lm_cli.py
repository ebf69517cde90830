"""``fewstep generate`` and ``fewstep bench-lm`` on the bundled pair."""

import json
import subprocess
import sys

import pytest

from fewstep.cli import main

pytest.importorskip("transformers")


def test_help_lists_the_commands_and_imports_nothing_heavy():
    code = ("import sys; from fewstep.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "generate" in out and "bench-lm" in out and out.strip().endswith("[]")


def test_generate_json_with_a_draft(capsys):
    args = ["generate", "--prompt", "The for statement", "--sampler", "temperature=0.8,min_p=0.05",
            "--draft", "bundled", "--gamma", "3", "--max-new-tokens", "12", "--seed", "3", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["texts"][0].startswith("The for statement") and first["new_tokens"] == 12
    assert 0 <= first["acceptance_rate"] <= 1 and len(first["acceptance_per_position"]) == 3
    assert first["sampler"] == "temperature=0.8,min_p=0.05" and first["target_calls_per_token"] <= 1
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["texts"] == first["texts"]  # the seed fixes the text


def test_generate_text_batch_and_fr_spec(capsys):
    assert main(["generate", "--prompt", "Comparisons", "--samples", "2", "--draft", "bundled", "--draft-vocab", "256",
                 "--num-drafts", "2", "--selection", "first_accept", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "--- sample 1 (seed 1)" in out and "acceptance rate" in out and "per position" in out


@pytest.mark.parametrize("args, message", [
    (["--sampler", "top_p=2"], r"top_p must be in (0, 1], got 2.0"),
    (["--draft-vocab", "64"], "--draft-vocab, --num-drafts and --selection need --draft"),
    (["--draft", "bundled", "--gamma", "0"], "argument --gamma: must be an integer in 1..64; got '0'"),
    (["--selection", "priority"], "--draft-vocab, --num-drafts and --selection need --draft"),
    (["--draft", "bundled", "--num-drafts", "2", "--selection", "best"],
     "selection must be one of 'priority', 'first_accept', got 'best'"),
])
def test_generate_bad_input_is_one_line(capsys, args, message):
    assert main(["generate", "--prompt", "x", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_lm_rows_and_docs_section(capsys, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nother section\n")
    args = ["bench-lm", "--prompts", "2", "--batch", "2", "--max-new-tokens", "6", "--repeats", "1", "--json",
            "--update-docs", str(doc)]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 11 and {r["engine"] for r in rows} == {"fewstep", "transformers"}
    refused = [r for r in rows if r["status"] != "ok"]
    assert [(r["engine"], r["batch"]) for r in refused] == [("transformers", 2)]
    assert "batch_size = 1" in refused[0]["status"]
    for r in rows:
        if r["status"] == "ok":
            assert r["tokens"] == 2 * 6 and r["tokens_per_second"] > 0
            assert (r["acceptance_rate"] is None) == (r["draft_calls_per_token"] == 0)
    plain = [r for r in rows if r["config"] == "plain"]
    assert [r["target_calls_per_token"] * r["batch"] for r in plain] == [1, 1, 1]  # one call per token per batch
    assert main(args) == 0  # a second run replaces the section instead of adding one
    text = doc.read_text()
    assert text.count("<!-- lm:begin -->") == 1 and "other section" in text and "| transformers |" in text
