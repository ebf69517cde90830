"""Bundled files are read only after their SHA-256 matches the committed one: one error type, one check.

The bytes are hashed and then handed back, so what a caller parses is exactly what was checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["ChecksumError", "read_verified_bytes"]


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
