"""Property-based fuzzing of the command line (issue 18).

Argument lists for every subcommand (sample, bench, tune, list, generate, bench-lm, mcmc, distill) mix valid values
with hostile ones: huge, negative and empty numbers, unicode and undecodable bytes, paths to files, folders,
devices, missing and overlong places, wrong types, unknown options. Recipe files come in every shape: wrong types,
huge values, deep nesting, missing and unknown fields, foreign paths, bytes that are not JSON. Each call runs
``python -m fewstep`` in a subprocess (``HF_HUB_OFFLINE=1``, its own ``FEWSTEP_CACHE``, a fresh working folder) with
a timeout, and fails on

- a traceback, a hang (the timeout), or an exit code other than 0, 2 (bad input) and 130;
- exit 2 whose last stderr line is not one ``fewstep ...: error: ...`` line;
- a failed call that changed the working folder, or any call that left a temporary file behind.

The default run is bounded and repeatable (derandomised, about 40 calls; calls past a 75 s budget are skipped).
The long, random run: ``pytest -m slow tests/commands/test_fuzz.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BUDGET_S = 75  # the default run's calls stop here (a slow machine tests fewer)
ERROR_LINE = re.compile(r"^fewstep( [a-z-]+)?: error: .+")

# Values that are wrong for almost every option; the paths are relative to the working folder set up by _workdir.
HOSTILE = ["", " ", "-1", "0", "-0", "1e9", "1000000000", str(2**63), "9" * 40, "nan", "inf", "-inf", "0.5", "1_0",
           "abc", "é", "名前", "💥", "\t\n", ",", ",,", "-", "0-", "3-1", "1,1", "0-99999999999", "-5-3", "afile",
           "adir", "adir/", "afile/x", "missing/x.json", "/proc/x", "/dev/null", "/", ".", "..", "x" * 300,
           "adir/" + "y" * 256 + "/z", "--force", "-h", "%s%n%(x)s", "{}", "[]", "null", "true", "'", '"', "\\",
           "r.json", b"\xff", b"caf\xe9", b"\xc3("]


def hostile():
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
    # integers are never positive and small: a valid but large value (NFE 5000) is slow, not wrong
    number = st.one_of(st.integers(max_value=0), st.integers(min_value=10**6), st.floats()).map(str)
    return st.one_of(st.sampled_from(HOSTILE), text, number)


def ints(lo, hi):
    return st.integers(lo, hi).map(str)


def pick(*values):
    return st.sampled_from(values)


# subcommand -> (valid values of its options, its flags, options it requires)
OPTIONS = {
    "sample": ({"--model": pick("gauss", "gmm2d", "digits-gmm", "digits-cond"),
                "--solver": pick("ddim", "unipc", "heun", "dpmpp_2m_sde", "restart", "euler_ancestral",
                                 "dpm_solver_3", "er_sde", "ipndm"),
                "--nfe": ints(1, 8), "--schedule": pick("karras", "logsnr", "time_uniform", "exponential", "discrete"),
                "--seeds": pick("0-3", "7", "1,5,9", "0-1,10"), "--batch": ints(1, 5),
                "--out": pick("out/s", "s", "s.png", "adir/s", "out/s.npz"), "--recipe": pick("good.json", "r.json"),
                "--class": pick("3", "0-9", "1,4,7"), "--cfg": pick("0", "1", "2.5"),
                "--guidance-interval": pick("0.3,5", "1,2")},
               ["--force", "--allow-mismatch", "--cads", "--no-progress"], []),
    "bench": ({"--models": pick("gauss", "gmm2d", "gauss,gmm2d"), "--solvers": pick("ddim", "unipc,heun", "restart"),
               "--schedules": pick("karras", "logsnr,time_uniform"), "--nfe": pick("2", "3,4", "1,2"),
               "--metrics": pick("rmse_ref", "sw", "rmse_ref,fd,precision"), "--seeds": pick("0-7", "3,9,12"),
               "--batch": ints(1, 5), "--peers": pick("", "kdiffusion"), "--recipes": pick("good.json", "r.json"),
               "--json": pick("b.json", "out/b.json"), "--plot": pick("p.png", "out/p.svg")},
              ["--force", "--allow-mismatch", "--no-progress"], []),
    "tune": ({"--model": pick("gauss", "gmm2d"), "--method": pick("gits", "ays", "dc", "iia"),
              "--solver": pick("dpmpp_2m", "ddim", "unipc"), "--nfe": ints(2, 4),
              "--out": pick("r2.json", "out/r2.json"),
              "--seeds": pick("100000-100007", "100000-100003"), "--eval-seeds": pick("none", "0-7"),
              "--option": pick("fine_steps=8", "max_sweeps=1", "mc_samples=16", "trajectories=2")},
             ["--force", "--no-progress"], ["--model", "--method", "--out"]),
    "list": ({}, [], []),
    "generate": ({"--prompt": pick("The for statement", "x", "é 💥"), "--model": pick("bundled"),
                  "--sampler": pick("temperature=0.8,min_p=0.05", "greedy", "top_k=5", "top_p=0.9,temperature=2"),
                  "--order": pick("given", "hf", "llama.cpp"), "--draft": pick("bundled"), "--gamma": ints(1, 3),
                  "--num-drafts": ints(1, 2), "--selection": pick("priority", "first_accept"),
                  "--draft-vocab": pick("256", "1", "1024"), "--max-new-tokens": ints(1, 4), "--samples": ints(1, 2),
                  "--seed": ints(0, 5)},
                 ["--json"], ["--prompt"]),
    "bench-lm": ({"--sampler": pick("temperature=1", "top_k=5"), "--gamma": ints(1, 3), "--batch": pick("1"),
                  "--prompts": ints(1, 2), "--max-new-tokens": ints(1, 3), "--repeats": pick("1"),
                  "--threads": ints(1, 2), "--update-docs": pick("doc.md", "out/doc.md", "adir/doc.md")},
                 ["--json"], []),
    "mcmc": ({"--target": pick("gaussian", "mixture:dim=2,modes=2", "banana", "funnel:dim=3", "student_t"),
              "--sampler": pick("rwm", "mala", "nuts", "hmc:n_leapfrog=4", "polar_slice", "rdmc", "data_init"),
              "--chains": ints(1, 3), "--draws": ints(4, 20), "--warmup": ints(0, 10), "--seed": ints(0, 5),
              "--reference": ints(0, 50), "--threads": ints(1, 2), "--out": pick("m", "out/m", "adir/m")},
             ["--force"], ["--target"]),
    "distill": ({"--teacher": pick("gauss", "gmm2d", "digits-edm"),
                 "--method": pick("sfd", "sfd-v", "progressive", "cd", "ct", "reflow", "shortcut"),
                 "--nfe": ints(1, 3), "--steps": ints(1, 3), "--batch": ints(1, 8), "--lr": pick("1e-3", "0.01"),
                 "--seed": ints(0, 5), "--out": pick("st.json", "out/st.json"),
                 "--option": pick("substeps=2", "rounds=1"), "--checkpoint-every": ints(1, 5), "--threads": ints(1, 2)},
                ["--resume", "--force", "--no-progress"], ["--teacher", "--out"]),
}
# Options always given (a valid value, or a hostile one that is refused), so that a call stays small: the defaults
# are real benchmarks (bench-lm's take minutes).
BUDGET_OPTIONS = {"sample": ["--seeds"], "bench": ["--models", "--solvers", "--nfe", "--seeds"],
                  "tune": ["--nfe", "--seeds", "--eval-seeds"], "generate": ["--max-new-tokens"],
                  "bench-lm": ["--prompts", "--batch", "--max-new-tokens", "--repeats"],
                  "mcmc": ["--draws", "--warmup", "--reference"], "distill": ["--steps", "--batch"]}
# Options checked by argparse: in the bounded run a generate or bench-lm call always gets one of these wrong, so
# that it stays quick (a valid call loads transformers and the models); the slow run has no such rule.
GATES = {"generate": ["--gamma", "--num-drafts", "--max-new-tokens", "--samples", "--seed"],
         "bench-lm": ["--gamma", "--prompts", "--max-new-tokens", "--repeats", "--threads"]}


@st.composite
def command_lines(draw, bounded: bool):
    weights = (["sample"] * 4 + ["bench"] * 3 + ["tune"] * 2
               + ["list", "generate", "generate", "bench-lm", "mcmc", "mcmc", "distill", "distill"])
    command = draw(st.sampled_from(weights))
    options, flags, required = OPTIONS[command]
    budget = BUDGET_OPTIONS.get(command, [])
    argv = [command]
    if command == "list":
        return argv + [draw(st.one_of(pick("solvers", "schedules", "models"), hostile()))]
    chosen = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=len(options))) if options else []
    chosen += [o for o in required if o not in chosen and draw(st.integers(0, 9)) > 0]
    chosen += [o for o in budget if o not in chosen]
    for option in chosen:
        valid = draw(st.integers(0, 9)) < 7
        argv += [option, draw(options[option] if valid else hostile())]
    argv += draw(st.lists(st.sampled_from(flags), unique=True)) if flags else []
    if bounded and command in GATES:
        argv += [draw(st.sampled_from(GATES[command])), draw(pick("0", "-3", "1e9", "99999999", "x", ""))]
    if draw(st.integers(0, 19)) == 0:  # an unknown option or a stray word
        argv.insert(draw(st.integers(1, len(argv))), draw(pick("--nope", "stray", "--", "-x", "--model=")))
    return argv


def _json_values():
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=8),
                     pick("inf", "nan", "/etc/passwd", "../../x", "sha256:" + "0" * 64, "ddim", "gauss"))
    return st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=12)


@st.composite
def recipe_files(draw, base: dict) -> bytes:
    """The bytes of a recipe file: a valid recipe with some fields broken, or something that is no recipe at all."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(pick(b"", b"\xef\xbb\xbf{}", b"[]", b"null", b"{" * 100_000, b"[" * 100_000 + b"]" * 100_000,
                         b"\xff\xfe\x00", b'{"model": "gauss"', b"NaN", json.dumps("x" * 1000).encode()))
    recipe, deep = dict(base), {}
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(sorted(base) + ["extra"]))
        action = draw(st.integers(0, 5))
        if action == 0:
            recipe.pop(field, None)
        elif action == 1:
            depth = draw(st.integers(2, 5000))  # written into the text below: json cannot nest that deep
            mark = f"@deep{len(deep)}@"
            deep[mark], recipe[field] = depth, mark
        elif action == 2 and field in ("sigmas", "solver_options", "nfe"):
            recipe[field] = draw(st.one_of(
                st.lists(st.floats(allow_nan=True), min_size=0, max_size=12),
                pick([80.0, "inf", 0.0], [1e308, 1e-308, 0.0], [float("nan"), 0.0], list(range(2000, -1, -1))),
                pick({"ems": "/etc/passwd"}, {"ems": "sha256:" + "0" * 64}, {"order": 99}, {"unknown": 1},
                     {"ems": {"lambda": [1.0] * 3}}),
                pick(0, -1, 10**6, 10**30, 2.5, "5", True)))
        else:
            recipe[field] = draw(_json_values())
    text = json.dumps(recipe)
    for mark, depth in deep.items():
        text = text.replace(json.dumps(mark), "[" * depth + "]" * depth)
    return text.encode()


def _base_recipe() -> dict:
    from fewstep.diffusion.denoiser import model_hash
    from fewstep.diffusion.recipe import Recipe
    from fewstep.models import load_model

    recipe = Recipe(model="gauss", model_hash=model_hash(load_model("gauss")), solver="dpmpp_2m", nfe=3,
                    sigmas=(80.0, 2.0, 0.3, 0.0), method="ays", quality={}, info={"note": "fuzz"})
    return json.loads(recipe.to_json())


def _workdir(base: dict, recipe: bytes | None = None) -> Path:
    work = Path(tempfile.mkdtemp(prefix="fewstep-fuzz-"))
    (work / "afile").write_text("a file\n")
    (work / "adir").mkdir()
    (work / "good.json").write_text(json.dumps(base))
    (work / "r.json").write_bytes(recipe if recipe is not None else json.dumps({**base, "nfe": 4}).encode())
    return work


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*"))}


def _run(argv, work: Path, cache: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FEWSTEP_CACHE": str(cache),
           "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}  # strict, so an unprintable name would show
    shown = "fewstep " + shlex.join(a if isinstance(a, str) else a.decode("utf-8", "backslashreplace") for a in argv)
    before = _snapshot(work)
    try:
        proc = subprocess.run([sys.executable, "-m", "fewstep", *argv], cwd=work, env=env, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang (over {timeout:.0f} s): {shown}")
    out, err = (proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))
    context = f"{shown}\nexit {proc.returncode}\n--- stderr\n{err[-3000:]}"
    assert "Traceback" not in out + err, context
    assert proc.returncode in (0, 2, 130), context
    if proc.returncode == 2:
        assert ERROR_LINE.match(err.strip().splitlines()[-1]), context
    left = [p for p in work.rglob("*") if p.name.startswith(".fewstep-")]
    assert not left, f"{context}\nleft behind: {left}"
    if proc.returncode != 0:
        assert _snapshot(work) == before, f"{context}\na failed call changed the folder"
    return proc


class _Budget:
    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds
        self.ran = self.skipped = 0

    def spent(self) -> bool:
        spent = self.end is not None and time.monotonic() > self.end
        self.ran, self.skipped = self.ran + (not spent), self.skipped + spent
        return spent


@pytest.fixture(scope="module")
def base_recipe():
    return _base_recipe()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-cache")


def _fuzz_arguments(base_recipe, cache, bounded: bool, examples: int, budget: _Budget, timeout: float):
    @settings(max_examples=examples, deadline=None, database=None, derandomize=bounded,
              suppress_health_check=list(HealthCheck))
    @given(argv=command_lines(bounded), recipe=recipe_files(base_recipe) | st.none())
    def check(argv, recipe):
        if budget.spent():
            return
        work = _workdir(base_recipe, recipe)
        try:
            _run(argv, work, cache, timeout)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    check()


def _fuzz_recipes(base_recipe, cache, bounded: bool, examples: int, budget: _Budget, timeout: float):
    commands = [["sample", "--recipe", "r.json", "--seeds", "0-1", "--out", "s", "--no-progress"],
                ["sample", "--recipe", "r.json", "--seeds", "0-1", "--out", "s", "--allow-mismatch", "--nfe", "3"],
                ["bench", "--models", "gauss", "--solvers", "ddim", "--nfe", "2", "--seeds", "0-3", "--metrics",
                 "rmse_ref", "--recipes", "r.json,good.json", "--no-progress", "--json", "b.json"]]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=bounded,
              suppress_health_check=list(HealthCheck))
    @given(recipe=recipe_files(base_recipe), argv=st.sampled_from(commands))
    def check(recipe, argv):
        if budget.spent():
            return
        work = _workdir(base_recipe, recipe)
        try:
            _run(argv, work, cache, timeout)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    check()


def test_fuzz_the_command_line(base_recipe, cache):
    """The bounded run: about 30 argument lists and 10 recipe files, derandomised, within the time budget."""
    budget = _Budget(BUDGET_S)
    _fuzz_arguments(base_recipe, cache, bounded=True, examples=30, budget=budget, timeout=60)
    _fuzz_recipes(base_recipe, cache, bounded=True, examples=10, budget=budget, timeout=60)
    print(f"fuzz: {budget.ran} calls, {budget.skipped} skipped past the budget")


@pytest.mark.slow
def test_fuzz_the_command_line_at_length(base_recipe, cache, request):
    """The long run: random argument lists (generate and bench-lm run for real too) and recipe files. It runs
    only when asked for (``-m slow``): it takes far longer than the default suite may."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long fuzz run: pytest -m slow tests/commands/test_fuzz.py")
    budget = _Budget(None)
    _fuzz_arguments(base_recipe, cache, bounded=False, examples=int(os.environ.get("FEWSTEP_FUZZ_EXAMPLES", 300)),
                    budget=budget, timeout=240)
    _fuzz_recipes(base_recipe, cache, bounded=False, examples=100, budget=budget, timeout=240)
