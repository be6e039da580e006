"""atomic_write: a failed save leaves the user's file as it was and no temp file behind."""

import pytest

from lyagym.learned_models.files import atomic_write


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "result.txt"
    path.write_text("saved before")

    def half_write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_write)
    assert path.read_text() == "saved before"
    assert list(tmp_path.iterdir()) == [path]


def test_write_replaces_and_keeps_the_suffix_for_format_inference(tmp_path):
    seen = []
    path = atomic_write(tmp_path / "plot.png", lambda tmp: (seen.append(tmp), open(tmp, "w").write("new")))
    assert path.read_text() == "new" and seen[0].endswith(".png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x.txt", lambda tmp: None)


def test_temps_of_a_killed_save_are_removed_by_the_next_save_or_load(tmp_path):
    """kill -9 during a save skips atomic_write's cleanup; the next save (or checkpoint load)
    of the same path removes what it left, and never a live writer's temp."""
    import os
    import signal
    import subprocess
    import sys

    from lyagym.learned_models import SimpleDynamics, load_model

    path = tmp_path / "model.pt"
    SimpleDynamics(2, hidden=(4,)).save(path)
    code = ("import sys, time\nfrom lyagym.learned_models.files import atomic_write\n"
            "def slow(tmp):\n    open(tmp, 'wb').write(b'x' * 100000); print('writing', flush=True); time.sleep(60)\n"
            "atomic_write(sys.argv[1], slow)\n")
    for _ in range(2):  # two killed saves: the second one's start removes the first one's temp
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stale = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.pt.")]
        assert len(stale) == 1
        assert f"pid{proc.pid}." in stale[0]
    live = tmp_path / f".model.pt.pid{os.getppid()}.abc.pt"  # a living process's temp (our parent)
    live.write_bytes(b"in progress")
    foreign = tmp_path / ".model.pt.notours.pt"  # not named as ours: never touched
    foreign.write_bytes(b"")
    load_model(path)  # a load of the path cleans up as well
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["model.pt", live.name, foreign.name])
    dead = tmp_path / f".model.pt.pid{proc.pid}.xyz.pt"  # the killed writer's pid: its process is gone
    dead.write_bytes(b"left behind")
    atomic_write(path, lambda tmp: open(tmp, "w").write("new"))  # a save cleans up too
    assert path.read_text() == "new" and live.exists() and not dead.exists()
