"""Atomic file writes: nothing a user saved is half-written or lost if a save fails midway."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "remove_stale_temps"]

#: a temp file of ours is ``.<name>.pid<writer's pid>.<random><suffix>`` next to ``<name>``
_PID_TAG = "pid"


def _default_mode() -> int:
    # mkstemp creates 0600 files; saved results should get the usual permissions (0666 & ~umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files that writes of ``path`` left behind when their process was killed
    (``kill -9`` skips the cleanup of ``atomic_write``): those named as ours for ``path``
    whose writer's process no longer exists. A temp of a live writer is never touched.
    Returns the removed paths."""
    path = Path(path)
    prefix = f".{path.name}.{_PID_TAG}"
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_file(follow_symlinks=False):
            continue
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:  # removed meanwhile by another cleaner
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then rename it over ``path``.

    The temp file keeps ``path``'s suffix, so writers that infer the format from the name
    (matplotlib, PIL, imageio) work. On any error the temp file is removed and ``path`` is
    left as it was; temps that killed writers left for ``path`` are removed first
    (``remove_stale_temps``).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_PID_TAG}{os.getpid()}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
