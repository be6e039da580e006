"""Every user mistake on the command line: exit code 2, one line on stderr naming the flag and
what it accepts, no traceback, and nothing done (checked before any work starts)."""

from __future__ import annotations

import argparse
import os

import pytest

from lyagym.agents import cli

#: every subcommand with flags (``info`` has none; ``reproduce`` is swept study by study)
COMMANDS = tuple(c for c in cli.COMMANDS if c not in ("info", "reproduce"))
#: ``lyagym reproduce STUDY``: each study is a subcommand of its own
STUDIES = ("fig3", "fig4", "fig5", "lyanet-toy", "lyanet-digits", "lyanet-early-exit", "lyanet-pendulum", "video-fig7",
           "mbrl-swingup", "mbrl-envs", "lasa")


def _call(argv: list[str], capsys) -> tuple[int, str]:
    """``lyagym ARGV`` in this process: ``(exit code, stderr)``."""
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse ends through sys.exit
        code = e.code
    return int(code or 0), capsys.readouterr().err


def _assert_one_line_error(code: int, err: str, flag: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and "Traceback" not in err


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _subparser(command: str) -> argparse.ArgumentParser:
    """The parser of ``lyagym COMMAND`` or, for ``"reproduce STUDY"``, of that study."""
    command, _, study = command.partition(" ")
    sub = _choices(cli.build_parser())[command]
    cli._load(cli.COMMANDS[command][0]).add_arguments(sub)
    return _choices(sub)[study] if study else sub


def _typed_flags(command: str) -> list[argparse.Action]:
    # --threads is global: lyagym takes it from anywhere on the line before parsing (tested below)
    return [a for a in _subparser(command)._actions if a.option_strings and a.type is not None and a.dest != "threads"]


def _numeric_flags(command: str) -> list[argparse.Action]:
    return [a for a in _typed_flags(command) if a.type.__name__ in ("integer", "number")]


ALL = COMMANDS + tuple(f"reproduce {study}" for study in STUDIES)


def _bad_values(kind) -> list[str]:
    """Values outside what ``kind`` (a ``cli_types`` converter) accepts, from its declared range."""
    bad = ["nan", "inf", "-inf", "abc", ""]
    low, high = kind.minimum, kind.maximum
    if kind.__name__ == "integer":
        bad += ["1.5", "1e3"]
        if low is not None:
            bad.append(str(low - 1))
        if high is not None:
            bad.append(str(high + 1))
    else:
        if low is not None:
            bad.append(repr(low if kind.strict else low - 1e-3))
            bad.append(repr(low - 1.0))
        if high is not None:
            bad.append(repr(high * 2 + 1))
    return bad


def test_every_study_is_swept():
    assert set(STUDIES) == set(_choices(_subparser("reproduce")))


@pytest.mark.parametrize("command", ALL)
def test_every_numeric_flag_states_its_range(command):
    """No bare int/float/str conversion: every typed flag goes through a checking converter."""
    flags = _typed_flags(command)
    assert _numeric_flags(command)
    for action in flags:
        # cli_types' converters, or a command's own that parse a structured value (verify's LO,HI boxes)
        assert getattr(action.type, "__name__", "") in ("integer", "number", "folder", "existing_path", "_pair", "_input_pair",
                                                        "_rho"), (
            command, action.option_strings)


@pytest.mark.parametrize("command", ALL)
def test_bad_numbers_exit_2_in_one_line_naming_the_flag(command, tmp_path, capsys):
    out = str(tmp_path / ("m.pt" if command == "train" else "run"))
    extra = ["--no-progress"] if "--no-progress" in _subparser(command)._option_string_actions else []
    for action in _numeric_flags(command):
        flag = action.option_strings[0]
        for value in _bad_values(action.type):
            positional = ["model.pt"] if command == "verify" else []  # its checkpoint argument
            code, err = _call([*command.split(), *positional, flag, value, "--out", out, *extra], capsys)
            _assert_one_line_error(code, err, flag)
            assert "expect" in err, err
    assert not os.listdir(tmp_path)  # nothing was written


def test_reported_bad_values_name_the_argument(tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    for argv, flag, accepted in (
        (["train", "--dt", "nan", "--out", out], "--dt", "finite number in (0, 1]"),
        (["train", "--device", "meta", "--out", out], "--device", "cpu"),
        (["mbrl", "--fit-epochs", "0", "--out", str(tmp_path / "r")], "--fit-epochs", "integer >= 1"),
        (["mbrl", "--episodes", "-1", "--out", str(tmp_path / "r")], "--episodes", "integer >= 0"),
        (["mbrl", "--algo", "sac", "--steps", "-5", "--out", str(tmp_path / "r")], "--steps", "integer >= 1"),
        (["mbrl", "--algo", "mbpo", "--model", "ensemble-clf", "--out", str(tmp_path / "r")], "--model", "pets only"),
        (["plan", "--planner", "sgd"], "--planner", "mppi"),
    ):
        code, err = _call(argv + ["--no-progress"], capsys)
        _assert_one_line_error(code, err, flag)
        assert accepted in err, err
    assert not os.listdir(tmp_path)


def test_train_checks_its_output_paths_before_training(tmp_path, capsys):
    base = ["train", "--samples", "10", "--epochs", "1", "--no-progress", "--out"]
    code, err = _call(base + [str(tmp_path / "nodir" / "x.pt")], capsys)
    _assert_one_line_error(code, err, "--out")
    assert "does not exist" in err
    code, err = _call(base + [str(tmp_path)], capsys)
    _assert_one_line_error(code, err, "--out")
    # the certificate beside the checkpoint is never replaced silently, even without the .pt
    (tmp_path / "mine.cert.json").write_text("{}")
    code, err = _call(base + [str(tmp_path / "mine.pt")], capsys)
    _assert_one_line_error(code, err, "--out")
    assert "mine.cert.json exists" in err and "--overwrite" in err
    assert (tmp_path / "mine.cert.json").read_text() == "{}" and not (tmp_path / "mine.pt").exists()
    # a simple model writes no certificate: the same name is free for it
    (tmp_path / "mine.pt").write_bytes(b"x")
    code, err = _call(base[:-1] + ["--kind", "simple", "--out", str(tmp_path / "mine.pt")], capsys)
    _assert_one_line_error(code, err, "--out")
    assert "mine.pt exists" in err


def test_plan_checks_model_and_out_before_planning(tmp_path, capsys):
    import torch

    from lyagym.learned_models import StableControlledDynamics

    torch.manual_seed(0)
    ckpt = tmp_path / "n1.pt"
    StableControlledDynamics(2, 1, hidden=(8,), lyap_hidden=(8,), sigma_hidden=(4,), dt=0.05).save(ckpt)
    code, err = _call(["plan", "--model", str(ckpt), "--links", "2", "--no-progress"], capsys)
    _assert_one_line_error(code, err, "--links")
    assert "is for 1 link" in err and "pass --links 1" in err
    code, err = _call(["plan", "--model", str(ckpt), "--dt", "0.1", "--no-progress"], capsys)
    _assert_one_line_error(code, err, "--dt 0.05")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, err = _call(["plan", "--model", str(tmp_path / "junk.pt"), "--no-progress"], capsys)
    _assert_one_line_error(code, err, "--model")
    code, err = _call(["plan", "--model", str(tmp_path / "missing.pt"), "--no-progress"], capsys)
    _assert_one_line_error(code, err, "--model")
    # plan --out never replaces an earlier run's plot and GIF silently
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "mpc.gif").write_bytes(b"earlier")
    code, err = _call(["plan", "--out", str(folder), "--no-progress"], capsys)
    _assert_one_line_error(code, err, "--out")
    assert "--overwrite" in err and (folder / "mpc.gif").read_bytes() == b"earlier"
    code, err = _call(["plan", "--out", str(ckpt), "--no-progress"], capsys)
    _assert_one_line_error(code, err, "--out")


def _out_type(command: str) -> str:
    out = next(a for a in _subparser(command)._actions if a.dest == "out")
    return getattr(out.type, "__name__", "")


@pytest.mark.parametrize("command", [c for c in ALL if c not in ("train", "verify")])  # their --out is a file
def test_output_folders_are_never_files(command, tmp_path, capsys):
    assert _out_type(command) == "folder"
    (tmp_path / "f").write_text("")
    code, err = _call([*command.split(), "--out", str(tmp_path / "f")], capsys)
    _assert_one_line_error(code, err, "--out")
    assert "is a file" in err


def test_missing_input_paths_are_named(tmp_path, capsys):
    code, err = _call(["reproduce", "video-fig7", "--video", str(tmp_path / "nothing.mp4")], capsys)
    _assert_one_line_error(code, err, "--video")


def test_earlier_study_results_are_one_line(tmp_path, capsys):
    out = tmp_path / "fig3"
    out.mkdir()
    (out / "fig3.png").write_bytes(b"earlier")
    code, err = _call(["reproduce", "fig3", "--size", "tiny", "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "--overwrite")
    assert (out / "fig3.png").read_bytes() == b"earlier"


def test_argparse_mistakes_are_one_line_too(capsys):
    for argv, flag in ((["train"], "--out"), (["plan", "--bogus"], "--bogus"), (["plan", "--horizon"], "--horizon"),
                       (["reproduce", "fig5", "--threads", "-1"], "--threads"), (["--threads", "x", "plan"], "--threads")):
        code, err = _call(argv, capsys)
        _assert_one_line_error(code, err, flag)


def test_plan_out_on_an_env_that_cannot_render_fails_before_planning(tmp_path, capsys, monkeypatch):
    """``lyagym plan --out`` draws a GIF: an env whose renderer cannot start here (a headless
    machine's MuJoCo, a missing OpenGL back-end) is refused in one line before any planning, and
    without --out the same run never renders."""
    import gymnasium as gym

    from lyagym.agents import cli_plan, mpc

    class NoDisplay(gym.Wrapper):
        def render(self):
            raise RuntimeError("no display\nsecond line")

    real_make_env = cli_plan.make_env
    made = []

    def make_env(args, steps, render_mode=None):
        made.append(render_mode)
        return NoDisplay(real_make_env(args, steps, render_mode=render_mode))

    monkeypatch.setattr(cli_plan, "make_env", make_env)
    real_episode = mpc.mpc_episode
    monkeypatch.setattr(mpc, "mpc_episode", lambda *a, **k: pytest.fail("planned before the render check"))
    code, err = _call(["plan", "--links", "1", "--steps", "2", "--out", str(tmp_path / "gif")], capsys)
    _assert_one_line_error(code, err, "--out")
    assert "cannot render here (RuntimeError: no display)" in err and "MUJOCO_GL" in err
    assert not (tmp_path / "gif").exists()

    def broken_make_env(args, steps, render_mode=None):  # the back-end fails as the env is made
        raise AttributeError("'NoneType' object has no attribute 'glGetError'")

    monkeypatch.setattr(cli_plan, "make_env", broken_make_env)
    code, err = _call(["plan", "--links", "1", "--steps", "2", "--out", str(tmp_path / "gif")], capsys)
    _assert_one_line_error(code, err, "--out")
    monkeypatch.setattr(cli_plan, "make_env", make_env)
    monkeypatch.setattr(mpc, "mpc_episode", real_episode)
    code, err = _call(["plan", "--links", "1", "--steps", "2", "--samples", "8", "--horizon", "3", "--no-progress"], capsys)
    assert code == 0 and made[-1] is None, err


def test_plan_out_on_a_machine_without_a_display_renders_mujoco_off_screen(tmp_path, capsys, monkeypatch):
    from lyagym.agents import cli_plan

    for name in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL"):
        monkeypatch.setenv(name, "")  # recorded, so that what the run sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setattr(cli_plan.sys, "platform", "linux")
    monkeypatch.setattr(cli_plan, "make_env", lambda *a, **k: (_ for _ in ()).throw(ValueError("stop here")))
    code, err = _call(["plan", "--links", "1", "--out", str(tmp_path / "gif")], capsys)
    assert code == 2 and "stop here" in err
    assert os.environ["MUJOCO_GL"] == "egl"
    monkeypatch.setenv("MUJOCO_GL", "osmesa")  # a user's own choice is kept
    _call(["plan", "--links", "1", "--out", str(tmp_path / "gif")], capsys)
    assert os.environ["MUJOCO_GL"] == "osmesa"


def test_verify_on_an_ensemble_says_where_its_certificate_is(tmp_path, capsys):
    from lyagym.learned_models import Ensemble, member_factory, save_model

    path = str(tmp_path / "ensemble.pt")
    save_model(Ensemble(member_factory("stable", 2, 1, dt=0.05, hidden=(8,)), 2), path)
    code, err = _call(["verify", path, "--box=-1,1", "--box=-1,1", "--u-box=-1,1"], capsys)
    _assert_one_line_error(code, err, "ensemble.pt")
    assert "holds an ensemble of 2 StableControlledDynamics members" in err and ".certificate()" in err


def test_plan_with_an_autonomous_model_says_there_is_nothing_to_plan(tmp_path, capsys):
    from lyagym.learned_models import SimpleDynamics, save_model

    path = str(tmp_path / "pairs.pt")  # what lyagym train --data pairs saves: x -> xdot, no input
    save_model(SimpleDynamics(4, 0, hidden=(8,), dt=0.05), path)
    code, err = _call(["plan", "--links", "2", "--model", path, "--steps", "2"], capsys)
    _assert_one_line_error(code, err, "--model")
    assert "autonomous model (action_dim=0" in err and "pass --links" not in err
    save_model(SimpleDynamics(4, 1, hidden=(8,), dt=0.05), path)  # right links, one input of two
    code, err = _call(["plan", "--links", "2", "--model", path, "--steps", "2"], capsys)
    assert code == 2 and "state_dim=4, action_dim=1" in err and "pass --links" not in err


def test_plan_on_another_env_without_a_model_asks_for_one(capsys):
    code, err = _call(["plan", "--env", "Pendulum-v1"], capsys)
    _assert_one_line_error(code, err, "--model")
    assert "needs a saved world model" in err and "lyagym mbrl --env Pendulum-v1" in err
