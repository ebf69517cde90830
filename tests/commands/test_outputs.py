"""Output files (issue 18, items 4 and 5): every output and input path is checked before any model evaluation,
nothing is made before the checks pass, and a run's outputs are written as a set (all new or all old)."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from fewstep.cli import main
from fewstep.commands.outputs import Outputs
from fewstep.diffusion.denoiser import Denoiser

pytestmark = pytest.mark.usefixtures("one_thread", "shared_reference_cache")
SAMPLE = ["sample", "--model", "gauss", "--nfe", "3", "--seeds", "0-3", "--no-progress"]
BENCH = ["bench", "--models", "gauss", "--solvers", "ddim", "--nfe", "3", "--seeds", "0-7", "--no-progress"]


@pytest.fixture
def no_evaluation(monkeypatch):
    """Any model evaluation fails the test: the refusals below must come before the work."""

    def evaluated(*_):
        raise AssertionError("a model was evaluated before the paths were checked")

    monkeypatch.setattr(Denoiser, "__call__", evaluated)


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working folder with a file ``afile`` and a folder ``adir``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    return tmp_path


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refused(argv, message, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("out,message", [
    ("afile/x", "afile is a file, not a folder"),
    ("afile/deeper/x", "afile is a file, not a folder"),
    ("/proc/x", "cannot write /proc/x.png"),
    ("y" * 300, "has 304 bytes; this file system allows 255"),
    ("adir/" + "z" * 260 + "/x", "has 260 bytes"),
    (".", "names a folder"),
    ("..", "names a folder"),
    ("adir/", "names a folder"),
    ("", "names a folder"),
])
def test_sample_refuses_an_output_it_cannot_write_before_any_work(out, message, place, capsys, no_evaluation):
    before = _listing(place)
    _refused(SAMPLE + ["--out", out], message, capsys)
    assert _listing(place) == before  # no folder made, no temporary left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_sample_refuses_a_read_only_folder(place, capsys, no_evaluation):
    (place / "ro").mkdir()
    (place / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    _refused(SAMPLE + ["--out", "ro/x"], "is not writable", capsys)


def test_tune_refuses_a_folder_or_a_device_as_its_recipe(place, capsys, no_evaluation):
    tune = ["tune", "--model", "gauss", "--method", "gits", "--nfe", "3", "--seeds", "100000-100003",
            "--eval-seeds", "none", "--no-progress"]
    _refused(tune + ["--out", "adir"], "--out adir is a folder", capsys)
    _refused(tune + ["--out", "adir", "--force"], "--out adir is a folder", capsys)
    _refused(tune + ["--out", "/dev/null", "--force"], "is not a regular file", capsys)
    _refused(tune + ["--out", "afile"], "refusing to overwrite afile", capsys)


def test_nothing_is_made_before_the_inputs_are_checked(place, capsys, no_evaluation):
    _refused(["sample", "--model", "nope", "--out", "never/made/x"], "unknown model 'nope'", capsys)
    _refused(["sample", "--model", "gauss", "--schedule", "nope", "--out", "never/made/x"], "unknown schedule", capsys)
    _refused(["tune", "--model", "nope", "--method", "gits", "--out", "never/made/x.json"], "unknown model", capsys)
    _refused(BENCH + ["--solvers", "nope", "--json", "never/made/x.json"], "unknown solver 'nope'", capsys)
    assert not (place / "never").exists()


@pytest.mark.parametrize("extra,message", [
    (["--json", "adir", "--force"], "--json adir is a folder"),
    (["--json", "afile/x.json"], "afile is a file, not a folder"),
    (["--plot", "q.out"], "the file name must end in .png, .pdf, .svg"),
    (["--recipes", "missing.json"], "--recipes: 'missing.json' does not exist"),
    (["--recipes", "adir"], "--recipes: 'adir' is a folder"),
    (["--json", "same.png", "--plot", "same.png"], "is given as two outputs"),
    (["--json", "afile"], "refusing to overwrite afile"),
])
def test_bench_checks_its_paths_before_the_first_configuration(extra, message, place, capsys, no_evaluation):
    before = _listing(place)
    _refused(BENCH + extra, message, capsys)
    assert _listing(place) == before


def test_bench_refuses_a_recipe_for_a_missing_model_before_running(place, capsys, no_evaluation):
    from fewstep.diffusion.recipe import Recipe

    recipe = Recipe(model="gmm2d", model_hash="0" * 16, solver="ddim", nfe=2, sigmas=(80.0, 1.0, 0.0), method="ays")
    (place / "r.json").write_text(recipe.to_json())
    err = _refused(BENCH + ["--recipes", "r.json"], "recipe mismatch", capsys)
    assert "pass --allow-mismatch to use it anyway" in err


def test_bench_allow_mismatch_runs_another_models_recipe_with_a_warning(place, capsys):
    from fewstep.diffusion.recipe import Recipe

    recipe = Recipe(model="gmm2d", model_hash="0" * 16, solver="ddim", nfe=2, sigmas=(80.0, 1.0, 0.0), method="ays")
    (place / "r.json").write_text(recipe.to_json())
    argv = ["bench", "--models", "gmm2d", "--solvers", "ddim", "--nfe", "2", "--seeds", "0-3", "--metrics", "sw",
            "--no-progress", "--recipes", "r.json", "--allow-mismatch"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "ays" in out and "recipe mismatch" in err and "Traceback" not in err


def test_bench_lm_update_docs_is_checked_first_and_written_atomically(place, capsys, monkeypatch):
    pytest.importorskip("transformers")
    from fewstep.commands import bench_lm

    measured = []

    def measure(args, sampler):
        measured.append(args)
        return [], {"command": "fewstep bench-lm", "machine": "m", "threads": 1, "torch": "t", "transformers": "t",
                    "python": "p", "load": "0 -> 0"}

    monkeypatch.setattr(bench_lm, "_measure", measure)
    base = ["bench-lm", "--prompts", "2", "--batch", "2"]
    _refused(base + ["--update-docs", "adir"], "--update-docs adir is a folder", capsys)
    _refused(base + ["--update-docs", "afile/x.md"], "afile is a file, not a folder", capsys)
    (place / "bad.md").write_bytes(b"\xff\xfe")
    _refused(base + ["--update-docs", "bad.md"], "cannot read it as UTF-8 text", capsys)
    assert not measured
    assert main(base + ["--update-docs", "missing-dir/x.md"]) == 0  # a new file in a new folder, like --out
    text = (place / "missing-dir" / "x.md").read_text()
    assert text.startswith("# Benchmarks\n") and text.count("<!-- lm:begin -->") == 1
    assert "wrote missing-dir/x.md" in capsys.readouterr().out


def test_outputs_are_written_as_a_set(tmp_path):
    a, b = tmp_path / "new" / "a.bin", tmp_path / "new" / "deeper" / "b.bin"
    with pytest.raises(RuntimeError):  # the work fails after the temporaries are made: nothing is left
        with Outputs({"--out": [a, b]}, force=False) as out:
            assert len(list((tmp_path / "new").iterdir())) == 2  # a temporary and the folder of the other
            out.write(a, b"A")
            raise RuntimeError("the work failed")
    assert not (tmp_path / "new").exists()
    with Outputs({"--out": [a, b]}, force=False) as out:
        out.write(a, b"A")
        out.write(b, b"B")
        out.commit()
    assert (a.read_bytes(), b.read_bytes()) == (b"A", b"B")
    assert stat.S_IMODE(a.stat().st_mode) == 0o666 & ~_umask()
    with pytest.raises(KeyboardInterrupt):  # old outputs stay as they were when a forced run is interrupted
        with Outputs({"--out": [a, b]}, force=True) as out:
            out.write(a, b"new A")
            raise KeyboardInterrupt
    assert (a.read_bytes(), b.read_bytes()) == (b"A", b"B")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.bin", "deeper", "new"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_failed_sample_run_leaves_the_old_outputs(place, capsys, monkeypatch):
    assert main(SAMPLE + ["--out", "s"]) == 0
    old = {p: (place / p).read_bytes() for p in ("s.png", "s.npz")}
    calls, evaluate = [], Denoiser.__call__

    def fails_late(self, x, sigma, cond=None):
        calls.append(1)
        if len(calls) > 4:  # in the second chunk
            raise ValueError("the model broke")
        return evaluate(self, x, sigma, cond)

    monkeypatch.setattr(Denoiser, "__call__", fails_late)
    assert main(SAMPLE + ["--out", "s", "--force", "--batch", "2"]) == 2
    assert "the model broke" in capsys.readouterr().err
    assert {p: (place / p).read_bytes() for p in ("s.png", "s.npz")} == old
    assert sorted(p.name for p in place.iterdir()) == ["adir", "afile", "s.npz", "s.png"]  # no temporary left


def test_bench_json_is_strict_and_the_extension_of_sample_out_is_dropped(place, capsys):
    from fewstep.commands.bench import _jsonable

    row = {"rmse_ref": float("nan"), "fd": float("inf"), "nfe": 3, "versions": {"torch": "2"}, "path": Path("p")}
    assert json.loads(json.dumps(_jsonable([row]), allow_nan=False)) == [
        {"rmse_ref": None, "fd": None, "nfe": 3, "versions": {"torch": "2"}, "path": "p"}]
    assert main(SAMPLE + ["--out", "x.npz"]) == 0
    assert np.load(place / "x.npz")["samples"].shape == (4, 2) and (place / "x.png").exists()
