"""Compiled helpers: lyagym's cache directory, its trust rules, and C sources built there.

lyagym writes two kinds of code it later runs into one cache directory: the pendulum's
derived equations (:mod:`lyagym.envs.symbolic`) and small C kernels built with the system
compiler and loaded through ``ctypes`` (the pendulum's chain sweep, the learned models' MLP
evaluation, :mod:`lyagym.learned_models.mlp_native`). Anyone who could write those files could
make us execute their code, so the directory is created owner-only (``0700``) and a file, or a
directory, that is not the user's own or that group or others may write is never loaded
(:func:`unsafe_reason`). A kernel is built once per source, compiler, flags and (for
``-march=native`` builds) CPU, into a name that hashes them, written to a temp file and renamed,
so concurrent processes never load a half-written library. ``LYAGYM_NATIVE=0`` switches every
kernel off (:func:`build_library` returns ``None``; callers keep their torch/numpy path).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "unsafe_reason", "private_dir", "compiler", "build_library", "native_enabled"]


def cache_dir() -> Path:
    """Where derived models and built kernels are cached: ``$LYAGYM_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/lyagym``, else ``~/.cache/lyagym``. Not created until something is written."""
    explicit = os.environ.get("LYAGYM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lyagym"


def unsafe_reason(path: Path) -> str | None:
    """Why ``path`` (a cache file or directory) must not be trusted, or ``None`` if it may be.

    Trusted means: not a symbolic link, owned by the current user, and not writable by group
    or others; anyone else who could write it could make us execute their code. Where the
    platform has no notion of file owners (Windows) only the link test applies."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot stat it ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return None
    if st.st_uid != getuid():
        return f"it is owned by uid {st.st_uid}, not by this user (uid {getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group or others can write it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def private_dir(directory: Path) -> None:
    """Create ``directory`` owner-only; raise ``OSError`` if it exists but is not trusted."""
    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # made by a concurrent process meanwhile: checked below
            pass
    reason = unsafe_reason(directory)
    if reason is not None:
        raise PermissionError(f"untrusted cache directory {directory}: {reason}")


def compiler() -> str | None:
    """The C compiler: ``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on the path."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def native_enabled() -> bool:
    """False where ``LYAGYM_NATIVE=0`` or on Windows (no kernel is built or loaded there)."""
    return os.environ.get("LYAGYM_NATIVE", "1") != "0" and sys.platform != "win32"


def _cpu_identity() -> bytes:
    """What a ``-march=native`` build depends on: the CPU's model and feature flags (Linux), else
    what ``platform`` knows. A cache shared between machines then keeps one build per CPU."""
    try:
        with open("/proc/cpuinfo", "rb") as fh:
            lines = [ln for ln in fh.read().split(b"\n\n", 1)[0].splitlines()
                     if ln.startswith((b"model name", b"flags", b"Features", b"CPU part"))]
        if lines:
            return b"\n".join(lines)
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}".encode()


def build_library(source: Path, stem: str, flags: list[str], *, native_cpu: bool = False) -> ctypes.CDLL | None:
    """Build ``source`` into ``<cache_dir>/<stem>_<hash>.so`` once and load it.

    Returns ``None`` where kernels are switched off (:func:`native_enabled`) or no compiler is
    found. Raises ``OSError`` (an untrusted cache file or directory, a library that will not
    load) or ``subprocess.SubprocessError`` (the build failed); callers fall back to their
    torch/numpy path. ``native_cpu``: the flags tune for this CPU (``-march=native``), so the
    hash also covers the CPU's identity."""
    if not native_enabled():
        return None
    cc = compiler()
    if cc is None:
        return None
    key = source.read_bytes() + cc.encode() + sys.platform.encode() + " ".join(flags).encode()
    if native_cpu:
        key += _cpu_identity()
    path = cache_dir() / f"{stem}_{hashlib.sha256(key).hexdigest()[:16]}.so"
    private_dir(path.parent)
    if path.exists():
        reason = unsafe_reason(path)
        if reason is not None:
            raise PermissionError(f"refusing to load {path}: {reason}")
    else:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", tmp, str(source), "-lm"],
                           check=True, capture_output=True, timeout=120)
            os.chmod(tmp, 0o700)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(path))
