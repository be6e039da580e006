"""The multi-step fine-tune of an ensemble (``fit_ensemble_rollouts``) and the buffer windows it learns from."""

import math

import numpy as np
import pytest
import torch

from lyagym.agents.adapters.base import wrap_angles
from lyagym.agents.data import TransitionBuffer
from lyagym.learned_models import Ensemble, fit_ensemble, fit_ensemble_rollouts, member_factory
from lyagym.learned_models.ensemble import _rollout_means

torch.set_num_threads(1)

A = np.array([[1.0, 0.05], [-0.05, 0.97]])  # a damped oscillator at dt = 0.05
B = np.array([[0.0], [0.05]])


def _trajectories(count, steps, seed):
    """``count`` trajectories of the oscillator under random inputs: states ``(count, steps + 1, 2)``, actions ``(count, steps, 1)``."""
    rng = np.random.default_rng(seed)
    states = np.empty((count, steps + 1, 2))
    actions = rng.uniform(-1, 1, (count, steps, 1))
    states[:, 0] = rng.uniform(-1, 1, (count, 2))
    for t in range(steps):
        states[:, t + 1] = states[:, t] @ A.T + actions[:, t] @ B.T
    return states, actions


def _buffer(states, actions):
    buffer = TransitionBuffer(2, 1)
    for s, a in zip(states, actions):
        buffer.add_trajectory(s, a)
    return buffer


def _ensemble(kind="simple", E=3, **kw):
    torch.manual_seed(0)
    factory = member_factory(kind, 2, 1, hidden=(16, 16), dt=0.05, integrator="euler", **kw)
    return Ensemble(factory, E, var_hidden=(8,), sample=False)


def _as_tensors(*arrays):
    return [torch.as_tensor(a, dtype=torch.float32) for a in arrays]


def _rollout_error(ens, x0, u, targets):
    """Mean over members, windows, steps and entries of each member's own mean rollout against the targets."""
    with torch.no_grad():
        E = ens.size
        predicted = _rollout_means(ens, x0.expand(E, -1, -1), u.expand(E, -1, -1, -1), targets.shape[1], [])
    return float(((predicted - targets) ** 2).mean())


def test_windows_stay_inside_one_trajectory_and_unwrap_the_angles():
    # an angle that turns 0.5 rad per step from 2.5 rad wraps at pi inside the first trajectory
    first = np.stack([2.5 + 0.5 * np.arange(6), np.full(6, 0.5)], 1)  # 5 transitions, terminal
    second = np.stack([-1.0 + 0.1 * np.arange(7), np.full(7, 0.1)], 1)  # 6 transitions
    buffer = TransitionBuffer(2, 1, angle_dims=(0,))
    buffer.add_trajectory(wrap_angles(first, (0,)), np.arange(5.0)[:, None], terminated=True)
    buffer.add_trajectory(second, 10 + np.arange(6.0)[:, None])
    x0, u, targets = buffer.windows(3)
    assert x0.shape == (3 + 4, 2) and u.shape == (7, 3, 1) and targets.shape == (7, 3, 2)
    # no window mixes the trajectories' actions (0-4 and 10-15)
    assert all(np.all(row < 5) or np.all(row >= 10) for row in u[..., 0])
    np.testing.assert_allclose(u[3, :, 0], [10, 11, 12])
    # the targets go on past pi, continuous from the wrapped start
    np.testing.assert_allclose(targets[1, :, 0], x0[1, 0] + 0.5 * np.arange(1, 4), atol=1e-12)
    assert targets[1, -1, 0] > math.pi and x0[1, 0] < math.pi
    np.testing.assert_allclose(targets[3:, :, 0], x0[3:, None, 0] + 0.1 * np.arange(1, 4), atol=1e-12)
    # a terminal transition ends its trajectory even where the next one starts at its state
    joined = TransitionBuffer(2, 1)
    joined.add_trajectory(second[:4], np.zeros((3, 1)), terminated=True)
    joined.add_trajectory(second[3:], np.ones((3, 1)))
    assert len(joined.windows(4)[0]) == 0 and len(joined.windows(3)[0]) == 2
    assert len(buffer.windows(3, stride=2)[0]) == 2 + 2  # starts 0, 2 | 6, 8
    assert len(buffer.windows(7)[0]) == 0
    with pytest.raises(ValueError, match="length"):
        buffer.windows(0)
    with pytest.raises(ValueError, match="stride"):
        buffer.windows(3, stride=0)


def test_at_one_step_the_loss_is_the_normalised_squared_error_of_the_means():
    states, actions = _trajectories(6, 20, seed=0)
    buffer = _buffer(states, actions)
    x, u, y = buffer.tensors("cpu", torch.float32)
    ens = _ensemble()
    fit_ensemble(ens, x, u, y, epochs=2, progress=False)
    with torch.no_grad():
        means = ens.predict(x, u)[0]  # (E, N, n)
    expected = float((((means - y) / ens.target_scale) ** 2).mean())
    # the first check precedes any step: the weights of the one-step fit, on every window (no split)
    history = fit_ensemble_rollouts(ens, *_as_tensors(*buffer.windows(1)), steps=1, val_fraction=0, progress=False)
    assert history["val_loss"][0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["simple", "stable"])
def test_the_fine_tune_cuts_the_multi_step_error_of_a_one_step_fit(kind):
    states, actions = _trajectories(12, 30, seed=1)
    buffer = _buffer(states, actions)
    x, u, y = buffer.tensors("cpu", torch.float32)
    extra = {"lyap_hidden": (8, 8), "alpha": 0.1} if kind == "stable" else {}
    ens = _ensemble(kind, **extra)
    fit_ensemble(ens, x, u, y, epochs=4, batch_size=64, lr=3e-3, progress=False)  # a short fit: errors compound
    test = _as_tensors(*_buffer(*_trajectories(4, 30, seed=2)).windows(10, stride=5))
    before = _rollout_error(ens, *test)
    variance_head = {k: v.clone() for k, v in ens.state_dict().items() if "logvar" in k}
    history = fit_ensemble_rollouts(ens, *_as_tensors(*buffer.windows(10)), steps=150, batch_size=32, lr=3e-3, seed=3, progress=False)
    after = _rollout_error(ens, *test)
    assert after < 0.5 * before, (before, after)
    assert history["best_val_loss"] < history["val_loss"][0]
    # the variance heads and their bounds are not what this loss trains
    assert all(torch.equal(ens.state_dict()[k], v) for k, v in variance_head.items())
    # bootstrapped members stay different
    with torch.no_grad():
        means = ens.predict(x[:40], u[:40])[0]
    assert (means[0] - means[1]).abs().max() > 1e-4
    if kind == "stable":
        report = ens.certificate().check(ens, n_samples=1000, per_shell=50, large_norm_samples=200, grad_steps=3, grad_starts=16,
                                         rollouts=16, rollout_steps=10, time_limit=20)
        assert report.passed, report.summary()


def test_member_rollouts_wrap_as_the_planners_do():
    """``_rollout_means``, wrapped at the end, equals the TS-infinity rollout of the unsampled
    ensemble with the angle wrapped after every step (row i on member i % E)."""
    torch.manual_seed(0)
    ens = Ensemble(member_factory("simple", 2, 1, hidden=(16, 16), dt=0.05, integrator="euler"), 3, var_hidden=(8,), sample=False, propagation="tsinf")
    g = torch.Generator().manual_seed(4)
    x, u = torch.rand(256, 2, generator=g) * 6 - 3, torch.rand(256, 1, generator=g) * 2 - 1
    fit_ensemble(ens, x, u, x + torch.tensor([0.3, 0.0]), epochs=30, batch_size=64, lr=1e-2, progress=False)  # the angle turns 0.3 per step
    x0 = torch.tensor([[3.0, 2.0], [-3.1, -1.0], [0.5, 4.0]])  # near and past pi within a few steps
    actions = torch.randn(3, 6, 1, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        planned = ens.rollout(x0, actions, wrap_angles=[0])[:, 1:]  # (3, 6, 2), row i on member i
        own = _rollout_means(ens, x0.unsqueeze(1), actions.unsqueeze(1), 6, [0])[:, 0]  # member i from row i
    torch.testing.assert_close(wrap_angles(own, [0]), planned, atol=1e-5, rtol=0)
    assert (own[:, :, 0] - planned[:, :, 0]).abs().max() > 1.0  # it did cross pi, unwrapped


def test_bad_arguments_are_refused_before_any_work():
    ens = _ensemble()
    x0, u, targets = torch.zeros(4, 2), torch.zeros(4, 3, 1), torch.zeros(4, 3, 2)
    with pytest.raises(ValueError, match="not calibrated"):
        fit_ensemble_rollouts(ens, x0, u, targets, progress=False)
    ens.calibrate(torch.randn(10, 2), torch.randn(10, 1), torch.randn(10, 2))
    with pytest.raises(ValueError, match="u must have shape"):
        fit_ensemble_rollouts(ens, x0, torch.zeros(4, 2, 1), targets, progress=False)
    with pytest.raises(ValueError, match="targets must have shape"):
        fit_ensemble_rollouts(ens, x0, u, torch.zeros(3, 3, 2), progress=False)
    with pytest.raises(ValueError, match="steps"):
        fit_ensemble_rollouts(ens, x0, u, targets, steps=0, progress=False)
    with pytest.raises(ValueError, match="contains NaN"):
        fit_ensemble_rollouts(ens, x0, u, torch.full((4, 3, 2), float("nan")), progress=False)
    with pytest.raises(TypeError, match="Ensemble"):
        fit_ensemble_rollouts(torch.nn.Linear(2, 2), x0, u, targets, progress=False)
