"""Options (issue 18, items 1 and 11): empty names refused, documented limits, overlapping tuning and held-out
seeds refused, clean help texts, the bench table's NFE column, and a message before references are computed."""

import argparse

import pytest

from fewstep.cli import build_parser, main
from fewstep.commands import args as cli_args

pytestmark = pytest.mark.usefixtures("one_thread", "shared_reference_cache")


def _refused(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("argv,message", [
    (["sample", "--model", ""], "argument --model: must not be empty"),
    (["sample", "--solver", " "], "argument --solver: must not be empty"),
    (["sample", "--schedule", ""], "argument --schedule: must not be empty"),
    (["tune", "--model", "", "--method", "gits", "--out", "x.json"], "argument --model: must not be empty"),
    (["tune", "--model", "gauss", "--method", "", "--out", "x.json"], "argument --method: must not be empty"),
    (["generate", "--prompt", "x", "--model", ""], "argument --model: must not be empty"),
    (["generate", "--prompt", "x", "--draft", "bundled", "--selection", ""], "argument --selection: must not be empty"),
    (["bench", "--models", ""], "no models given"),
    (["bench", "--models", "gauss", "--solvers", ","], "no solvers given"),
])
def test_empty_names_are_refused(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(argv, message, capsys)


@pytest.mark.parametrize("argv,message", [
    (["generate", "--prompt", "x", "--samples", "1000000000"], "--samples: must be an integer in 1..256"),
    (["generate", "--prompt", "x", "--samples", "1e9"], "--samples: expected an integer, got '1e9'"),
    (["generate", "--prompt", "x", "--draft", "bundled", "--gamma", "1000000"], "--gamma: must be an integer in 1..64"),
    (["generate", "--prompt", "x", "--max-new-tokens", "99999"], "--max-new-tokens: must be an integer in 1..2,048"),
    (["generate", "--prompt", "x", "--num-drafts", "17"], "--num-drafts: must be an integer in 1..16"),
    (["generate", "--prompt", "x", "--seed", "-1"], "--seed: must be an integer in 0..9,223,372,036,854,775,807"),
    (["generate", "--prompt", "x", "--seed", str(2**63 - 1), "--samples", "2"], "--seed + --samples - 1"),
    (["bench-lm", "--threads", "100000"], "--threads: must be an integer in 1..256"),
    (["bench-lm", "--repeats", "1000"], "--repeats: must be an integer in 1..100"),
    (["bench-lm", "--prompts", "13"], "--prompts: must be an integer in 1..12"),
    (["bench-lm", "--prompts", "5", "--batch", "2"], "--prompts must be a multiple of --batch"),
    (["sample", "--nfe", "100001"], "--nfe: must be an integer in 1..100,000"),
    (["sample", "--batch", "0"], "--batch: must be an integer in 1..65,536"),
    (["sample", "--cfg", "nan"], "--cfg: must be a number in 0..1000"),
    (["sample", "--cfg", "1e6"], "--cfg: must be a number in 0..1000"),
    (["sample", "--seeds", "0-99999999999"], "makes more than 10,000,000 seeds"),
    (["bench", "--nfe", "3,1000000"], "NFE budgets must be integers in 1..100,000"),
    (["bench", "--nfe", "3,3"], "NFE budgets repeat"),
    (["tune", "--model", "gauss", "--method", "gits", "--nfe", "1000000", "--out", "x.json"],
     "--nfe: must be an integer in 1..100,000"),
])
def test_sizes_have_documented_limits(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(argv, message, capsys)


def test_generate_refuses_a_model_that_is_not_a_folder_and_an_overlong_prompt(capsys, tmp_path):
    pytest.importorskip("transformers")
    _refused(["generate", "--prompt", "x", "--model", str(tmp_path / "none")],
             "is neither 'bundled', 'bundled-large' nor a folder", capsys)
    _refused(["generate", "--prompt", "x", "--model", str(tmp_path)], "cannot load a transformers causal LM from",
             capsys)
    _refused(["generate", "--prompt", "word " * 3000], "--prompt must be at most 2,048 tokens", capsys)


def test_tune_refuses_held_out_seeds_that_overlap_the_tuning_seeds(capsys, tmp_path):
    _refused(["tune", "--model", "gauss", "--method", "gits", "--seeds", "0-9", "--eval-seeds", "5-20", "--out",
              str(tmp_path / "r.json")], "--eval-seeds and --seeds share 5 seed(s) (first 5)", capsys)
    assert not (tmp_path / "r.json").exists()


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_clean_help():
    """Each option says what it is, once: no raw markup, no doubled default, nothing left empty; each limit
    of ``fewstep.commands.args`` is named in the help of the options it bounds."""
    parser = build_parser()
    helps = {}
    for name, sub in _subparsers(parser).items():
        assert sub.description and "`" not in sub.description, name
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert text.strip(), f"{where} has no help"
            assert "`" not in text and "**" not in text and "%(" not in text, (where, text)
            assert text.count("default:") + text.count("defaults to") <= 1, (where, text)  # the value said once
            helps[where] = text
        sub.format_help()  # formats without error
    assert helps["sample --model"].endswith("(default: digits-edm, or the recipe's)")
    assert helps["sample --seeds"].endswith("(default: 0-63)")
    assert helps["bench --peers"].endswith("(default: none)")
    for where, limit in [("generate --samples", cli_args.MAX_SAMPLES), ("generate --gamma", cli_args.MAX_GAMMA),
                         ("bench-lm --threads", cli_args.MAX_THREADS), ("sample --batch", f"{cli_args.MAX_BATCH:,}"),
                         ("bench --batch", f"{cli_args.MAX_BATCH:,}"), ("sample --nfe", f"{cli_args.MAX_NFE:,}"),
                         ("generate --max-new-tokens", f"{cli_args.MAX_NEW_TOKENS:,}"),
                         ("bench-lm --repeats", cli_args.MAX_REPEATS), ("sample --cfg", f"{cli_args.MAX_CFG:g}")]:
        assert str(limit) in helps[where], where


def test_bench_table_shows_the_budget_and_the_evaluations_used():
    from fewstep.commands.bench import format_table

    rows = [{"model": "m", "solver": "heun", "schedule": "karras", "nfe_budget": b, "nfe": 3, "rmse_ref": 0.5,
             "wall_s": 0.1} for b in (3, 4)]
    lines = format_table(rows, ["rmse_ref"]).splitlines()
    assert [line.split()[3:5] for line in lines[2:]] == [["3", "0.5"], ["4", "(3"]]
    assert "4 (3 used)" in lines[3]


def test_bench_says_it_computes_references_once_before_its_bar(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    argv = ["bench", "--models", "gauss,gmm2d", "--solvers", "ddim", "--schedules", "karras,time_uniform",
            "--nfe", "3", "--seeds", "0-7", "--metrics", "rmse_ref"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.out.splitlines() if line.startswith("computing reference")]
    assert said == ["computing reference solutions for gauss from sigma 80 on 8 seeds (cached afterwards)",
                    "computing reference solutions for gmm2d from sigma 80 on 8 seeds (cached afterwards)"]
    assert captured.out.index(said[-1]) < captured.out.index("reference for gauss from sigma 80")
    assert len(list((tmp_path / "cache" / "reference").iterdir())) == 2  # the bench found them: none computed twice
    assert main(argv) == 0
    assert "computing reference" not in capsys.readouterr().out  # cached


def test_found_by_the_fuzzer(capsys, tmp_path, monkeypatch):
    """A class range is bounded before the library expands it (it ran out of memory), and a file name that is not
    UTF-8 is printed escaped when stdout is strict (PYTHONIOENCODING=utf-8)."""
    import io

    monkeypatch.chdir(tmp_path)
    _refused(["sample", "--model", "digits-cond", "--class", "0-999999999", "--seeds", "0-1"],
             "--class '0-999999999' must name classes in 0..9", capsys)
    _refused(["sample", "--model", "digits-cond", "--class", "1" * 5000, "--seeds", "0-1"], "must name classes", capsys)
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr("sys.stdout", strict)
    assert main(["sample", "--model", "gauss", "--nfe", "2", "--seeds", "0-1", "--out", "\udcff"]) == 0
    strict.flush()
    assert b"wrote \\udcff.png" in strict.buffer.getvalue()
