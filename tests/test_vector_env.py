"""NLinkPendulumVectorEnv: make_vec, shapes, autoreset, numpy/torch returns, single-env agreement."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import lyagym.envs  # noqa: F401  (registers lyagym/NLinkPendulum-v0)
from lyagym.envs import NLinkPendulumEnv, NLinkPendulumVectorEnv

ENV_ID = "lyagym/NLinkPendulum-v0"


class _no_warnings:
    """Fail on any warning (make_vec warns when autoreset_mode metadata is missing)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self._record = self._ctx.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert [str(w.message) for w in self._record] == []


def test_make_vec_uses_vector_entry_point_and_declares_autoreset_mode():
    with _no_warnings():
        envs = gym.make_vec(ENV_ID, num_envs=5, vectorization_mode="vector_entry_point", n_links=3, device="cpu")
    assert isinstance(envs.unwrapped, NLinkPendulumVectorEnv)
    assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert envs.max_episode_steps == 500
    obs, info = envs.reset(seed=0)
    assert obs.shape == (5, 9) and obs.dtype == np.float32 and envs.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert obs.shape == (5, 9) and reward.shape == (5,) and terminated.shape == truncated.shape == (5,)
    assert terminated.dtype == truncated.dtype == np.bool_
    assert envs.single_action_space.shape == (3,) and envs.action_space.shape == (5, 3)


@pytest.mark.parametrize("observation_mode", ["trig", "raw"])
@pytest.mark.parametrize("n_links", [1, 2])
def test_matches_single_env_for_same_states_and_actions(n_links, observation_mode):
    kwargs = dict(n_links=n_links, observation_mode=observation_mode, task="swingup", max_torque=3.0)
    batch = 4
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-3, 3, size=(batch, 2 * n_links))
    actions = rng.uniform(-5, 5, size=(30, batch, n_links))  # out of range too: both clip alike
    venv = NLinkPendulumVectorEnv(batch, dtype=torch.float64, max_episode_steps=None, **kwargs)
    vobs, _ = venv.reset(options={"state": x0})
    singles = [NLinkPendulumEnv(**kwargs) for _ in range(batch)]
    sobs = np.stack([env.reset(options={"state": x})[0] for env, x in zip(singles, x0)])
    np.testing.assert_allclose(vobs, sobs, atol=1e-6)
    for a in actions:
        vobs, vrew, _, _, _ = venv.step(a)
        steps = [env.step(u) for env, u in zip(singles, a)]
        np.testing.assert_allclose(vobs, np.stack([s[0] for s in steps]), atol=1e-5)
        np.testing.assert_allclose(vrew, [s[1] for s in steps], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(venv.state.numpy(), np.stack([env.state for env in singles]), rtol=1e-9, atol=1e-9)


def test_float32_batch_tracks_float64():
    x0 = np.array([1.0, -0.5, 0.3, 0.0])
    envs = {dt: NLinkPendulumVectorEnv(2, dtype=dt, return_torch=True) for dt in (torch.float32, torch.float64)}
    for env in envs.values():
        env.reset(options={"state": x0})
    u = np.full((2, 2), 1.5)
    for _ in range(100):
        for env in envs.values():
            env.step(u)
    np.testing.assert_allclose(envs[torch.float32].state.double(), envs[torch.float64].state, atol=1e-4)


def test_seed_reproduces_episodes_and_env0_matches_single_env_seed():
    def run(seed):
        envs = NLinkPendulumVectorEnv(3, n_links=2, max_episode_steps=4)
        obs, _ = envs.reset(seed=seed)
        out = [obs]
        for _ in range(10):  # crosses two autoresets, drawn from the seeded torch generator
            out.append(envs.step(np.zeros((3, 2)))[0])
        return np.stack(out)

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))
    single_obs, _ = NLinkPendulumEnv(n_links=2).reset(seed=7)
    np.testing.assert_allclose(run(7)[0, 0], single_obs, rtol=1e-6)


def test_next_step_autoreset_truncates_each_env_at_its_own_limit():
    envs = NLinkPendulumVectorEnv(3, n_links=1, task="regulate", max_episode_steps=3)
    envs.reset(seed=0)
    envs.step(np.zeros((3, 1)))
    # Restart env 1 alone: its episode now runs one step behind the others.
    envs.reset(options={"reset_mask": np.array([False, True, False])})
    flags, rewards_seen = [], []
    for _ in range(4):
        obs, reward, terminated, truncated, _ = envs.step(np.ones((3, 1)))
        assert not terminated.any()
        flags.append(truncated.tolist())
        rewards_seen.append(reward.tolist())
    assert flags == [[False, False, False], [True, False, True], [False, True, False], [False, False, False]]
    # The step after a truncation is the reset step: reward 0 for exactly those envs.
    assert rewards_seen[2][0] == rewards_seen[2][2] == 0.0 and rewards_seen[2][1] != 0.0
    assert rewards_seen[3][1] == 0.0


def test_next_step_autoreset_ignores_action_and_restarts_in_start_box():
    envs = NLinkPendulumVectorEnv(64, n_links=2, task="swingup", max_episode_steps=2, return_torch=True)
    envs.reset(seed=1)
    big = torch.full((64, 2), 5.0)
    for _ in range(2):
        envs.step(big)
    assert envs._reset_pending
    obs, reward, _, truncated, _ = envs.step(big)  # the reset step
    state = envs.state
    assert state.abs().max() <= 0.1 + 1e-6  # swing-up starts hang near rest
    assert torch.all(reward == 0) and not truncated.any()


def test_same_step_autoreset_reports_final_observation():
    envs = NLinkPendulumVectorEnv(4, n_links=2, max_episode_steps=3, autoreset_mode="same_step")
    assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    envs.reset(seed=0)
    u = np.full((4, 2), 5.0)
    for _ in range(2):
        obs, *_ = envs.step(u)
    before = envs.state.clone()
    obs, reward, terminated, truncated, info = envs.step(u)
    assert truncated.all() and np.all(info["_final_obs"])
    final = info["final_obs"]
    assert final.shape == (4, 6) and not np.allclose(final, obs)
    # obs is already the first observation of the next episode (near hanging down)...
    np.testing.assert_allclose(obs[:, :2], 1.0, atol=0.01)
    # ...and final_obs is the last one of the old episode, one step on from `before`.
    expected = NLinkPendulumVectorEnv(4, n_links=2, max_episode_steps=None)
    expected.reset(options={"state": before.numpy()})
    np.testing.assert_allclose(final, expected.step(u)[0], atol=1e-5)
    assert envs.step(u)[3].sum() == 0  # next episode is running


def test_numpy_and_torch_returns_are_the_same_data():
    a = NLinkPendulumVectorEnv(8, n_links=2)
    b = NLinkPendulumVectorEnv(8, n_links=2, return_torch=True)
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    assert isinstance(oa, np.ndarray) and isinstance(ob, torch.Tensor)
    np.testing.assert_array_equal(oa, ob.numpy())
    actions = torch.linspace(-4, 4, 16).reshape(8, 2)
    ra = a.step(actions.numpy())
    rb = b.step(actions)
    for x, y in zip(ra[:4], rb[:4]):
        assert isinstance(y, torch.Tensor) and y.device == b.device
        np.testing.assert_array_equal(x, y.numpy())


def test_free_task_and_options_state_broadcast():
    envs = NLinkPendulumVectorEnv(3, n_links=2, task="free", return_torch=True, dtype=torch.float64)
    envs.reset(options={"state": [0.5, -0.5, 0.0, 0.0]})
    assert torch.all(envs.state == torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64))
    _, reward, *_ = envs.step(torch.zeros(3, 2))
    assert torch.all(reward == 0)


def test_bad_inputs_are_rejected_with_clear_errors():
    envs = NLinkPendulumVectorEnv(4, n_links=2)
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        envs.step(np.zeros((4, 2)))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="actions"):
        envs.step(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="actions"):
        envs.step(np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="actions"):
        envs.step(torch.full((4, 2), float("inf")))
    with pytest.raises(ValueError, match=r"options\['state'\]"):
        envs.reset(options={"state": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.ones(3, dtype=bool)})
    with pytest.raises(ValueError, match="num_envs"):
        NLinkPendulumVectorEnv(0)
    with pytest.raises(ValueError, match="autoreset_mode"):
        NLinkPendulumVectorEnv(2, autoreset_mode="whenever")
    with pytest.raises(ValueError, match="task"):
        NLinkPendulumVectorEnv(2, task="balance")
    with pytest.raises(ValueError, match="dtype"):
        NLinkPendulumVectorEnv(2, dtype=torch.int32)


def test_out_of_range_actions_are_clipped_like_the_single_env():
    a = NLinkPendulumVectorEnv(2, n_links=2, max_torque=[1.0, 2.0], dtype=torch.float64, return_torch=True)
    b = NLinkPendulumVectorEnv(2, n_links=2, max_torque=[1.0, 2.0], dtype=torch.float64, return_torch=True)
    a.reset(seed=0)
    b.reset(seed=0)
    ra = a.step(torch.tensor([[100.0, -100.0], [-3.0, 3.0]]))[1]
    rb = b.step(torch.tensor([[1.0, -2.0], [-1.0, 2.0]]))[1]
    torch.testing.assert_close(a.state, b.state)
    torch.testing.assert_close(ra, rb)


def test_rgb_render_returns_one_frame_per_env_as_the_single_env_draws_it():
    kw = dict(n_links=2, render_mode="rgb_array", render_size=32, max_torque=1.0)
    envs = NLinkPendulumVectorEnv(3, dtype=torch.float64, **kw)
    single = NLinkPendulumEnv(**kw)
    envs.reset(seed=0)
    actions = np.array([[0.5, -0.5], [3.0, 0.0], [0.0, -0.2]])
    for step in range(2):  # after reset (no torque drawn), then after a step (torque arcs)
        frames = envs.render()
        assert isinstance(frames, tuple) and len(frames) == 3
        for i, frame in enumerate(frames):
            single.reset(options={"state": envs.state[i].numpy()})
            if step:  # the single env's frame after the same clipped action
                single._last_u = np.clip(actions[i], -1.0, 1.0).tolist()
            assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
            np.testing.assert_array_equal(frame, single.render())
        envs.step(actions)
    assert not np.array_equal(frames[0], frames[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_returns_tensors_on_device():
    envs = gym.make_vec(ENV_ID, num_envs=4096, vectorization_mode="vector_entry_point", device="cuda", return_torch=True)
    obs, _ = envs.reset(seed=0)
    assert obs.device.type == "cuda"
    obs, reward, *_ = envs.step(torch.zeros(4096, 2, device="cuda"))
    assert obs.device.type == "cuda" and reward.shape == (4096,)


def test_gymnasium_vector_wrappers_count_episodes():
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    envs = RecordEpisodeStatistics(gym.make_vec(ENV_ID, num_envs=3, max_episode_steps=3))
    envs.reset(seed=0)
    lengths = []
    for _ in range(7):  # two episodes of 3 steps with a next-step reset between them
        *_, info = envs.step(np.zeros((3, 2), dtype=np.float32))
        if "episode" in info:
            lengths.append(info["episode"]["l"].tolist())
    assert lengths == [[3, 3, 3], [3, 3, 3]]


def test_compiled_transition_is_compiled_once(monkeypatch):
    """The state keeps one memory layout across reset, steps, masked resets and autoresets,
    so ``compile=True`` traces the transition once (it used to trace again after the first
    step, when the row-major state from ``reset`` became the physics' column layout)."""
    graphs = []
    real_compile = torch.compile

    def counting_compile(fn, **kwargs):
        def backend(gm, example_inputs):
            graphs.append(len(gm.graph.nodes))
            return gm.forward  # run the traced graph eagerly: no C++ build in the test

        return real_compile(fn, backend=backend, dynamic=kwargs.get("dynamic"))

    monkeypatch.setattr(torch, "compile", counting_compile)
    torch._dynamo.reset()
    env = NLinkPendulumVectorEnv(num_envs=4, n_links=1, compile=True, max_episode_steps=3)
    env.reset(seed=0)
    actions = np.zeros((4, 1), dtype=np.float32)
    for _ in range(4):  # crosses a truncation and the next-step autoreset
        env.step(actions)
    env.reset(options={"reset_mask": np.array([True, False, True, False])})
    env.step(actions)
    assert len(graphs) == 1, graphs


def test_threads_on_a_busy_machine_warn_once(monkeypatch):
    import os

    import lyagym.envs.vector_env as vector_env

    if not hasattr(os, "getloadavg"):
        pytest.skip("no load average on this platform")
    monkeypatch.setattr(vector_env, "_THREADS_WARNED", False)
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with pytest.warns(RuntimeWarning, match="torch.set_num_threads"):
        NLinkPendulumVectorEnv(num_envs=2, n_links=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NLinkPendulumVectorEnv(num_envs=2, n_links=1)  # once per process
        monkeypatch.setattr(vector_env, "_THREADS_WARNED", False)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        NLinkPendulumVectorEnv(num_envs=2, n_links=1)  # one thread: nothing to say
