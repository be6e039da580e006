"""NLinkPendulumEnv: Gymnasium/SB3 checkers, physics agreement, clipping, errors, rendering."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest

import lyagym.envs  # noqa: F401  (registers lyagym/NLinkPendulum-v0)
from lyagym.envs import NLinkPendulumEnv, PendulumDynamics
from lyagym.envs import rewards

ENV_ID = "lyagym/NLinkPendulum-v0"

# Advice, not errors: our torques are in physical units (N m) like Pendulum-v1's, and an
# env built without gym.make has no spec to try other render modes with.
_ADVISORY = ("symmetric and normalized", "alternative render modes")


def _only_advisory(record) -> list[str]:
    return [str(w.message) for w in record if not any(a in str(w.message) for a in _ADVISORY)]


@pytest.mark.parametrize("n_links", [1, 2])
@pytest.mark.parametrize("observation_mode", ["trig", "raw"])
def test_gymnasium_and_sb3_checkers_pass(n_links, observation_mode):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check_env(NLinkPendulumEnv(n_links=n_links, observation_mode=observation_mode))
        check_env(gym.make(ENV_ID, n_links=n_links, observation_mode=observation_mode).unwrapped)
        sb3_check_env(NLinkPendulumEnv(n_links=n_links, observation_mode=observation_mode), warn=True)
    assert _only_advisory(record) == []


def test_registered_with_time_limit_and_vector_entry_point():
    spec = gym.spec(ENV_ID)
    assert spec.max_episode_steps == 500
    assert spec.vector_entry_point is not None
    env = gym.make(ENV_ID, max_episode_steps=7)
    env.reset(seed=0)
    truncated = [env.step(env.action_space.sample())[3] for _ in range(7)]
    assert truncated == [False] * 6 + [True]
    # Importing again (e.g. a reload) must not fail on a second registration.
    import importlib

    importlib.reload(lyagym.envs)
    assert gym.spec(ENV_ID).max_episode_steps == 500


@pytest.mark.parametrize("n_links", [1, 2, 3])
def test_step_matches_physics_and_observations(n_links):
    env = NLinkPendulumEnv(n_links=n_links, task="free")
    dyn = PendulumDynamics(n_links=n_links)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-2, 2, size=2 * n_links)
    obs, _ = env.reset(options={"state": x0})
    x = x0.copy()
    for _ in range(20):
        u = rng.uniform(-1, 1, size=env.action_dim)
        obs, reward, terminated, truncated, info = env.step(u)
        x = dyn.step(x, u)
        assert reward == 0.0 and not terminated and not truncated
    np.testing.assert_allclose(env.state, x, rtol=1e-10, atol=1e-10)
    q, qdot = x[:n_links], x[n_links:]
    np.testing.assert_allclose(obs, np.concatenate([np.cos(q), np.sin(q), qdot]), rtol=1e-6, atol=1e-6)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)


def test_raw_observation_wraps_angles_and_clips_only_observed_velocity():
    env = NLinkPendulumEnv(n_links=2, observation_mode="raw", max_velocity=5.0, damping=0.0, task="free")
    x0 = np.array([3 * math.pi + 0.25, -0.5, 7.0, -1.0])
    obs, _ = env.reset(options={"state": x0})
    np.testing.assert_allclose(obs, [-math.pi + 0.25, -0.5, 5.0, -1.0], rtol=1e-6)
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(env.state, x0)  # the physical state is never clipped


def test_substeps_and_euler_integrator():
    x0 = np.array([1.0, 0.5, 0.0, 0.0])
    dyn = PendulumDynamics(n_links=2)
    env = NLinkPendulumEnv(n_links=2, substeps=4, integrator="euler", task="free")
    env.reset(options={"state": x0})
    env.step(np.zeros(2))
    np.testing.assert_allclose(env.state, dyn.step(x0, np.zeros(2), method="euler", substeps=4), rtol=1e-12)
    env = NLinkPendulumEnv(n_links=2, substeps=3, task="free")
    env.reset(options={"state": x0})
    env.step(np.zeros(2))
    np.testing.assert_allclose(env.state, dyn.step(x0, np.zeros(2), substeps=3), rtol=1e-10, atol=1e-12)


def test_out_of_range_actions_are_clipped():
    env = NLinkPendulumEnv(n_links=2, max_torque=[1.0, 2.0])
    clipped = NLinkPendulumEnv(n_links=2, max_torque=[1.0, 2.0])
    x0 = np.array([0.3, -0.2, 0.1, 0.0])
    env.reset(options={"state": x0})
    clipped.reset(options={"state": x0})
    _, r_big, *_ = env.step(np.array([50.0, -50.0]))
    _, r_lim, *_ = clipped.step(np.array([1.0, -2.0]))
    np.testing.assert_array_equal(env.state, clipped.state)
    assert r_big == r_lim  # the reward sees the clipped torque
    np.testing.assert_array_equal(env.action_space.high, np.float32([1.0, 2.0]))


def test_reward_matches_formula_for_each_task():
    x0 = np.array([2.5, -3.0, 0.7, -1.2])
    u = np.array([0.5, -1.5])
    for task, target in (("swingup", math.pi), ("regulate", 0.0)):
        env = NLinkPendulumEnv(n_links=2, task=task)
        env.reset(options={"state": x0})
        _, reward, *_ = env.step(u)
        err = (x0[:2] - target + math.pi) % (2 * math.pi) - math.pi
        expected = -(np.sum(err**2) + 0.1 * np.sum(x0[2:] ** 2) + 0.001 * np.sum(u**2))
        assert reward == pytest.approx(expected, rel=1e-12)
        assert reward == pytest.approx(float(rewards.pendulum_reward(x0, u, task)), rel=1e-12)
    upright = np.array([math.pi, math.pi, 0.0, 0.0])
    assert float(rewards.swingup_reward(upright, np.zeros(2))) == 0.0
    assert float(rewards.upright_error(upright)) == pytest.approx(0.0, abs=1e-12)
    assert float(rewards.upright_error(np.zeros(4))) == pytest.approx(math.pi)


def test_reward_functions_agree_for_numpy_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, u = rng.normal(size=(5, 3, 6)) * 3, rng.normal(size=(5, 3, 2))
    for task in ("swingup", "regulate", "free"):
        a = rewards.pendulum_reward(x, u, task)
        b = rewards.pendulum_reward(torch.as_tensor(x), torch.as_tensor(u), task)
        assert a.shape == (5, 3) and tuple(b.shape) == (5, 3)
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-12)
    xt = torch.tensor(x, requires_grad=True)
    rewards.upright_error(xt).sum().backward()
    assert torch.isfinite(xt.grad).all()
    with pytest.raises(ValueError, match="task"):
        rewards.pendulum_reward(x, u, "balance")


def test_same_seed_same_episode_and_seed_changes_start():
    def episode(seed):
        env = NLinkPendulumEnv(n_links=2)
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [obs]
        for _ in range(10):
            out.append(env.step(env.action_space.sample())[0])
        return np.stack(out)

    np.testing.assert_array_equal(episode(3), episode(3))
    assert not np.array_equal(episode(3)[0], episode(4)[0])


def test_starting_state_box_per_task():
    def starts(env):
        out = []
        for seed in range(50):
            env.reset(seed=seed)
            out.append(env.state)
        return np.stack(out)

    near_bottom = starts(NLinkPendulumEnv(n_links=3, task="swingup"))
    assert np.abs(near_bottom).max() <= 0.1
    anywhere = starts(NLinkPendulumEnv(n_links=3, task="regulate", init_velocity=0.0))
    assert np.abs(anywhere[:, :3]).max() > 2.0 and np.all(anywhere[:, 3:] == 0.0)


def test_acrobot_configuration_has_one_action():
    env = NLinkPendulumEnv(n_links=2, actuated=[1])
    assert env.action_space.shape == (1,)
    env.reset(seed=0)
    env.step(np.array([1.0]))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_links": 0}, "n_links"),
        ({"task": "balance"}, "task"),
        ({"integrator": "leapfrog"}, "integrator"),
        ({"observation_mode": "pixels"}, "observation_mode"),
        ({"dt": 0.0}, "dt"),
        ({"dt": float("nan")}, "dt"),
        ({"substeps": 0}, "substeps"),
        ({"max_torque": -1.0}, "max_torque"),
        ({"max_torque": [1.0, 2.0, 3.0]}, "max_torque"),
        ({"max_velocity": 0}, "max_velocity"),
        ({"render_mode": "ascii"}, "render_mode"),
        ({"init_angle": -1.0}, "init_angle"),
        ({"init_velocity": "fast"}, "init_velocity"),
        ({"torque_weight": float("nan")}, "torque_weight"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
    ],
)
def test_bad_kwargs_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        NLinkPendulumEnv(**kwargs)


def test_bad_actions_and_states_are_rejected():
    env = NLinkPendulumEnv(n_links=2)
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        env.step(np.zeros(2))
    env.reset(seed=0)
    for bad in (np.array([np.nan, 0.0]), np.array([0.0, np.inf])):
        with pytest.raises(ValueError, match="action"):
            env.step(bad)
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match=r"options\['state'\]"):
        env.reset(options={"state": np.zeros(3)})
    with pytest.raises(ValueError, match=r"options\['state'\]"):
        env.reset(options={"state": [0.0, np.nan, 0.0, 0.0]})
    with pytest.raises(ValueError, match="options"):
        env.reset(options={"x_init": 1.0})


def test_rgb_array_rendering_draws_the_chain():
    env = gym.make(ENV_ID, n_links=2, render_mode="rgb_array", render_size=120)
    assert env.metadata["render_fps"] == 100
    env.reset(options={"state": [0.0, 0.0, 0.0, 0.0]})
    down = env.render()
    env.reset(options={"state": [math.pi, math.pi, 0.0, 0.0]})
    up = env.render()
    assert down.shape == (120, 120, 3) and down.dtype == np.uint8
    # Hanging down the links' ink is below the image centre, upright above it.
    ink = lambda frame: (frame.sum(axis=2) < 500).nonzero()[0]  # noqa: E731
    assert ink(down).mean() > 60 > ink(up).mean()
    frame_after_step = (env.step(env.action_space.sample()), env.render())[1]
    assert frame_after_step.shape == (120, 120, 3)


def test_human_render_mode_without_display_or_pygame_gives_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pygame(name, *args, **kwargs):
        if name == "pygame":
            raise ImportError("No module named 'pygame'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pygame)
    env = NLinkPendulumEnv(render_mode="human")
    with pytest.raises(ImportError, match="pygame"):
        env.reset(seed=0)


def test_human_render_mode_opens_a_window(monkeypatch):
    pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # headless CI: a window without a screen
    env = gym.make(ENV_ID, n_links=2, render_mode="human", render_size=48)
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    assert env.unwrapped._window is not None
    env.close()
    assert env.unwrapped._window is None


@pytest.mark.parametrize("algo", ["PPO", "SAC"])
def test_sb3_algorithms_run_unmodified(algo):
    import stable_baselines3 as sb3

    env = gym.make(ENV_ID, n_links=2, max_episode_steps=50)
    if algo == "PPO":
        model = sb3.PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    else:
        model = sb3.SAC("MlpPolicy", env, learning_starts=50, batch_size=32, buffer_size=500, seed=0, device="cpu",
                        policy_kwargs={"net_arch": [32, 32]})
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default leaves an empty SB3-<date> folder in the temp dir
    model.learn(total_timesteps=200)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action)
