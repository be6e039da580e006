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
