"""Model-based RL on the real pendulum env, at tiny sizes: costs match the env's reward, the
imagined pendulum env passes the checkers, PETS and Dyna run end to end with logs and
checkpoints, MPC on true physics stabilises the upright pendulum, and the CLI runs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from lyagym.agents import PendulumCost
from lyagym.agents.mbrl import (
    MBRLConfig,
    TransitionBuffer,
    angle_error,
    collect_episode,
    make_pendulum_env,
    make_world_model,
    mpc_episode,
    read_csv,
    run_dyna,
    run_pets,
    true_physics_model,
)
from lyagym.agents.world_model_env import pendulum_world_model_env
from lyagym.learned_models import SimpleDynamics

TINY = MBRLConfig(episodes=1, random_episodes=1, episode_steps=15, fit_epochs=2, fit_steps=0, batch_size=64, horizon=5,
                  num_samples=16, iterations=1, imagined_envs=8, imagined_horizon=5, imagined_steps=40, sac_batch_size=32)


def test_pendulum_cost_is_minus_the_env_reward():
    env = make_pendulum_env(2, dt=0.05, episode_steps=10)
    ep = collect_episode(env, None, steps=10, seed=3)
    cost = PendulumCost(2, "swingup", terminal_weight=0.0)
    states = torch.as_tensor(ep["states"])[None]
    actions = torch.as_tensor(ep["actions"])[None]
    np.testing.assert_allclose(-cost(states, actions).numpy(), [ep["return"]], rtol=1e-10)


def test_imagined_pendulum_env_mirrors_the_real_one_and_passes_checkers():
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    real = make_pendulum_env(1, dt=0.05, episode_steps=20)
    physics = true_physics_model(real, dtype=torch.float64)
    imagined = pendulum_world_model_env(physics, real)
    gym_check(imagined, skip_render_check=True)
    sb3_check(imagined)
    # with the true physics as its model, imagination reproduces the real env step by step
    x0 = np.array([0.3, -0.2])
    obs_r, _ = real.reset(options={"state": x0})
    obs_i, _ = imagined.reset(options={"state": x0})
    np.testing.assert_allclose(obs_i, obs_r, atol=1e-5)
    for a in ([1.0], [-2.5], [5.0]):
        o_r, r_r, *_ = real.step(np.array(a, np.float32))
        o_i, r_i, *_ = imagined.step(np.array(a, np.float32))
        np.testing.assert_allclose(o_i, o_r, atol=1e-4)
        assert r_i == pytest.approx(r_r, rel=1e-6)
    with pytest.raises(ValueError, match="dt"):
        pendulum_world_model_env(true_physics_model(make_pendulum_env(1, dt=0.02)), real)


def test_transition_buffer_wraps_angles_without_jumps(tmp_path):
    buf = TransitionBuffer(2, 1, angle_dims=(0,))
    states = np.array([[3.1, 1.0], [3.2, 1.0], [3.3, 1.0]])  # crosses +pi
    buf.add_trajectory(states, np.zeros((2, 1)))
    assert np.all(np.abs(buf.states[:, 0]) <= np.pi)
    np.testing.assert_allclose(buf.next_states - buf.states, np.diff(states, axis=0))
    buf.save(str(tmp_path / "b.npz"))
    np.testing.assert_array_equal(TransitionBuffer.load(str(tmp_path / "b.npz")).states, buf.states)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="corrupt"):
        TransitionBuffer.load(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="expected states"):
        buf.add_trajectory(states, np.zeros((3, 1)))


@pytest.mark.parametrize("kind", ["simple", "stable"])
def test_tiny_pets_loop_end_to_end_with_checkpoint_and_resume(tmp_path, kind):
    env = make_pendulum_env(1, dt=0.05, episode_steps=TINY.episode_steps)
    base = env.unwrapped
    small = {"hidden": (16, 16)} if kind == "simple" else {"hidden": (16, 16), "lyap_hidden": (16, 16), "sigma_hidden": (8,)}
    model = make_world_model(kind, 2, 1, 0.05, seed=0, **small)
    cost = PendulumCost(1, "swingup")
    out = str(tmp_path / kind)
    rows = run_pets(env, model, cost, TINY, out_dir=out, progress=False)
    assert [r["episode"] for r in rows] == [0, 1]
    assert rows[-1]["real_steps"] == 2 * TINY.episode_steps
    assert [r["policy"] for r in rows] == ["random", "mpc"] and rows[-1]["learn_steps"] == TINY.episode_steps
    assert np.isfinite(rows[-1]["model_val_loss"]) and np.isfinite(rows[-1]["return"])
    from lyagym.agents.run_log import committed_file

    assert os.path.exists(os.path.join(out, "episodes.csv"))
    for name in ("episodes.csv", "model_weights.pt", "buffer.npz", "rng.pt"):
        assert os.path.exists(committed_file(out, name))
    logged = read_csv(os.path.join(out, "episodes.csv"))
    assert logged[-1]["real_steps"] == rows[-1]["real_steps"]
    # resume: a fresh model picks up the checkpoint and runs only the missing episode
    more = MBRLConfig(**{**TINY.__dict__, "episodes": 2})
    model2 = make_world_model(kind, 2, 1, 0.05, seed=1, **small)
    rows2 = run_pets(env, model2, cost, more, out_dir=out, resume=True, progress=False)
    assert [r["episode"] for r in rows2] == [0, 1, 2]
    assert rows2[-1]["real_steps"] == 3 * TINY.episode_steps
    assert base.dt == model2.dt


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from the TensorBoard event files in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_pets_and_sb3_runs_log_episodes_to_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from lyagym.agents.sb3_baselines import train_baseline

    env = make_pendulum_env(1, dt=0.05, episode_steps=TINY.episode_steps)
    model = make_world_model("simple", 2, 1, 0.05, seed=0, hidden=(16, 16))
    rows = run_pets(env, model, PendulumCost(1, "swingup"), TINY, progress=False, method="pets-simple",
                    tensorboard_dir=str(tmp_path / "pets"))
    logged = _scalars(tmp_path / "pets")
    # one point per episode at its real-step count, with the row's value; identifiers are not scalars
    assert [step for step, _ in logged["pets-simple/return"]] == [r["real_steps"] for r in rows]
    assert [value for _, value in logged["pets-simple/return"]] == pytest.approx([r["return"] for r in rows], rel=1e-6)
    assert [step for step, _ in logged["pets-simple/final_angle_error"]] == [15, 30]
    assert "pets-simple/model_val_loss" in logged and not any(t.endswith(("/seed", "/episode")) for t in logged)

    _sb3_tempdir(monkeypatch, tmp_path)
    env = make_pendulum_env(1, dt=0.05, episode_steps=20)
    rows = train_baseline("ppo", env, 64, seed=0, progress=False, eval_every=30, tensorboard_dir=str(tmp_path / "ppo"),
                          policy_kwargs={"net_arch": [8]}, n_steps=32, batch_size=16, n_epochs=1)
    logged = {**_scalars(tmp_path / "ppo"), **_scalars(tmp_path / "ppo" / "eval")}
    assert [step for step, _ in logged["ppo/return"]] == [20, 40, 60]
    assert [step for step, _ in logged["ppo-eval/return"]] == [0, 30, 60]
    assert any(tag.startswith("train/") for tag in logged)  # SB3's own training statistics


def test_tensorboard_log_needs_the_package_and_a_step(tmp_path, monkeypatch):
    import sys

    from lyagym.agents.mbrl import TensorBoardLog

    pytest.importorskip("tensorboard")
    log = TensorBoardLog(str(tmp_path / "ok"))
    with pytest.raises(ValueError, match="real_steps"):
        log({"return": 1.0})
    log.close()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLog(str(tmp_path / "missing"))


def _sb3_tempdir(monkeypatch, tmp_path):
    """Point the temp dir at an empty folder: SB3's default logger would create SB3-<date> there."""
    import tempfile

    tmp = tmp_path / "systemp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_tiny_dyna_loop_trains_sac_in_imagination(tmp_path, monkeypatch):
    systemp = _sb3_tempdir(monkeypatch, tmp_path)
    env = make_pendulum_env(1, dt=0.05, episode_steps=TINY.episode_steps)
    model = make_world_model("simple", 2, 1, 0.05, seed=0, hidden=(16, 16))
    config = MBRLConfig(**{**TINY.__dict__, "random_episode_steps": 10})
    rows = run_dyna(env, model, config, out_dir=str(tmp_path), progress=False)
    assert len(rows) == 2 and rows[-1]["real_steps"] == 10 + TINY.episode_steps and rows[-1]["learn_steps"] == 10
    # the greedy policy is evaluated on a separate env copy, one full episode from a fixed start
    assert "eval_return" not in rows[0] and np.isfinite(rows[1]["eval_return"]) and 0 <= rows[1]["eval_final_angle_error"] <= np.pi
    assert os.path.exists(tmp_path / "sac.zip")
    assert not list(systemp.glob("SB3-*"))  # our logger, not SB3's default one that litters the temp dir


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_sb3_baselines_log_every_episode(tmp_path, monkeypatch, algo):
    from lyagym.agents.sb3_baselines import train_baseline

    systemp = _sb3_tempdir(monkeypatch, tmp_path)

    env = make_pendulum_env(1, dt=0.05, episode_steps=20)
    extra = {"learning_starts": 10, "batch_size": 16} if algo == "sac" else {"n_steps": 32, "batch_size": 16, "n_epochs": 1}
    evaluations = []
    rows = train_baseline(algo, env, 64, seed=0, out_dir=str(tmp_path), progress=False, eval_every=30,
                          on_eval=evaluations.append, policy_kwargs={"net_arch": [16, 16]}, **extra)
    assert [r["real_steps"] for r in rows] == [20, 40, 60]
    assert [r["real_steps"] for r in evaluations] == [0, 30, 60]
    assert len(read_csv(str(tmp_path / "evaluations.csv"))) == 3
    assert all(np.isfinite(r["return"]) for r in evaluations)
    assert all(np.isfinite(r["return"]) and 0 <= r["final_angle_error"] <= np.pi for r in rows)
    assert len(read_csv(str(tmp_path / "episodes.csv"))) == 3 and (tmp_path / "model.zip").exists()
    assert (tmp_path / "progress.csv").exists()  # SB3's training statistics go to the run folder
    assert not list(systemp.glob("SB3-*"))


def test_mpc_on_true_physics_holds_the_upright_double_pendulum():
    env = make_pendulum_env(2, dt=0.02, episode_steps=50)
    model = true_physics_model(env)
    # start 0.15 rad off upright; MPC must bring it back and hold it
    ep = mpc_episode(env, model, planner="mppi", horizon=25, num_samples=128, iterations=2, steps=50, seed=0,
                     progress=False, temperature=0.05, noise_std=2.0, start_state=[np.pi + 0.15, np.pi - 0.1, 0.0, 0.0])
    errors = angle_error(ep["states"], 2, np.pi)
    assert errors[0] > 0.1
    assert errors[-25:].max() < 0.1, errors


def test_angle_wrapped_model_keeps_rollouts_on_the_circle_and_the_cost_unchanged():
    from lyagym.agents.mbrl import AngleWrappedModel, wrap_state
    from lyagym.learned_models import check_world_model

    env = make_pendulum_env(1, dt=0.05)
    model = true_physics_model(env, dtype=torch.float64)
    wrapped = AngleWrappedModel(model, 1)
    check_world_model(wrapped)
    # spinning through upright (q = pi, the wrap point) several times within the horizon
    x0 = torch.tensor([[3.0, 8.0], [-3.0, -8.0], [0.1, 0.0]], dtype=torch.float64)
    actions = torch.full((3, 40, 1), 5.0, dtype=torch.float64)
    actions[1] = -5.0
    free, kept = model.rollout(x0, actions), wrapped.rollout(x0, actions)
    assert free[:2, :, 0].abs().max() > 2 * np.pi  # the plain rollout leaves [-pi, pi)
    assert bool(((kept[..., 0] >= -np.pi) & (kept[..., 0] < np.pi)).all())
    # the true physics is periodic in the angle: wrapping each step = wrapping at the end
    torch.testing.assert_close(kept, wrap_state(free, 1), atol=1e-9, rtol=0)
    cost = PendulumCost(1, "swingup", action_dim=1)
    torch.testing.assert_close(cost(kept, actions), cost(free, actions))


def test_mpc_controller_gives_the_first_plan_warmup_iterations():
    from lyagym.agents.mbrl import MPCController
    from lyagym.agents.planners import make_planner

    env = make_pendulum_env(1, dt=0.05)
    model = true_physics_model(env)
    cost = PendulumCost(1, "swingup")
    kw = dict(horizon=6, num_samples=32, action_low=-5.0, action_high=5.0, seed=3)
    x = np.array([0.2, -0.1])
    controller = MPCController(make_planner("mppi", model, cost, iterations=1, **kw), 1, warmup_iterations=4)
    reference = make_planner("mppi", model, cost, iterations=4, **kw)  # what the first call must equal
    np.testing.assert_allclose(controller(x), reference.plan(x).numpy(), rtol=1e-6, atol=1e-6)
    assert controller.planner.iterations == 1  # later plans use the planner's own iterations
    reference.iterations = 1
    np.testing.assert_allclose(controller(x), reference.plan(x).numpy(), rtol=1e-6, atol=1e-6)
    controller.reset()  # a new episode warms up again
    assert controller._fresh
    with pytest.raises(ValueError, match="warmup_iterations"):
        MPCController(reference, 1, warmup_iterations=-1)


def test_cli_plan_and_mbrl_run(tmp_path):
    from lyagym.agents.cli import main

    assert main(["plan", "--links", "1", "--steps", "5", "--samples", "16", "--horizon", "5", "--no-progress",
                 "--out", str(tmp_path / "plan")]) == 0
    assert os.path.exists(tmp_path / "plan" / "mpc.gif")
    out = str(tmp_path / "mbrl")
    args = ["mbrl", "--algo", "pets", "--model", "simple", "--episodes", "1", "--episode-steps", "10", "--fit-epochs", "1", "--fit-steps", "0",
            "--samples", "16", "--horizon", "5", "--no-progress", "--out", out]
    assert main(args) == 0
    assert main(args) == 2  # refuses to overwrite a finished run without --resume
    assert main(["plan", "--model", str(tmp_path / "missing.pt"), "--no-progress"]) == 2
    # train a controlled stable model, then plan with its checkpoint
    ckpt = str(tmp_path / "stable.pt")
    assert main(["train", "--links", "1", "--kind", "stable", "--data", "env", "--samples", "40", "--epochs", "1",
                 "--out", ckpt, "--no-progress"]) == 0
    assert os.path.exists(tmp_path / "stable.cert.json")
    from lyagym.learned_models import DynamicsNet, load_model

    trained = load_model(ckpt)  # with the mechanical priors (the default), calibrated by the fit
    assert isinstance(trained.fhat, DynamicsNet) and bool(trained.fhat.calibrated) and trained.certificate().applies_to(trained)
    assert main(["train", "--links", "1", "--data", "env", "--samples", "40", "--out", ckpt, "--no-progress"]) == 2  # no overwrite
    assert main(["plan", "--links", "1", "--model", ckpt, "--steps", "2", "--samples", "8", "--horizon", "3", "--no-progress"]) == 0


def test_study_metric_counts_real_steps_to_sacs_final_evaluation_return():
    from lyagym.agents.reproduce.mbrl_swingup import learning_curves, steps_to_reach, summarise

    sac = [{"method": "sac", "seed": seed, "real_steps": 1000 * i, "return": r}
           for seed, returns in ((0, [-1500, -900, -400, -310, -300]), (1, [-1500, -1200, -500, -330, -300]))
           for i, r in enumerate(returns)]
    pets = [{"method": "pets", "seed": 0, "real_steps": 200 * (i + 1), "return": r} for i, r in enumerate([-900, -312, -280])]
    assert steps_to_reach(pets, -300.0) == 600
    assert steps_to_reach(pets, -300.0, tolerance=0.05) == 400  # -312 >= -315
    assert steps_to_reach(pets, -100.0) == float("inf")
    table, numbers = summarise(sac + pets, tolerance=0.05)
    assert numbers["target"] == pytest.approx(-300.0)  # mean of the last evaluations
    assert numbers["sac_steps"] == 3500  # median of 3000 (-310) and 4000 (-300, since -330 < -315)
    assert numbers["methods"]["pets"]["ratios"] == [pytest.approx(3500 / 400)]
    assert numbers["methods"]["pets"]["median_strict_ratio"] == pytest.approx(3700 / 600)  # + one 200-step eval episode
    assert "| pets | 1 |" in table and "8.8x" in table
    curve = [c for c in learning_curves(sac) if c["real_steps"] == 3000][0]
    assert curve["mean_return"] == pytest.approx(-320.0) and curve["std_return"] == pytest.approx(10.0) and curve["seeds"] == 2


def test_open_loop_horizon_errors_vanish_for_the_true_physics():
    from lyagym.agents.reproduce.mbrl_swingup import horizon_errors

    env = make_pendulum_env(1, dt=0.05, episode_steps=40)
    physics = true_physics_model(env, dtype=torch.float64)
    buf = TransitionBuffer(2, 1)
    lengths = []
    for seed, x0 in ((0, [3.0, 2.0]), (1, [0.1, 0.0])):  # the first crosses the +-pi wrap
        ep = collect_episode(env, None, steps=40, seed=seed, start_state=x0)
        buf.add_trajectory(ep["states"], ep["actions"])
        lengths.append(len(ep["actions"]))
    zero = SimpleDynamics(2, 1, dt=0.05, hidden=(4,)).double()
    for p in zero.parameters():
        torch.nn.init.zeros_(p)  # xdot = 0: the prediction stays at the start
    _, errors = horizon_errors({"physics": physics, "frozen": zero}, buf.states, buf.actions, lengths, 1, horizons=(1, 20))
    assert errors and all(e["physics"] < 1e-6 for e in errors.values()), errors
    assert all(e["frozen"] > 1e-3 for e in errors.values())
    assert sum(e["starts"] for (region, h), e in errors.items() if h == 20) == 8  # starts 0, 5, 10, 15 of each episode


def test_study_runs_stores_and_reuses_tiny_mpc_and_pets_runs(tmp_path, capsys):
    import argparse
    import json

    from lyagym.agents.reproduce import mbrl_swingup

    parser = argparse.ArgumentParser()
    mbrl_swingup.add_arguments(parser)
    argv = ["--seeds", "0", "--methods", "mpc-true", "pets-simple", "--episodes", "2", "--random-steps", "20",
            "--samples", "8", "--horizon", "4", "--iterations", "1", "--warmup-iterations", "2", "--fit-epochs", "1",
            "--fit-steps", "2", "--no-analysis", "--no-progress", "--out", str(tmp_path)]
    assert mbrl_swingup.run(parser.parse_args(argv)) == 0
    stored = json.loads((tmp_path / "pets-simple" / "seed0" / "run.json").read_text())
    assert stored["settings"]["warmup_iterations"] == 2 and stored["settings"]["noise_std"] == 1.0
    assert [r["real_steps"] for r in stored["evaluations"]] == [20]  # the MPC episode after the random one
    assert (tmp_path / "summary.md").exists() and (tmp_path / "learning_curves.png").exists()
    capsys.readouterr()
    assert mbrl_swingup.run(parser.parse_args(argv + ["--stored-only"])) == 0
    assert capsys.readouterr().out.count("stored run reused") == 2
    # other planner settings are another experiment: not reused, skipped with --stored-only,
    # and run into their own folder (neither overwriting nor resuming the stored run)
    assert mbrl_swingup.run(parser.parse_args(argv + ["--stored-only", "--noise-std", "2"])) == 1
    assert mbrl_swingup.run(parser.parse_args(argv + ["--methods", "pets-simple", "--noise-std", "2"])) == 0
    assert json.loads((tmp_path / "pets-simple" / "seed0" / "run.json").read_text()) == stored
    other = [p for p in (tmp_path / "pets-simple").iterdir() if p.name.startswith("seed0-")]
    assert len(other) == 1 and json.loads((other[0] / "run.json").read_text())["settings"]["noise_std"] == 2.0
    assert len(read_csv(str(other[0] / "episodes.csv"))) == 2  # a fresh run, not the stored one continued
    # the stored model has the mechanical priors (the default), calibrated by its first fit;
    # the plain MLP (--no-model-priors) is another experiment, in its own folder
    assert stored["settings"]["model_priors"] is True
    from lyagym.agents.run_log import committed_file

    weights = torch.load(committed_file(str(tmp_path / "pets-simple" / "seed0"), "model_weights.pt"), weights_only=True)
    assert bool(weights["fhat.calibrated"]) and weights["fhat.input_scale"].shape == (2,)
    assert mbrl_swingup.run(parser.parse_args(argv + ["--methods", "pets-simple", "--no-model-priors"])) == 0
    plain = [p for p in (tmp_path / "pets-simple").iterdir() if p.name.startswith("seed0-") and p != other[0]]
    assert len(plain) == 1 and "model_priors" not in json.loads((plain[0] / "run.json").read_text())["settings"]
    assert "fhat.0.weight" in torch.load(committed_file(str(plain[0]), "model_weights.pt"), weights_only=True)


def test_model_priors_are_on_by_default():
    from lyagym.agents.mbrl import make_world_model, model_priors
    from lyagym.learned_models import DynamicsNet

    assert model_priors(2, False) == {}
    assert model_priors(2) == model_priors(1) | {"angle_dims": 2} == {"angle_dims": 2, "control_affine": True, "activation": "silu"}
    for kind in ("simple", "stable"):
        model = make_world_model(kind, 4, 2, 0.05, **model_priors(2))
        assert isinstance(model.fhat, DynamicsNet) and model.fhat.angle_dims == 2


def test_imagined_pendulum_envs_pickle():
    import pickle

    real = make_pendulum_env(1, dt=0.05)
    for num_envs in (None, 3):
        imagined = pendulum_world_model_env(true_physics_model(real), real, num_envs=num_envs)
        copy = pickle.loads(pickle.dumps(imagined))
        obs, _ = imagined.reset(seed=4)
        obs_copy, _ = copy.reset(seed=4)
        np.testing.assert_allclose(obs_copy, obs)


@pytest.mark.parametrize("data", ["pairs", "env"])
def test_train_settle_makes_the_saved_certificate_settle_the_training_box_in_time(tmp_path, capsys, data):
    """``lyagym train --settle EPS SECONDS``: the saved model's certificate puts the box of its
    training states within EPS by SECONDS; refused for a model without a certificate."""
    import json

    import torch

    from lyagym.agents.cli import main
    from lyagym.learned_models import load_model

    ckpt = str(tmp_path / "m.pt")
    base = ["train", "--links", "1", "--data", data, "--samples", "200", "--epochs", "2", "--no-progress", "--out", ckpt]
    assert main(base + ["--settle", "0.01", "3"]) == 0
    out = capsys.readouterr().out
    assert "settling: every state of the training box within 0.01 after" in out
    import re

    before, after = (float(v) for v in re.search(r"alpha ([\d.e+-]+) -> ([\d.e+-]+)", out).groups())
    assert float(re.search(r"\(was ([\d.e+-]+) s", out).group(1)) > 3.0 and after > before  # the rate had to be raised
    model = load_model(ckpt)
    if data == "pairs":
        from lyagym.envs import PendulumDynamics, sample_derivative_dataset

        states = sample_derivative_dataset(PendulumDynamics(n_links=1), 200, seed=0).x
    else:
        from lyagym.agents.mbrl import collect_random_transitions, make_pendulum_env

        states = collect_random_transitions(make_pendulum_env(1, episode_steps=20), 10, 20, seed=0).tensors("cpu", torch.float32)[0]
    box = torch.stack([states.min(0).values, states.max(0).values], -1).double().tolist()
    assert model.settling_time(0.01, box) <= 3.0
    with open(tmp_path / "m.cert.json") as f:
        assert json.load(f)["alpha"] == pytest.approx(model.alpha)
    assert main(["train", "--kind", "simple", "--settle", "0.01", "3", "--out", str(tmp_path / "s.pt")]) == 2
    assert "--settle: only stable models" in capsys.readouterr().err
    assert main(base[:-1] + [str(tmp_path / "n.pt"), "--settle", "0.01", "0"]) == 2


def test_ppo_with_fewer_steps_than_its_rollout_takes_only_those(tmp_path, monkeypatch):
    """PPO collects whole rollouts of ``n_steps`` (1024 by default): asked for 50 real steps it
    would take 1024. Its rollout is then the budget, in minibatches that divide it."""
    from lyagym.agents.sb3_baselines import _dividing_batch, train_baseline

    _sb3_tempdir(monkeypatch, tmp_path)
    env = make_pendulum_env(1, dt=0.05, episode_steps=20)
    rows = train_baseline("ppo", env, 50, seed=0, out_dir=str(tmp_path), progress=False, policy_kwargs={"net_arch": [8]},
                          n_epochs=1)
    assert [r["real_steps"] for r in rows] == [20, 40]  # the third episode is cut at step 50
    assert max(int(float(r["time/total_timesteps"])) for r in read_csv(str(tmp_path / "progress.csv"))) == 50
    assert _dividing_batch(50, 64) == 50 and _dividing_batch(300, 64) == 60 and _dividing_batch(293, 64) == 293


def test_sac_baseline_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    """A SAC run killed inside its third episode and resumed from its last commit (after the
    first) gives the same episodes, evaluations and final weights as a run that was not."""
    import torch
    from stable_baselines3 import SAC

    from lyagym.agents.sb3_baselines import train_baseline

    _sb3_tempdir(monkeypatch, tmp_path)
    options = dict(seed=3, progress=False, eval_every=30, learning_starts=10, batch_size=16, policy_kwargs={"net_arch": [16, 16]})

    from lyagym.agents import sb3_baselines

    restored_at = []
    restore = sb3_baselines._restore_sac

    def spy(*args):
        model = restore(*args)
        restored_at.append(model.num_timesteps)
        return model

    monkeypatch.setattr(sb3_baselines, "_restore_sac", spy)

    def run(folder, **extra):
        env = make_pendulum_env(1, dt=0.05, episode_steps=20)
        return train_baseline("sac", env, 100, out_dir=str(tmp_path / folder), **options, **extra)

    whole = run("whole")

    class Killed(Exception):
        pass

    def kill_in_third(row):
        if row["episode"] == 1:  # the second episode's row is written, its commit would come at the next step
            raise Killed

    with pytest.raises(Killed):
        run("killed", on_episode=kill_in_third)
    assert json.loads((tmp_path / "killed" / "manifest.json").read_text())["num_timesteps"] == 20
    with pytest.raises(FileExistsError):
        run("killed")  # neither resume nor overwrite: the saved run is kept
    resumed = run("killed", resume=True)
    assert restored_at == [20]  # from the commit after the first episode, not from the start
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(whole) and len(whole) == 5
    assert read_csv(str(tmp_path / "killed" / "evaluations.csv")) == read_csv(str(tmp_path / "whole" / "evaluations.csv"))
    a, b = (SAC.load(str(tmp_path / f / "model.zip")).policy.state_dict() for f in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert run("killed", resume=True) and json.loads((tmp_path / "killed" / "manifest.json").read_text())["num_timesteps"] == 100
    with pytest.raises(ValueError, match="only a SAC run"):
        train_baseline("ppo", make_pendulum_env(1, dt=0.05, episode_steps=20), 50, out_dir=str(tmp_path / "p"), resume=True)
