"""Environment adapters: each built-in adapter reproduces its env's reward and termination
from the model state, maps observations to states, names the plant's rest state, and a
user's own env needs only a reward and a termination function."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

import lyagym.envs  # noqa: F401  (registers lyagym/NLinkPendulum-v0)
from lyagym.agents.adapters import ADAPTERS, EnvAdapter, make_adapter, wrap_angles
from lyagym.agents.data import TransitionBuffer, collect_episode
from lyagym.agents.pets import run_pets

CLASSIC = ["Pendulum-v1", "MountainCarContinuous-v0", "lyagym/NLinkPendulum-v0"]
MUJOCO = ["InvertedPendulum-v5", "InvertedDoublePendulum-v5"]


def _make(env_id):
    if env_id in MUJOCO:
        pytest.importorskip("mujoco")
    kwargs = {"n_links": 2} if env_id.startswith("lyagym") else {}
    return gym.make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", CLASSIC + MUJOCO)
def test_adapter_reward_and_termination_match_the_env(env_id):
    env = _make(env_id)
    adapter = make_adapter(env)
    assert type(adapter) is ADAPTERS[env_id]
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    checked = terminations = 0
    for _ in range(400):
        a = env.action_space.sample()
        x = adapter.state(obs)
        obs, r, terminated, truncated, _ = env.step(a)
        x_next = adapter.state(obs)
        assert x.shape == (adapter.state_dim,) and np.all(np.abs(x[list(adapter.angle_dims)]) <= np.pi)
        xt, xnt = torch.as_tensor(x)[None], torch.as_tensor(x_next)[None]
        ut = torch.as_tensor(a, dtype=torch.float64)[None]
        assert adapter.reward(xt, ut, xnt).item() == pytest.approx(r, abs=1e-3, rel=1e-5)
        assert bool(adapter.termination(xnt).item()) == terminated
        checked += 1
        terminations += int(terminated)
        if terminated or truncated:
            obs, _ = env.reset()
    assert checked == 400
    if env_id in MUJOCO:
        assert terminations > 0  # random actions topple the poles: the termination was exercised


def test_mountain_car_goal_is_a_rewarded_termination():
    adapter = make_adapter(gym.make("MountainCarContinuous-v0"))
    x = torch.tensor([[0.44, 0.05], [0.40, 0.05]], dtype=torch.float64)
    x_next = torch.tensor([[0.46, 0.05], [0.45, -0.01]], dtype=torch.float64)
    u = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    assert adapter.termination(x_next).tolist() == [True, False]
    assert adapter.reward(x, u, x_next).tolist() == pytest.approx([100 - 0.1, -0.1])


def test_rest_states_are_where_the_plants_hang():
    pendulum = make_adapter(gym.make("Pendulum-v1"))
    # Pendulum-v1 measures from upright: hanging (th = pi) is the model state's origin
    hanging = np.array([np.cos(np.pi), np.sin(np.pi), 0.0])
    np.testing.assert_allclose(pendulum.state(hanging), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(pendulum.rest_state, [0.0, 0.0])
    car = make_adapter(gym.make("MountainCarContinuous-v0"))
    assert car.rest_state[0] == pytest.approx(-np.pi / 6)  # the floor of the valley sin(3x)
    assert car.open_loop_stable and pendulum.open_loop_stable


def test_stable_world_model_is_certified_towards_the_rest_state():
    from lyagym.agents.world_models import world_model_for

    car = make_adapter(gym.make("MountainCarContinuous-v0"))
    model = world_model_for(car, "stable", hidden=(8,), lyap_hidden=(8,), sigma_hidden=(4,))
    np.testing.assert_allclose(model.x_eq.numpy(), car.rest_state, atol=1e-6)
    assert model.certificate().equilibrium == pytest.approx(list(car.rest_state), abs=1e-6)
    pendulum = make_adapter(gym.make("Pendulum-v1"))
    assert world_model_for(pendulum, "simple", hidden=(8,)).fhat.angle_dims == 1  # the sin/cos prior on phi


def test_a_cart_position_is_not_wrapped_but_an_angle_is():
    pytest.importorskip("mujoco")
    ip = make_adapter(gym.make("InvertedPendulum-v5"))
    assert ip.angle_dims == () and not ip.open_loop_stable
    buf = TransitionBuffer(ip.state_dim, ip.action_dim, ip.angle_dims)
    states = np.array([[3.5, 0.0, 1.0, 0.0], [3.6, 0.0, 1.0, 0.0]])
    buf.add_trajectory(states, np.zeros((1, 1)))
    assert buf.states[0, 0] == 3.5  # a cart far along its rail stays where it is
    idp = make_adapter(gym.make("InvertedDoublePendulum-v5"))
    assert idp.angle_dims == (0, 1) and idp.leading_angles == 2
    x = wrap_angles(np.array([4.0, -4.0, 4.0, 0, 0, 0]), idp.angle_dims)
    np.testing.assert_allclose(x[:3], [4.0 - 2 * np.pi, -4.0 + 2 * np.pi, 4.0])


class PointMass(gym.Env):
    """A user's own env: a 1-D point mass pushed towards a goal; the episode ends on leaving [-1, 1]."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    dt = 0.1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.array([self.np_random.uniform(-0.5, 0.5), 0.0])
        return self.x.copy(), {}

    def step(self, action):
        u = float(np.clip(action, -1, 1)[0])
        reward = -abs(self.x[0] - 0.5)
        self.x = self.x + self.dt * np.array([self.x[1], u - 0.5 * self.x[1]])
        return self.x.copy(), reward, bool(abs(self.x[0]) > 1.0), False, {}


def point_mass_reward(x, u, x_next):
    return -(x[..., 0] - 0.5).abs()


def point_mass_done(x_next):
    return x_next[..., 0].abs() > 1.0


def test_user_env_needs_a_reward_and_gets_a_clear_error_without_one():
    env = PointMass()
    with pytest.raises(ValueError, match="reward_fn"):
        make_adapter(env)
    with pytest.raises(ValueError, match=r"pass it on as adapter="):  # a loop given only the env says how to give it one
        run_pets(env, None, None, progress=False)
    adapter = make_adapter(env, reward_fn=point_mass_reward, termination_fn=point_mass_done)
    assert (adapter.state_dim, adapter.action_dim, adapter.dt) == (2, 1, 0.1)
    ep = collect_episode(env, lambda s, o: np.ones(1), steps=200, seed=0, adapter=adapter)
    assert ep["terminated"] and len(ep["actions"]) < 200  # full thrust leaves [-1, 1]
    x, x_next = torch.as_tensor(ep["states"][:-1]), torch.as_tensor(ep["states"][1:])
    u = torch.as_tensor(ep["actions"])
    np.testing.assert_allclose(adapter.reward(x, u, x_next).numpy(), ep["rewards"], rtol=1e-12)
    assert adapter.termination(x_next).tolist() == [False] * (len(u) - 1) + [True]
    with pytest.raises(ValueError, match="angle_dims"):
        EnvAdapter(env, reward_fn=point_mass_reward, angle_dims=(5,))
    with pytest.raises(TypeError, match="Box"):
        EnvAdapter(gym.make("CartPole-v1"), reward_fn=point_mass_reward)


@pytest.mark.parametrize("env_id", CLASSIC + MUJOCO)
def test_adapters_pickle(env_id):
    adapter = make_adapter(_make(env_id))
    copy = pickle.loads(pickle.dumps(adapter))
    x = torch.zeros(3, adapter.state_dim, dtype=torch.float64)
    u = torch.zeros(3, adapter.action_dim, dtype=torch.float64)
    torch.testing.assert_close(copy.reward(x, u, x), adapter.reward(x, u, x))
    assert copy.angle_dims == adapter.angle_dims and copy.dt == adapter.dt


def test_inverted_pendulum_plans_on_a_shaped_reward_that_still_pays_for_survival():
    pytest.importorskip("mujoco")
    ip = make_adapter(gym.make("InvertedPendulum-v5"))
    cost = ip.planning_cost()
    u = torch.zeros(1, 1, 1)

    def plan(*states):  # one plan through the given states: (1, H + 1, 4)
        return torch.tensor([states], dtype=torch.float64)

    upright, tilted, off_centre = [0.0, 0.0, 0, 0], [0.0, 0.15, 0, 0], [0.5, 0.0, 0, 0]
    fallen = [0.0, 0.25, 0, 0]
    # upright at the middle scores best; tilting or leaving the middle costs, falling costs most
    j = {name: float(cost(plan(upright, s), u)) for name, s in
         [("upright", upright), ("tilted", tilted), ("off", off_centre), ("fallen", fallen)]}
    assert j["upright"] == -2.0 and j["upright"] < j["tilted"] < 0 and j["upright"] < j["off"] < 0
    assert j["fallen"] == 0.0
    # surviving always pays: one more step alive at the end of the track, nearly falling,
    # beats falling there
    two = torch.zeros(1, 2, 1)
    edge = [0.99, 0.199, 0, 0]
    assert float(cost(plan(upright, edge, edge), two)) < float(cost(plan(upright, edge, fallen), two)) < 0
    assert ip.planning_reward != make_adapter(gym.make("Pendulum-v1")).planning_reward
