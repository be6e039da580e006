"""World-model environments: Gymnasium and SB3 checkers, batched/single agreement, autoreset,
runaway models, and SB3 training in imagination."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lyagym.agents.world_model_env import (
    SB3WorldModelVecEnv,
    StateBank,
    WorldModelEnv,
    WorldModelVectorEnv,
    box_initial_states,
)
from lyagym.learned_models import rollout


class Damped(torch.nn.Module):
    """``x_{k+1} = 0.9 x_k + 0.1 [0, u]``: a toy controlled model."""

    state_dim, action_dim, dt = 2, 1, 0.1

    def __init__(self, gain: float = 0.9):
        super().__init__()
        self.register_buffer("gain", torch.tensor(gain))

    @property
    def device(self):
        return self.gain.device

    @property
    def dtype(self):
        return self.gain.dtype

    def step(self, x, u=None):
        return self.gain * x + 0.1 * torch.cat([torch.zeros_like(u), u], -1)

    def rollout(self, x0, actions):
        return rollout(self, x0, actions)


def reward(x, u, x_next):
    return -(x * x).sum(-1) - 0.01 * (u * u).sum(-1)


START = box_initial_states([-1.0, -1.0], [1.0, 1.0])


def test_single_env_passes_gymnasium_and_sb3_checkers():
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = WorldModelEnv(Damped(), reward, START, action_low=-2.0, action_high=2.0, max_episode_steps=20)
    gym_check(env, skip_render_check=True)
    sb3_check(env, warn=True)


def test_single_env_follows_the_model_and_clips_actions():
    model = Damped()
    env = WorldModelEnv(model, reward, START, action_low=-2.0, action_high=2.0, max_episode_steps=3)
    obs, _ = env.reset(seed=1, options={"state": [0.5, -0.5]})
    np.testing.assert_allclose(obs, [0.5, -0.5])
    obs2, r, terminated, truncated, _ = env.step(np.array([10.0], dtype=np.float32))  # clipped to 2
    np.testing.assert_allclose(obs2, [0.45, -0.45 + 0.2], rtol=1e-6)
    assert r == pytest.approx(-(0.25 + 0.25) - 0.01 * 4.0, rel=1e-6)
    assert not terminated and not truncated
    env.step(np.zeros(1, np.float32))
    *_, truncated = env.step(np.zeros(1, np.float32))[:4]
    assert truncated
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan], np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        WorldModelEnv(model, reward, START).step(np.zeros(1, np.float32))


def test_vector_env_is_batched_single_env_and_autoresets():
    model = Damped()
    venv = WorldModelVectorEnv(model, reward, START, num_envs=5, action_low=-1, action_high=1, max_episode_steps=4)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (5, 2) and obs.dtype == np.float32
    actions = np.linspace(-1, 1, 5, dtype=np.float32)[:, None]
    single = WorldModelEnv(model, reward, START, action_low=-1, action_high=1, max_episode_steps=4)
    one_by_one = []
    for i in range(5):
        single.reset(options={"state": obs[i]})
        one_by_one.append(single.step(actions[i])[:2])
    obs1, rew, term, trunc, _ = venv.step(actions)
    np.testing.assert_allclose(obs1, np.stack([o for o, _ in one_by_one]), rtol=1e-6)
    np.testing.assert_allclose(rew, [r for _, r in one_by_one], rtol=1e-6)
    expected = 0.9 * obs + 0.1 * np.concatenate([np.zeros_like(actions), actions], 1)
    np.testing.assert_allclose(obs1, expected, rtol=1e-5)
    assert rew.shape == (5,) and not term.any() and not trunc.any()
    for _ in range(3):
        obs1, rew, term, trunc, _ = venv.step(actions)
    assert trunc.all()  # 4 steps
    # next-step autoreset: the following step restarts every env and ignores the action
    obs2, rew2, term2, trunc2, _ = venv.step(actions)
    assert (rew2 == 0).all() and not trunc2.any()
    assert np.abs(obs2).max() <= 1.0  # fresh states from the start box


def test_same_step_autoreset_reports_final_observation_and_runaway_terminates():
    model = Damped(gain=10.0)  # explodes: x grows 10x per step
    venv = WorldModelVectorEnv(model, reward, START, num_envs=3, max_episode_steps=100, state_bound=50.0,
                               autoreset_mode="same_step")
    venv.reset(seed=0, options={"state": np.array([[1.0, 1.0], [0.01, 0.01], [0.001, 0.0]])})
    zeros = np.zeros((3, 1), np.float32)
    venv.step(zeros)
    obs, rew, term, trunc, info = venv.step(zeros)  # 100 > 50: env 0 ran away
    assert term.tolist() == [True, False, False]
    assert info["_final_obs"].tolist() == [True, False, False]
    np.testing.assert_allclose(info["final_obs"][0], [50.0, 50.0])  # clamped, finite
    assert np.abs(obs[0]).max() <= 1.0  # already restarted
    assert np.isfinite(rew).all()


@pytest.mark.parametrize("ensemble", [False, True])
def test_a_learned_model_that_overflows_on_one_row_ends_that_episode_only(ensemble):
    """A learned model raises on an overflow from finite inputs (``ValueError``) when called
    directly; inside the environment the overflowing row ends its episode (terminated) and
    the other rows step on, and afterwards the model raises again."""
    from lyagym.learned_models import Ensemble, SimpleDynamics, member_factory

    torch.manual_seed(0)
    if ensemble:
        model = Ensemble(member_factory("simple", 2, 1, hidden=(8,), dt=0.1, integrator="euler"), 2, propagation="tsinf",
                         sample=False)
    else:
        model = SimpleDynamics(2, 1, hidden=(8,), dt=0.1, integrator="euler")
    with torch.no_grad():  # weights of 1e20 and no biases: f(0, 0) = 0, anything else overflows float32
        for name, p in model.named_parameters():
            if "logvar" not in name:
                p.copy_(torch.zeros_like(p) if name.endswith("bias") else p.sign() * 1e20)
    diverging = torch.tensor([[0.5, 0.5]])
    with pytest.raises(ValueError, match="overflowed float32 from finite inputs"):
        model.step(diverging, torch.zeros(1, 1))
    venv = WorldModelVectorEnv(model, reward, START, num_envs=2, max_episode_steps=10)
    venv.reset(seed=0, options={"state": np.array([[0.0, 0.0], [0.5, 0.5]])})
    obs, rew, term, trunc, _ = venv.step(np.zeros((2, 1), np.float32))
    assert term.tolist() == [False, True]
    np.testing.assert_array_equal(obs[0], [0.0, 0.0])
    assert np.isfinite(obs).all() and np.isfinite(rew).all()
    assert "raise_on_overflow" not in vars(model)  # restored to the class default
    with pytest.raises(ValueError, match="overflowed float32 from finite inputs"):
        model.step(diverging, torch.zeros(1, 1))


def test_torch_output_stays_on_the_model_device():
    venv = WorldModelVectorEnv(Damped(), reward, START, num_envs=4, return_torch=True)
    obs, _ = venv.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.device == venv.device
    obs, rew, term, trunc, _ = venv.step(torch.zeros(4, 1))
    assert isinstance(rew, torch.Tensor) and rew.shape == (4,) and term.dtype == torch.bool


def test_state_bank_branches_from_real_states_and_sac_trains_in_imagination():
    from stable_baselines3 import SAC

    from lyagym.agents.sb3_baselines import sb3_logger

    bank = StateBank(2)
    with pytest.raises(RuntimeError, match="empty"):
        bank(1, torch.Generator())
    real = np.array([[0.3, 0.0], [-0.2, 0.1]])
    bank.add(real)
    venv = WorldModelVectorEnv(Damped(), reward, bank, num_envs=8, max_episode_steps=5)
    obs, _ = venv.reset(seed=0)
    assert all(any(np.allclose(o, r, atol=1e-6) for r in real) for o in obs)
    sb3_env = SB3WorldModelVecEnv(venv)
    model = SAC("MlpPolicy", sb3_env, learning_starts=16, batch_size=16, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16, 16]})
    model.set_logger(sb3_logger())  # SB3's default logger would leave an empty folder in the temp dir
    model.learn(total_timesteps=80)
    assert model.replay_buffer.size() == 10  # 80 transitions over 8 envs
    # finished episodes carried their final observation for bootstrapping
    assert model.num_timesteps == 80


def test_overflowing_rows_returned_reaches_through_a_wrapper_and_restores_the_flag():
    from lyagym.agents.mpc import AngleWrappedModel
    from lyagym.learned_models import SimpleDynamics, overflowing_rows_returned

    torch.manual_seed(0)
    model = SimpleDynamics(2, 1, hidden=(8,), dt=0.1, integrator="euler")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.zeros_like(p) if name.endswith("bias") else p.sign() * 1e20)
    wrapped = AngleWrappedModel(model, 1)
    x, u = torch.tensor([[0.5, 0.5]]), torch.zeros(1, 1)
    model.raise_on_overflow = True  # an instance's own setting is put back as it was
    with overflowing_rows_returned(wrapped):
        assert not torch.isfinite(wrapped.step(x, u)).all()
        with pytest.raises(ValueError, match="x contains NaN or inf"):  # inputs still checked
            model.step(torch.tensor([[float("nan"), 0.0]]), u)
    assert vars(model)["raise_on_overflow"] is True
    with pytest.raises(ValueError, match="overflowed float32 from finite inputs"):
        wrapped.step(x, u)
    plain = Damped()  # a model without the flag (nor a wrapped one): nothing is set on it
    with overflowing_rows_returned(plain):
        assert not hasattr(plain, "raise_on_overflow")
        assert torch.isfinite(plain.step(x, u)).all()
    assert not hasattr(plain, "raise_on_overflow")
