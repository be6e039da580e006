"""Dataset helpers: seeded, batched, labelled by the true physics."""

import math

import numpy as np
import pytest
import torch

from lyagym.envs import DerivativeData, PendulumDynamics, sample_derivative_dataset, trajectory_dataset


def test_derivative_dataset_box_labels_and_seed():
    dyn = PendulumDynamics(2)
    data = sample_derivative_dataset(dyn, 2000, seed=3)
    assert isinstance(data, DerivativeData)
    assert data.x.shape == data.xdot.shape == (2000, 4) and data.u.shape == (2000, 2)
    assert data.x.dtype == torch.float32 and torch.all(data.u == 0)
    assert data.x.min() >= -math.pi and data.x.max() <= math.pi
    # uniform: every dimension spreads over the whole box
    assert torch.all(data.x.min(0).values < -3.0) and torch.all(data.x.max(0).values > 3.0)
    expected = dyn.derivative(data.x.double().numpy())
    np.testing.assert_allclose(data.xdot.numpy(), expected, rtol=1e-5, atol=1e-4)
    again = sample_derivative_dataset(dyn, 2000, seed=3)
    other = sample_derivative_dataset(dyn, 2000, seed=4)
    assert torch.equal(again.x, data.x) and torch.equal(again.xdot, data.xdot)
    assert not torch.equal(other.x, data.x)


def test_derivative_dataset_per_dim_bounds_and_actions():
    dyn = PendulumDynamics(2, actuated=(1,))
    data = sample_derivative_dataset(dyn, 500, low=[-1, -2, -3, -4], high=[1, 2, 3, 4], action_low=-0.5, action_high=0.5, dtype=torch.float64)
    assert data.x.dtype == torch.float64 and data.u.shape == (500, 1)
    assert torch.all(data.x.abs() <= torch.tensor([1.0, 2, 3, 4]))
    assert data.u.abs().max() <= 0.5 and data.u.abs().max() > 0.4
    np.testing.assert_allclose(data.xdot.numpy(), dyn.derivative(data.x.numpy(), data.u.numpy()), rtol=1e-12, atol=1e-12)


def test_derivative_dataset_bad_input():
    dyn = PendulumDynamics(1)
    with pytest.raises(ValueError, match="n must"):
        sample_derivative_dataset(dyn, 0)
    with pytest.raises(ValueError, match="low"):
        sample_derivative_dataset(dyn, 4, low=[0, 0, 0])
    with pytest.raises(ValueError, match="high must be >= low"):
        sample_derivative_dataset(dyn, 4, low=1.0, high=-1.0)
    with pytest.raises(ValueError, match="together"):
        sample_derivative_dataset(dyn, 4, action_low=-1.0)


def test_trajectory_dataset_matches_simulate():
    dyn = PendulumDynamics(2)
    x0 = torch.tensor(np.random.default_rng(0).uniform(-1, 1, (5, 4)), dtype=torch.float64)
    states, actions = trajectory_dataset(dyn, x0, 20)
    assert states.shape == (5, 21, 4) and actions.shape == (5, 20, 2)
    np.testing.assert_allclose(states.numpy(), dyn.simulate(x0.numpy(), 20), atol=1e-12)
    u = torch.full((5, 20, 2), 0.3, dtype=torch.float64)
    forced, _ = trajectory_dataset(dyn, x0, 20, actions=u, method="euler", substeps=2)
    np.testing.assert_allclose(forced[:, -1].numpy(), dyn.simulate(x0.numpy(), 40, dt=0.005, method="euler", u=np.full((5, 2), 0.3))[:, -1], atol=1e-12)
    with pytest.raises(ValueError, match="actions must have shape"):
        trajectory_dataset(dyn, x0, 20, actions=torch.zeros(5, 19, 2))
    with pytest.raises(ValueError, match="x0 must have shape"):
        trajectory_dataset(dyn, torch.zeros(5, 3), 2)
