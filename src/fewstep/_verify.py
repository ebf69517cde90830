"""Bundled files are read only after their SHA-256 matches the committed one: one error type, one check.

The bytes are hashed and then handed back, so what a caller parses is exactly what was checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["BUNDLED_SHA256", "ChecksumError", "bundled_path", "read_bundled", "read_verified_bytes",
           "verify_bundled"]

PACKAGE_DIR = Path(__file__).resolve().parent
# Every bundled data file (paths relative to the package), with the script that rebuilds it. The trained
# diffusion networks keep their digests beside their specs (fewstep.models.trained.SHA256, .cond.SHA256).
BUNDLED_SHA256 = {
    "models/data/digits.npz": "9b1d6eb7deedb5a97a80bacc7d11ec6d69a5a1fada95ab17b4284fd26f03de0e",
    "models/data/digits_gmm.safetensors": "e511183413840ebf5a0d9028c761239cdf2acac90426cce2ae1544dce280ec76",
    "metrics/data/digits_cnn.safetensors": "69101a51ece7116a683522eb30896bd87e074b2a8e6317a571d08d2d6480deb3",
    "lm/data/tokenizer.json": "272d040ae004de830a0f75626b62e7fcd81ec693c8cfc77e8cb8b8098f256d21",
    "lm/data/token_counts.json": "935c0ed7c8576a2802caf2bb3d35ec6213c3940eae1c0c13ca46270011ea678d",
    "lm/data/target/model.safetensors": "33238c68f3c49a74aab9ae5b64a31dff145c24e6fe569fc333e3a4e9afb021de",
    "lm/data/target/config.json": "56e7d5ac468ef013e893429cce32a61135db55d58ba6f3f7303bc33558bd4c3a",
    "lm/data/target/generation_config.json": "038b4132194845a39539953e314896b34db517bc1e71699d98281b36b6fb676d",
    "lm/data/draft/model.safetensors": "045da64be1caaab9e287fb1e97ddf3997553d5e6d383f49578ecf91c6a074e88",
    "lm/data/draft/config.json": "cc85bb3915c5fd753d9c5aebaf597e6b890142f0176a935cfc1950aa65de686d",
    "lm/data/draft/generation_config.json": "038b4132194845a39539953e314896b34db517bc1e71699d98281b36b6fb676d",
    "lm/data/draft-large/generation_config.json": "a3a3409b262255c6be98a5c2132767de0e86c6021e703be2c72e419d38776b96",
    "lm/data/draft-large/config.json": "f9478f4dabd3c093277497d9e76fc8badb343dd5564c58a1bef602da4ca06f84",
    "lm/data/draft-large/model.safetensors": "2fd52d8ea22046bf11dc514916963959c07afe4d8886512f69634c4f5c82864d",
    "lm/data/target-large/generation_config.json": "a3a3409b262255c6be98a5c2132767de0e86c6021e703be2c72e419d38776b96",
    "lm/data/target-large/config.json": "64f277511cab8f53db925bfcc7c48335de67a31913014a8c46a5db57af9b65c5",
    "lm/data/target-large/model-00001-of-00003.safetensors":
        "e1902892d2e4acd7fd66a67a19bc09490974cb994edbd19d49d57c15e7509883",
    "lm/data/target-large/model-00002-of-00003.safetensors":
        "f67a148620d6150ac0e7cdc737c3ff0231f7ed596540865c5154936043aaf317",
    "lm/data/target-large/model-00003-of-00003.safetensors":
        "61fc20521845e7eec70ab7141bdedfdc6d89d50642c19027d0e8f2cc890263de",
    "lm/data/target-large/model.safetensors.index.json":
        "a2b6d8c68c05e8cc84016dfc23c9163be3449228ff7f4b84ac0cd518fa709599",
    "lm/data/arith/model/config.json": "7c6c8d48baac684441ab7c1fddf84253de9956a1459a3d813f2035609415918e",
    "lm/data/arith/model/generation_config.json": "038b4132194845a39539953e314896b34db517bc1e71699d98281b36b6fb676d",
    "lm/data/arith/model/model.safetensors": "543716c0d6dbb485157524fc6aacfe82762c5bd532d3a7cfdc35e7cb03eee742",
    "lm/data/arith/probes.safetensors": "8030a6ed4473a523b34654af03c4d28887ba9d5afd8a6384e49e5d6500284d14",
    "lm/data/arith/record.json": "0c528bdf58b8b2deb45a0c5005c8ec73b27763ec8a4c38b402e69963e3fca815",
    "models/data/students/digits-edm-sfd-nfe2.json":
        "c429b16ea46385f6018e61ad372b260a6a18bff6566ec099ad89513144e102ee",
    "models/data/students/digits-edm-sfd-nfe2.safetensors":
        "6a433ff74799e81ff9ab9f9b8c1e5878b6471950494a7117efd8eb306f636049",
    "models/data/students/digits-flow-sfd-nfe2.json":
        "1f5da558c19ce36abc7ffd429d5ad9a8f3d3273d33966789b3fa440dc9a43ff5",
    "models/data/students/digits-flow-sfd-nfe2.safetensors":
        "c931cf0d4e39f2e8ddb5e48f896732c68ad249f23a5ffc7be8ddcf7c6eae37d8",
    "models/data/students/digits-edm-progressive-nfe2.json":
        "3fb23a64db0b65472ece8e80bbb9910add8368db975c2b4b1ba66158fdac7e68",
    "models/data/students/digits-edm-progressive-nfe2.safetensors":
        "b7f7335970c124ecc8dc9168e00ff83d10252ed8da0d2310f6677c49f0bd3713",
    "models/data/students/digits-flow-progressive-nfe2.json":
        "f282a457521d1224af693a1b5fb6d1d0fbfdfeaabab6351f1adac3a2e56b7320",
    "models/data/students/digits-flow-progressive-nfe2.safetensors":
        "c99e2bf53bfa84b40137d13aa3e8ba7b0c5f35c605612f675b55a72b33f15ee1",
    "models/data/students/digits-edm-cd-nfe2.json":
        "92cfe727cd063f6d4d37bd7a659127c9c9a9cbeccfea90f6dfa17c978f7f499a",
    "models/data/students/digits-edm-cd-nfe2.safetensors":
        "68245f61bf7228099c5aace7bb11e3a7ae9568ced0968e204563db0810ddc5ca",
    "models/data/students/digits-flow-cd-nfe2.json":
        "798800a5d7f7dc664c8ffe4c00478f3bac972e29b6bb46777642f1de0cdd426b",
    "models/data/students/digits-flow-cd-nfe2.safetensors":
        "a20cb4c45636887f5d9e62f9eedbb4ad1c06e19e6a47d69271699f63b8c9930c",
    "models/data/students/digits-edm-sid-nfe1.json":
        "2bac48cd8d2eff71c23e8e287affb049a2f64ba6f3aecf372e9524528f37fe9b",
    "models/data/students/digits-edm-sid-nfe1.safetensors":
        "842f290c93d402ea15b30c1f3f4f8f0b8695ac8c01f9d92ab97bb4fb8755a372",
    "models/data/students/digits-flow-sid-nfe1.json":
        "7fe80db964e9f346040e5221d40ed5b184fa6e574f27c876b81c4269460d852f",
    "models/data/students/digits-flow-sid-nfe1.safetensors":
        "2e02a12563f28e647b197a601a8d21db3da5f24eca117e81976d1bf7a40bc154",
}
_REBUILD = {"models/data/digits.npz": "scripts/export_digits.py",
            "models/data/digits_gmm.safetensors": "scripts/fit_digits_gmm.py",
            "metrics/data/digits_cnn.safetensors": "scripts/train_classifier.py",
            "models/data/students": "scripts/distill_students.py",
            "lm/data/arith": "scripts/train_lm_arith.py",  # before "lm/data": the first matching prefix wins
            "lm/data/target-large": "scripts/train_lm_large.py",
            "lm/data/draft-large": "scripts/train_lm_large.py",
            "lm/data": "scripts/train_lm.py"}


class ChecksumError(RuntimeError):
    """A bundled file has no committed SHA-256 checksum, or does not match it."""


def read_verified_bytes(path: str | Path, sha256: str | None, *, restore: str) -> bytes:
    """The bytes of ``path`` after checking them against ``sha256`` (hex).

    Args:
        path: the file.
        sha256: the committed digest; ``None`` or empty means none was committed (an error).
        restore: how to get a good copy back (the script that rebuilds the file), for the error message.

    Raises:
        FileNotFoundError: the file is missing.
        ChecksumError: no digest was committed, or the file's digest differs from it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {restore}")
    if not sha256:
        raise ChecksumError(f"no committed SHA-256 for {path.name}; {restore} and commit the digest it prints")
    blob = path.read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != sha256.lower():
        raise ChecksumError(f"SHA-256 mismatch for {path}: expected {sha256.lower()}, got {actual}. The file is "
                            f"corrupt or was replaced; restore it from git or {restore}")
    return blob


def bundled_path(name: str) -> Path:
    """The path of the bundled file ``name`` (relative to the package, a key of ``BUNDLED_SHA256``)."""
    if name not in BUNDLED_SHA256:
        raise KeyError(f"{name!r} is not a bundled file; known: {', '.join(sorted(BUNDLED_SHA256))}")
    return PACKAGE_DIR / name


def read_bundled(name: str) -> bytes:
    """The verified bytes of the bundled file ``name`` (see ``bundled_path``)."""
    script = next((v for k, v in _REBUILD.items() if name.startswith(k)), "reinstall fewstep")
    return read_verified_bytes(bundled_path(name), BUNDLED_SHA256[name], restore=f"rebuild it with {script}")


def verify_bundled(prefix: str) -> None:
    """Check every bundled file under ``prefix`` (for loaders that read a directory themselves)."""
    names = [name for name in BUNDLED_SHA256 if name.startswith(prefix)]
    if not names:
        raise KeyError(f"no bundled files under {prefix!r}")
    for name in names:
        read_bundled(name)
