"""fewstep.cache.atomic_write_bytes: atomic, and the file's mode is what a plain write would give."""

import os
import stat

from fewstep.cache import atomic_write_bytes


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_umask_mode_and_an_existing_file_keeps_its_own(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")  # what open(path, "wb") gives under this process's umask
    new = atomic_write_bytes(tmp_path / "sub" / "new.bin", b"data")
    assert new.read_bytes() == b"data" and _mode(new) == _mode(plain) != 0o600
    os.chmod(new, 0o640)
    atomic_write_bytes(new, b"more")
    assert new.read_bytes() == b"more" and _mode(new) == 0o640
    assert sorted(p.name for p in new.parent.iterdir()) == ["new.bin"]  # no temporary file left
