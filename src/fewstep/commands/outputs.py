"""A command's output files: checked before any work, then written as one set through temporaries and renames.

``Outputs(paths, force)`` checks every path at once and touches nothing: a folder where a file should be, a file
where a folder should be, a name longer than the file system allows, something that is not a regular file, or an
existing file without ``--force``. Entering ``with outputs:`` creates the missing folders and one empty temporary
file beside each output, which proves every place writable before the work starts (a read-only folder, a path under
``/proc``). After the work, ``write(path, data)`` or ``open(path)`` fills a temporary and ``commit()`` renames them
all into place in one pass, with SIGINT and SIGTERM held back meanwhile, so a run's outputs are all new or all old.
Leaving the block without ``commit()`` (an error, Ctrl-C, a rank that writes nothing) removes the temporaries and
the folders it made.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["Outputs", "check_output", "name_max"]


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, that the file system under ``folder`` takes (255 when it does not say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder above ``path`` that exists (``.`` for a relative path with no existing folder)."""
    folder = path.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def check_output(path: Path, flag: str, force: bool) -> None:
    """Refuse ``path`` as an output file, with a message naming ``flag``, unless it can be written; touches nothing."""
    if path.name in ("", ".", ".."):
        raise ValueError(f"{flag} {str(path)!r} names a folder; give a file name")
    limit = name_max(_existing_ancestor(path))
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            raise ValueError(f"{flag}: the name {part[:24]}... has {size} bytes; this file system allows {limit}")
    try:
        folder = _existing_ancestor(path)
        if not folder.is_dir():
            raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")
        if os.path.lexists(path):
            if path.is_dir():
                raise ValueError(f"{flag} {path} is a folder; give a file name")
            if not path.is_file():
                raise ValueError(f"{flag} {path} is not a regular file; give a file name")
            if not force:
                raise ValueError(f"refusing to overwrite {path}; pass --force or choose another {flag}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: the folder {folder} is not writable")
    except OSError as exc:  # a path the system refuses to look at (too long, a loop of links, ...)
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (delivered on exit) so that a short critical section runs to its end."""
    hold = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, hold)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Outputs:
    """The output files of one run (see the module docstring). ``paths`` maps each option to its files."""

    def __init__(self, paths: dict[str, Iterable[Path]], force: bool, enabled: bool = True):
        self.paths: list[Path] = []
        for flag, files in paths.items():
            for path in files:
                check_output(path, flag, force)
                if any(os.path.abspath(path) == os.path.abspath(p) for p in self.paths):
                    raise ValueError(f"{path} is given as two outputs; give each its own name")
                self.paths.append(path)
        self.enabled = enabled
        self._temps: dict[Path, Path] = {}
        self._made: list[Path] = []
        self._committed = False

    def __enter__(self) -> Outputs:
        if not self.enabled:
            return self
        try:
            for path in self.paths:
                self._make_folders(path.parent)
                try:
                    fd, tmp = tempfile.mkstemp(prefix=".fewstep-", suffix=".tmp", dir=path.parent)
                except OSError as exc:
                    raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None
                os.close(fd)
                self._temps[path] = Path(tmp)
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if not self._committed:
            with _signals_held():
                self._abort()

    def _make_folders(self, folder: Path) -> None:
        missing = []
        while not os.path.lexists(folder) and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for made in reversed(missing):
            try:
                made.mkdir()
            except OSError as exc:
                raise ValueError(f"cannot make the folder {made}: {exc.strerror or exc}") from None
            self._made.append(made)

    def open(self, path: Path) -> BinaryIO:
        """The temporary file of output ``path``, open for writing bytes (close it before ``commit``)."""
        if not self.enabled:
            raise RuntimeError("this process writes no outputs")
        return open(self._temps[path], "wb")

    def write(self, path: Path, data: bytes) -> None:
        with self.open(path) as fh:
            fh.write(data)

    def commit(self) -> None:
        """Rename every temporary into place (with the permissions a new file gets under the umask)."""
        if not self.enabled:
            return
        mode = 0o666 & ~_umask()
        with _signals_held():
            for path, tmp in self._temps.items():
                os.chmod(tmp, mode)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            for path, tmp in self._temps.items():
                os.replace(tmp, path)
            self._committed = True

    def _abort(self) -> None:
        for tmp in self._temps.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._temps.clear()
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):  # left when something else was put in it meanwhile
                folder.rmdir()
        self._made.clear()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
