"""Certificate objects and the WorldModel seam: round trips, validation, weights binding."""

import json
import math

import pytest
import torch

from lyagym.learned_models import Certificate, WorldModel, check_world_model, rollout
from lyagym.learned_models.certificate import model_hash


class LinearModel(torch.nn.Module):
    """x_{k+1} = A x + B u: a minimal WorldModel with a known closed-form rollout."""

    def __init__(self, state_dim=2, action_dim=1, dt=0.1):
        super().__init__()
        self.state_dim, self.action_dim, self.dt = state_dim, action_dim, dt
        self.A = torch.nn.Parameter(0.9 * torch.eye(state_dim))
        self.B = torch.nn.Parameter(torch.ones(state_dim, max(action_dim, 1))[:, :action_dim])

    @property
    def device(self):
        return self.A.device

    @property
    def dtype(self):
        return self.A.dtype

    def step(self, x, u=None):
        y = x @ self.A.T
        return y if u is None else y + u @ self.B.T

    def rollout(self, x0, actions):
        return rollout(self, x0, actions)


def make_cert(**kw):
    base = dict(claim="exponential_stability", alpha=0.5, c1=0.1, c2=0.4, equilibrium=[0.0, 0.0], evidence=["by_construction"])
    base.update(kw)
    return Certificate(**base)


def test_json_round_trip_and_overshoot(tmp_path):
    cert = make_cert(time_domain="discrete", integrator="rk4+lyapunov_rescale", h=0.01, details={"n": 3})
    assert math.isclose(cert.overshoot, 2.0)
    again = Certificate.from_json(cert.to_json())
    assert again == cert
    path = tmp_path / "cert.json"
    cert.save(path)
    assert Certificate.load(path) == cert
    assert json.loads(path.read_text())["overshoot"] == pytest.approx(2.0)
    assert list(tmp_path.iterdir()) == [path]  # the temp file of the atomic write is gone


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(claim="stable-ish"), "claim"),
        (dict(evidence=["vibes"]), "evidence"),
        (dict(time_domain="discrete"), "integrator"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(alpha=-1.0), "alpha"),
    ],
)
def test_invalid_certificates_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        make_cert(**kw)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="certificate JSON"):
        Certificate.load(bad)
    with pytest.raises(FileNotFoundError):
        Certificate.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unknown certificate fields"):
        Certificate.from_dict({**make_cert().to_dict(), "bogus": 1})


def test_certificate_stops_applying_after_fine_tuning():
    model = LinearModel()
    cert = make_cert(weights_hash=model_hash(model))
    assert cert.applies_to(model)
    with torch.no_grad():
        model.A[0, 0] += 1e-6
    assert not cert.applies_to(model)


def test_world_model_rollout_matches_closed_form():
    model = LinearModel()
    assert isinstance(model, WorldModel)
    check_world_model(model)
    x0 = torch.randn(4, 2)
    actions = torch.zeros(4, 5, 1)
    traj = model.rollout(x0, actions)
    assert traj.shape == (4, 6, 2)
    torch.testing.assert_close(traj[:, -1], x0 * 0.9**5)
    with pytest.raises(ValueError, match="actions must have shape"):
        model.rollout(x0, torch.zeros(4, 5, 3))
    with pytest.raises(ValueError, match="autonomous"):
        model.rollout(x0, 5)
