"""The command line on every path, including bad input, and sharded runs equal to unsharded ones."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fewstep.cli import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_help_and_list(capsys):
    assert main([]) == 0
    assert "sample" in capsys.readouterr().out
    assert main(["list", "solvers"]) == 0
    out = capsys.readouterr().out
    assert "dpmpp_2m" in out and "unipc" in out and "2/1" in out  # heun's evaluations per step
    assert main(["list", "schedules"]) == 0 and "karras" in capsys.readouterr().out
    assert main(["list", "models"]) == 0 and "digits-gmm" in capsys.readouterr().out
    assert main(["list", "samplers"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'samplers'" in err and err.count("\n") == 1


def test_import_is_light():
    code = ("import sys, fewstep, fewstep.cli; fewstep.cli.build_parser(); "
            "print(any(m in sys.modules for m in ('torch', 'diffusers', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert out.stdout.strip() == "False"


def test_sample_writes_png_and_npz_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--model", "digits-gmm", "--solver", "dpmpp_2m", "--nfe", "6", "--seeds", "0-7",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6 model evaluations" in text and str(out) + ".png" in text
    png, npz = out.with_suffix(".png"), out.with_suffix(".npz")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    z = np.load(npz)
    assert z["samples"].shape == (8, 1, 8, 8) and z["seeds"].tolist() == list(range(8)) and int(z["nfe"]) == 6
    before = png.read_bytes()
    assert main(["sample", "--model", "digits-gmm", "--seeds", "0-3", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and png.read_bytes() == before
    assert main(["sample", "--model", "digits-gmm", "--seeds", "0-3", "--out", str(out), "--force"]) == 0
    z2 = np.load(npz)  # same solver settings as the default run, so compare with a fresh default run
    assert z2["samples"].shape == (4, 1, 8, 8)
    assert main(["sample", "--model", "gmm2d", "--nfe", "4", "--seeds", "0-99", "--out", str(tmp_path / "g")]) == 0


def test_cli_samples_classes_with_guidance_and_rejects_bad_flags(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["sample", "--model", "digits-cond", "--solver", "dpmpp_2m", "--nfe", "5", "--seeds", "0-11",
                 "--class", "0-9", "--cfg", "3", "--cads", "--guidance-interval", "0.3,5", "--out", str(out)]) == 0
    z = np.load(out.with_suffix(".npz"))
    assert z["class_labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1] and int(z["nfe"]) == 5
    assert "5 model evaluations" in capsys.readouterr().out
    for argv, message in [(["--model", "digits-gmm", "--class", "3"], "digits-gmm is unconditional"),
                          (["--model", "digits-cond", "--cfg", "2"], "need --class"),
                          (["--model", "digits-cond", "--class", "12"], "classes in 0..9"),
                          (["--model", "digits-cond", "--class", "a"], "bad --class"),
                          (["--model", "digits-cond", "--class", "1", "--guidance-interval", "1,2"], "needs --cfg"),
                          (["--model", "digits-cond", "--class", "1", "--cfg", "2", "--guidance-interval", "3"],
                           "bad --guidance-interval"),
                          (["--model", "digits-cond", "--class", "1", "--cfg", "-1"],
                           "argument --cfg: must be a number in 0..1000")]:
        assert main(["sample", *argv, "--seeds", "0-1", "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


@pytest.mark.parametrize("argv,message", [
    (["sample", "--model", "nope"], "unknown model 'nope'"),
    (["sample", "--solver", "nope", "--model", "gmm2d"], "unknown solver 'nope'"),
    (["sample", "--model", "gmm2d", "--nfe", "0"], "argument --nfe: must be an integer in 1..100,000; got '0'"),
    (["sample", "--model", "gmm2d", "--schedule", "nope"], "unknown schedule 'nope'"),
    (["sample", "--model", "gmm2d", "--seeds", "9-3"], "is empty"),
    (["sample", "--model", "gmm2d", "--seeds", "a-b"], "bad seeds"),
    (["sample", "--model", "gmm2d", "--seeds", "1,1"], "repeat"),
    (["sample", "--model", "gmm2d", "--solver", "dpm_solver_3", "--nfe", "1", "--schedule", "karras"], None),
    (["bench", "--models", "nope"], "unknown model 'nope'"),
    (["bench", "--models", "gmm2d", "--solvers", "ddim,nope"], "unknown solver 'nope'"),
    (["bench", "--models", "gmm2d", "--nfe", "3,x"], "bad NFE budgets"),
    (["bench", "--models", "gmm2d", "--nfe", "0"], "NFE budgets must be integers in 1..100,000"),
    (["bench", "--models", "gmm2d", "--metrics", "fid"], "unknown metric 'fid'"),
    (["bench", "--models", "gmm2d", "--peers", "comfy"], "unknown peer 'comfy'"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path):
    argv = argv + ["--out", str(tmp_path / "x")] if argv[0] == "sample" else argv
    code = main(argv)
    err = capsys.readouterr().err
    if message is None:  # dpm_solver_3 with one evaluation still takes a single first-order step
        assert code == 0
        return
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_bench_table_json_and_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    j, p = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["bench", "--models", "gmm2d", "--solvers", "ddim,unipc,dpm_solver_3", "--nfe", "1,4,8",
                 "--metrics", "rmse_ref,fd,sw,precision,recall", "--seeds", "0-63", "--json", str(j),
                 "--plot", str(p), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rmse_ref" in out and "unipc" in out
    rows = json.loads(j.read_text())
    assert len(rows) == 9
    good = [r for r in rows if "error" not in r]
    assert all(r["nfe"] <= r["nfe_budget"] for r in good)
    assert {"wall_s", "versions", "device", "rmse_ref", "fd", "sw", "precision", "recall"} <= set(good[0])
    err_row = next(r for r in rows if r["solver"] == "dpm_solver_3" and r["nfe_budget"] == 1)
    assert "error" not in err_row  # one first-order step fits
    by = {(r["solver"], r["nfe_budget"]): r for r in good}
    for solver in ("ddim", "unipc"):  # more evaluations, closer to the reference
        assert by[(solver, 8)]["rmse_ref"] < by[(solver, 4)]["rmse_ref"]
    assert p.read_bytes()[:4] == b"\x89PNG"
    assert main(["bench", "--models", "gmm2d", "--json", str(j), "--no-progress"]) == 2  # no overwrite


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, nproc):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "fewstep", *args]
    subprocess.run(cmd, check=True, capture_output=True, env=ENV, timeout=120)


def test_torchrun_sharded_sampling_equals_single_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["sample", "--model", "digits-gmm", "--solver", "unipc", "--nfe", "5", "--seeds", "0-10"]
    subprocess.run([sys.executable, "-m", "fewstep", *common, "--out", str(one)], check=True, env=ENV)
    _torchrun([*common, "--out", str(two)], 2)
    a, b = np.load(one.with_suffix(".npz")), np.load(two.with_suffix(".npz"))
    assert b["seeds"].tolist() == list(range(11))
    np.testing.assert_array_equal(a["samples"], b["samples"])


def test_torchrun_sharded_bench_equals_single_process(tmp_path):
    env = {**ENV, "FEWSTEP_CACHE": str(tmp_path / "cache")}
    common = ["bench", "--models", "gmm2d", "--solvers", "ddim,unipc", "--nfe", "4,6", "--seeds", "0-20",
              "--metrics", "rmse_ref,sw,precision", "--no-progress"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "fewstep", *common, "--json", str(one)], check=True, env=env,
                   capture_output=True, timeout=120)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "fewstep", *common, "--json", str(two)]
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=180)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert len(a) == len(b) == 4  # rank 0 alone writes the gathered rows
    for ra, rb in zip(a, b):
        assert (ra["solver"], ra["nfe_budget"]) == (rb["solver"], rb["nfe_budget"])
        for metric in ("rmse_ref", "sw", "precision"):
            assert rb[metric] == pytest.approx(ra[metric], rel=1e-6, abs=1e-9), (ra["solver"], metric)


def test_bench_peers_rows_beside_fewstep(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    j = tmp_path / "p.json"
    assert main(["bench", "--models", "gmm2d", "--solvers", "ddim,dpmpp_2m", "--nfe", "5", "--seeds", "0-15",
                 "--metrics", "rmse_ref", "--peers", "diffusers,kdiffusion", "--json", str(j), "--no-progress"]) == 0
    rows = {r["solver"]: r for r in json.loads(j.read_text())}
    assert {"diffusers:ddim", "kdiffusion:euler", "kdiffusion:dpmpp_2m"} <= set(rows)
    # the same algorithm on the same model, noise and grid gives the same answer
    assert rows["diffusers:ddim"]["rmse_ref"] == pytest.approx(rows["ddim"]["rmse_ref"], rel=1e-4)
    assert rows["kdiffusion:euler"]["rmse_ref"] == pytest.approx(rows["ddim"]["rmse_ref"], rel=1e-6)
    assert all(r["nfe"] <= 5 for r in rows.values() if "error" not in r)
