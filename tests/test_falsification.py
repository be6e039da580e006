"""falsify(): passes where the guarantee holds, finds counterexamples where it does not."""

import torch
from torch import nn

from lyagym.learned_models import (
    Certificate,
    LyapunovFunction,
    SimpleDynamics,
    StableControlledDynamics,
    StableDynamics,
    empirical_certificate,
    falsify,
    fit,
)

SMALL = dict(n_samples=4000, per_shell=150, large_norm_samples=500, grad_steps=15, grad_starts=32, rollouts=32, rollout_steps=15)


class Linear(nn.Module):
    """xdot = A x: a hand-made model for which the truth is known."""

    def __init__(self, A: torch.Tensor, dt: float = 0.05) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.state_dim, self.action_dim, self.dt = A.shape[0], 0, dt

    def derivative(self, x, u=None):
        return x @ self.A.T

    def step(self, x, u=None):
        return x + self.dt * self.derivative(x)


class Quadratic(nn.Module):
    """V(x) = ||x||^2."""

    def forward(self, x):
        return (x * x).sum(-1)


def test_falsify_passes_on_stable_models_continuous_and_discrete():
    model = StableDynamics(4, hidden=(32, 32), lyap_hidden=(16, 16), alpha=0.5, dt=0.1)
    for domain in ("continuous", "discrete"):
        report = falsify(model.certificate(domain), model, **SMALL)
        assert report.passed, report.summary()
        assert report.n_violations == 0 and report.worst_violation <= report.tolerance
        assert set(report.per_test) >= {"random", "shells", "large_norm", "gradient"}
        # 13 shells from 1e-12 to 1, and one at the certificate's excluded radius (below 1e-12 here).
        assert 0 < model.certificate(domain).excluded_radius(torch.float64) < 1e-12
        assert report.per_test["shells"]["checked"] == 14 * 150
        assert report.counterexamples.shape == (0, 4)
    assert report.per_test["rollouts"]["checked"] == 32 * 15
    # Certificate.check is the same search.
    assert model.certificate().check(model, **SMALL).passed


def test_falsify_passes_on_iss_model():
    model = StableControlledDynamics(2, 1, hidden=(16,), lyap_hidden=(8,), alpha=0.3, input_gain=2.0)
    report = model.certificate().check(model, input_scale=3.0, **SMALL)
    assert report.passed, report.summary()
    # An overstated claim (a smaller ISS gain than the model's) is caught.
    cert = model.certificate()
    cert.iss_gain = {"gamma": 1e-3}
    assert not falsify(cert, model, input_scale=3.0, **SMALL).passed


def test_falsify_finds_an_overstated_rate():
    model = StableDynamics(3, hidden=(16,), lyap_hidden=(8,), alpha=0.1)
    cert = model.certificate("continuous")
    cert.alpha = 5.0  # claims far more than the projection enforces
    report = falsify(cert, model, **SMALL)
    assert not report.passed and report.n_violations > 0
    # Every counterexample really violates grad V . f <= -5 V (in float64, where they were
    # found: the shells reach down to 1e-145 there, which float32 rounds to x_eq).
    x, model64 = report.counterexamples, model.double()
    with torch.no_grad():
        v, g = model64.lyapunov.forward_and_grad(x)
        assert ((g * model64.derivative(x)).sum(-1) > -5.0 * v).all()


def test_falsify_finds_violations_on_unstable_models():
    A = torch.tensor([[0.1, 1.0], [-1.0, 0.1]])  # an unstable spiral
    lin = Linear(A)
    cert = Certificate(claim="exponential_stability", alpha=0.01, equilibrium=[0.0, 0.0])
    report = falsify(cert, lin, V=Quadratic(), **SMALL)
    assert not report.passed and report.n_violations > 0.9 * report.n_checked
    disc = Certificate(claim="discrete_exponential_stability", alpha=0.01, equilibrium=[0.0, 0.0], time_domain="discrete", integrator="euler", h=0.05)
    assert falsify(disc, lin, V=Quadratic(), **SMALL).per_test["rollouts"]["violations"] > 0
    # An untrained MLP has no reason to decrease a given V: the gradient search finds the worst states.
    simple = SimpleDynamics(2, hidden=(16,))
    V = LyapunovFunction(2, (8,))
    report = falsify(cert, simple, V=V, **SMALL)
    assert not report.passed
    assert report.per_test["gradient"]["worst"] >= report.per_test["random"]["worst"]


def test_certificate_follows_the_weights():
    model = StableDynamics(2, hidden=(16,), lyap_hidden=(8,))
    cert = model.certificate()
    x = torch.randn(64, 2)
    fit(model, (x, -x), epochs=1, progress=False)
    new = model.certificate()
    assert new.weights_hash != cert.weights_hash and not cert.applies_to(model)
    report = cert.check(model, **SMALL)
    assert not report.applies and not report.passed
    assert Certificate.from_json(new.to_json()) == new


def test_empirical_certificate_for_soft_constrained_models():
    stable = Linear(torch.tensor([[-1.0, 2.0], [-2.0, -1.0]]))  # d/dt ||x||^2 = -2 ||x||^2
    states = torch.randn(500, 2)
    cert = empirical_certificate(stable, Quadratic(), alpha=1.5, states=states, **SMALL)
    assert cert.evidence == ["empirical", "falsification"] and "by_construction" not in cert.evidence
    assert cert.details["empirical_violation_rate"] == 0.0
    # A rate above the true one (2) is refuted both ways, and the numbers say by how much.
    cert = empirical_certificate(stable, Quadratic(), alpha=2.5, states=states, **SMALL)
    assert cert.evidence == [] and cert.details["empirical_violation_rate"] == 1.0
    assert cert.details["falsification"]["n_violations"] > 0
    assert Certificate.from_json(cert.to_json()).details == cert.details
