"""SB3 on the torch-batched pendulum (``lyagym.agents.sb3_vector``), checked
against ``DummyVecEnv`` of the single env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

import lyagym.envs  # noqa: F401
from lyagym.agents.sb3_vector import SB3VectorEnv, make_sb3_vec_env

N, T = 3, 5
ID = "lyagym/NLinkPendulum-v0"


def _pair():
    vec = make_sb3_vec_env(ID, num_envs=N, n_links=1, max_episode_steps=T, dtype=torch.float64)
    dummy = DummyVecEnv([lambda: gym.make(ID, n_links=1, max_episode_steps=T) for _ in range(N)])
    return vec, dummy


def test_reset_step_shapes_and_dtypes_match_dummy():
    vec, dummy = _pair()
    assert vec.num_envs == dummy.num_envs == N
    assert vec.observation_space == dummy.observation_space and vec.action_space == dummy.action_space
    o_v, o_d = vec.reset(), dummy.reset()
    assert o_v.shape == o_d.shape == (N, 3) and o_v.dtype == o_d.dtype
    a = np.zeros((N, 1), np.float32)
    for out_v, out_d in zip(vec.step(a), dummy.step(a)):
        if isinstance(out_d, np.ndarray):
            assert out_v.shape == out_d.shape and out_v.dtype == out_d.dtype
        else:
            assert isinstance(out_v, list) and len(out_v) == N
            assert [set(i) for i in out_v] == [set(i) for i in out_d]  # {"TimeLimit.truncated"}


def test_dones_and_terminal_observation_match_dummy():
    vec, dummy = _pair()
    vec.seed(3)
    dummy.seed(3)
    vec.reset(), dummy.reset()
    rng = np.random.default_rng(0)
    for t in range(2 * T + 1):
        a = rng.uniform(-5, 5, size=(N, 1)).astype(np.float32)
        o_v, r_v, d_v, i_v = vec.step(a)
        o_d, r_d, d_d, i_d = dummy.step(a)
        np.testing.assert_array_equal(d_v, d_d)
        assert d_v.all() == ((t + 1) % T == 0)
        assert [i["TimeLimit.truncated"] for i in i_v] == [i["TimeLimit.truncated"] for i in i_d]
        assert [("terminal_observation" in i) for i in i_v] == [("terminal_observation" in i) for i in i_d]
        if t >= T:  # autoreset starts come from the batch's torch generator, not env 0's np_random
            continue
        # env 0 shares its seed with DummyVecEnv's env 0: same first episode, same last observation
        np.testing.assert_allclose(r_v[0], r_d[0], rtol=1e-5, atol=1e-5)
        if d_v[0]:
            np.testing.assert_allclose(i_v[0]["terminal_observation"], i_d[0]["terminal_observation"], atol=1e-5)
            assert not np.allclose(i_v[0]["terminal_observation"], o_v[0])  # the returned obs is a new start
        else:
            np.testing.assert_allclose(o_v[0], o_d[0], atol=1e-5)


def test_seeding_reproducible_and_env0_matches_dummy():
    vec, dummy = _pair()
    assert vec.seed(7) == [7] * N
    first = vec.reset()
    vec.seed(7)
    np.testing.assert_array_equal(vec.reset(), first)
    vec.seed(8)
    assert not np.allclose(vec.reset(), first)
    dummy.seed(7)
    np.testing.assert_allclose(first[0], dummy.reset()[0], atol=1e-6)
    vec.reset()  # a seed is used once only
    assert vec._seed is None
    with pytest.raises(TypeError, match="seed must be an int"):
        vec.seed(1.5)


def test_set_options_state_and_attrs():
    vec, _ = _pair()
    vec.set_options({"state": np.zeros(2)})
    obs = vec.reset()
    np.testing.assert_allclose(obs, np.tile([1.0, 0.0, 0.0], (N, 1)))
    vec.set_options([{"state": np.array([0.1 * i, 0.0])} for i in range(N)])
    obs = vec.reset()
    np.testing.assert_allclose(obs[:, 1], np.sin(0.1 * np.arange(N)), atol=1e-6)
    assert vec.get_attr("max_episode_steps", indices=[0, 2]) == [T, T]
    vec.set_attr("max_episode_steps", 7)
    assert vec.get_attr("max_episode_steps") == [7] * N
    with pytest.raises(ValueError, match="indices"):
        vec.set_attr("max_episode_steps", 3, indices=[1])
    with pytest.raises(AttributeError):
        vec.get_attr("no_such_attribute")
    assert vec.env_is_wrapped(gym.Wrapper) == [False] * N


def test_vec_monitor_counts_episodes():
    vec = VecMonitor(make_sb3_vec_env(ID, num_envs=N, n_links=1, max_episode_steps=T))
    vec.reset()
    episodes = []
    for _ in range(T):
        _, _, dones, infos = vec.step(np.zeros((N, 1), np.float32))
        episodes += [i["episode"] for i in infos if "episode" in i]
    assert len(episodes) == N and all(e["l"] == T for e in episodes)


def test_rejects_non_vector_env():
    with pytest.raises(TypeError, match="gymnasium.vector.VectorEnv"):
        SB3VectorEnv(gym.make(ID))
    with pytest.raises(ValueError, match="num_envs"):
        make_sb3_vec_env(ID, num_envs=0)


def test_ppo_learns_a_few_hundred_steps_on_the_batched_env():
    from stable_baselines3 import PPO

    from lyagym.agents.sb3_baselines import sb3_logger

    venv = VecMonitor(make_sb3_vec_env(ID, num_envs=8, n_links=1, max_episode_steps=20))
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    model.set_logger(sb3_logger())  # SB3's default logger would leave an empty SB3-<date> folder in the temp dir
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    assert len(model.ep_info_buffer) > 0  # episodes ended and were recorded (terminal_observation path)
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (8, 1)
