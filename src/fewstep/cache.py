"""fewstep's on-disk cache (``$FEWSTEP_CACHE``, default ``~/.cache/fewstep``): content-addressed blobs and atomic
writes.

A blob is named by the SHA-256 of its bytes (``"sha256:<hex>"``), so a recipe can name cached data without
naming a path, and a damaged or edited entry is detected when it is read. Every write goes to a temporary file in
the same directory and is renamed into place, so an interrupted run never leaves a partial file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "atomic_write_bytes", "put_blob", "get_blob", "is_blob_ref"]

_REF = re.compile(r"sha256:[0-9a-f]{64}")


def cache_dir() -> Path:
    return Path(os.environ.get("FEWSTEP_CACHE", Path.home() / ".cache" / "fewstep"))


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename.

    The file gets the mode a plain ``open(path, "wb")`` would give it (an existing file's own mode, else
    ``0o666`` less the umask), not the ``0o600`` of the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def is_blob_ref(value) -> bool:
    return isinstance(value, str) and _REF.fullmatch(value) is not None


def _blob_path(kind: str, digest: str) -> Path:
    return cache_dir() / kind / f"{digest}.bin"


def put_blob(kind: str, data: bytes) -> str:
    """Store ``data`` under ``kind`` and return its reference ``"sha256:<hex>"``."""
    digest = hashlib.sha256(data).hexdigest()
    path = _blob_path(kind, digest)
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest):
        atomic_write_bytes(path, data)
    return f"sha256:{digest}"


def get_blob(kind: str, ref: str, *, rebuild: str) -> bytes:
    """The bytes stored under ``ref``, verified; ``rebuild`` says how to make them again when they are missing or
    damaged (the message of the ``ValueError`` raised then)."""
    if not is_blob_ref(ref):
        raise ValueError(f"{ref!r} is not a cache reference (sha256:<64 hex digits>)")
    digest = ref.split(":", 1)[1]
    path = _blob_path(kind, digest)
    if not path.is_file():
        raise ValueError(f"the {kind} data {ref} is not in the cache ({cache_dir()}); {rebuild}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"the cached {kind} data {path} is damaged (its SHA-256 differs from {ref}); delete it "
                         f"and {rebuild}")
    return data
