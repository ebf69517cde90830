"""``fewstep mcmc``: outputs, summary, one-line errors with exit code 2, and a NaN mid-run (exit 1, draws kept)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fewstep.cli import main


def test_mcmc_writes_draws_and_a_summary(tmp_path, capsys):
    out = tmp_path / "runs" / "mix"
    code = main(["mcmc", "--target", "mixture:dim=2,modes=2", "--sampler", "polar_slice", "--chains", "2",
                 "--draws", "60", "--warmup", "10", "--seed", "3", "--reference", "500", "--out", str(out)])
    assert code == 0
    with np.load(out.with_suffix(".npz")) as z:
        assert z["draws"].shape == (2, 60, 2) and list(z["seeds"]) == [3, 4] and str(z["sampler"]) == "polar_slice"
        n_density = z["n_density"].sum()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n_density"] == n_density and summary["n_grad"] == 0 and summary["error"] is None
    assert {"ess_bulk", "ess_tail", "rhat", "mmd2", "sliced_w2", "mode_weight_error"} <= set(summary)
    assert summary["true_mode_weights"] == pytest.approx([1 / 3, 2 / 3])
    assert "wrote" in capsys.readouterr().out
    assert main(["mcmc", "--target", "mixture:dim=2,modes=2", "--out", str(out)]) == 2  # exists, no --force
    assert "refusing to overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--target", "donut"], "unknown name 'donut'; choose from gaussian"),
    (["--target", "funnel:dim=x"], "option dim must be an integer"),
    (["--target", "funnel:depth=3"], "bad option 'depth=3' for funnel"),
    (["--target", "gaussian", "--sampler", "nuts:depth=3"], "key one of max_depth"),
    (["--target", "gaussian", "--sampler", "elliptical_slice"], "needs a Gaussian prior"),
    (["--target", "gaussian", "--chains", "0"], "must be an integer in 1..4,096"),
    (["--target", "mixture:modes=9"], "modes must be in 2..2*dim"),
    (["--target", "gaussian", "--sampler", "nuts:turn=numpyro"], "turn must be one of 'sum', 'trapezoid'"),
    (["--target", "gaussian", "--sampler", "nuts:adapt_mass=maybe"], "option adapt_mass must be true or false"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["mcmc", *argv, "--draws", "10", "--warmup", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_string_and_boolean_sampler_options_reach_the_sampler(tmp_path):
    """Regression: ``nuts:turn=sum`` was parsed as a number ("option turn must be a number")."""
    import fewstep.mcmc as mcmc

    out = tmp_path / "n"
    assert main(["mcmc", "--target", "gaussian:dim=2", "--sampler", "nuts:turn=sum,adapt_mass=false", "--chains", "2",
                 "--draws", "20", "--warmup", "10", "--seed", "4", "--out", str(out)]) == 0
    direct = mcmc.run_sampler("nuts", mcmc.make_target("gaussian", dim=2), chains=2, draws=20, warmup=10, seed=4,
                              turn="sum", adapt_mass=False)
    with np.load(out.with_suffix(".npz")) as z:
        np.testing.assert_allclose(z["draws"], direct.draws.numpy(), rtol=0, atol=1e-12)


def test_help_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys; from fewstep.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'fewstep.mcmc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "fewstep.mcmc" not in out and "torch" not in out


def test_nan_mid_run_keeps_the_draws_and_exits_1(tmp_path, capsys, monkeypatch):
    import torch

    from fewstep.mcmc.targets import Funnel

    calls, original = [0], Funnel.log_prob

    def broken(self, x):
        calls[0] += 1
        lp = original(self, x)
        return lp if calls[0] < 50 else torch.full_like(lp, float("nan"))

    monkeypatch.setattr(Funnel, "log_prob", broken)
    out = tmp_path / "f"
    assert main(["mcmc", "--target", "funnel:dim=3", "--sampler", "rwm", "--draws", "100", "--warmup", "10",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "returned NaN" in err and "iteration 48" in err and err.count("\n") == 1
    summary = json.loads(out.with_suffix(".json").read_text())
    with np.load(out.with_suffix(".npz")) as z:
        assert z["draws"].shape == (4, 38, 3) and np.isfinite(z["draws"]).all()
    assert "iteration 48" in summary["error"] and summary["draws"] == 38
