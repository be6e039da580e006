"""fit_verified: the learner-verifier loop ends with a proof that plain evaluation cannot break."""

import math

import pytest
import torch

from lyagym.envs import PendulumDynamics
from lyagym.learned_models import LyapunovFunction, SimpleDynamics, fit_verified, verify_decrease

BOX = [[-1.5, 1.5], [-3.0, 3.0]]


def pinned_field(seed: int = 0) -> SimpleDynamics:
    """A tanh field without biases: f(0) = 0, so V's minimum is the field's own equilibrium."""
    torch.manual_seed(seed)
    f = SimpleDynamics(2, hidden=(16, 16), activation="tanh")
    for layer in f.fhat.net:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.zeros_(layer.bias)
            layer.bias.requires_grad_(False)
    return f


def pendulum_pairs(count: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped single pendulum near hanging only (|theta| < 0.5, |omega| < 1): a third of the box's width."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(count, 2, generator=gen, dtype=torch.float64) * 2 - 1) * torch.tensor([0.5, 1.0], dtype=torch.float64)
    xdot = PendulumDynamics(n_links=1).derivative(x)
    return x.float(), xdot.float()


def h_values(f, V, x: torch.Tensor, alpha: float) -> torch.Tensor:
    f64, V64 = f.double(), V.double()
    v, g = V64.forward_and_grad(x)
    with torch.no_grad():
        return (g * f64.derivative(x)).sum(-1) + alpha * v


def test_fit_verified_proves_the_whole_box_and_sampling_agrees():
    f = pinned_field()
    torch.manual_seed(0)
    V = LyapunovFunction(2, (8, 8), eps=1e-3, shift="tangent", quadratic=True)
    data = pendulum_pairs()
    before = verify_decrease(f, V, BOX, alpha=0.01, budget_s=5.0)
    assert before.status != "verified"  # an untrained pair does not already hold
    out = fit_verified(f, V, data, BOX, alpha=0.01, steps=300, rounds=6, budget_s=10.0, lr=3e-3, progress=False)
    assert out["status"] == "verified", out["rounds"]
    assert [r["status"] for r in out["rounds"]][-1] == "verified" and len(out["rounds"]) <= 6
    # the data is still fitted: 1% of the targets' mean square
    x, xdot = data
    with torch.no_grad():
        assert float((f.derivative(x) - xdot).square().mean()) < 0.01 * float(xdot.square().mean())
    # a proof on the final weights, from scratch, says the same
    assert verify_decrease(f, V, BOX, alpha=0.01, budget_s=10.0).status == "verified"
    # and plain float64 evaluation finds no violation outside the local certificate's ball
    gen = torch.Generator().manual_seed(1)
    B = torch.tensor(BOX, dtype=torch.float64)
    states = B[:, 0] + (B[:, 1] - B[:, 0]) * torch.rand(100_000, 2, generator=gen, dtype=torch.float64)
    local = out["verification"].local
    outside = ~local.contains_boxes(states, states) if local is not None else torch.ones(len(states), dtype=torch.bool)
    assert outside.sum() > 99_000
    assert float(h_values(f, V, states[outside], 0.01).max()) < 0


def test_fit_verified_with_no_steps_only_verifies():
    f, data = pinned_field(1), pendulum_pairs()
    V = LyapunovFunction(2, (8, 8), eps=1e-3, shift="tangent", quadratic=True)
    weights = [p.detach().clone() for p in list(f.parameters()) + list(V.parameters())]
    out = fit_verified(f, V, data, BOX, alpha=0.01, steps=0, rounds=3, budget_s=2.0, progress=False)
    assert len(out["rounds"]) == 1 and out["status"] == out["verification"].status
    assert all(torch.equal(a, b) for a, b in zip(weights, list(f.parameters()) + list(V.parameters())))


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=-1.0), "alpha"),
    (dict(alpha=math.nan), "alpha"),
    (dict(alpha=0.1, rounds=0), "rounds"),
    (dict(alpha=0.1, steps=1.5), "steps"),
    (dict(alpha=0.1, budget_s=0), "budget_s"),
    (dict(alpha=0.1, margin=-0.1), "margin"),
])
def test_fit_verified_refuses_bad_arguments(kwargs, match):
    f, data = pinned_field(), pendulum_pairs(20)
    V = LyapunovFunction(2, (8, 8))
    with pytest.raises(ValueError, match=match):
        fit_verified(f, V, data, BOX, progress=False, **kwargs)


def test_fit_verified_refuses_bad_box_data_and_models():
    f, data = pinned_field(), pendulum_pairs(20)
    V = LyapunovFunction(2, (8, 8))
    with pytest.raises(ValueError, match="box"):
        fit_verified(f, V, data, [[-1, 1]], alpha=0.1, progress=False)
    with pytest.raises(ValueError, match="data"):
        fit_verified(f, V, (data[0], data[1][:, :1]), BOX, alpha=0.1, progress=False)
    with pytest.raises(ValueError, match="autonomous"):
        fit_verified(SimpleDynamics(2, 1, hidden=(8,)), V, data, BOX, alpha=0.1, progress=False)
    with pytest.raises(ValueError, match="state_dim"):
        fit_verified(SimpleDynamics(4, hidden=(8,)), V, data, BOX, alpha=0.1, progress=False)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="vanish at lyapunov.x_eq"):  # biases: f(0) != 0, so V cannot decrease next to 0
        fit_verified(SimpleDynamics(2, hidden=(8,), activation="tanh"), V, data, BOX, alpha=0.1, progress=False)


def test_fit_verified_trains_on_the_verifiers_counterexamples():
    # short rounds: the first proofs fail (some where 10^5 uniform samples see no violation) and
    # the counterexamples they return join the learner's states until the proof goes through
    f = pinned_field()
    torch.manual_seed(0)
    V = LyapunovFunction(2, (8, 8), eps=1e-3, shift="tangent", quadratic=True)
    out = fit_verified(f, V, pendulum_pairs(), BOX, alpha=0.01, steps=60, rounds=12, budget_s=5.0, lr=3e-3, progress=False)
    rounds = out["rounds"]
    assert out["status"] == "verified" and len(rounds) >= 2
    found = [r["counterexample"] for r in rounds[:-1]]
    assert all(c is not None for c in found) and rounds[-1]["counterexample"] is None
    h = h_values(f, V, torch.tensor(found, dtype=torch.float64), 0.01)
    assert float(h.max()) < 0  # every state the verifier once refuted now decreases V


def test_fit_verified_stops_with_a_clear_error_when_training_diverges():
    f, data = pinned_field(), pendulum_pairs(50)
    V = LyapunovFunction(2, (8, 8), eps=1e-3, shift="tangent", quadratic=True)
    with pytest.raises(FloatingPointError, match="lower lr"):
        fit_verified(f, V, data, BOX, alpha=0.01, steps=20, rounds=2, lr=1e12, progress=False)
