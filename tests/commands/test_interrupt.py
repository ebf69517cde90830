"""Ctrl-C and SIGTERM (issue 18, item 6): one line on stderr, exit 130 (143 for SIGTERM), and no partial output
file, temporary or folder left behind. Each command runs in a subprocess that is signalled once its temporary
output files exist, that is, while it works."""

import os
import signal
import subprocess
import sys
import time

import pytest

from fewstep import cli

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
LONG_SAMPLE = ["sample", "--model", "digits-edm", "--seeds", "0-999999", "--batch", "8"]


def _interrupt(argv, tmp_path, sig=signal.SIGINT, timeout=120):
    """Start ``fewstep argv`` in ``tmp_path/work``, signal it once it made its temporaries; (code, stderr)."""
    work = tmp_path / "work"
    work.mkdir()
    env = {**ENV, "FEWSTEP_CACHE": str(tmp_path / "cache")}
    # A shell's background job (``make test &`` without job control) starts with SIGINT ignored, and a child
    # inherits that, so Python would never raise KeyboardInterrupt; give the command the default a terminal gives.
    proc = subprocess.Popen([sys.executable, "-m", "fewstep", *argv], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + timeout
        while not list(work.rglob(".fewstep-*.tmp")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never started its work"
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert list(work.iterdir()) == [], sorted(map(str, work.rglob("*")))  # nothing left, not even the folder made
    return proc.returncode, err


def test_ctrl_c_while_sampling(tmp_path):
    code, err = _interrupt([*LONG_SAMPLE, "--out", "made/here/s"], tmp_path)
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "fewstep sample: interrupted"
    assert "sample:" in err  # the progress bar, closed before the message


def test_sigterm_while_sampling(tmp_path):
    code, err = _interrupt([*LONG_SAMPLE, "--no-progress", "--out", "s"], tmp_path, signal.SIGTERM)
    assert code == 143 and err.strip() == "fewstep sample: terminated"


def test_ctrl_c_while_benchmarking(tmp_path):
    code, err = _interrupt(["bench", "--models", "digits-edm", "--seeds", "0-99999", "--no-progress", "--json",
                            "b.json"], tmp_path)
    assert code == 130 and err.strip().splitlines()[-1] == "fewstep bench: interrupted" and "Traceback" not in err


def test_ctrl_c_while_tuning(tmp_path):
    code, err = _interrupt(["tune", "--model", "digits-edm", "--method", "gits", "--seeds", "100000-199999",
                            "--no-progress", "--out", "r.json"], tmp_path)
    assert code == 130 and err.strip().splitlines()[-1] == "fewstep tune: interrupted" and "Traceback" not in err


def test_main_turns_an_interrupt_into_one_line(monkeypatch, capsys):
    from fewstep.commands import listing

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(listing, "run", interrupted)
    assert cli.main(["list", "models"]) == 130
    assert capsys.readouterr().err == "fewstep list: interrupted\n"
    monkeypatch.setattr(listing, "run", lambda args: os.kill(os.getpid(), signal.SIGTERM))
    assert cli.main(["list", "models"]) == 143
    assert capsys.readouterr().err == "fewstep list: terminated\n"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler lives only while a command runs


@pytest.mark.parametrize("error,code", [(OSError(28, "No space left on device"), 1), (ValueError("bad"), 2)])
def test_main_prints_errors_as_one_line(monkeypatch, capsys, error, code):
    from fewstep.commands import listing

    def fails(args):
        raise error

    monkeypatch.setattr(listing, "run", fails)
    assert cli.main(["list", "models"]) == code
    err = capsys.readouterr().err
    assert err.startswith("fewstep list: error: ") and err.count("\n") == 1
