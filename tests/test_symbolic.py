"""The Kane's-method derivation and its on-disk cache."""

import warnings

import numpy as np
import pytest

from lyagym.envs import PendulumDynamics, symbolic


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LYAGYM_CACHE_DIR", str(tmp_path))
    symbolic._memo.cache_clear()
    yield tmp_path
    symbolic._memo.cache_clear()


def test_cache_dir_env_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LYAGYM_CACHE_DIR", str(tmp_path / "explicit"))
    assert symbolic.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LYAGYM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert symbolic.cache_dir() == tmp_path / "xdg" / "lyagym"
    from lyagym.envs.symbolic import cache_dir  # the import path ``lyagym info`` uses

    assert cache_dir is symbolic.cache_dir


def test_mass_matrix_is_the_textbook_one():
    import sympy as sp

    mass, forcing, energy, sy = symbolic.derive_equations(2, "absolute", (0, 1))
    (q1, q2), (w1, w2), (m1, m2), (l1, l2), g, b = sy["q"], sy["w"], sy["m"], sy["l"], sy["g"], sy["b"]
    expected = sp.Matrix([[(m1 + m2) * l1**2, m2 * l1 * l2 * sp.cos(q1 - q2)], [m2 * l1 * l2 * sp.cos(q1 - q2), m2 * l2**2]])
    assert sp.simplify(mass - expected) == sp.zeros(2, 2)
    assert sp.simplify(forcing[1] - (m2 * l1 * l2 * sp.sin(q1 - q2) * w1**2 - m2 * g * l2 * sp.sin(q2) - b * w2 + sy["u"][1])) == 0


def test_second_construction_uses_cache(fresh_cache, monkeypatch):
    dyn = PendulumDynamics(2, damping_mode="joint")
    files = list(fresh_cache.glob("pendulum_n2_joint_*.py"))
    assert len(files) == 1 and "sympy" in files[0].name
    x = np.array([[0.3, -1.0, 0.5, 2.0]])
    expected = dyn.derivative(x)

    def no_derivation(*args, **kwargs):
        raise AssertionError("derived again instead of reading the cache")

    symbolic._memo.cache_clear()  # forget the in-process copy; the disk file must serve
    monkeypatch.setattr(symbolic, "generate_source", no_derivation)
    again = PendulumDynamics(2, damping_mode="joint", masses=[2.0, 1.0])
    np.testing.assert_array_equal(PendulumDynamics(2, damping_mode="joint").derivative(x), expected)
    assert again.derivative(x).shape == (1, 4)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "edit"])
def test_corrupt_cache_is_rebuilt_with_warning(fresh_cache, damage):
    dyn = PendulumDynamics(1)
    x = np.array([[0.4, 0.1]])
    expected = dyn.derivative(x)
    (path,) = fresh_cache.glob("pendulum_n1_*.py")
    text = path.read_text()
    if damage == "garbage":
        path.write_bytes(b"\x00\xff not python")
    elif damage == "truncate":
        path.write_text(text[: len(text) // 2])
    else:  # valid Python, wrong physics: the checksum catches it
        path.write_text(text.replace("K0", "2*K0", 3))
    symbolic._memo.cache_clear()
    with pytest.warns(RuntimeWarning, match="re-deriving"):
        rebuilt = PendulumDynamics(1)
    np.testing.assert_array_equal(rebuilt.derivative(x), expected)
    assert path.read_text() == text  # repaired on disk
    symbolic._memo.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PendulumDynamics(1)


def test_unwritable_cache_is_not_fatal(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LYAGYM_CACHE_DIR", str(blocker / "sub"))  # a directory under a file
    symbolic._memo.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not write"):
            dyn = PendulumDynamics(1, actuated=())
        assert dyn.derivative(np.zeros(2)).shape == (2,)
    finally:
        symbolic._memo.cache_clear()


def test_cache_key_separates_structures():
    keys = {
        symbolic.structure_key(2, "absolute", (0, 1)),
        symbolic.structure_key(2, "joint", (0, 1)),
        symbolic.structure_key(2, "absolute", (1,)),
        symbolic.structure_key(3, "absolute", (0, 1)),
    }
    assert len(keys) == 4
    assert all(f"_f{symbolic.FORMAT_VERSION}_" in k for k in keys)


def test_generated_source_is_plain_python():
    src = symbolic.generate_source(2, "absolute", (1,))
    assert "def accel(s1, s2, c1, c2, w1, w2, u2, K)" in src
    assert "def accel_f(q1, q2, w1, w2, u2, K)" in src
    assert "sympy" not in src.split("\n", 2)[2]  # runs without sympy


def test_bad_structure():
    with pytest.raises(ValueError, match="n_links"):
        symbolic.compile_pendulum(0)
    with pytest.raises(ValueError, match="damping_mode"):
        symbolic.compile_pendulum(2, "coulomb")
    with pytest.raises(ValueError, match="actuated"):
        symbolic.compile_pendulum(2, "absolute", (0, 0))


def test_cache_directory_is_created_owner_only(tmp_path, monkeypatch):
    import os
    import stat

    target = tmp_path / "deep" / "cache"
    monkeypatch.setenv("LYAGYM_CACHE_DIR", str(target))
    symbolic._memo.cache_clear()
    try:
        PendulumDynamics(1, actuated=())
    finally:
        symbolic._memo.cache_clear()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    (path,) = target.glob("pendulum_n1_*.py")
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "getuid"), reason="POSIX permissions")
@pytest.mark.parametrize("where", ["file", "directory"])
def test_cache_writable_by_others_is_never_executed(fresh_cache, where):
    """An edited module with a recomputed checksum would pass ``_verify``: the permission
    check is what keeps it from running."""
    import hashlib

    dyn = PendulumDynamics(1, actuated=())
    x = np.array([[0.4, 0.1]])
    expected = dyn.derivative(x)
    (path,) = fresh_cache.glob("pendulum_n1_*.py")
    body = path.read_text().partition("\n")[2] + "\nraise SystemExit('planted code ran')\n"
    path.write_text(f"# sha256 {hashlib.sha256(body.encode()).hexdigest()}\n" + body)
    (path if where == "file" else fresh_cache).chmod(0o666 if where == "file" else 0o777)
    symbolic._memo.cache_clear()
    with pytest.warns(RuntimeWarning, match="refusing to load .*group or others can write"):
        rebuilt = PendulumDynamics(1, actuated=())
    np.testing.assert_array_equal(rebuilt.derivative(x), expected)
    assert "planted code ran" in path.read_text()  # left alone: not ours to rewrite


def test_unsafe_reason(tmp_path):
    import os

    private = tmp_path / "p"
    private.mkdir(mode=0o700)
    assert symbolic.unsafe_reason(private) is None
    link = tmp_path / "link"
    link.symlink_to(private)
    assert "symbolic link" in symbolic.unsafe_reason(link)
    if hasattr(os, "getuid"):
        private.chmod(0o720)
        assert "group or others" in symbolic.unsafe_reason(private)
    assert "cannot stat" in symbolic.unsafe_reason(tmp_path / "missing")
