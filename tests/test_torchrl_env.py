"""A lyagym world model as a stateless, batch-unlocked TorchRL env, planned on
by TorchRL's own CEMPlanner and MPPIPlanner (skipped without torchrl)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torchrl")
from torchrl.envs.utils import check_env_specs  # noqa: E402
from torchrl.modules import CEMPlanner, MPPIPlanner  # noqa: E402

from lyagym.agents.torchrl_env import WorldModelTorchRLEnv  # noqa: E402


class Integrator(nn.Module):
    """x_{k+1} = x_k + dt u_k: a tiny WorldModel."""

    state_dim, action_dim, dt = 1, 1, 0.1

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def step(self, x, u=None):
        return x + self.dt * self.scale * u


def reward(x, u, x_next):
    return -(x_next ** 2).sum(-1)


def _env():
    return WorldModelTorchRLEnv(Integrator(), reward, action_low=-1.0, action_high=1.0)


def test_check_env_specs_and_batch_unlocked():
    env = _env()
    assert not env.batch_locked
    check_env_specs(env)
    td = env.rollout(3, tensordict=env.reset(env.make_state(torch.ones(5, 1))), auto_reset=False)
    assert td.batch_size == (5, 3)
    torch.testing.assert_close(td["next", "observation"], td["observation"] + 0.1 * td["action"])
    torch.testing.assert_close(td["next", "reward"], -td["next", "observation"] ** 2)


def test_cem_planner_plans_towards_the_reward():
    env = _env()
    env.set_seed(0)
    planner = CEMPlanner(env, planning_horizon=5, optim_steps=3, num_candidates=64, top_k=8)
    action = planner(env.reset(env.make_state(torch.tensor([[1.0], [-1.0]]))))["action"]
    assert action.shape == (2, 1)
    assert action[0, 0] < -0.3 and action[1, 0] > 0.3  # push each state towards 0


class ReturnToGo(nn.Module):
    """MPPI's advantage: the rewards summed from each step to the horizon."""

    def forward(self, td):
        r = td.get(("next", "reward"))
        td.set("advantage", r.flip(-2).cumsum(-2).flip(-2))
        return td


def test_mppi_planner_plans_towards_the_reward():
    env = _env()
    env.set_seed(0)
    planner = MPPIPlanner(env, ReturnToGo(), temperature=0.1, planning_horizon=5, optim_steps=3,
                          num_candidates=64, top_k=16)
    action = planner(env.reset(env.make_state(torch.tensor([[1.0]]))))["action"]
    assert action.shape == (1, 1) and action[0, 0] < -0.3


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="WorldModel"):
        WorldModelTorchRLEnv(object(), reward)
    with pytest.raises(ValueError, match="action_low and action_high"):
        WorldModelTorchRLEnv(Integrator(), reward, action_low=-1.0)
    with pytest.raises(ValueError, match="state_dim=1"):
        _env().make_state(torch.zeros(3, 2))
