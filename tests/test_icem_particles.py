"""iCEM (colored noise, decaying population, kept and shifted elites), particle-averaged
planning costs (PETS trajectory sampling) and the termination-aware ``RewardCost``."""

from __future__ import annotations

import pytest
import torch

from lyagym.agents import ICEMPlanner, MPPIPlanner, RewardCost, make_planner
from lyagym.agents.icem import colored_noise
from lyagym.learned_models import rollout

from test_planners import H, X0, DoubleIntegrator, make, optimum


def test_colored_noise_has_unit_variance_and_more_correlation_for_larger_beta():
    g = torch.Generator()
    g.manual_seed(0)
    lags = []
    for beta in (0.0, 1.0, 2.0, 2.5):
        noise = colored_noise(beta, (4000, 24, 2), g, device="cpu", dtype=torch.float64)
        assert noise.shape == (4000, 24, 2)
        assert noise.var().item() == pytest.approx(1.0, abs=0.03)
        lags.append(((noise[:, 1:] * noise[:, :-1]).mean() / noise.var()).item())
    assert abs(lags[0]) < 0.02  # white
    assert lags[1] > 0.4 and lags[2] > 0.8 and lags[3] > lags[2]  # smoother with beta


def test_icem_reaches_the_known_optimum_and_batches_like_single_plans():
    model = DoubleIntegrator()
    cost = make("cem", model).cost
    kw = dict(horizon=H, action_low=-10.0, action_high=10.0, seed=0, num_samples=500, iterations=15, noise_std=3.0, beta=0.5)
    icem = make_planner("icem", model, cost, **kw)
    plans = icem.plan_sequence(X0)
    best = torch.stack([optimum(model, x) for x in X0])
    achieved = icem.sequence_cost(X0, plans.unsqueeze(1))[:, 0]
    optimal = icem.sequence_cost(X0, best.unsqueeze(1))[:, 0]
    zero = icem.sequence_cost(X0, torch.zeros_like(best).unsqueeze(1))[:, 0]
    assert (achieved < zero).all() and torch.allclose(achieved, optimal, rtol=0.03), (achieved, optimal)
    assert torch.allclose(plans[:, 0], best[:, 0], atol=0.15 * best[:, 0].abs().max().item())
    for i in range(X0.shape[0]):  # common random numbers: one state at a time gives the same plans
        single = make_planner("icem", model, cost, **kw)
        torch.testing.assert_close(single.plan_sequence(X0[i]), plans[i])


def test_icem_population_decays_and_elites_are_shifted_to_the_next_step():
    model = DoubleIntegrator()
    icem = ICEMPlanner(model, make("cem", model).cost, horizon=H, num_samples=100, num_elites=10, iterations=3,
                       population_decay=2.0, keep_elites_fraction=0.3, action_low=-10.0, action_high=10.0)
    assert [icem.population(i) for i in range(3)] == [100, 50, 25]
    assert ICEMPlanner(model, icem.cost, num_samples=30, num_elites=10, population_decay=4.0, horizon=H).population(2) == 20
    icem.plan(X0)
    assert icem._elites.shape == (3, 3, H, 1)
    icem.reset()
    assert icem._elites is None
    for bad in (dict(beta=-1.0), dict(population_decay=0.5), dict(keep_elites_fraction=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ICEMPlanner(model, icem.cost, horizon=H, **bad)


class NoisyIntegrator(DoubleIntegrator):
    """A stochastic world model: the velocity gets noise ``sigma * eps`` each step."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma
        self.g = torch.Generator()
        self.g.manual_seed(1)

    def step(self, x, u=None):
        y = super().step(x, u)
        return y + self.sigma * torch.randn(y.shape, generator=self.g, dtype=y.dtype) * torch.tensor([0.0, 1.0], dtype=y.dtype)


def test_particles_average_the_cost_over_rollouts():
    model = DoubleIntegrator()
    cost = make("cem", model).cost
    one = MPPIPlanner(model, cost, horizon=H, num_samples=64, iterations=3, noise_std=0.5, temperature=0.05, seed=0)
    many = MPPIPlanner(model, cost, horizon=H, num_samples=64, iterations=3, noise_std=0.5, temperature=0.05, seed=0,
                       num_particles=4)
    # a deterministic model: every particle is the same rollout, so the plans agree
    torch.testing.assert_close(many.plan_sequence(X0), one.plan_sequence(X0))
    noisy = NoisyIntegrator(0.5)
    planner = MPPIPlanner(noisy, cost, horizon=H, num_samples=8, noise_std=0.5, num_particles=200, seed=0)
    actions = torch.zeros(1, 2, H, 1, dtype=torch.float64)
    mc = planner.sequence_cost(X0[:1], actions)  # (1, 2): the mean over 200 noisy rollouts
    states = rollout(noisy, X0[:1].expand(20000, 2), torch.zeros(20000, H, 1, dtype=torch.float64))
    reference = cost(states, torch.zeros(20000, H, 1, dtype=torch.float64)).mean()
    assert mc[0, 0].item() == pytest.approx(reference.item(), rel=0.05)
    assert mc[0, 0].item() > cost(rollout(model, X0[:1], actions[:, 0]), actions[:, 0]).item()  # noise costs
    with pytest.raises(ValueError, match="num_particles"):
        MPPIPlanner(model, cost, horizon=H, num_particles=0)


def test_reward_cost_earns_nothing_after_a_predicted_termination():
    def reward(x, u, x_next):
        return torch.ones(x.shape[0], dtype=x.dtype)

    def done(x_next):
        return x_next[:, 0] > 2.5

    cost = RewardCost(reward, done, state_dim=1, action_dim=1)
    states = torch.tensor([[[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]],   # terminates entering 3.0 (step 3)
                           [[0.0], [0.0], [0.0], [0.0], [0.0], [0.0]]])  # never
    actions = torch.zeros(2, 5, 1)
    assert cost(states, actions).tolist() == [-3.0, -5.0]
    valued = RewardCost(reward, done, state_dim=1, action_dim=1, terminal_reward_fn=lambda x: 10 * torch.ones(x.shape[0]))
    assert valued(states, actions).tolist() == [-3.0, -15.0]  # a terminated plan gets no terminal value
    assert RewardCost(reward, None, state_dim=1, action_dim=1)(states, actions).tolist() == [-5.0, -5.0]
    with pytest.raises(TypeError, match="termination_fn"):
        RewardCost(reward, 3, state_dim=1, action_dim=1)
