"""`lyagym demo --stages basic`: runs end to end at --size tiny and writes a valid GIF and PNG."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from lyagym.agents import cli


def test_demo_tiny_writes_gif_and_png(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--size", "tiny", "--stages", "basic", "--links", "2", "--out", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    gif, png = out / "pendulum.gif", out / "trajectory.png"
    assert str(gif) in printed and str(png) in printed
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames > 1 and im.size == (64, 64)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
    assert sorted(p.name for p in out.iterdir()) == ["pendulum.gif", "trajectory.png"]  # no temp files left


def test_demo_refuses_to_overwrite_without_flag(tmp_path, capsys):
    out = tmp_path / "demo"
    basic = ["demo", "--size", "tiny", "--stages", "basic", "--out", str(out), "--links", "1"]
    assert cli.main([*basic, "--controller", "random"]) == 0
    before = (out / "pendulum.gif").read_bytes()
    assert cli.main(basic) == 1
    assert "--overwrite" in capsys.readouterr().out
    assert (out / "pendulum.gif").read_bytes() == before
    assert cli.main([*basic, "--overwrite"]) == 0


def test_demo_rejects_bad_links(tmp_path, capsys):
    assert cli.main(["demo", "--size", "tiny", "--stages", "basic", "--out", str(tmp_path), "--links", "0"]) == 2
    assert "--links" in capsys.readouterr().err


def test_energy_controller_swings_up_and_balances_one_link():
    from lyagym.agents.demo import simulate_swingup

    episode = simulate_swingup(1, 5.0, controller="energy", seed=0, frame_every=1000, frame_size=32)
    assert episode["upright_error"][0] > 3.0  # starts hanging down
    assert np.all(episode["upright_error"][-100:] < 0.05)  # held upright for the last second
    assert episode["states"].shape == (501, 2) and episode["actions"].shape == (500, 1)
    assert math.isfinite(float(episode["rewards"].sum()))
