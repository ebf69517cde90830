"""``fewstep sample --reward --steer --particles``: the command line equals the library, writes what plain ``sample``
writes (and nothing it was not asked to), reports the rewards and the evaluations, and refuses bad input."""

import numpy as np
import pytest

from fewstep.cli import main
from fewstep.commands import sample_steer
from fewstep.diffusion.sampling import sample
from fewstep.models import load_model
from fewstep.steer import METHODS, fk_steer, linear
from fewstep.steer._particles import MAX_PARTICLES

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, *argv, out="s"):
    path = tmp_path / out
    code = main(["sample", "--model", "gmm2d", "--no-progress", "--out", str(path), *argv])
    return code, path


def test_fk_on_the_command_line_is_the_library_and_writes_like_sample(tmp_path, capsys):
    code, out = _run(tmp_path, "--reward", "linear:1,0", "--steer", "fk", "--particles", "4", "--nfe", "10",
                     "--seeds", "0-5", "--batch", "4")
    assert code == 0
    text = capsys.readouterr().out
    z = np.load(out.with_suffix(".npz"))
    lib = fk_steer(load_model("gmm2d"), linear([1.0, 0.0]), particles=4, nfe=10, seeds=list(range(6)))
    assert np.array_equal(z["samples"], lib.samples.numpy())  # two chunks of --batch 4 and 2: the same samples
    assert np.allclose(z["rewards"], z["samples"][:, 0]) and str(z["reward"]) == "linear:1,0"
    assert str(z["steer"]) == "fk" and int(z["particles"]) == 4 and str(z["solver"]) == "euler_ancestral"
    assert float(z["evaluations"]) == 4 * int(z["nfe"]) == 4 * lib.nfe
    assert z["seeds"].tolist() == list(range(6))
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "s.png"]
    assert f"mean {z['rewards'].mean():.4g}" in text and f"max {z['rewards'].max():.4g}" in text
    assert "fk (4 particles), base sampler euler_ancestral" in text and f"{4 * lib.nfe} evaluations per sample" in text


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_and_raises_the_reward(tmp_path, capsys, method):
    code, out = _run(tmp_path, "--reward", "linear:1,0", "--steer", method, "--particles", "4", "--nfe", "10",
                     "--seeds", "0-39")
    assert code == 0, capsys.readouterr().err
    z = np.load(out.with_suffix(".npz"))
    base = sample(load_model("gmm2d"), solver=str(z["solver"]), nfe=10, seeds=list(range(40)))
    assert z["samples"].shape == (40, 2) and np.allclose(z["rewards"], z["samples"][:, 0])
    assert z["rewards"].mean() > float(base[:, 0].mean()) + 0.5
    assert str(z["solver"]) == (sample_steer.default_solver(method) or "unipc")


def test_every_solver_of_the_command_steers_where_the_method_allows(tmp_path, capsys):
    """Stochastic solvers carry FK's particles (restart cannot stop at a grid point: refused); deterministic ones
    carry best-of-n, and FK with more than one particle refuses them naming the stochastic ones."""
    from fewstep.diffusion.solvers import SOLVERS

    for solver, info in sorted(SOLVERS.items()):
        method = "fk" if info.stochastic else "best_of_n"
        code, out = _run(tmp_path, "--solver", solver, "--nfe", "12", "--seeds", "0-1", "--reward", "linear:1,0",
                         "--steer", method, "--particles", "2", "--force", out=solver)
        err = capsys.readouterr().err
        if solver == "restart":
            assert code == 2 and "cannot stop and restart" in err, err
            continue
        assert code == 0, (solver, err)
        assert np.load(out.with_suffix(".npz"))["samples"].shape == (2, 2)
        if not info.stochastic:
            assert _run(tmp_path, "--solver", solver, "--nfe", "12", "--seeds", "0", "--reward", "linear:1,0",
                        "--steer", "fk", "--particles", "2", out="refused")[0] == 2
            refusal = capsys.readouterr().err
            assert "needs a stochastic solver" in refusal and "euler_ancestral" in refusal, refusal


def test_one_particle_is_plain_sample(tmp_path):
    assert _run(tmp_path, "--solver", "ddpm", "--nfe", "8", "--seeds", "3-9", out="plain")[0] == 0
    assert _run(tmp_path, "--solver", "ddpm", "--nfe", "8", "--seeds", "3-9", "--reward", "linear:0,1", "--steer",
                "fk", "--particles", "1", out="fk1")[0] == 0
    plain, fk1 = np.load(tmp_path / "plain.npz"), np.load(tmp_path / "fk1.npz")
    assert np.array_equal(plain["samples"], fk1["samples"]) and int(plain["nfe"]) == int(fk1["nfe"])


def test_classes_and_guidance_steer_a_conditional_model(tmp_path):
    out = tmp_path / "c"
    assert main(["sample", "--model", "digits-cond", "--class", "3", "--cfg", "1.5", "--reward", "confidence",
                 "--steer", "svdd", "--particles", "2", "--nfe", "4", "--seeds", "0-3", "--no-progress",
                 "--out", str(out)]) == 0
    z = np.load(out.with_suffix(".npz"))
    assert z["samples"].shape == (4, 1, 8, 8) and z["class_labels"].tolist() == [3] * 4
    assert ((0.1 <= z["rewards"]) & (z["rewards"] <= 1)).all()
    assert float(z["evaluations"]) == 2 * 2 * 4  # 2 particles x 4 steps x 2 evaluations per CFG step


@pytest.mark.parametrize("argv,message", [
    (["--reward", "linear:1,0"], "--reward needs --steer METHOD: one of best_of_n, noise_search, path_search, fk"),
    (["--steer", "fk"], "--steer needs --reward NAME[:options]: digit:3, confidence"),
    (["--particles", "3"], "--particles needs --steer METHOD and --reward"),
    (["--steer", "beam", "--reward", "stroke"], "unknown --steer 'beam'; choose one of best_of_n, noise_search"),
    (["--steer", "fk", "--reward", "height"], "--reward height: unknown reward 'height'; choose one of digit, "
                                              "confidence, stroke, linear, component"),
    (["--steer", "fk", "--reward", "stroke:2"], "reward 'stroke' takes no options"),
    (["--steer", "fk", "--reward", "linear:1,x"], "options must be numbers separated by commas"),
    (["--steer", "fk", "--reward", "linear:1,0,2"], "does not fit --model gmm2d: linear reward has 3 coefficients"),
    (["--steer", "fk", "--reward", "component:8"], "component must be an integer 0..7 for 'gmm2d'"),
    (["--steer", "fk", "--reward", "digit:3"], "does not fit --model gmm2d: the digits rewards take 8x8 digits"),
    (["--steer", "fk", "--reward", "stroke", "--particles", "0"], "--particles: must be an integer in 1..4,096"),
    (["--steer", "fk", "--reward", "stroke", "--temperature", "0"], "must be > 0 for fk"),
    (["--steer", "best_of_n", "--reward", "stroke", "--temperature", "2"], "--temperature applies to fk and svdd"),
    (["--steer", "svdd", "--reward", "stroke", "--solver", "dpmpp_2m"], "svdd needs a stochastic solver"),
    (["--steer", "fk", "--reward", "stroke", "--solver", "unipc"], "fk_steer with more than one particle needs a "
                                                                   "stochastic solver"),
    (["--steer", "fk", "--reward", "stroke", "--solver", "restart", "--nfe", "12"], "restart"),
    (["--steer", "fk", "--reward", "stroke", "--recipe", "r.json"], "--steer cannot be combined with --recipe"),
])
def test_bad_steering_options_are_refused_and_nothing_is_written(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.json").write_text("{}")
    code, _ = _run(tmp_path, "--seeds", "0-1", "--nfe", "6", *argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_existing_outputs_are_not_overwritten_without_force(tmp_path, capsys):
    png = tmp_path / "s.png"
    png.write_bytes(b"mine")
    code, _ = _run(tmp_path, "--reward", "stroke", "--steer", "best_of_n", "--seeds", "0-1", "--nfe", "4")
    assert code == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert png.read_bytes() == b"mine" and not (tmp_path / "s.npz").exists()


def test_the_command_line_lists_match_the_library():
    assert sample_steer.MAX_PARTICLES == MAX_PARTICLES
    assert set(sample_steer.STEER_METHODS) == set(METHODS)
    assert set(sample_steer.TEMPERATURE_METHODS) == {m for m, (fn, _) in METHODS.items()
                                                     if "temperature" in fn.__code__.co_varnames}
