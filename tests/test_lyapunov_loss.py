"""The generic Lyapunov losses (LyaNet eq. 11-12, 16-17) against hand computations."""

import math

import pytest
import torch

from lyagym.learned_models.lyapunov_loss import (
    discrete_lyapunov_loss,
    lyapunov_derivative,
    lyapunov_loss,
    pointwise_lyapunov_loss,
    squared_error,
    truncated_cross_entropy,
)

torch.set_num_threads(1)


def quadratic(eta):
    return (eta**2).sum(-1)


def test_loss_is_zero_exactly_when_decrease_condition_holds():
    # V = ||eta||^2, f = -a eta  =>  Vdot = -2a V; the condition Vdot <= -kappa V holds iff 2a >= kappa.
    eta = torch.randn(50, 3, dtype=torch.float64)
    for a, kappa in [(1.0, 2.0), (1.5, 2.0), (3.0, 0.5)]:
        loss = lyapunov_loss(quadratic, lambda e: -a * e, eta, kappa, reduction="none")
        assert torch.all(loss == 0.0)
    # 2a < kappa: positive, with value (kappa - 2a) V at every point.
    a, kappa = 0.25, 2.0
    loss = lyapunov_loss(quadratic, lambda e: -a * e, eta, kappa, reduction="none")
    torch.testing.assert_close(loss, (kappa - 2 * a) * quadratic(eta))
    assert torch.all(loss > 0)


def test_mixed_field_hand_values():
    # f = (eta_1, -2 eta_0) is a rotation-like field; Vdot = 2 eta_0 eta_1 - 4 eta_0 eta_1 = -2 eta_0 eta_1.
    eta = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 2.0]], dtype=torch.float64)
    f = lambda e: torch.stack([e[:, 1], -2 * e[:, 0]], -1)  # noqa: E731
    v, vdot = lyapunov_derivative(quadratic, f, eta)
    torch.testing.assert_close(vdot, torch.tensor([-2.0, 2.0, 0.0], dtype=torch.float64))
    loss = lyapunov_loss(quadratic, f, eta, 1.0, reduction="none")
    torch.testing.assert_close(loss, torch.relu(vdot + v))  # [0, 4, 4]
    torch.testing.assert_close(loss, torch.tensor([0.0, 4.0, 4.0], dtype=torch.float64))
    assert lyapunov_loss(quadratic, f, eta, 1.0).item() == pytest.approx(8 / 3)
    assert lyapunov_loss(quadratic, f(eta), eta, 1.0, reduction="sum").item() == pytest.approx(8.0)


def test_cross_entropy_potential_gradient_matches_softmax_minus_onehot():
    logits = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    f = torch.randn(6, 4, dtype=torch.float64)
    v, vdot = lyapunov_derivative(lambda e: truncated_cross_entropy(e, y), f, logits)
    grad = torch.softmax(logits, -1) - torch.nn.functional.one_hot(y, 4)
    torch.testing.assert_close(vdot, (grad * f).sum(-1))
    torch.testing.assert_close(v, torch.nn.functional.cross_entropy(logits, y, reduction="none"))


def test_gradients_reach_both_potential_and_dynamics_parameters():
    v_net, f_net = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    eta = torch.randn(8, 3)
    loss = lyapunov_loss(lambda e: (v_net(e) ** 2).sum(-1), f_net, eta, 5.0)
    loss.backward()
    assert v_net.weight.grad.abs().sum() > 0 and f_net.weight.grad.abs().sum() > 0


def test_discrete_loss_exponential_form():
    times = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    kappa = 2.0
    decay = math.exp(-kappa * 0.5)
    # A path that decays exactly at rate kappa satisfies the condition: zero loss.
    exact = torch.tensor([[1.0], [decay], [decay**2]], dtype=torch.float64)
    assert discrete_lyapunov_loss(exact, times, kappa).item() == pytest.approx(0.0, abs=1e-15)
    # A flat path violates it by (1 - decay) V on each segment.
    flat = torch.ones(3, 2, dtype=torch.float64)
    per_path = discrete_lyapunov_loss(flat, times, kappa, reduction="none")
    torch.testing.assert_close(per_path, torch.full((2,), 2 * (1 - decay), dtype=torch.float64))


def test_bad_inputs_have_clear_errors():
    eta = torch.randn(4, 2)
    for kappa in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="kappa"):
            lyapunov_loss(quadratic, lambda e: -e, eta, kappa)
        with pytest.raises(ValueError, match="kappa"):
            pointwise_lyapunov_loss(torch.ones(2), torch.ones(2), kappa)
    with pytest.raises(ValueError, match="states"):
        lyapunov_loss(quadratic, lambda e: -e, torch.randn(0, 2), 1.0)
    with pytest.raises(ValueError, match="dynamics"):
        lyapunov_loss(quadratic, torch.randn(4, 3), eta, 1.0)
    with pytest.raises(ValueError, match="reduction"):
        lyapunov_loss(quadratic, lambda e: -e, eta, 1.0, reduction="max")
    with pytest.raises(ValueError, match="y must"):
        truncated_cross_entropy(torch.randn(3, 2), torch.randn(3))
    with pytest.raises(ValueError, match="prediction and y"):
        squared_error(torch.randn(3, 2), torch.randn(3, 3))
    with pytest.raises(ValueError, match="values"):
        discrete_lyapunov_loss(torch.ones(1, 3), torch.zeros(1), 1.0)


def test_soft_constraint_with_a_learned_icnn_lyapunov_function():
    # The same loss works on state-space dynamics with Manek & Kolter's learned V: the JVP
    # equals grad V . f computed from V's own gradient.
    from lyagym.learned_models import LyapunovFunction

    torch.manual_seed(0)
    V = LyapunovFunction(2, (16, 16)).double()
    f_net = torch.nn.Linear(2, 2).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    v, vdot = lyapunov_derivative(V, f_net, x)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(V(xg).sum(), xg)
    torch.testing.assert_close(vdot, (grad * f_net(x)).sum(-1))
    loss = lyapunov_loss(V, f_net, x, 0.5, reduction="none")
    torch.testing.assert_close(loss, torch.relu(vdot + 0.5 * v))


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_soft_constraint_with_the_known_pendulum_energy(damping):
    # The pendulum's energy as V and the true dynamics as f: with absolute damping b the power
    # balance gives dE/dt = -b sum_i qdot_i^2 exactly, so the loss is relu(kappa V - b |qdot|^2);
    # undamped, energy is conserved and the loss is kappa V at every state.
    from lyagym.envs import PendulumDynamics

    physics = PendulumDynamics(n_links=2, damping=damping, actuated=()).to(dtype=torch.float64)
    rest = physics.energy(torch.zeros(1, 4, dtype=torch.float64))
    V = lambda x: physics.energy(x) - rest  # noqa: E731  (zero at the downward rest state)
    x = (torch.rand(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1) * math.pi / 4
    v, vdot = lyapunov_derivative(V, physics.derivative, x)
    torch.testing.assert_close(vdot, -damping * x[:, 2:].pow(2).sum(-1))
    kappa = 0.5
    loss = lyapunov_loss(V, physics.derivative, x, kappa, reduction="none")
    torch.testing.assert_close(loss, torch.relu(kappa * v - damping * x[:, 2:].pow(2).sum(-1)))
    assert bool((v > 0).all()) and (bool((loss > 0).all()) if damping == 0 else bool((loss == 0).any()))
