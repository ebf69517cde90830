"""Every bundled data file is verified against a SHA-256 constant in the code before it is used (issue 18,
item 8): a tampered copy raises ``ChecksumError``, and the CLI prints it as one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fewstep._verify as verify
from fewstep._verify import BUNDLED_SHA256, ChecksumError, read_bundled, verify_bundled

PACKAGE = verify.PACKAGE_DIR


def test_every_bundled_file_matches_its_committed_digest_and_none_is_missing():
    for name in BUNDLED_SHA256:
        read_bundled(name)
    data_files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("data/**/*") if p.is_file()}
    trained = {f"models/data/{f}" for f in ("digits_edm.safetensors", "digits_flow.safetensors",
                                            "digits_vp_eps.safetensors", "digits_cond.safetensors")}
    assert data_files - trained == set(BUNDLED_SHA256), "a bundled file without a committed digest, or a stale one"


@pytest.fixture()
def tampered(tmp_path, monkeypatch):
    """A copy of the package's data with one flipped bit in the named file."""
    def make(name: str) -> Path:
        root = tmp_path / "pkg"
        for key in BUNDLED_SHA256:
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PACKAGE / key, root / key)
        blob = bytearray((root / name).read_bytes())
        blob[len(blob) // 2] ^= 0x01
        (root / name).write_bytes(bytes(blob))
        monkeypatch.setattr(verify, "PACKAGE_DIR", root)
        return root / name
    return make


@pytest.mark.parametrize("name", ["models/data/digits.npz", "models/data/digits_gmm.safetensors",
                                  "lm/data/target/model.safetensors", "lm/data/tokenizer.json"])
def test_a_tampered_file_is_refused(tampered, name):
    tampered(name)
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        read_bundled(name)
    if name.startswith("lm/"):
        with pytest.raises(ChecksumError):
            verify_bundled("lm/data/")


def test_the_loaders_read_through_the_check(tampered):
    from fewstep.models import digits, digits_data

    tampered("models/data/digits_gmm.safetensors")
    with pytest.raises(ChecksumError):
        digits.digits_gmm()
    digits_data._load_raw.cache_clear()
    tampered("models/data/digits.npz")
    try:
        with pytest.raises(ChecksumError):
            digits_data.digits_data("train")
    finally:
        digits_data._load_raw.cache_clear()


def test_the_cli_prints_a_checksum_error_as_one_line(tmp_path):
    code = ("import fewstep._verify as v, shutil, sys, pathlib; root = pathlib.Path(sys.argv[1]); "
            "[(root / k).parent.mkdir(parents=True, exist_ok=True) or shutil.copy(v.PACKAGE_DIR / k, root / k) "
            "for k in v.BUNDLED_SHA256]; p = root / 'models/data/digits_gmm.safetensors'; "
            "b = bytearray(p.read_bytes()); b[100] ^= 1; p.write_bytes(bytes(b)); v.PACKAGE_DIR = root; "
            "from fewstep.cli import main; "
            "sys.exit(main(['sample', '--model', 'digits-gmm', '--nfe', '2', '--seeds', '0-1', '--out', "
            "sys.argv[2]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pkg"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "SHA-256 mismatch" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.npz").exists()
