"""DynamicsNet: the mechanical priors of a world model's fhat (periodic angles, affine in u, scales)."""

import math

import pytest
import torch

from lyagym.learned_models import DynamicsNet, SimpleDynamics, StableControlledDynamics, fit, load_model

PRIORS = dict(angle_dims=2, control_affine=True, activation="silu")


@pytest.mark.parametrize("cls", [SimpleDynamics, StableControlledDynamics])
def test_priors_make_the_field_periodic_in_the_angles_and_affine_in_the_torque(cls):
    torch.manual_seed(0)
    model = cls(4, 2, **PRIORS).double()
    x = torch.randn(64, 4, dtype=torch.float64) * 2
    u1, u2 = torch.randn(64, 2, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    f = model.derivative
    turn = torch.tensor([2 * math.pi, -4 * math.pi, 0.0, 0.0], dtype=torch.float64)
    zero = torch.zeros_like(u1)

    def fhat(x, u):
        return model.fhat(torch.cat([x, u], -1))

    with torch.no_grad():
        torch.testing.assert_close(fhat(x + turn, u1), fhat(x, u1), atol=1e-10, rtol=0)
        torch.testing.assert_close(fhat(x, u1 + u2) + fhat(x, zero), fhat(x, u1) + fhat(x, u2), atol=1e-10, rtol=0)
        # a velocity is not an angle: shifting it by 2 pi changes the field
        assert not torch.allclose(fhat(x + turn.roll(2), u1), fhat(x, u1))
        if cls is SimpleDynamics:  # the whole field; the stable model's V (hence its projection) sees raw angles
            torch.testing.assert_close(f(x + turn, u1), f(x, u1), atol=1e-10, rtol=0)
            torch.testing.assert_close(f(x, u1 + u2) + f(x, zero), f(x, u1) + f(x, u2), atol=1e-10, rtol=0)


def test_plain_model_is_unchanged_and_priors_change_the_network():
    plain = SimpleDynamics(4, 2)
    assert isinstance(plain.fhat, torch.nn.Sequential) and "angle_dims" not in plain.config()
    assert set(plain.state_dict()) == {f"fhat.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    model = SimpleDynamics(4, 2, **PRIORS)
    assert isinstance(model.fhat, DynamicsNet)
    assert {k: model.config()[k] for k in PRIORS} == PRIORS


def test_first_fit_calibrates_the_scales_later_fits_keep_them_and_checkpoints_store_them(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(400, 4) * torch.tensor([3.0, 3.0, 2.0, 5.0])
    u = torch.randn(400, 2) * 4
    xdot = torch.cat([x[:, 2:], -torch.sin(x[:, :2]) + u], -1) * 10
    model = SimpleDynamics(4, 2, **PRIORS)
    assert not bool(model.fhat.calibrated)
    fit(model, (x, xdot, u), epochs=2, progress=False)
    net = model.fhat
    assert bool(net.calibrated)
    torch.testing.assert_close(net.input_scale, torch.cat([x[:, 2:], u], -1).std(0))
    torch.testing.assert_close(net.output_scale, xdot.std(0))
    scales = net.input_scale.clone(), net.output_scale.clone()
    fit(model, (x * 3, xdot * 3, u), epochs=1, progress=False)  # a warm-started refit keeps them
    assert torch.equal(net.input_scale, scales[0]) and torch.equal(net.output_scale, scales[1])
    model.save(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert torch.equal(loaded.fhat.output_scale, scales[1]) and bool(loaded.fhat.calibrated)
    with torch.no_grad():
        torch.testing.assert_close(loaded.step(x[:5], u[:5]), model.step(x[:5], u[:5]))


def test_trajectory_fit_calibrates_from_finite_differences():
    torch.manual_seed(1)
    states = torch.randn(6, 11, 2).cumsum(1)
    actions = torch.randn(6, 10, 1)
    model = SimpleDynamics(2, 1, dt=0.1, angle_dims=1)
    fit(model, (states, actions), epochs=1, progress=False)
    xdot = ((states[:, 1:] - states[:, :-1]) / 0.1).reshape(-1, 2)
    torch.testing.assert_close(model.fhat.output_scale, xdot.std(0))
    torch.testing.assert_close(model.fhat.input_scale, torch.cat([states[:, :-1, 1:].reshape(-1, 1), actions.reshape(-1, 1)], -1).std(0))


def test_stable_model_with_priors_keeps_its_guarantee():
    torch.manual_seed(3)
    model = StableControlledDynamics(4, 2, alpha=0.5, input_gain=2.0, dt=0.05, **PRIORS).double()
    x = torch.randn(256, 4, dtype=torch.float64) * 3
    with torch.no_grad():
        model.fhat.calibrate(x, torch.randn(256, 2, dtype=torch.float64), torch.randn(256, 4, dtype=torch.float64) * 10)
        V = model.lyapunov
        y = model.step(x, torch.zeros(256, 2, dtype=torch.float64))
        assert (V(y) <= math.exp(-0.5 * 0.05) * V(x) * (1 + 1e-10)).all()
        u = torch.rand(256, 2, dtype=torch.float64) * 2 - 1
        bound = math.exp(-0.5 * 0.05) * V(x) + (1 - math.exp(-0.5 * 0.05)) * model.sigma(x, u) / 0.5
        assert (V(model.step(x, u)) <= bound * (1 + 1e-9) + 1e-12).all()
    assert model.certificate().claim == "input_to_state_stability"


def test_bad_options_get_clear_errors():
    with pytest.raises(ValueError, match="angle_dims"):
        SimpleDynamics(4, 2, angle_dims=5)
    with pytest.raises(ValueError, match="control_affine"):
        SimpleDynamics(4, 0, control_affine=True)
    with pytest.raises(ValueError, match="activation"):
        SimpleDynamics(4, 2, activation="gelu")
    with pytest.raises(ValueError, match="at least 2 samples"):
        SimpleDynamics(4, 2, angle_dims=2).fhat.calibrate(torch.zeros(1, 4), torch.zeros(1, 2), torch.zeros(1, 4))
