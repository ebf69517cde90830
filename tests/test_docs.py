"""The documents run as written (issue 18, item 12): README.md and docs/*.md.

Every fenced code block and every command line of the documents is extracted, so that a snippet or a command
that stops working fails CI:

- ```python blocks: a page's Python snippets run in order in one namespace, in one subprocess, so a snippet
  runs on its own or builds on the previous snippets of its page (never on anything else); a traceback names
  the page and line.
- ```bash / ```sh blocks and indented (4-space) blocks: one command per line (a trailing backslash continues
  it, ``#`` starts a comment; no pipes, redirections, ``[optional]`` parts or ``...``). ``fewstep ...`` runs as
  ``python -m fewstep ...``, ``python`` and ``.venv/bin/python`` as this interpreter, ``torchrun`` as
  ``python -m torch.distributed.run``, ``pytest`` as ``python -m pytest``.
- ```text blocks are formulas or output: not run, and they may not hold a command.
- Inline code that starts with a program (``python ...``, ``.venv/bin/python ...``, ``make ...``,
  ``torchrun ...``, ``pytest ...``, ``git ...``) is a command like a block's. Inline ``fewstep ...`` names a
  subcommand and its options, which must exist (it runs only when it is listed in ``SLOW``).
- Inline paths (``benchmarks/...``, ``tests/...::test``, ``fewstep/...``) must exist, and inline dotted names
  ``fewstep.x.y`` must resolve (outside the README's change notes, which name old places on purpose).

Default suite: every command is checked statically (``fewstep`` commands parse, scripts and their ``--options``
exist, ``-m`` modules import, make targets exist), and every page's Python snippets and its commands that are
not in ``SLOW`` or ``NOT_RUN`` run, each page in its own temporary directory with ``HF_HUB_OFFLINE=1``, its own
``FEWSTEP_CACHE`` and one torch thread (pages run two at a time). A command that is neither fast enough for that
nor listed fails here, so a new slow command must be listed in ``SLOW`` with its reason.

``pytest -m slow tests/test_docs.py`` also runs the ``SLOW`` commands (benchmarks, training, ``make demo``,
``torchrun``): each page's commands in order, in a scratch copy of the repository, so that benchmarks that
rewrite ``docs/benchmarks.md`` or ``docs/img`` rewrite the copy. ``-k`` picks pages.
"""

from __future__ import annotations

import ast
import concurrent.futures
import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]

FAST_TIMEOUT = 300  # s per fast subprocess (they take seconds; the margin is for a loaded machine)
SLOW_TIMEOUT = 24 * 3600  # the full tuned benchmark takes hours
WORKERS = int(os.environ.get("FEWSTEP_DOCS_WORKERS", "2"))

# Commands too slow for the default suite (seconds each there; these take minutes to hours), keyed by the
# command as ``shlex.join`` writes it. ``pytest -m slow`` runs them.
SLOW: dict[str, str] = {
    # README.md
    "make demo": "sets up .venv (pip) before sampling; the sampling itself is the README's `fewstep sample` line",
    "fewstep bench --models digits-gmm,digits-edm --solvers ddim,dpmpp_2m,unipc --nfe 3,4,5,6,8,10 --metrics "
    "rmse_ref,fd --json rows.json --plot quality.png --peers diffusers,kdiffusion":
        "reference ODE solutions of 256 seeds on digits-edm (minutes)",
    "torchrun --nproc_per_node=2 -m fewstep sample --seeds 0-63 --out fewstep-out/sharded":
        "two processes; the same sharding is tested in tests/commands/test_cli.py",
    "fewstep tune --model digits-gmm --method ld3 --solver best --nfe 5 --out ld3-5.json":
        "ld3 fit plus reference solutions of 128 tuning and 256 held-out seeds (about a minute)",
    "fewstep sample --recipe ld3-5.json --seeds 0-63 --out fewstep-out/tuned-samples":
        "needs ld3-5.json from the slow ld3 line above it",
    "python -m fewstep.bench.compat": "the compatibility benchmark behind docs/compat.md (diffusers, k-diffusion)",
    # docs/compat.md
    "python tests/integrations/test_scheduler_peers.py": "the pipeline comparisons behind docs/compat.md (a minute)",
    # docs/benchmarks.md (the commands that made its tables)
    "python benchmarks/tuned.py --models digits-gmm,digits-edm,digits-flow,digits-vp-eps": "hours",
    "fewstep bench-lm --prompts 8 --batch 4 --max-new-tokens 96 --repeats 3 --update-docs docs/benchmarks.md":
        "minutes",
    "fewstep bench-lm --pair large --repeats 3 --update-docs docs/benchmarks.md": "the larger LM pair (5-10 minutes)",
    "fewstep bench-lm --pair large --sampler top_p=0.9 --repeats 3 --update-docs docs/benchmarks.md":
        "the larger LM pair (5-10 minutes)",
    ".venv/bin/python benchmarks/ld3_variants.py digits-flow 8 512 steps=100 threads=2": "about 5 minutes",
    ".venv/bin/python benchmarks/ld3_variants.py digits-flow 8 512 steps=100 optimizer=lbfgs patience=null "
    "precondition=null": "about 13 minutes",
    ".venv/bin/python benchmarks/ld3_variants.py digits-flow 8 512 steps=100 patience=null precondition=32":
        "about 12 minutes",
    ".venv/bin/python benchmarks/ld3_precondition_cells.py --models gmm2d,digits-gmm": "36 ld3 fits, about a minute",
    ".venv/bin/python benchmarks/distill_cd_steps.py --models digits-edm,digits-flow --nfes 1,2,3,4":
        "the consistency students' steps, about 8 minutes",
    ".venv/bin/python benchmarks/distill.py --from-docs docs/benchmarks.md --models digits-flow --json "
    "fewstep-out/distill-digits-flow.json": "reads the repository's docs/benchmarks.md (runs in the repository copy)",
    ".venv/bin/python benchmarks/distill_seed_errors.py --models digits-edm,digits-flow":
        "two ld3 fits and 256 reference solutions per model, about 10 minutes",
    ".venv/bin/python benchmarks/distill_sfd_curve.py --model digits-flow --iterations 5400 --pool 4096 --refresh 16 "
    "--every 600": "an SFD training curve, 25-45 CPU-minutes",
    ".venv/bin/python benchmarks/distill_sfd_curve.py --model digits-flow --iterations 1800 --pool 4096 --refresh 16 "
    "--every 300 --loss l2": "an SFD training curve, 9-18 CPU-minutes",
    ".venv/bin/python benchmarks/distill_sid_curve.py --model digits-edm --iterations 3600 --lr 1e-4 --every 600":
        "a SiD training curve, about 12 CPU-minutes",
    ".venv/bin/python benchmarks/distill_sid_curve.py --model digits-flow --iterations 3600 --lr 1e-4 --every 600":
        "a SiD training curve, about 12 CPU-minutes",
    ".venv/bin/python benchmarks/distill_sid_curve.py --model digits-edm --iterations 1200 --lr 1e-4 --every 200":
        "a SiD training curve, about 4 CPU-minutes",
    ".venv/bin/python benchmarks/distill_sid_curve.py --model digits-flow --iterations 1200 --lr 1e-4 --every 200":
        "a SiD training curve, about 4 CPU-minutes",
    ".venv/bin/python benchmarks/ld3_variants.py digits-vp-eps 8 512 steps=200 optimizer=lbfgs patience=null "
    "precondition=null threads=2": "about 10 minutes",
    "python benchmarks/solvers.py": "10 minutes",
    ".venv/bin/python benchmarks/corrections.py --part corrections --write docs/benchmarks.md": "23 minutes",
    ".venv/bin/python benchmarks/corrections.py --write docs/benchmarks.md": "25 minutes",
    # docs/design.md, docs/guidance.md, docs/lm.md, docs/models.md, docs/solvers.md, docs/tuning.md
    ".venv/bin/python benchmarks/multidraft.py": "36 s of exact acceptance computations",
    ".venv/bin/python scripts/train_lm.py": "trains the bundled LM pair (10 minutes)",
    ".venv/bin/python scripts/train_lm_large.py":
        "trains the larger LM pair (47 CPU-minutes on 2 threads, 24 minutes wall clock)",
    ".venv/bin/python scripts/train_lm_large.py --target src/fewstep/lm/data/target-large":
        "distils the larger pair's draft (19 CPU-minutes)",
    ".venv/bin/python scripts/profile_speculative.py --pair large --batch 4 --call-costs":
        "times forward calls of the 20M target (a minute)",
    ".venv/bin/python scripts/profile_speculative.py --pair large --batch 1": "profiles the 20M target (a minute)",
    # docs/lm_scaling.md
    ".venv/bin/python scripts/train_lm_arith.py": "trains the bundled addition model and its probes (3 minutes)",
    ".venv/bin/python benchmarks/lm_scaling.py --write docs/benchmarks.md":
        "the inference-time compute benchmark (about 2 CPU-minutes, 5 minutes on a loaded machine)",
    ".venv/bin/python scripts/train_digits.py digits-edm digits-flow digits-vp-eps":
        "trains the three digits nets (15-50 minutes)",
    ".venv/bin/python scripts/make_model_grids.py --n 1000": "1000 samples of 59 evaluations per model (8 minutes)",
    "pytest -s tests/diffusion/test_stochastic.py -k weak_error": "20000-sample statistical tests",
    ".venv/bin/python benchmarks/tune_coefficients.py --models digits-gmm gmm2d": "2 minutes",
    ".venv/bin/python benchmarks/tune_coefficients.py --models digits-edm --eval-seeds 128": "28 minutes",
    "python benchmarks/tuning_references.py": "reference solutions of the trained models at two tolerances",
    "python benchmarks/tuned.py": "hours (all methods on all models)",
    # docs/mcmc.md
    ".venv/bin/python benchmarks/mcmc_lmc.py": "ULA at d = 4 ... 256, 1000 chains each (2 minutes)",
    # docs/steering.md and its section of docs/benchmarks.md
    ".venv/bin/python benchmarks/steer.py": "every steering method on three digits models, the exact tilts (6 minutes)",
    ".venv/bin/python benchmarks/steer.py --part minority,compose":
        "90 s; the same claims run on every test run in tests/steer/test_minority.py and tests/steer/test_compose.py",
    ".venv/bin/python benchmarks/steer.py --part plots --img docs/img": "the steer_*.png pictures (4 minutes)",
    # docs/distill.md (and the README's line on distillation)
    "fewstep distill --teacher digits-flow --method sfd --nfe 2 --out sfd-flow.json":
        "300 SFD iterations (5 CPU-min); tests/distill/test_student.py runs the command for 2",
    ".venv/bin/python scripts/distill_students.py digits-edm:sfd digits-flow:sfd": "trains two students (30 CPU-min)",
    ".venv/bin/python benchmarks/distill_sfd_curve.py --model digits-flow --iterations 1800 --pool 4096 --refresh 16 "
    "--every 300 --lr 1e-4": "an SFD training curve (17 CPU-min)",
    ".venv/bin/python benchmarks/distill_sfd_curve.py --model digits-flow --iterations 1800 --pool 8192 --refresh 16 "
    "--every 300": "an SFD training curve (19 CPU-min)",
    ".venv/bin/python scripts/distill_students.py digits-edm:sfd --out /tmp/sfdre":
        "trains one student (15-19 CPU-min)",
    ".venv/bin/python scripts/distill_students.py digits-edm:progressive digits-flow:progressive":
        "trains two students (7 CPU-min)",
    ".venv/bin/python scripts/distill_students.py digits-edm:cd digits-flow:cd": "trains two students (4 CPU-min)",
    ".venv/bin/python scripts/distill_students.py digits-edm:sid digits-flow:sid": "trains two students (23 CPU-min)",
    ".venv/bin/python benchmarks/distill.py --models digits-edm --nfes 2 --students /tmp/sfdre --tuned ''":
        "measures the student that the /tmp/sfdre training wrote",
    ".venv/bin/python benchmarks/distill.py --models digits-edm --nfes 1 --json fewstep-out/distill-digits-edm.json "
    "--resume --redo 1/students": "measures the NFE-1 student rows (needs the rows file of --from-docs)",
    ".venv/bin/python benchmarks/distill.py --models digits-flow --nfes 1 --json fewstep-out/distill-digits-flow.json "
    "--resume --redo 1/students": "measures the NFE-1 student rows (needs the rows file of --from-docs)",
    ".venv/bin/python benchmarks/distill.py --models digits-edm --json fewstep-out/distill-digits-edm.json":
        "fits ld3/GITS/S3 at NFE 1-4 and measures every sampler (about 15 CPU-min)",
    ".venv/bin/python benchmarks/distill.py --models digits-flow --json fewstep-out/distill-digits-flow.json":
        "fits ld3/GITS/S3 at NFE 1-4 and measures every sampler (about 15 CPU-min)",
    ".venv/bin/python benchmarks/distill.py --from-json "
    "fewstep-out/distill-digits-edm.json,fewstep-out/distill-digits-flow.json --update-docs docs/benchmarks.md":
        "needs the two JSON files of the slow lines above it",
    ".venv/bin/python benchmarks/distill.py --grids docs/img": "samples every bundled student (30 s)",
    ".venv/bin/python benchmarks/distill.py --models digits-edm --json fewstep-out/distill-digits-edm.json --resume "
    "--redo 2,1/s3": "measures the NFE-2 cells and S3 at NFE 1 again (5 CPU-min)",
    ".venv/bin/python benchmarks/distill.py --models digits-flow --json fewstep-out/distill-digits-flow.json --resume "
    "--redo 2,1/s3": "measures the NFE-2 cells and S3 at NFE 1 again (5 CPU-min)",
    ".venv/bin/python benchmarks/distill_sfd_targets.py": "the teacher's targets at K = 2 ... 16 (1 CPU-min)",
    ".venv/bin/python benchmarks/distill_sfd_curve.py --model digits-flow --iterations 3000 --pool 8192 --every 250":
        "an SFD training curve (12 CPU-min)",
    ".venv/bin/python benchmarks/distill_sfd_curve.py --model digits-flow --iterations 1800 --pool 4096 --refresh 16 "
    "--every 200 --ema 0.995": "an SFD training curve with a weight average (17 CPU-min)",
    # docs/mcmc.md, NUTS over repeated seeds
    ".venv/bin/python benchmarks/mcmc_nuts_repeats.py --targets gaussian,mixture,student_t,logistic,funnel --seeds 0-5 "
    "--rules trapezoid --json fewstep-out/nuts-others.json": "fewstep's NUTS and BlackJAX's, 6 seeds (15 minutes)",
    ".venv/bin/python benchmarks/mcmc_nuts_repeats.py --targets banana --seeds 0-7 --rules trapezoid --json "
    "fewstep-out/nuts-banana.json": "fewstep's NUTS and BlackJAX's, 8 seeds (15 minutes)",
    ".venv/bin/python benchmarks/mcmc_nuts_repeats.py --from-json fewstep-out/nuts-others.json,"
    "fewstep-out/nuts-banana.json --update-docs docs/mcmc.md": "needs the JSON files of the slow lines above it",
}

# Commands that are not run at all, with the reason.
NOT_RUN: dict[str, str] = {
    ". .venv/bin/activate": "puts the venv's programs on PATH; this test already runs them with its own interpreter",
    "make test": "runs the whole suite, this test included",
}

# Extra arguments for a slow run, so that it writes its output into scratch space instead of the source tree.
SLOW_EXTRA_ARGS: dict[str, list[str]] = {
    # its default --out is the installed package's data folder, i.e. the checkout's src/ for an editable install
    ".venv/bin/python scripts/train_digits.py digits-edm digits-flow digits-vp-eps": ["--out", "{scratch}/weights"],
    ".venv/bin/python scripts/distill_students.py digits-edm:sfd digits-flow:sfd": ["--out", "{scratch}/students"],
    ".venv/bin/python scripts/distill_students.py digits-edm:progressive digits-flow:progressive":
        ["--out", "{scratch}/students"],
    ".venv/bin/python scripts/distill_students.py digits-edm:cd digits-flow:cd": ["--out", "{scratch}/students"],
    ".venv/bin/python scripts/distill_students.py digits-edm:sid digits-flow:sid": ["--out", "{scratch}/students"],
    ".venv/bin/python scripts/train_lm_large.py": ["--out", "{scratch}/lm"],
}

# Pages whose snippets are known not to run, with the reason; strict, so the entry must go once they run.
KNOWN_BROKEN: dict[str, str] = {}

LANGUAGES = {"python": "python", "bash": "shell", "sh": "shell", "shell": "shell", "text": "text"}
PROGRAMS = {"fewstep", ".venv/bin/fewstep", "python", "python3", ".venv/bin/python", "torchrun", ".venv/bin/torchrun",
            "pytest", ".venv/bin/pytest", "make", "git", "."}
INLINE_COMMAND = re.compile(r"^(python3?|\.venv/bin/\w+|make|torchrun|pytest|git|\.) +\S")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")
LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s")
SHELL_OPERATORS = set(";&|<>")


@dataclass(frozen=True)
class Item:
    page: str
    line: int
    kind: str  # "python", "command" (a block line or an inline command) or "mention" (inline `fewstep ...`)
    text: str  # the code, or the command as shlex.join writes it
    tokens: tuple[str, ...] = ()
    problem: str = ""  # why the command cannot be run as written

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _split_command(text: str) -> tuple[tuple[str, ...], str]:
    """Shell words of one command line (comments dropped), and what keeps it from running as written."""
    lex = shlex.shlex(text, posix=True, punctuation_chars="".join(sorted(SHELL_OPERATORS)))
    lex.whitespace_split = True
    try:
        words = list(lex)
    except ValueError as exc:
        return (), f"not a shell command line: {exc}"
    ops = [w for w in words if w and set(w) <= SHELL_OPERATORS]
    if ops:
        return tuple(words), f"shell operator {ops[0]!r}: write one plain command per line"
    holes = [w for w in words if w == "..." or w.startswith("[") or w.endswith("]")]
    if holes:
        return tuple(words), f"placeholder {holes[0]!r}: write the command as it runs"
    return tuple(words), ""


def _command(page: str, line: int, text: str, kind: str = "command") -> Item | None:
    tokens, problem = _split_command(text)
    if kind == "mention":  # names a subcommand and options; `a|b` lists alternatives there
        tokens, problem = tuple(text.split()), ""
    if not tokens:
        return Item(page, line, kind, text.strip(), (), problem) if problem else None
    return Item(page, line, kind, shlex.join(tokens), tokens, problem)


def _block_commands(page: str, first: int, body: list[str]) -> list[Item]:
    items, buf, start = [], "", None
    for k, raw in enumerate(body):
        start = first + k if start is None else start
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        item = _command(page, start, buf + raw)
        if item is not None:
            items.append(item)
        buf, start = "", None
    if buf.strip():
        items.append(Item(page, start, "command", buf.strip(), (), "the last line ends with a backslash"))
    return items


def _inline_items(page: str, paragraph: list[tuple[int, str]]) -> list[Item]:
    """Inline command spans of one paragraph (a span may run over a line break)."""
    text, starts = "", []
    for number, line in paragraph:
        starts.append((len(text), number))
        text += line + "\n"
    items = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(m.group(1).split())
        line = max(n for offset, n in starts if offset <= m.start())
        if span.startswith("fewstep ") or span == "fewstep":
            item = _command(page, line, span, kind="mention")
        elif INLINE_COMMAND.match(span):
            item = _command(page, line, span)
        else:
            continue
        if item is not None:
            items.append(item)
    return items


@dataclass
class Page:
    path: str
    items: list[Item]
    spans: list[tuple[int, str]]  # every inline code span outside code blocks: (line, text)
    problems: list[str]  # unlabelled fences, commands hidden in text blocks
    text_blocks: list[tuple[int, list[str]]]


def parse(path: str) -> Page:
    lines = (REPO / path).read_text(encoding="utf-8").split("\n")
    page = Page(path, [], [], [], [])
    paragraph: list[tuple[int, str]] = []

    def end_paragraph():
        if paragraph:
            page.items.extend(_inline_items(path, paragraph))
            joined = "\n".join(t for _, t in paragraph)
            for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
                line = paragraph[0][0] + joined[:m.start()].count("\n")
                page.spans.append((line, " ".join(m.group(1).split())))
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m:
            end_paragraph()
            fence, lang = m.group(1), m.group(2).lower()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence[0] * len(fence)):
                j += 1
            body = lines[i + 1:j]
            kind = LANGUAGES.get(lang)
            if kind is None:
                page.problems.append(f"{path}:{i + 1}: fence language {lang!r}: label every block "
                                     f"({', '.join(LANGUAGES)})")
            elif kind == "python":
                page.items.append(Item(path, i + 2, "python", "\n".join(body)))
            elif kind == "shell":
                page.items.extend(_block_commands(path, i + 2, body))
            else:
                page.text_blocks.append((i + 2, body))
            i = j + 1
            continue
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        if (line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip())
                and not LIST_ITEM.match(previous) and not previous.startswith(" ")):
            end_paragraph()
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            while j > i and not lines[j - 1].strip():
                j -= 1
            page.items.extend(_block_commands(path, i + 1, [raw[4:] for raw in lines[i:j]]))
            i = j
            continue
        if line.strip():
            paragraph.append((i + 1, line))
        else:
            end_paragraph()
        i += 1
    end_paragraph()
    return page


ALL = {path: parse(path) for path in PAGES}


def _commands(kind: str = "command") -> list[Item]:
    return [it for p in ALL.values() for it in p.items if it.kind == kind]


def _is_fast(item: Item) -> bool:
    return item.kind == "command" and item.text not in SLOW and item.text not in NOT_RUN and not _is_git(item)


def _is_git(item: Item) -> bool:
    return bool(item.tokens) and item.tokens[0] == "git"


# ---------------------------------------------------------------------------------------------------------
# Static checks (in process, fast)


def test_every_block_is_labelled_and_text_blocks_hold_no_command():
    problems = [p for page in ALL.values() for p in page.problems]
    for page in ALL.values():
        for line, body in page.text_blocks:
            for k, raw in enumerate(body):
                word = raw.strip().split(" ", 1)[0]
                if word in PROGRAMS - {"."}:
                    problems.append(f"{page.path}:{line + k}: a command in a text block: {raw.strip()!r}")
    assert not problems, "\n".join(problems)


def test_every_command_runs_as_written_and_is_classified():
    problems = []
    for item in _commands():
        if item.problem:
            problems.append(f"{item.where}: {item.text!r}: {item.problem}")
        elif item.tokens[0] not in PROGRAMS:
            problems.append(f"{item.where}: {item.text!r}: unknown program {item.tokens[0]!r} (the test runs "
                            f"{', '.join(sorted(PROGRAMS))})")
        elif item.tokens[0] == "make" and item.text not in SLOW and item.text not in NOT_RUN:
            problems.append(f"{item.where}: {item.text!r}: list it in SLOW or NOT_RUN")
    for item in _commands("mention"):
        if item.problem:
            problems.append(f"{item.where}: {item.text!r}: {item.problem}")
    assert not problems, "\n".join(problems)


def test_slow_and_not_run_lists_name_commands_of_the_documents():
    texts = {it.text for it in _commands()} | {it.text for it in _commands("mention")}
    stale = sorted((set(SLOW) | set(NOT_RUN) | set(SLOW_EXTRA_ARGS)) - texts)
    assert not stale, f"no document has these commands any more; remove them from the lists: {stale}"
    assert not set(SLOW) & set(NOT_RUN)
    assert set(KNOWN_BROKEN) <= set(PAGES)


def _subparsers():
    from fewstep.cli import build_parser

    parser = build_parser()
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def _options(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_fewstep_commands_parse_and_mentions_name_real_options():
    parser, subs = _subparsers()
    problems = []
    for item in _commands() + _commands("mention"):
        tokens = list(item.tokens)
        if not tokens or tokens[0] not in ("fewstep", ".venv/bin/fewstep", "torchrun", ".venv/bin/torchrun"):
            continue
        if tokens[0].endswith("torchrun"):
            if "fewstep" not in tokens:
                continue
            tokens = tokens[tokens.index("fewstep"):]
        args = tokens[1:]
        if item.kind == "command":
            if item.problem:
                continue  # reported by test_every_command_runs_as_written_and_is_classified
            try:
                parser.parse_args(args)
            except SystemExit as exc:
                if exc.code:
                    problems.append(f"{item.where}: {item.text!r} does not parse (exit {exc.code})")
            except Exception as exc:  # a parser that raises its own usage error
                problems.append(f"{item.where}: {item.text!r} does not parse: {exc}")
            continue
        # a mention: the subcommand and every option it names exist
        if not args:
            continue
        if args[0].startswith("-"):
            names, known = args, _options(parser)
        elif args[0] not in subs:
            problems.append(f"{item.where}: {item.text!r}: no subcommand {args[0]!r}")
            continue
        else:
            names, known = args[1:], _options(subs[args[0]])
        for word in names:
            if word.startswith("-") and word.split("=", 1)[0] not in known:
                problems.append(f"{item.where}: {item.text!r}: no option {word.split('=', 1)[0]!r}")
    assert not problems, "\n".join(problems)


def _makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"(?m)^([\w.-]+):", text))


def test_scripts_modules_tests_and_targets_of_every_command_exist():
    problems = []
    for item in _commands():
        tokens = list(item.tokens)
        if not tokens:
            continue
        program, args = tokens[0], tokens[1:]
        if program in ("python", "python3", ".venv/bin/python"):
            if args[:1] == ["-m"]:
                if importlib.util.find_spec(args[1]) is None:
                    problems.append(f"{item.where}: {item.text!r}: no module {args[1]!r}")
                continue
            script = REPO / args[0]
            if not script.is_file():
                problems.append(f"{item.where}: {item.text!r}: no file {args[0]}")
                continue
            source = script.read_text()
            for word in args[1:]:
                flag = word.split("=", 1)[0]
                if flag.startswith("--") and f'"{flag}"' not in source:
                    problems.append(f"{item.where}: {item.text!r}: {args[0]} has no option {flag}")
        elif program in ("pytest", ".venv/bin/pytest"):
            for word in args:
                if not word.startswith("-") and "/" in word and not (REPO / word.split("::")[0]).exists():
                    problems.append(f"{item.where}: {item.text!r}: no {word}")
        elif program == "make":
            missing = [t for t in args if not t.startswith("-") and t not in _makefile_targets()]
            if missing:
                problems.append(f"{item.where}: {item.text!r}: no make target {missing}")
    assert not problems, "\n".join(problems)


def _full_history() -> bool:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return False
    out = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "false"


def test_git_commands_name_existing_revisions():
    items = [it for it in _commands() if _is_git(it)]
    problems = [f"{it.where}: {it.text!r}: only `git show REV:PATH` is checked; list it in SLOW or NOT_RUN"
                for it in items if it.tokens[1:2] != ("show",) or len(it.tokens) != 3]
    assert not problems, "\n".join(problems)
    if not _full_history():
        pytest.skip("not a git checkout with full history")
    for it in items:
        out = subprocess.run(["git", "cat-file", "-e", it.tokens[2]], cwd=REPO, capture_output=True, text=True)
        problems += [f"{it.where}: {it.text!r}: {out.stderr.strip()}"] if out.returncode else []
    assert not problems, "\n".join(problems)


PATH_SPAN = re.compile(r"^(benchmarks|scripts|tests|docs|src|fewstep)/[\w./*-]*(::\w+)?$")


def test_inline_paths_exist():
    problems = []
    for page in ALL.values():
        for line, span in page.spans:
            if not PATH_SPAN.match(span):
                continue
            path, _, name = span.partition("::")
            candidates = [path, "src/" + path] if path.startswith("fewstep/") else [path]
            candidates += [c + ".py" for c in candidates] + [c + "/__init__.py" for c in candidates]
            found = [Path(f) for c in candidates for f in glob.glob(str(REPO / c))]
            if not found:
                problems.append(f"{page.path}:{line}: `{span}` does not exist")
            elif name and not re.search(rf"\bdef {name}\b", found[0].read_text()):
                problems.append(f"{page.path}:{line}: `{span}`: {found[0].name} has no {name}")
    assert not problems, "\n".join(problems)


def _defines(tree: ast.AST, name: str) -> ast.AST | None:
    """The top-level statement of ``tree`` (a module or class body) that binds ``name``."""
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return node
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node
        if isinstance(node, (ast.If, ast.Try)) and _defines(node, name) is not None:
            return node
    return None


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of the package or a name defined in one, read from the source files
    (so that checking a name of ``fewstep.integrations.diffusers`` does not import diffusers)."""
    parts = dotted.split(".")
    spec = importlib.util.find_spec(parts[0])
    if spec is None or spec.origin is None:
        return False
    source, i = Path(spec.origin), 1
    while i < len(parts) and source.name == "__init__.py":  # walk down the packages by their files
        sub = source.parent / parts[i]
        if (sub / "__init__.py").is_file():
            source = sub / "__init__.py"
        elif sub.with_suffix(".py").is_file():
            source = sub.with_suffix(".py")
        else:
            break
        i += 1
    node: ast.AST | None = ast.parse(source.read_text())
    lazy = _defines(node, "__getattr__") is not None
    for attr in parts[i:]:
        node = _defines(node, attr) if node is not None else None
        if node is None:
            if lazy and attr == parts[i]:  # a lazy re-export (fewstep/__init__.py)
                return hasattr(importlib.import_module(".".join(parts[:i])), attr)
            return False
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return True  # a re-export
    return True


def test_inline_dotted_names_resolve():
    problems = []
    for page in ALL.values():
        notes = _change_notes_lines(page.path)
        for line, span in page.spans:
            if line in notes:
                continue  # the change notes name where things used to be
            for dotted in re.findall(r"\bfewstep(?:\.\w+)+\b(?![<\w])", span):
                if not _resolves(dotted):
                    problems.append(f"{page.path}:{line}: `{span}`: {dotted} does not exist")
    assert not problems, "\n".join(problems)


def _change_notes_lines(path: str) -> range:
    lines = (REPO / path).read_text().split("\n")
    start = next((k for k, t in enumerate(lines) if t.startswith("## Change notes")), None)
    if start is None:
        return range(0)
    end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
    return range(start + 1, end + 1)


def test_python_snippets_compile():
    problems = []
    for item in (it for p in ALL.values() for it in p.items if it.kind == "python"):
        try:
            ast.parse(item.text, filename=item.where)
        except SyntaxError as exc:
            problems.append(f"{item.where}: {exc}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------------
# Running the documents

DRIVER = """
import json, sys
namespace = {"__name__": "__main__"}
for path, line, code in json.load(open(sys.argv[1])):
    exec(compile("\\n" * (line - 1) + code, path, "exec"), namespace)
"""


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", FEWSTEP_CACHE=str(cache), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _argv(tokens: tuple[str, ...], cwd: Path) -> list[str]:
    program, args = tokens[0], list(tokens[1:])
    if program in ("fewstep", ".venv/bin/fewstep"):
        return [sys.executable, "-m", "fewstep", *args]
    if program in ("python", "python3", ".venv/bin/python"):
        if args and not args[0].startswith("-") and not (cwd / args[0]).exists() and (REPO / args[0]).is_file():
            args[0] = str(REPO / args[0])  # a script of the checkout, run from a scratch directory
        return [sys.executable, *args]
    if program in ("pytest", ".venv/bin/pytest"):
        return [sys.executable, "-m", "pytest", *args]
    if program in ("torchrun", ".venv/bin/torchrun"):
        return [sys.executable, "-m", "torch.distributed.run", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}", *args]
    return [program, *args]


@dataclass
class Run:
    what: str
    returncode: int
    seconds: float
    output: str

    def report(self) -> str:
        tail = self.output[-4000:]
        return f"{self.what}: exit {self.returncode} after {self.seconds:.1f} s\n{tail}"


def _run(what: str, argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Run:
    t = time.perf_counter()
    try:
        out = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        code, output = out.returncode, out.stdout
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        code, output = -1, f"timed out after {timeout} s\n{partial}"
    return Run(what, code, time.perf_counter() - t, output)


def _run_page(page: Page, root: Path, *, slow: bool, cwd: Path | None = None) -> list[Run]:
    """A page's Python snippets (one process, in order), then its commands in order, in one directory; the slow
    run (all commands) leaves the snippets to the fast one."""
    root.mkdir(parents=True, exist_ok=True)
    cwd = cwd or root / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    env = _env(root / "cache")
    runs = []
    snippets = [it for it in page.items if it.kind == "python" and not slow]
    if snippets:
        listing = root / "snippets.json"
        listing.write_text(json.dumps([[str(REPO / it.page), it.line, it.text] for it in snippets]))
        lines = ", ".join(str(it.line) for it in snippets)
        runs.append(_run(f"{page.path}: Python snippets (lines {lines})", [sys.executable, "-c", DRIVER, str(listing)],
                         cwd, env, SLOW_TIMEOUT if slow else FAST_TIMEOUT))
        if runs[-1].returncode:
            return runs
    for item in page.items:
        if item.kind not in ("command", "mention") or item.text in NOT_RUN or _is_git(item):
            continue
        if item.kind == "mention" and not (slow and item.text in SLOW):
            continue
        if not slow and not _is_fast(item):
            continue
        extra = [a.format(scratch=root) for a in SLOW_EXTRA_ARGS.get(item.text, [])]
        runs.append(_run(f"{item.where}: {item.text}", _argv(item.tokens, cwd) + extra, cwd, env,
                         SLOW_TIMEOUT if slow else FAST_TIMEOUT))
        if runs[-1].returncode:
            break  # later commands of the page may need this one's output
    return runs


def _fast_pages() -> list[str]:
    return [p for p in PAGES if any(it.kind == "python" or _is_fast(it) for it in ALL[p].items)]


def _slow_pages() -> list[str]:
    return [p for p in PAGES if any(it.text in SLOW for it in ALL[p].items if it.kind in ("command", "mention"))]


def _cost(path: str) -> int:
    items = ALL[path].items
    return sum(it.kind == "python" for it in items) + sum(_is_fast(it) for it in items)


@pytest.fixture(scope="session")
def fast_runs(request, tmp_path_factory):
    """Runs the selected pages, two at a time (each page's processes use one thread), the costliest first."""
    selected = {item.callspec.params["page"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_page_runs" and hasattr(item, "callspec")}
    base = tmp_path_factory.mktemp("docs")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, WORKERS))
    futures = {path: pool.submit(_run_page, ALL[path], base / re.sub(r"\W", "_", path), slow=False)
               for path in sorted(selected, key=_cost, reverse=True)}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)  # after -x, pages not started yet are dropped


@pytest.fixture(autouse=True)
def _start_page_runs(fast_runs):
    """The page runs start with this module's first test, so that they overlap with the static checks."""


@pytest.mark.parametrize("page", _fast_pages())
def test_page_runs(page, fast_runs):
    failed = _failed(fast_runs[page].result())
    report = "\n\n".join(r.report() for r in failed)
    if page in KNOWN_BROKEN:
        if failed:
            pytest.xfail(f"{KNOWN_BROKEN[page]}\n{report}")
        pytest.fail(f"{page} runs now: remove it from KNOWN_BROKEN")
    assert not failed, report


def _failed(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.returncode]


def _slow_selected(config) -> bool:
    return "slow" in (config.getoption("markexpr") or "")


def _scratch_copy(dest: Path) -> Path:
    """The working tree's files (what git tracks, as they are now), and a `.venv` of links to the venv's entries
    with a fresh `.installed`, so that `make` finds the set-up done and never installs into the shared venv."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    names = [n for n in listed.stdout.decode().split("\0") if n] if listed.returncode == 0 else None
    if names is None:
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".git", ".venv", "fewstep-out", "__pycache__"))
    else:
        for name in names:
            if (REPO / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, dest / name)  # keeps mtimes: make sees the venv as up to date
    venv = REPO / ".venv"
    if venv.is_dir():
        (dest / ".venv").mkdir()
        for entry in venv.iterdir():
            if entry.name != ".installed":
                (dest / ".venv" / entry.name).symlink_to(entry)
        (dest / ".venv" / ".installed").touch()
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("page", _slow_pages())
def test_page_runs_slow(page, request, tmp_path):
    if not _slow_selected(request.config):
        pytest.skip("a slow command; run with -m slow")
    repo = _scratch_copy(tmp_path / "repo")
    runs = _run_page(ALL[page], tmp_path / "run", slow=True, cwd=repo)
    failed = _failed(runs)
    assert not failed, "\n\n".join(r.report() for r in failed)
