"""Ecosystem conformance: lyagym's envs, vector envs and models behave
as Gymnasium's and Stable-Baselines3's own do. Where possible each test runs the same calls on
``SyncVectorEnv`` / ``DummyVecEnv`` of the single env and asserts the same outcome (info keys
and masks, autoreset semantics, error types)."""

from __future__ import annotations

import copy
import pickle
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import lyagym.envs  # noqa: F401  (registers the ids)
from lyagym.agents.world_model_env import (
    SB3WorldModelVecEnv,
    StateBank,
    WorldModelEnv,
    WorldModelVectorEnv,
    box_initial_states,
)
from lyagym.envs import NLinkPendulumEnv, NLinkPendulumVectorEnv, PendulumDynamics
from lyagym.envs.video_data import make_texture
from lyagym.envs.video_texture import VideoTextureEnv, VideoTextureVectorEnv
from lyagym.learned_models import LyaNetWorldModel, SimpleDynamics, StableControlledDynamics, StableDynamics, VideoVAE

ENV_ID = "lyagym/NLinkPendulum-v0"
QUALIFIED_ID = "lyagym.envs:lyagym/NLinkPendulum-v0"
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]
X0 = np.array([0.3, -0.2, 0.1, 0.0])


# ----------------------------------------------------------------------------- fixtures
class Damped(torch.nn.Module):
    """``x' = 0.9 x + 0.1 [0, u]``: a toy controlled world model (module level: picklable)."""

    state_dim, action_dim, dt = 2, 1, 0.1

    def __init__(self):
        super().__init__()
        self.register_buffer("gain", torch.tensor(0.9))

    @property
    def device(self):
        return self.gain.device

    @property
    def dtype(self):
        return self.gain.dtype

    def step(self, x, u=None):
        return self.gain * x + 0.1 * torch.cat([torch.zeros_like(u), u], -1)

    def rollout(self, x0, actions):
        from lyagym.learned_models import rollout

        return rollout(self, x0, actions)


def toy_reward(x, u, x_next):
    return -(x * x).sum(-1) - 0.01 * (u * u).sum(-1)


START = box_initial_states([-1.0, -1.0], [1.0, 1.0])
WM_KW = dict(action_low=-2.0, action_high=2.0, max_episode_steps=3)


def wm_vector(num_envs=2, **kw):
    return WorldModelVectorEnv(Damped(), toy_reward, START, num_envs, **{**WM_KW, **kw})


def wm_single():
    return WorldModelEnv(Damped(), toy_reward, START, **WM_KW)


@pytest.fixture(scope="module")
def texture_model():
    """An untrained tiny video VAE with reference frames: enough for the env contract."""
    torch.manual_seed(0)
    model = VideoVAE(16, 4, dynamics="stable", channels=(4,), dynamics_kwargs={"hidden": (8,), "lyap_hidden": (8,)})
    model.set_reference_frames(make_texture("clouds", n_frames=4, size=16, seed=0), [0] * 4)
    return model


def pendulum_sync(num_envs, mode, render_mode=None, max_episode_steps=3):
    return SyncVectorEnv([lambda: gym.make(ENV_ID, max_episode_steps=max_episode_steps, render_mode=render_mode)] * num_envs,
                         autoreset_mode=mode)


def pendulum_vector(num_envs, mode, render_mode=None, max_episode_steps=3):
    return NLinkPendulumVectorEnv(num_envs, max_episode_steps=max_episode_steps, autoreset_mode=mode,
                                  dtype=torch.float64, render_mode=render_mode)


# ----------------------------------------------------------------------------- 1. pickling
def test_pendulum_dynamics_pickles_and_rebuilds_its_compiled_equations():
    dyn = PendulumDynamics(n_links=2, masses=[1.0, 2.0], damping=0.1, actuated=(1,)).to(dtype=torch.float64)
    copy_ = pickle.loads(pickle.dumps(dyn))
    assert copy_.config() == dyn.config() and copy_.dtype == torch.float64
    x, u = torch.tensor([[0.3, -0.2, 0.1, 0.5]], dtype=torch.float64), torch.tensor([[0.7]], dtype=torch.float64)
    torch.testing.assert_close(copy_.step(x, u), dyn.step(x, u), rtol=0, atol=0)
    np.testing.assert_array_equal(copy_.step_single(X0, [0.7]), dyn.step_single(X0, [0.7]))
    assert len(pickle.dumps(dyn)) < 4096  # arguments, not code


def test_single_env_pickles_mid_episode_and_continues_identically():
    env = gym.make(ENV_ID, max_episode_steps=10)
    env.reset(seed=0)
    env.step(np.array([0.5, -0.5], np.float32))
    twin = pickle.loads(pickle.dumps(env))
    for _ in range(3):
        a = env.action_space.sample()
        np.testing.assert_array_equal(env.step(a)[0], twin.step(a)[0])
    np.testing.assert_array_equal(env.reset()[0], twin.reset()[0])  # the same np_random


@pytest.mark.parametrize("mode", MODES[:2])
def test_pendulum_vector_env_pickles_with_its_autoreset_generator(mode):
    envs = NLinkPendulumVectorEnv(3, max_episode_steps=2, autoreset_mode=mode)
    envs.reset(seed=1)
    envs.step(np.zeros((3, 2), np.float32))
    twin = pickle.loads(pickle.dumps(envs))
    assert twin.metadata["autoreset_mode"] is mode
    for _ in range(4):  # through two autoresets: the restart states come from the generator
        a = np.random.default_rng(0).uniform(-1, 1, (3, 2)).astype(np.float32)
        for got, want in zip(twin.step(a)[:4], envs.step(a)[:4]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SimpleDynamics(2, 1, hidden=(8,)),
        lambda: StableDynamics(2, hidden=(8,), lyap_hidden=(8,)),
        lambda: StableControlledDynamics(2, 1, hidden=(8,), lyap_hidden=(8,), sigma_hidden=(4,)),
        lambda: LyaNetWorldModel(2, 1, width=8, depth=1),
    ],
    ids=["simple", "stable", "stable_controlled", "lyanet"],
)
def test_learned_world_models_pickle(make):
    torch.manual_seed(0)
    model = make()
    twin = pickle.loads(pickle.dumps(model))
    assert type(twin) is type(model)
    x = torch.tensor([[0.2, -0.4]])
    u = torch.tensor([[0.3]]) if model.action_dim else None
    torch.testing.assert_close(twin.step(x, u), model.step(x, u))


def test_video_vae_and_texture_envs_pickle(texture_model):
    twin = pickle.loads(pickle.dumps(texture_model))
    z = torch.zeros(1, 4)
    torch.testing.assert_close(twin.decode(z), texture_model.decode(z))
    env = VideoTextureEnv(texture_model)
    env.reset(seed=0)
    env_twin = pickle.loads(pickle.dumps(env))
    a = np.full(4, 0.5, np.float32)
    np.testing.assert_array_equal(env.step(a)[0], env_twin.step(a)[0])
    envs = VideoTextureVectorEnv(2, texture_model, max_episode_steps=1)
    envs.reset(seed=0)
    envs_twin = pickle.loads(pickle.dumps(envs))
    for _ in range(3):  # through autoresets drawn from the pickled generator
        a = np.full((2, 4), 0.5, np.float32)
        np.testing.assert_array_equal(envs.step(a)[0], envs_twin.step(a)[0])


def test_world_model_envs_pickle_with_picklable_callables():
    bank = StateBank(2)
    bank.add(np.array([[0.5, 0.5], [-0.5, 0.1]]))
    for envs in (wm_vector(), WorldModelVectorEnv(Damped(), toy_reward, bank, 2, **WM_KW)):
        envs.reset(seed=0)
        twin = copy.deepcopy(pickle.loads(pickle.dumps(envs)))
        for _ in range(4):  # past the time limit: restarts drawn from the pickled generator
            a = np.full((2, 1), 0.3, np.float32)
            np.testing.assert_array_equal(envs.step(a)[0], twin.step(a)[0])
    env = wm_single()
    env.reset(seed=0)
    twin = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(env.step(np.ones(1, np.float32))[0], twin.step(np.ones(1, np.float32))[0])


# ----------------------------------------------------------------------------- 2. render
def test_pendulum_vector_render_matches_sync_vector_env_frames():
    ours, sync = pendulum_vector(3, AutoresetMode.NEXT_STEP, "rgb_array"), pendulum_sync(3, AutoresetMode.NEXT_STEP, "rgb_array")
    ours.reset(options={"state": X0})
    sync.reset(options={"state": X0})
    a = np.array([[0.5, -0.5], [1.0, 0.0], [0.0, -1.0]], np.float32)
    for _ in range(2):
        mine, theirs = ours.render(), sync.render()
        assert isinstance(mine, tuple) and len(mine) == len(theirs) == 3
        for f, g in zip(mine, theirs):
            assert f.shape == g.shape and f.dtype == g.dtype == np.uint8
            assert np.mean(f != g) < 0.01  # the same picture (round-off may move an edge pixel)
        ours.step(a)
        sync.step(a)


def _check_human_rendering_contract(frames, num_envs):
    """What ``gymnasium.wrappers.vector.HumanRendering`` asserts of ``env.render()``."""
    assert frames is not None and len(frames) == num_envs
    assert all(isinstance(f, np.ndarray) for f in frames)
    stacked = np.array(frames, dtype=np.uint8)
    assert stacked.ndim == 4 and stacked.shape[0] == num_envs and stacked.shape[-1] == 3


def test_video_texture_vector_render_is_one_frame_per_env(texture_model):
    envs = VideoTextureVectorEnv(3, texture_model, render_mode="rgb_array")
    obs, _ = envs.reset(seed=0)
    frames = envs.render()
    assert isinstance(frames, tuple)
    _check_human_rendering_contract(frames, 3)
    np.testing.assert_array_equal(np.stack(frames), obs)


@pytest.mark.parametrize("which", ["pendulum", "texture"])
def test_record_video_wrapper_tiles_every_sub_env(which, texture_model, tmp_path, monkeypatch):
    """``gymnasium.wrappers.vector.RecordVideo`` with more than one env. MoviePy is needed only
    to write the file; a stand-in module lets the wrapper capture the frames without it."""
    from gymnasium.wrappers.vector import RecordVideo

    monkeypatch.setitem(sys.modules, "moviepy", types.ModuleType("moviepy"))
    if which == "pendulum":
        envs = NLinkPendulumVectorEnv(2, render_mode="rgb_array", render_size=24)
    else:
        envs = VideoTextureVectorEnv(2, texture_model, render_mode="rgb_array")
    rec = RecordVideo(envs, str(tmp_path / "videos"), episode_trigger=lambda e: True, video_length=100, disable_logger=True)
    rec.reset(seed=0)
    rec.step(envs.action_space.sample())
    h, w, _ = envs.render()[0].shape
    assert len(rec.recorded_frames) == 2
    assert rec.recorded_frames[-1].shape == (rec.frame_rows * h, rec.frame_cols * w, 3)
    assert rec.frame_rows * rec.frame_cols == 2
    rec.recording, rec.recorded_frames = False, []  # nothing to write without MoviePy
    rec.close()


def test_human_rendering_wrapper_shows_every_sub_env(monkeypatch):
    pytest.importorskip("pygame")
    pytest.importorskip("cv2")
    from gymnasium.wrappers.vector import HumanRendering

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    envs = HumanRendering(NLinkPendulumVectorEnv(2, render_mode="rgb_array", render_size=24))
    envs.reset(seed=0)
    envs.step(np.zeros((2, 2), np.float32))
    envs.close()


# ----------------------------------------------------------------------------- 3. autoreset modes
VECTOR_ENVS = {
    "pendulum": lambda mode, model: pendulum_vector(2, mode),
    "world_model": lambda mode, model: wm_vector(2, autoreset_mode=mode),
    "texture": lambda mode, model: VideoTextureVectorEnv(2, model, autoreset_mode=mode, max_episode_steps=3),
}


@pytest.mark.parametrize("kind", VECTOR_ENVS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spelling", ["member", "value"])
def test_every_vector_env_accepts_autoreset_mode_members_and_values(kind, mode, spelling, texture_model):
    envs = VECTOR_ENVS[kind](mode if spelling == "member" else mode.value, texture_model)
    assert envs.metadata["autoreset_mode"] is mode


@pytest.mark.parametrize("kind", VECTOR_ENVS)
def test_bad_autoreset_mode_names_the_argument(kind, texture_model):
    with pytest.raises(ValueError, match="autoreset_mode.*SameStep"):
        VECTOR_ENVS[kind]("same-step", texture_model)


def _assert_same_step_info_like_sync(info, sync_info, num_envs):
    assert set(info) == set(sync_info)
    for key in ("_final_obs", "_final_info"):
        np.testing.assert_array_equal(np.asarray(info[key]), sync_info[key])
    for i in np.flatnonzero(sync_info["_final_obs"]):
        np.testing.assert_allclose(info["final_obs"][i], sync_info["final_obs"][i], rtol=1e-5, atol=1e-5)
    assert set(info["final_info"]) == set(sync_info["final_info"])


def _run_like_sync(ours, sync, actions, reset_kwargs, sync_reset_kwargs):
    """Step both from the same states; return per-step (ours, sync) results."""
    ours.reset(**reset_kwargs)
    sync.reset(**sync_reset_kwargs)
    return [(ours.step(a), sync.step(a)) for a in actions]


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_pendulum_autoreset_matches_sync_vector_env(mode):
    actions = np.full((4, 2, 2), 0.2, np.float32)
    steps = _run_like_sync(pendulum_vector(2, mode), pendulum_sync(2, mode), actions,
                           dict(options={"state": X0}), dict(options={"state": X0}))
    for t, ((o, r, te, tr, info), (so, sr, ste, str_, sinfo)) in enumerate(steps[:3]):
        np.testing.assert_array_equal(tr, str_)
        np.testing.assert_array_equal(te, ste)
        if mode is AutoresetMode.SAME_STEP and str_.any():
            _assert_same_step_info_like_sync(info, sinfo, 2)
        else:
            assert set(info) == set(sinfo) == set()
            np.testing.assert_allclose(o, so, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(r, sr, rtol=1e-5, atol=1e-6)
    (o, r, te, tr, info), (so, sr, ste, str_, sinfo) = steps[3]
    np.testing.assert_array_equal(r == 0, sr == 0)  # NEXT_STEP: the reset step has reward 0
    np.testing.assert_array_equal(tr, str_)
    assert set(info) == set(sinfo)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_world_model_autoreset_matches_sync_vector_env_of_the_single_env(mode):
    x0 = np.array([0.5, -0.5])
    sync = SyncVectorEnv([wm_single] * 2, autoreset_mode=mode)
    steps = _run_like_sync(wm_vector(2, autoreset_mode=mode), sync, np.full((4, 2, 1), 0.3, np.float32),
                           dict(options={"state": x0}), dict(options={"state": x0}))
    for t, ((o, r, te, tr, info), (so, sr, ste, str_, sinfo)) in enumerate(steps):
        np.testing.assert_array_equal(tr, str_)
        np.testing.assert_array_equal(r == 0, sr == 0)  # NEXT_STEP: 0 on the restart step
        if str_.any() and mode is AutoresetMode.SAME_STEP:
            _assert_same_step_info_like_sync(info, sinfo, 2)
        else:
            assert set(info) == set(sinfo) == set()
            if t < 3:  # before any restart (whose states are random)
                np.testing.assert_allclose(o, so, rtol=1e-6)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_video_texture_autoreset_matches_sync_vector_env(mode, texture_model):
    z0 = texture_model.reference_latents[1].numpy()
    ours = VideoTextureVectorEnv(2, texture_model, autoreset_mode=mode, max_episode_steps=3)
    sync = SyncVectorEnv([lambda: gym.wrappers.TimeLimit(VideoTextureEnv(texture_model), 3)] * 2, autoreset_mode=mode)
    steps = _run_like_sync(ours, sync, np.full((4, 2, 4), 0.5, np.float32),
                           dict(options={"latent": np.stack([z0, z0])}), dict(options={"latent": z0}))
    for t, ((o, r, te, tr, info), (so, sr, ste, str_, sinfo)) in enumerate(steps):
        np.testing.assert_array_equal(tr, str_)
        np.testing.assert_array_equal(r == 0, sr == 0)
        assert set(info) == set(sinfo)
        if str_.any() and mode is AutoresetMode.SAME_STEP:
            _assert_same_step_info_like_sync(info, sinfo, 2)
            assert set(info["final_info"]) == {"latent", "_latent", "distance", "_distance"}
            np.testing.assert_allclose(info["final_info"]["distance"], sinfo["final_info"]["distance"], rtol=1e-4)
        elif t < 2:  # before any restart (whose start frames are random)
            np.testing.assert_allclose(info["distance"], sinfo["distance"], rtol=1e-4)
            np.testing.assert_allclose(info["latent"], sinfo["latent"], rtol=1e-4, atol=1e-5)


def _pendulum_pair():
    return pendulum_vector(2, AutoresetMode.DISABLED), pendulum_sync(2, AutoresetMode.DISABLED)


def _world_model_pair():
    return wm_vector(2, autoreset_mode="Disabled"), SyncVectorEnv([wm_single] * 2, autoreset_mode=AutoresetMode.DISABLED)


@pytest.mark.parametrize("pair", [_pendulum_pair, _world_model_pair], ids=["pendulum", "world_model"])
def test_disabled_mode_reset_mask_resets_only_the_masked_envs_like_sync(pair):
    ours, sync = pair()
    d = ours.single_observation_space.shape[0] if isinstance(ours, WorldModelVectorEnv) else 4
    first, second = (X0[:d], X0[:d] * 2) if d == 4 else (np.array([0.5, -0.5]), np.array([-0.2, 0.9]))
    ours.reset(options={"state": first})
    sync.reset(options={"state": first})
    m = ours.single_action_space.shape[0]
    a = np.full((2, m), 0.25, np.float32)
    ours.step(a)
    sync.step(a)
    mask = np.array([True, False])
    o, info = ours.reset(options={"state": second, "reset_mask": mask.copy()})
    so, sinfo = sync.reset(options={"state": second, "reset_mask": mask.copy()})
    np.testing.assert_allclose(o, so, rtol=1e-6)  # env 0 restarted at `second`, env 1 not reset
    assert set(info) == set(sinfo)
    done_at = []
    for t in range(4):
        (_, _, te, tr, _), (_, _, ste, str_, _) = ours.step(a), sync.step(a)
        np.testing.assert_array_equal(te, ste)
        np.testing.assert_array_equal(tr, str_)  # env 1 ends one step before env 0
        if tr.any():
            done_at.append((t, tr.tolist()))
            ours.reset(options={"reset_mask": tr.copy()})
            sync.reset(options={"reset_mask": str_.copy()})
    assert done_at[:2] == [(1, [False, True]), (2, [True, False])]


@pytest.mark.parametrize("kind", VECTOR_ENVS)
def test_disabled_mode_refuses_to_step_an_ended_env_until_it_is_reset(kind, texture_model):
    envs = VECTOR_ENVS[kind](AutoresetMode.DISABLED, texture_model)
    envs.reset(seed=0)
    a = np.zeros(envs.action_space.shape, np.float32)
    for _ in range(3):
        *_, truncated, _ = envs.step(a)
    assert truncated.all()
    with pytest.raises(gym.error.ResetNeeded, match="reset_mask"):
        envs.step(a)
    envs.reset(options={"reset_mask": np.array([True, False])})
    with pytest.raises(gym.error.ResetNeeded):
        envs.step(a)
    envs.reset(options={"reset_mask": np.array([False, True])})
    envs.step(a)


@pytest.mark.parametrize("kind", VECTOR_ENVS)
@pytest.mark.parametrize("bad, error", [([True, False], TypeError), (np.array([1, 0]), TypeError),
                                        (np.ones(3, bool), ValueError)])
def test_bad_reset_masks_raise_sync_vector_env_error_types(kind, bad, error, texture_model):
    sync = pendulum_sync(2, AutoresetMode.DISABLED)
    sync.reset(seed=0)
    with pytest.raises(error):
        sync.reset(options={"reset_mask": bad})
    envs = VECTOR_ENVS[kind](AutoresetMode.DISABLED, texture_model)
    envs.reset(seed=0)
    with pytest.raises(error, match="reset_mask"):
        envs.reset(options={"reset_mask": bad})


def test_world_model_same_step_torch_output_reports_masks_every_step():
    envs = wm_vector(2, autoreset_mode="SameStep", return_torch=True)
    envs.reset(seed=0)
    *_, truncated, info = envs.step(torch.zeros(2, 1))
    assert {"final_obs", "_final_obs", "final_info", "_final_info"} <= set(info)
    assert not info["_final_obs"].any() and isinstance(info["final_obs"], torch.Tensor)


# ----------------------------------------------------------------------------- 4. video texture seeding and infos
def test_video_texture_vector_seed_and_info_keys_match_sync_vector_env(texture_model):
    ours = VideoTextureVectorEnv(2, texture_model)
    sync = SyncVectorEnv([lambda: VideoTextureEnv(texture_model)] * 2)
    obs, info = ours.reset(seed=3)
    _, sinfo = sync.reset(seed=3)
    assert ours.np_random_seed == 3
    assert set(info) == set(sinfo) == {"latent", "_latent", "distance", "_distance"}
    for key in info:
        assert np.asarray(info[key]).shape == sinfo[key].shape and np.asarray(info[key]).dtype == sinfo[key].dtype, key
    again, _ = ours.reset(seed=3)
    np.testing.assert_array_equal(again, obs)
    *_, info = ours.step(np.zeros((2, 4), np.float32))
    *_, sinfo = sync.step(np.zeros((2, 4), np.float32))
    assert set(info) == set(sinfo)
    assert info["_latent"].all() and info["_distance"].all()


# ----------------------------------------------------------------------------- 5. scalar actions
def _sync_error(envs, action):
    envs.reset(seed=0)
    with pytest.raises(Exception) as caught:
        envs.step(action)
    return type(caught.value)


@pytest.mark.parametrize("action", [0.5, np.float32(0.5), np.array(0.5), None])
@pytest.mark.parametrize("kind", VECTOR_ENVS)
def test_scalar_action_raises_what_sync_vector_env_raises(kind, action, texture_model):
    single = {"pendulum": lambda: gym.make(ENV_ID), "world_model": wm_single,
              "texture": lambda: VideoTextureEnv(texture_model)}[kind]
    expected = _sync_error(SyncVectorEnv([single] * 2), action)
    assert expected is TypeError
    envs = VECTOR_ENVS[kind](AutoresetMode.NEXT_STEP, texture_model)
    envs.reset(seed=0)
    with pytest.raises(expected, match="actions"):
        envs.step(action)


@pytest.mark.parametrize("kind", VECTOR_ENVS)
def test_wrong_batch_shape_raises_value_error_naming_actions(kind, texture_model):
    envs = VECTOR_ENVS[kind](AutoresetMode.NEXT_STEP, texture_model)
    envs.reset(seed=0)
    m = envs.single_action_space.shape[0]
    with pytest.raises(ValueError, match="actions"):
        envs.step(np.zeros((3, m), np.float32))


# ----------------------------------------------------------------------------- 6. worker processes
def test_async_vector_env_under_spawn_with_the_module_qualified_id():
    envs = gym.make_vec(QUALIFIED_ID, num_envs=2, vectorization_mode="async", max_episode_steps=5,
                        vector_kwargs={"context": "spawn"})
    try:
        obs, _ = envs.reset(seed=0)
        obs2, reward, *_ = envs.step(np.zeros((2, 2), np.float32))
    finally:
        envs.close()
    single = gym.make(ENV_ID)
    np.testing.assert_allclose(obs[0], single.reset(seed=0)[0])
    np.testing.assert_allclose(obs2[0], single.step(np.zeros(2, np.float32))[0], rtol=1e-6)


def test_sb3_subproc_vec_env_under_spawn_with_the_module_qualified_id():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    envs = make_vec_env(QUALIFIED_ID, n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                        vec_env_kwargs={"start_method": "spawn"}, env_kwargs={"max_episode_steps": 5})
    try:
        obs = envs.reset()
        for _ in range(5):
            obs, reward, dones, infos = envs.step(np.zeros((2, 2), np.float32))
        assert obs.shape == (2, 6) and dones.all() and "terminal_observation" in infos[0]
    finally:
        envs.close()


# ----------------------------------------------------------------------------- 7. SB3 VecEnv API
def _sb3_pair():
    from stable_baselines3.common.vec_env import DummyVecEnv

    return SB3WorldModelVecEnv(wm_vector(3)), DummyVecEnv([wm_single] * 3)


def test_sb3_set_attr_and_get_attr_honour_indices_like_dummy_vec_env():
    ours, dummy = _sb3_pair()
    for venv in (ours, dummy):
        for i in range(3):
            venv.set_attr("k", i, indices=i)
    assert ours.get_attr("k") == dummy.get_attr("k") == [0, 1, 2]
    assert ours.get_attr("k", indices=[2, 0]) == dummy.get_attr("k", indices=[2, 0]) == [2, 0]
    assert ours.get_attr("max_episode_steps", indices=[0, 2]) == dummy.get_attr("max_episode_steps", indices=[0, 2])
    ours.set_attr("max_episode_steps", 7)  # all envs: reaches the batched env
    assert ours.venv.max_episode_steps == 7 and ours.get_attr("max_episode_steps") == [7, 7, 7]
    with pytest.raises(AttributeError):
        ours.get_attr("no_such_attribute")
    with pytest.raises(IndexError):
        ours.get_attr("k", indices=[5])


def test_sb3_env_method_honours_indices():
    ours, dummy = _sb3_pair()
    ours.set_attr("where", lambda: "one", indices=1)
    assert ours.env_method("where", indices=[1]) == ["one"]
    ours.reset()
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    rows = ours.env_method("observe", x, indices=[2, 0])  # a batched result is split per env
    torch.testing.assert_close(torch.stack(rows), x[[2, 0]])
    assert len(dummy.env_method("reset", indices=[0, 1])) == len(ours.env_method("close_extras", indices=[0, 1])) == 2


def test_sb3_set_options_reaches_the_next_reset_only_like_dummy_vec_env():
    ours, dummy = _sb3_pair()
    state = np.array([0.25, -0.75])
    for venv in (ours, dummy):
        venv.set_options({"state": state})
    np.testing.assert_allclose(ours.reset(), dummy.reset())
    assert not np.allclose(ours.reset(), state)  # used once, as SB3 does
    per_env = [{"state": state * (i + 1)} for i in range(3)]
    for venv in (ours, dummy):
        venv.set_options(per_env)
    np.testing.assert_allclose(ours.reset(), dummy.reset())
    ours.set_options([{"state": state}, {}, {}])
    with pytest.raises(ValueError, match="set_options"):
        ours.reset()


def test_sb3_seed_reproduces_the_next_reset():
    ours, _ = _sb3_pair()
    ours.seed(4)
    first = ours.reset()
    ours.seed(4)
    np.testing.assert_array_equal(ours.reset(), first)
