"""The bundled addition model, its verifiers, and ``fewstep generate --n --verify --vote`` on it."""

from __future__ import annotations

import json

import pytest
import torch

from fewstep.cli import main
from fewstep.lm import arith
from fewstep.lm.scaling import coverage, sample_n, sample_with_restarts, vote

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model():
    return arith.load_arith()


def test_tokenizer_task_and_exact_verifier():
    tok = arith.TOKENIZER
    assert tok.decode(tok.encode("123+489=612")) == "123+489=612" and tok.vocab_size == 13
    assert arith.prompt_ids((123, 489))[0] == arith.EOS
    assert arith.is_correct("123+489=", "612") and not arith.is_correct("123+489=", "0612")
    assert arith.is_correct(arith.prompt_ids((5, 7)), tok.encode("12") + [arith.EOS, 3])  # stops at <eos>
    scores = arith.exact_verifier([arith.prompt_ids((1, 2))] * 2, [tok.encode("3"), tok.encode("4")])
    assert scores.tolist() == [1.0, 0.0]
    assert all(100 <= a <= 999 and 100 <= b <= 999 for a, b in arith.problems(50, 0))
    assert arith.problems(5, 1) == arith.problems(5, 1) != arith.problems(5, 2)
    with pytest.raises(ValueError, match="knows only the characters"):
        tok.encode("1*2")
    with pytest.raises(ValueError, match="must read 'a\\+b='"):
        arith.parse_prompt("12+")
    with pytest.raises(ValueError, match="verifier must be one of"):
        arith.verifier("oracle")


def test_model_is_right_about_half_the_time_and_more_samples_cover_more(model):
    rec = arith.record()
    assert 0.3 <= rec["held_out_accuracy"]["temperature=1"] <= 0.6  # the training record, 1000 problems
    prompts = [arith.prompt_ids(p) for p in arith.problems(100, 11)]
    out = sample_n(model, prompts, 8, "temperature=1", seed=0, max_new_tokens=5, eos_token_id=arith.EOS)
    correct = torch.tensor([[arith.is_correct(p, t) for t in row] for p, row in zip(prompts, out.tokens)])
    one, eight = coverage(correct, 1), coverage(correct, 8)
    assert 0.25 <= one <= 0.7 and eight > one + 0.15  # coverage grows with samples
    assert out.calls == 5 and out.new_tokens <= 100 * 8 * 5
    # majority voting beats one sample here (the greedy answer is right more often than a sample)
    maj = sum(vote([arith.answer(t) for t in row]) == str(sum(arith.parse_prompt(p)))
              for p, row in zip(prompts, out.tokens)) / len(prompts)
    assert maj > one


def test_learned_verifier_is_informative_but_imperfect(model):
    rec = arith.record()["probes"]["learned"]
    assert 0.05 < rec["false_positive_rate"] < 0.5 and 0.05 < rec["false_negative_rate"] < 0.5
    prompts = [arith.prompt_ids(p) for p in arith.problems(100, 12)]
    out = sample_n(model, prompts, 4, "temperature=1", seed=1, max_new_tokens=5, eos_token_id=arith.EOS)
    flat_p = [p for p, row in zip(prompts, out.tokens) for _ in row]
    flat_t = [t for row in out.tokens for t in row]
    learned = arith.verifier("learned", model)
    scores = learned(flat_p, flat_t)
    truth = arith.exact_verifier(flat_p, flat_t)
    assert learned.calls == 1 and ((scores > 0) & (scores < 1)).all()
    assert scores[truth > 0].mean() > scores[truth == 0].mean() + 0.15  # it ranks right answers higher
    with pytest.raises(ValueError, match="pass lm=load_arith"):
        arith.verifier("learned")


def test_restart_probe_runs_mid_generation(model):
    prompts = [arith.prompt_ids(p) for p in arith.problems(60, 13)]
    predictor = arith.predictor(model, "restart")
    head = [arith.TOKENIZER.encode("6")]
    direct = arith.load_probe("restart")(arith.answer_features(model, prompts[:1], head))
    assert torch.allclose(predictor([prompts[0] + head[0]]), direct)  # split after '='
    out = sample_with_restarts(model, prompts, predictor, 0.5, after=arith.RESTART_AFTER, max_attempts=3,
                               sampler="temperature=1",
                               max_new_tokens=5, eos_token_id=arith.EOS)
    assert len(out.tokens) == 60 and max(out.attempts) <= 3 and out.predictor_calls == 2
    assert all(arith.EOS in t or len(t) == 5 for t in out.tokens)


def test_cli_votes_over_verified_samples(capsys):
    args = ["generate", "--model", "arith", "--prompt", "123+489=", "--n", "12", "--verify", "exact", "--vote",
            "best", "--max-new-tokens", "5", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 12 and len(out["scores"]) == 12 and out["verify"] == "exact"
    assert out["correct"] == (max(out["scores"]) == 1.0)  # best-of-n by the exact verifier is right iff any is
    assert main(["generate", "--model", "arith", "--prompt", "123+489=", "--n", "6", "--method", "priority",
                 "--verify", "learned", "--vote", "weighted", "--max-new-tokens", "5"]) == 0
    text = capsys.readouterr().out
    assert "weighted vote over 6 samples (6 distinct" in text and "learned score" in text
    assert main(["generate", "--prompt", "The for statement", "--n", "3", "--max-new-tokens", "4", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)  # the bundled text model: majority vote over 3 continuations
    assert plain["n"] == 3 and plain["scores"] is None and plain["answer"] in plain["samples"]


@pytest.mark.parametrize("args, message", [
    (["--prompt", "x", "--n", "3", "--verify", "exact"], "--verify exact checks the bundled addition model's answers"),
    (["--prompt", "1+2=", "--model", "arith", "--vote", "best"], "--vote best weighs answers by a verifier"),
    (["--prompt", "1+2=", "--model", "arith", "--verify", "oracle"], "--verify must be one of exact, learned"),
    (["--prompt", "1*2=", "--model", "arith"], "knows only the characters"),
    (["--prompt", "x", "--n", "2", "--draft", "bundled"], "drop --draft"),
    (["--prompt", "x", "--n", "0"], "--n: must be an integer in 1..256"),
    (["--prompt", "1+2=", "--model", "arith", "--stop", "3"], "--stop is not supported with --n"),
])
def test_cli_bad_input_is_one_line(capsys, args, message):
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_lm_scaling_rows(capsys):
    assert main(["bench-lm", "--scaling", "--problems", "20", "--samples", "4", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    votes = [r for r in rows if r["part"] == "votes"]
    assert [r["k"] for r in votes] == [1, 2, 4]
    assert all(a["coverage_exact"] <= b["coverage_exact"] for a, b in zip(votes, votes[1:]))
    diversity = {r["sampler"]: r for r in rows if r["part"] == "diversity"}
    assert diversity["priority"]["distinct_answers"] == 4 and diversity["plain"]["batched_calls"] == 5
    assert main(["bench-lm", "--scaling", "--update-docs", "x.md"]) == 2
    assert "benchmarks/lm_scaling.py" in capsys.readouterr().err
