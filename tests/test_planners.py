"""MPC planners (CEM, MPPI, gradient shooting) on a linear-quadratic toy whose optimum is
known in closed form, plus warm start, batching, seeding and input validation."""

from __future__ import annotations

import pytest
import torch

from lyagym.agents import CEMPlanner, GradientPlanner, LyapunovTerminalCost, MPPIPlanner, PendulumCost, QuadraticCost, make_planner
from lyagym.learned_models import rollout

DT = 0.1
H = 8


class DoubleIntegrator(torch.nn.Module):
    """``x = (position, velocity)``, ``u = acceleration``; exact zero-order-hold discretisation."""

    state_dim, action_dim, dt = 2, 1, DT

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.register_buffer("A", torch.tensor([[1.0, DT], [0.0, 1.0]], dtype=dtype))
        self.register_buffer("B", torch.tensor([[0.5 * DT * DT], [DT]], dtype=dtype))

    @property
    def device(self):
        return self.A.device

    @property
    def dtype(self):
        return self.A.dtype

    def step(self, x, u=None):
        return x @ self.A.T + u @ self.B.T

    def rollout(self, x0, actions):
        return rollout(self, x0, actions)


Q, R, QF = torch.tensor([1.0, 0.1]), 0.01, torch.tensor([10.0, 1.0])


def optimum(model, x0):
    """Unconstrained finite-horizon LQ optimum by least squares: states = Phi x0 + Gamma a."""
    A, B = model.A, model.B
    n, m = 2, 1
    Phi = torch.zeros((H + 1) * n, n, dtype=A.dtype)
    Gamma = torch.zeros((H + 1) * n, H * m, dtype=A.dtype)
    Ak = torch.eye(n, dtype=A.dtype)
    for k in range(H + 1):
        Phi[k * n:(k + 1) * n] = Ak
        Ak = A @ Ak
        for j in range(k):
            Gamma[k * n:(k + 1) * n, j * m:(j + 1) * m] = torch.linalg.matrix_power(A, k - 1 - j) @ B
    w = torch.cat([Q.to(A.dtype).repeat(H), QF.to(A.dtype)])
    # minimise ||sqrt(w) (Phi x0 + Gamma a)||^2 + R ||a||^2
    lhs = Gamma.T @ (w[:, None] * Gamma) + R * torch.eye(H * m, dtype=A.dtype)
    rhs = -Gamma.T @ (w * (Phi @ x0))
    a = torch.linalg.solve(lhs, rhs)
    return a.view(H, m)


def make(name, model, **kw):
    cost = QuadraticCost(2, 1, Q=Q, R=R, Q_f=QF, dtype=model.dtype)
    defaults = {
        "cem": dict(num_samples=500, iterations=15, noise_std=3.0),
        "mppi": dict(num_samples=500, iterations=25, noise_std=0.5, temperature=0.02),
        "gradient": dict(num_samples=4, iterations=150, lr=0.1),
    }[name]
    defaults.update(horizon=H, action_low=-10.0, action_high=10.0, seed=0)
    defaults.update(kw)
    return make_planner(name, model, cost, **defaults)


X0 = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [0.3, -1.0]], dtype=torch.float64)


@pytest.mark.parametrize("name", ["cem", "mppi", "gradient"])
def test_planner_reaches_the_known_optimum(name):
    model = DoubleIntegrator()
    planner = make(name, model)
    sequence = planner.plan_sequence(X0)  # (B, H, m)
    assert sequence.shape == (3, H, 1)
    best = torch.stack([optimum(model, x) for x in X0])
    cost = planner.sequence_cost(X0, sequence.unsqueeze(1))[:, 0]
    best_cost = planner.sequence_cost(X0, best.unsqueeze(1))[:, 0]
    zero_cost = planner.sequence_cost(X0, torch.zeros_like(best).unsqueeze(1))[:, 0]
    assert (best_cost <= cost + 1e-9).all()  # sanity: the closed form is optimal
    assert (cost < zero_cost).all()  # the planner reduced the cost
    assert torch.allclose(cost, best_cost, rtol=0.03), (cost, best_cost)
    # the first action, the one MPC applies, is close to the optimal one
    assert torch.allclose(sequence[:, 0], best[:, 0], atol=0.15 * best[:, 0].abs().max().item()), (sequence[:, 0], best[:, 0])
    assert torch.allclose(planner.solution_cost, cost, rtol=1e-6)


@pytest.mark.parametrize("name", ["cem", "mppi", "gradient"])
def test_warm_start_shifts_the_previous_plan(name):
    model = DoubleIntegrator()
    planner = make(name, model, iterations=2)
    first = planner.plan(X0)
    assert torch.equal(first, planner.solution[:, 0])
    warm = planner.initial_mean(3)
    assert torch.equal(warm[:, :-1], planner.solution[:, 1:])
    assert torch.equal(warm[:, -1], torch.zeros(3, 1, dtype=torch.float64))  # mid-range of the bounds
    # a reset of one env forgets only its warm start
    planner.reset(torch.tensor([False, True, False]))
    warm2 = planner.initial_mean(3)
    assert torch.equal(warm2[0], warm[0]) and torch.equal(warm2[2], warm[2])
    assert torch.equal(warm2[1], torch.zeros(H, 1, dtype=torch.float64))
    planner.reset()
    assert torch.equal(planner.initial_mean(3), torch.zeros(3, H, 1, dtype=torch.float64))


@pytest.mark.parametrize("name", ["cem", "mppi", "gradient"])
def test_batched_planning_equals_separate_plans(name):
    model = DoubleIntegrator()
    batched = make(name, model, iterations=3)
    together = torch.stack([batched.plan(X0) for _ in range(2)])  # two receding-horizon calls
    for i in range(X0.shape[0]):
        single = make(name, model, iterations=3)
        alone = torch.stack([single.plan(X0[i]) for _ in range(2)])
        assert torch.allclose(together[:, i], alone, atol=1e-9), (name, i)


@pytest.mark.parametrize("name", ["cem", "mppi", "gradient"])
def test_seed_reproducible_and_bounds_respected(name):
    model = DoubleIntegrator()
    a = make(name, model, iterations=2, seed=3).plan_sequence(X0 * 10)
    b = make(name, model, iterations=2, seed=3).plan_sequence(X0 * 10)
    c = make(name, model, iterations=2, seed=4).plan_sequence(X0 * 10)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.abs().max() <= 10.0


def test_planners_refuse_mismatched_models_and_costs():
    model = DoubleIntegrator()
    with pytest.raises(ValueError, match="state_dim"):
        CEMPlanner(model, QuadraticCost(4, 1), horizon=H)
    with pytest.raises(ValueError, match="action_dim"):
        MPPIPlanner(model, QuadraticCost(2, 3, dtype=torch.float64), horizon=H)
    with pytest.raises(ValueError, match="shape \\(N,\\)"):
        MPPIPlanner(model, lambda s, a: s.sum(-1), horizon=H)
    with pytest.raises(ValueError, match="device"):  # a cost that answers on another device
        MPPIPlanner(model, lambda s, a: torch.zeros(s.shape[0], device="meta"), horizon=H)
    with pytest.raises(TypeError, match="WorldModel"):
        MPPIPlanner(object(), QuadraticCost(2, 1), horizon=H)
    with pytest.raises(ValueError, match="horizon"):
        make("mppi", model, horizon=0)
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("ilqr", model, QuadraticCost(2, 1))
    planner = make("mppi", model, iterations=1)
    with pytest.raises(ValueError, match="state must have shape"):
        planner.plan(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        planner.plan(torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="action_low"):
        make("cem", model, action_low=1.0, action_high=-1.0)


def test_lyapunov_terminal_cost_pulls_towards_the_certified_equilibrium():
    model = DoubleIntegrator()

    class WithV(torch.nn.Module):
        state_dim = 2

        def lyapunov(self, x):
            return (x * x).sum(-1)

    cost = QuadraticCost(2, 1, Q=0.0, R=0.01, Q_f=0.0, dtype=torch.float64)  # no pull without V
    plain = GradientPlanner(model, cost, horizon=H, action_low=-5, action_high=5, num_samples=2, iterations=100, lr=0.1)
    with_v = GradientPlanner(model, cost, horizon=H, action_low=-5, action_high=5, num_samples=2, iterations=100, lr=0.1,
                             terminal_cost=LyapunovTerminalCost(WithV(), weight=10.0))
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    end_plain = model.rollout(x0, plain.plan_sequence(x0))[:, -1]
    end_v = model.rollout(x0, with_v.plan_sequence(x0))[:, -1]
    assert end_v.norm() < 0.5 * end_plain.norm()

    class Stale:
        def applies_to(self, module):
            return False

    with pytest.raises(ValueError, match="weights_hash"):
        LyapunovTerminalCost(WithV(), certificate=Stale())
    with pytest.raises(ValueError, match="state_dim"):
        MPPIPlanner(model, cost, horizon=H, terminal_cost=LyapunovTerminalCost(lambda x: x.sum(-1), state_dim=3))


def test_clamp_with_uniform_bounds_follows_the_bound_tensors():
    """Uniform bounds clamp as two floats (fast); the result equals the per-entry clamp, and a
    bound changed in place or per entry is seen at the next call."""
    from lyagym.learned_models import SimpleDynamics

    model = SimpleDynamics(2, 2, hidden=(8,), dt=0.05).requires_grad_(False)
    planner = MPPIPlanner(model, PendulumCost(1, action_dim=2), horizon=3, num_samples=8, action_low=-1.0, action_high=1.0)
    a = 3 * torch.randn(4, 3, 2)
    per_entry = lambda: torch.maximum(torch.minimum(a, planner.action_high), planner.action_low)  # noqa: E731
    assert torch.equal(planner.clamp(a), per_entry()) and planner._uniform_bounds == (-1.0, 1.0)
    planner.action_low.fill_(-0.5)
    assert torch.equal(planner.clamp(a), per_entry()) and planner.clamp(a).min() == -0.5
    planner.action_high[1] = 2.0  # no longer uniform: the per-entry path
    assert planner._uniform_bounds is None and torch.equal(planner.clamp(a), per_entry())
    assert planner.clamp(a)[..., 1].max() > 1.0
