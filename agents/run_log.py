"""What the model-based loops write: CSV rows, TensorBoard scalars, and the run folder's checkpoint."""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np

from .data import atomic_save

__all__ = ["write_csv", "read_csv", "TensorBoardLog", "require_tensorboard", "RunFolder", "RunFolderBusy", "committed_file"]

#: run folders this process holds: real path -> [the open lock file's descriptor, holds]
_HELD: dict[str, list[int]] = {}


class RunFolderBusy(RuntimeError):
    """Another process is writing the run folder."""


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts; the union of their keys is the header) as CSV, atomically."""
    if not rows:
        return
    fields = list(rows[0])
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]

    def write(f):
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)

    atomic_save(path, write, mode="w")


def read_csv(path: str) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(v: str):
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    except (TypeError, ValueError):
        return v


def require_tensorboard() -> None:
    """Raise a clear ``ImportError`` when the tensorboard package (which torch's and SB3's
    TensorBoard writers need) is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as error:
        raise ImportError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from error


class TensorBoardLog:
    """Per-episode rows as TensorBoard scalars, the x axis being real env steps.

    Every numeric, finite field of a row except its identifiers (``method``, ``seed``,
    ``episode``, ``real_steps``) becomes the scalar ``"<prefix>/<field>"`` at step
    ``row["real_steps"]``, so runs of different methods line up on the data they used.
    Call it with each row (it fits the loops' ``on_episode`` hook); ``close()`` flushes.

    Args:
        log_dir: event-file folder (``tensorboard --logdir`` it).
        prefix: scalar-name prefix, e.g. the method (``"pets-stable"``) or ``"eval"``.

    Needs the ``tensorboard`` package (``pip install tensorboard`` or ``lyagym[tensorboard]``).
    """

    _IDENTIFIERS = ("method", "seed", "episode", "real_steps")

    def __init__(self, log_dir: str, prefix: str = "episode") -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.prefix = prefix
        self.writer = SummaryWriter(log_dir)

    def __call__(self, row: dict[str, Any]) -> None:
        if "real_steps" not in row:
            raise ValueError(f"row must have a 'real_steps' field (the x axis), got fields {sorted(row)}")
        step = int(row["real_steps"])
        for key, value in row.items():
            if key in self._IDENTIFIERS or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                continue
            if math.isfinite(float(value)):
                self.writer.add_scalar(f"{self.prefix}/{key}", float(value), step)
        self.writer.flush()  # once per episode: a crashed run keeps its curves

    def close(self) -> None:
        self.writer.close()


class RunFolder:
    """A loop's output folder whose state commits as one unit.

    Each checkpoint goes to a fresh ``state-<k>/`` folder (model weights, data, rows,
    random-number states); only when all of it is on disk is ``manifest.json`` replaced
    (atomically) to name it, and older state folders are removed after that. A reader
    (``resume``) follows the manifest only, so a kill at any moment leaves either the old
    or the new state, never a mix. ``episodes.csv`` at the top is a copy of the committed
    rows for people and plots; it is never read back.

    The manifest also records what made the run (``algo`` and its ``settings``): a
    resume with another algorithm or other settings is refused instead of mixing runs.

    One writer at a time: ``prepare`` takes an exclusive lock on ``.lock`` in the folder
    (``fcntl.flock``, which the system drops when the process ends, however it ends), and a
    second process is refused (``RunFolderBusy``, naming the holder's pid) -- e.g. a study
    restarted while the worker processes of a killed one still run its cells, whose commits
    would otherwise interleave. Within one process the lock is re-entrant and counted (the
    study holds a cell's folder around the loop that holds it too): each ``lock`` (or
    ``prepare``) is undone by one ``release``, which the loops call when they return. Where ``fcntl`` does not exist (Windows) there is no lock.
    """

    MANIFEST = "manifest.json"
    #: settings a resume may change: extending a run by more episodes (or a larger budget of
    #: real steps) is what resuming is for
    EXTENDABLE = ("episodes", "max_real_steps")

    def __init__(self, path: str, *, algo: str, settings: dict[str, Any]) -> None:
        self.path, self.algo = str(path), str(algo)
        self.settings = _jsonable(settings)

    def manifest(self) -> dict[str, Any] | None:
        import json

        file = os.path.join(self.path, self.MANIFEST)
        if not os.path.exists(file):
            return None
        try:
            with open(file) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"unreadable run manifest {file!r}: {e}") from None

    def has_state(self) -> bool:
        return self.manifest() is not None or os.path.exists(os.path.join(self.path, "episodes.csv"))

    def lock(self) -> None:
        """Hold the folder for this process (see the class docstring); ``RunFolderBusy`` if
        another process holds it."""
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return
        os.makedirs(self.path, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            return
        fd = os.open(os.path.join(self.path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusy(f"{self.path!r} is being written by another process (pid {holder}): wait for it to "
                                "finish, stop it, or use another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD[key] = [fd, 1]

    def release(self) -> None:
        """Undo one ``lock``: at the last, other processes may write the folder again (a no-op if
        this process does not hold it)."""
        key = os.path.realpath(self.path)
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            import fcntl

            del _HELD[key]
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])

    def prepare(self, resume: bool, overwrite: bool = False) -> dict[str, Any] | None:
        """Check the folder before any work: the committed state's manifest when resuming
        (``None``: nothing committed yet), else ``None`` after making sure nothing saved is
        overwritten. Takes the folder's lock first (``lock``)."""
        self.lock()
        try:
            return self._check(resume, overwrite)
        except Exception:  # refused: the folder is left to whoever comes next
            self.release()
            raise

    def _check(self, resume: bool, overwrite: bool) -> dict[str, Any] | None:
        manifest = self.manifest()
        if not resume:
            if self.has_state() and not overwrite:
                raise FileExistsError(f"{self.path!r} already holds a run; pass resume=True to continue it "
                                      "(or overwrite=True, or another folder)")
            return None
        if manifest is None:
            if os.path.exists(os.path.join(self.path, "episodes.csv")):
                raise ValueError(f"{self.path!r} holds a run without a manifest (an older or foreign run folder): it cannot be resumed")
            return None
        if manifest.get("algo") != self.algo:
            raise ValueError(f"{self.path!r} holds a {manifest.get('algo')!r} run; it cannot be resumed as {self.algo!r}")
        stored = manifest.get("settings", {})
        differ = sorted(k for k in set(self.settings) | set(stored) if k not in self.EXTENDABLE and self.settings.get(k) != stored.get(k))
        if differ:
            raise ValueError(f"{self.path!r} was run with other settings ({', '.join(differ)}); resume it with the same ones")
        return manifest

    def file(self, manifest: dict[str, Any], name: str) -> str:
        """Path of ``name`` in the committed state."""
        return os.path.join(self.path, manifest["state"], name)

    def commit(self, rows: list[dict[str, Any]], writers: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        """Write a new state (``writers``: file name -> ``write(path)``) and commit it with ``rows``."""
        import json
        import shutil

        os.makedirs(self.path, exist_ok=True)
        previous = self.manifest()
        k = int(previous["step"]) + 1 if previous else 0
        state = f"state-{k:06d}"
        folder = os.path.join(self.path, state)
        if os.path.exists(folder):  # left by a kill before its manifest was written: never committed
            shutil.rmtree(folder)
        os.makedirs(folder)
        for name, write in writers.items():
            write(os.path.join(folder, name))
        write_csv(os.path.join(folder, "episodes.csv"), rows)
        manifest = {"algo": self.algo, "settings": self.settings, "step": k, "state": state, "episodes": len(rows),
                    **(extra or {})}
        atomic_save(os.path.join(self.path, self.MANIFEST), lambda f: f.write(json.dumps(manifest, indent=1)), mode="w")
        write_csv(os.path.join(self.path, "episodes.csv"), rows)
        for name in os.listdir(self.path):
            if name.startswith("state-") and name != state:
                shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def committed_file(out_dir: str, name: str) -> str:
    """Path of ``name`` in ``out_dir``'s committed state (``RunFolder``), or ``out_dir/name``
    for a folder written without a manifest (older runs, the Dyna loop)."""
    import json

    manifest = os.path.join(out_dir, RunFolder.MANIFEST)
    if os.path.exists(manifest):
        with open(manifest) as f:
            return os.path.join(out_dir, json.load(f)["state"], name)
    return os.path.join(out_dir, name)
