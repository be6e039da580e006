"""PendulumDynamics against closed forms and conservation laws; backends agree; bad input."""

import math

import numpy as np
import pytest
import torch

from lyagym.envs import PendulumDynamics
from lyagym.learned_models import WorldModel, check_world_model

def random_states(n_links, batch, scale=math.pi, seed=0):
    """Deterministic per call (tests must not depend on their order)."""
    return np.random.default_rng(seed).uniform(-scale, scale, size=(batch, 2 * n_links))


def random_torques(batch, dim, scale=2.0, seed=1):
    return np.random.default_rng(seed).uniform(-scale, scale, size=(batch, dim))


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("mode", ["absolute", "joint"])
def test_single_link_matches_closed_form(mode):
    # theta'' = -(g/l) sin theta - b/(m l^2) theta' + u/(m l^2); one link: both modes agree
    m, l, g, b = 1.7, 0.8, 9.81, 0.4
    dyn = PendulumDynamics(1, masses=m, lengths=l, gravity=g, damping=b, damping_mode=mode)
    x = random_states(1, 64)
    u = random_torques(64, 1, 2)
    th, om = x[:, 0], x[:, 1]
    expected = -(g / l) * np.sin(th) - b / (m * l**2) * om + u[:, 0] / (m * l**2)
    xdot = dyn.derivative(x, u)
    np.testing.assert_allclose(xdot[:, 0], om, rtol=0, atol=1e-14)
    np.testing.assert_allclose(xdot[:, 1], expected, rtol=1e-12, atol=1e-12)


def double_pendulum_textbook(x, u, m1, m2, l1, l2, g, b, mode):
    """Lagrange's equations of the double pendulum in absolute angles, written by hand."""
    q1, q2, w1, w2 = x.T
    d = q1 - q2
    if mode == "absolute":
        tau1, tau2 = -b * w1, -b * w2
    else:  # joint friction at the pivot and at the elbow (with reaction on link 1)
        tau1 = -b * w1 + b * (w2 - w1)
        tau2 = -b * (w2 - w1)
    tau1 = tau1 + u[:, 0] - u[:, 1]
    tau2 = tau2 + u[:, 1]
    a11 = (m1 + m2) * l1**2
    a12 = m2 * l1 * l2 * np.cos(d)
    a22 = m2 * l2**2
    f1 = -m2 * l1 * l2 * np.sin(d) * w2**2 - (m1 + m2) * g * l1 * np.sin(q1) + tau1
    f2 = m2 * l1 * l2 * np.sin(d) * w1**2 - m2 * g * l2 * np.sin(q2) + tau2
    det = a11 * a22 - a12**2
    return np.stack([w1, w2, (a22 * f1 - a12 * f2) / det, (a11 * f2 - a12 * f1) / det], axis=1)


@pytest.mark.parametrize("mode", ["absolute", "joint"])
def test_double_pendulum_matches_textbook(mode):
    m1, m2, l1, l2, g, b = 1.3, 0.7, 0.6, 0.9, 9.5, 0.25
    dyn = PendulumDynamics(2, masses=[m1, m2], lengths=[l1, l2], gravity=g, damping=b, damping_mode=mode)
    x = random_states(2, 128)
    u = random_torques(128, 2, 3)
    np.testing.assert_allclose(dyn.derivative(x, u), double_pendulum_textbook(x, u, m1, m2, l1, l2, g, b, mode), rtol=1e-10, atol=1e-10)


def test_acrobot_actuation_only_elbow():
    dyn = PendulumDynamics(2, actuated=(1,), damping=0.0)
    full = PendulumDynamics(2, damping=0.0)
    x = random_states(2, 16)
    u = random_torques(16, 1, 1)
    np.testing.assert_allclose(dyn.derivative(x, u), full.derivative(x, np.concatenate([np.zeros_like(u), u], 1)), atol=1e-12)
    assert dyn.action_dim == 1


# ---------------------------------------------------------------- energy


def torque_power(x, u, n, b, mode, actuated):
    """Power of friction and motors: sum_i tau_i qdot_i with the convention of the docs."""
    w = x[:, n:]
    rel = w - np.concatenate([np.zeros_like(w[:, :1]), w[:, :-1]], 1)  # qdot_j - qdot_{j-1}
    friction = -b * (w**2).sum(1) if mode == "absolute" else -b * (rel**2).sum(1)
    motors = sum(u[:, k] * rel[:, j] for k, j in enumerate(actuated)) if actuated else 0.0
    return friction + motors


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("mode", ["absolute", "joint"])
def test_power_balance(n, mode):
    # dE/dt along the flow = damping power + torque power (autograd of the energy)
    actuated = tuple(range(n)) if n < 3 else (0, 2)
    dyn = PendulumDynamics(n, masses=np.linspace(0.5, 1.5, n), lengths=np.linspace(0.4, 0.8, n), damping=0.35, damping_mode=mode, actuated=actuated)
    x = torch.tensor(random_states(n, 50), dtype=torch.float64, requires_grad=True)
    u = torch.tensor(random_torques(50, len(actuated), 2), dtype=torch.float64)
    (grad,) = torch.autograd.grad(dyn.energy(x).sum(), x)
    dEdt = (grad * dyn.derivative(x, u)).sum(-1).detach().numpy()
    expected = torque_power(x.detach().numpy(), u.numpy(), n, 0.35, mode, actuated)
    np.testing.assert_allclose(dEdt, expected, rtol=1e-9, atol=1e-9)


def test_energy_closed_form_double():
    m1, m2, l1, l2, g = 1.3, 0.7, 0.6, 0.9, 9.5
    dyn = PendulumDynamics(2, masses=[m1, m2], lengths=[l1, l2], gravity=g)
    x = random_states(2, 20)
    q1, q2, w1, w2 = x.T
    kinetic = 0.5 * (m1 + m2) * l1**2 * w1**2 + 0.5 * m2 * l2**2 * w2**2 + m2 * l1 * l2 * np.cos(q1 - q2) * w1 * w2
    potential = -(m1 + m2) * g * l1 * np.cos(q1) - m2 * g * l2 * np.cos(q2)
    np.testing.assert_allclose(dyn.energy(x), kinetic + potential, rtol=1e-12, atol=1e-12)


def relative_drift(dyn, x0, n_steps, dt):
    e = dyn.energy(dyn.simulate(x0, n_steps, dt=dt))
    return np.abs(e - e[:, :1]).max(1) / np.abs(e[:, 0])


def test_undamped_energy_drift_small():
    dyn = PendulumDynamics(2, damping=0.0)
    # regular (non-chaotic) swings: 1e4 RK4 steps of 0.01 s keep |E - E0| / |E0| < 1e-6
    # (measured ~1.5e-7)
    regular = np.array([[0.2, 0.1, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.1, -0.1, 0.0, 0.0]])
    assert relative_drift(dyn, regular, 10_000, 0.01).max() < 1e-6
    # chaotic starts with fast whirling links: RK4 (not symplectic) drifts more, ~1e-2
    # over the same 100 s; the drift is truncation error, so it must fall like h^4..h^5
    chaotic = np.array([[1.0, -0.5, 0.3, 0.8], [2.0, 2.5, 0.0, 0.0]])
    coarse = relative_drift(dyn, chaotic, 2000, 0.01)
    fine = relative_drift(dyn, chaotic, 4000, 0.005)
    assert coarse.max() < 2e-2
    assert np.all(fine < coarse / 12), (coarse, fine)


@pytest.mark.parametrize("mode", ["absolute", "joint"])
def test_damped_energy_never_increases(mode):
    dyn = PendulumDynamics(3, damping=0.2, damping_mode=mode)
    traj = dyn.simulate(random_states(3, 20), 2000)
    e = dyn.energy(traj)
    # exact dE/dt <= 0; allow RK4's local error (h^5) where qdot ~ 0
    assert np.all(np.diff(e, axis=1) <= 1e-11)
    assert np.all(e[:, -1] < e[:, 0])


# ---------------------------------------------------------------- backends agree


@pytest.mark.parametrize("n", [1, 2, 4])
def test_numpy_torch_single_agree(n):
    dyn = PendulumDynamics(n)
    x = random_states(n, 8)
    u = random_torques(8, n, 1)
    ref = dyn.step(x, u)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        out = dyn.step(torch.tensor(x, dtype=dtype), torch.tensor(u, dtype=dtype))
        assert out.dtype == dtype
        np.testing.assert_allclose(out.double().numpy(), ref, atol=tol)
    single = np.stack([dyn.step_single(x[i], u[i]) for i in range(8)])
    np.testing.assert_allclose(single, ref, rtol=1e-13, atol=1e-13)
    for method in ("euler", "rk4"):
        np.testing.assert_allclose(
            np.stack([dyn.step_single(x[i], u[i], dt=0.02, method=method, substeps=3) for i in range(8)]),
            dyn.step(x, u, dt=0.02, method=method, substeps=3),
            rtol=1e-13,
            atol=1e-13,
        )
    # simulate is repeated step
    traj = dyn.simulate(x, 3, u=u)
    np.testing.assert_allclose(traj[:, 1], ref, atol=1e-13)
    np.testing.assert_allclose(traj[:, 3], dyn.step(dyn.step(ref, u), u), atol=1e-12)


def test_batch_shapes_and_broadcast():
    dyn = PendulumDynamics(2)
    x = random_states(2, 12).reshape(3, 4, 4)
    u = random_torques(1, 2, 1.0)[0]
    out = dyn.derivative(x, u)
    assert out.shape == (3, 4, 4)
    np.testing.assert_allclose(out[1, 2], dyn.derivative(x[1, 2], u), atol=1e-14)
    assert dyn.energy(x).shape == (3, 4)
    assert dyn.positions(x).shape == (3, 4, 2, 2)


def test_positions_geometry():
    dyn = PendulumDynamics(2, lengths=[0.5, 0.25])
    p = dyn.positions(np.array([0.0, math.pi / 2, 0.0, 0.0]))
    np.testing.assert_allclose(p, [[0.0, -0.5], [0.25, -0.5]], atol=1e-15)
    pt = dyn.positions(torch.tensor([0.0, math.pi / 2, 0.0, 0.0]))
    np.testing.assert_allclose(pt.numpy(), p, atol=1e-6)


def test_reference_solve_agrees_with_rk4():
    # RK4's global error is O(h^4): quartering h must shrink the gap to DOP853 ~256x
    dyn = PendulumDynamics(2)
    x0 = random_states(2, 2)
    ref = dyn.reference_solve(x0, 100)
    assert ref.shape == (2, 101, 4)
    coarse = np.abs(dyn.simulate(x0, 100) - ref).max()
    fine = np.abs(dyn.simulate(x0, 400, dt=0.0025)[:, ::4] - ref).max()
    assert coarse < 1e-3 and fine < 1e-6 and fine < coarse / 100, (coarse, fine)
    single = dyn.reference_solve(x0[0], np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(single, ref[0, ::50], atol=1e-9)


def test_torch_gradients_and_world_model():
    dyn = PendulumDynamics(2).to(dtype=torch.float64)
    assert isinstance(dyn, WorldModel)
    check_world_model(dyn)
    x = torch.tensor(random_states(2, 3), requires_grad=True)
    u = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: dyn.step(a, b), (x, u))
    traj = dyn.rollout(x.detach(), torch.zeros(3, 5, 2, dtype=torch.float64))
    assert traj.shape == (3, 6, 4)
    np.testing.assert_allclose(traj[:, -1].numpy(), dyn.simulate(x.detach().numpy(), 5)[:, -1], atol=1e-12)
    free = PendulumDynamics(1, actuated=())
    assert free.action_dim == 0
    assert free.rollout(torch.zeros(2, 2), 4).shape == (2, 5, 2)


def test_parameters_are_frozen():
    dyn = PendulumDynamics(2, masses=[1.0, 2.0])
    with pytest.raises(ValueError):
        dyn.masses[0] = 5.0  # would silently disagree with the compiled coefficients


def test_config_round_trip():
    dyn = PendulumDynamics(3, masses=[1, 2, 3], damping_mode="joint", actuated=(2,), dt=0.02)
    again = PendulumDynamics(**dyn.config())
    x = random_states(3, 4)
    np.testing.assert_array_equal(again.derivative(x, np.ones((4, 1))), dyn.derivative(x, np.ones((4, 1))))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"n_links": 0}, "n_links"),
        ({"n_links": 2.5}, "n_links"),
        ({"n_links": 2, "masses": [1, 2, 3]}, "masses"),
        ({"n_links": 2, "masses": [1, -1]}, "masses"),
        ({"n_links": 2, "lengths": 0.0}, "lengths"),
        ({"n_links": 2, "damping_mode": "viscous"}, "damping_mode"),
        ({"n_links": 2, "actuated": (2,)}, "actuated"),
        ({"n_links": 2, "gravity": float("nan")}, "gravity"),
        ({"n_links": 2, "damping": -1.0}, "damping"),
        ({"n_links": 2, "dt": 0.0}, "dt"),
    ],
)
def test_bad_constructor_args(kwargs, word):
    with pytest.raises(ValueError, match=word):
        PendulumDynamics(**kwargs)


def test_bad_call_args():
    dyn = PendulumDynamics(2)
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="x must have shape"):
        dyn.derivative(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="u must have shape"):
        dyn.step(x, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="u batch shape"):
        dyn.step(x, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="x contains NaN"):
        dyn.step(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="u contains NaN"):
        dyn.step(x, np.array([np.inf, 0.0]))
    with pytest.raises(ValueError, match="u contains NaN"):
        dyn.step(torch.zeros(3, 4), torch.tensor([np.nan, 0.0]))
    with pytest.raises(ValueError, match="u contains NaN"):
        dyn.step_single(np.zeros(4), [np.nan, 0.0])
    with pytest.raises(ValueError, match="x must have shape"):
        dyn.step_single(np.zeros(3))
    with pytest.raises(ValueError, match="x contains NaN"):
        dyn.step_single([np.inf, -np.inf, 0.0, 0.0])
    with pytest.raises(ValueError, match="x contains NaN"):
        dyn.derivative(torch.tensor([[np.nan, 0.0, 0.0, 0.0]]))
    huge = np.full((2, 4), 1e308)  # finite, but its sum overflows: must not be rejected
    assert dyn.positions(huge).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="method"):
        dyn.step(x, method="rk45")
    with pytest.raises(ValueError, match="substeps"):
        dyn.step(x, substeps=0)
    with pytest.raises(ValueError, match="n_steps"):
        dyn.simulate(x, -1)
    with pytest.raises(ValueError, match="actions"):
        dyn.rollout(torch.zeros(3, 4), torch.zeros(3, 5, 1))
    with pytest.raises(ValueError, match="dtype"):
        dyn.to(dtype=torch.int64)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_fused_rollout_equals_repeated_steps_and_is_differentiable(n):
    """The planners' fast path (`rollout`) must be the same map as stepping, gradients included."""
    dyn = PendulumDynamics(n_links=n).to(dtype=torch.float64)
    gen = torch.Generator().manual_seed(n)
    x0 = torch.rand(4, 2 * n, generator=gen, dtype=torch.float64) * 2 - 1
    actions = torch.rand(4, 6, n, generator=gen, dtype=torch.float64) * 2 - 1
    traj = dyn.rollout(x0, actions)
    x = x0
    for k in range(actions.shape[1]):
        x = dyn.step(x, actions[:, k])
        torch.testing.assert_close(traj[:, k + 1], x, rtol=1e-12, atol=1e-12)
    x0.requires_grad_(True)
    actions.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: dyn.rollout(a, b)[:, -1], (x0[:2], actions[:2, :3]))
