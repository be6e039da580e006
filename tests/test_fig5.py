"""Staged training of stable models (learned_models/lyapunov_fit.py), fit's cosine schedule,
and the Fig. 5 study's presets."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from lyagym.learned_models import (
    NominalView,
    SimpleDynamics,
    StableDynamics,
    fit,
    fit_lyapunov,
    init_quadratic,
    lyapunov_rate_violation,
    quadratic_lyapunov,
)

# A lightly damped oscillator pair: eigenvalues -0.1 +- 2i and -0.3 +- 1i (Hurwitz).
A_TRUE = torch.tensor(
    [
        [0.0, 1.0, 0.0, 0.0],
        [-4.0, -0.2, 0.5, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, -1.0, -0.6],
    ],
    dtype=torch.float64,
)


def _linear_pairs(count: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(count, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, x @ A_TRUE.T


def test_quadratic_lyapunov_recovers_A_and_solves_the_lyapunov_equation():
    x, xdot = _linear_pairs()
    A, P = quadratic_lyapunov(x, xdot)
    assert torch.allclose(A, A_TRUE, atol=1e-10)
    assert torch.allclose(A.T @ P + P @ A, -torch.eye(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(P, P.T) and bool(torch.linalg.eigvalsh(P).min() > 0)
    # x_eq shifts the fit: the same field around another equilibrium gives the same A.
    x_eq = torch.tensor([0.5, 0.0, -1.0, 0.0], dtype=torch.float64)
    A2, _ = quadratic_lyapunov(x + x_eq, xdot, x_eq)
    assert torch.allclose(A2, A_TRUE, atol=1e-10)


def test_quadratic_lyapunov_rejects_unstable_data_and_bad_shapes():
    x, xdot = _linear_pairs()
    with pytest.raises(ValueError, match="Hurwitz"):
        quadratic_lyapunov(x, -xdot)  # time-reversed: every eigenvalue has positive real part
    with pytest.raises(ValueError, match="xdot"):
        quadratic_lyapunov(x, xdot[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        quadratic_lyapunov(x, xdot * float("nan"))


def _quadratic_model(alpha: float = 0.01, dtype=torch.float64) -> StableDynamics:
    torch.manual_seed(0)
    return StableDynamics(4, hidden=(16,), lyap_hidden=(8,), alpha=alpha, eps=1e-3, lyap_shift="tangent", lyap_quadratic=True).to(dtype=dtype)


def test_init_quadratic_puts_P_into_V_and_the_data_then_decrease_it():
    x, xdot = _linear_pairs()
    _, P = quadratic_lyapunov(x, xdot)
    model = _quadratic_model()
    V = model.lyapunov
    init_quadratic(V, P, scale=2.0)
    target = P * (2.0 / torch.linalg.eigvalsh(P)[0])
    assert torch.allclose(V.eps * torch.eye(4, dtype=torch.float64) + V.L.T @ V.L, target, atol=1e-9)
    # Along the linear field, dx^T P dx decreases at rate >= 1 / lambda_max(P).
    quad = ((x @ target) * x).sum(-1)
    rate = 2 * ((x @ target) * xdot).sum(-1) / quad
    assert float(rate.max()) <= -1.0 / float(torch.linalg.eigvalsh(P)[-1]) + 1e-9
    with pytest.raises(ValueError, match="quadratic"):
        init_quadratic(StableDynamics(4, hidden=(8,), lyap_hidden=(8,)).lyapunov, P)
    with pytest.raises(ValueError, match="scale"):
        init_quadratic(V, P, scale=V.eps / 2)


def test_fit_lyapunov_removes_the_violations_of_a_poor_V():
    x, xdot = _linear_pairs()
    model = _quadratic_model()
    V = model.lyapunov  # L = 0.1 I: isotropic, which the lightly damped field violates
    alpha = 0.05
    with torch.no_grad():
        before = float((lyapunov_rate_violation(V, x, xdot, alpha) > 0).double().mean())
    assert before > 0.2
    history = fit_lyapunov(V, (x, xdot), alpha=alpha, steps=150, lr=2e-2, batch_size=0, progress=False)
    assert history["violating_before"] == pytest.approx(before)
    assert history["violating_after"] < 0.02
    assert history["loss"][-1] <= history["loss"][0]
    assert V(torch.zeros(1, 4, dtype=torch.float64)).item() == 0.0  # still V(x_eq) = 0
    with pytest.raises(ValueError, match="steps"):
        fit_lyapunov(V, (x, xdot), alpha=alpha, steps=-1)


def test_projection_under_a_valid_V_is_never_farther_from_the_true_field():
    # The claim behind staged training: where the true field satisfies V's decrease
    # condition, eq. 10 moves the nominal field no farther from it (projection onto a
    # convex set containing the truth), whatever fhat is.
    x, xdot = _linear_pairs(seed=1)
    _, P = quadratic_lyapunov(x, xdot)
    model = _quadratic_model(alpha=0.01)
    init_quadratic(model.lyapunov, P)
    with torch.no_grad():
        V, dV = model.lyapunov.forward_and_grad(x)
        valid = (dV * xdot).sum(-1) <= -model.alpha * V
        assert bool(valid.float().mean() > 0.9)
        nominal = NominalView(model)(x)
        projected = model.derivative(x)
    err_nominal = (nominal - xdot).norm(dim=-1)[valid]
    err_projected = (projected - xdot).norm(dim=-1)[valid]
    assert bool((err_projected <= err_nominal + 1e-9).all())
    assert bool((err_projected < err_nominal - 1e-6).any())  # the random fhat does violate


def test_nominal_view_trains_fhat_only_and_keeps_the_equilibrium():
    x, xdot = _linear_pairs()
    model = _quadratic_model()
    V_before = {k: v.clone() for k, v in model.lyapunov.state_dict().items()}
    history = fit(NominalView(model), (x, xdot), epochs=30, batch_size=64, lr=3e-3, patience=None, progress=False)
    assert history["train_loss"][-1] < 0.2 * history["train_loss"][0]
    for k, v in model.lyapunov.state_dict().items():
        assert torch.equal(v, V_before[k])
    zero = torch.zeros(1, 4, dtype=torch.float64)
    assert torch.equal(NominalView(model)(zero), zero)


def test_fit_cosine_schedule_decays_the_learning_rate_to_zero():
    x, xdot = _linear_pairs()
    torch.manual_seed(0)
    model = SimpleDynamics(4, hidden=(16,)).to(dtype=torch.float64)
    history = fit(model, (x, xdot), epochs=6, batch_size=60, lr=1e-2, patience=None, progress=False, lr_schedule="cosine")
    lrs = history["lr"]
    assert len(lrs) == 6 and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    constant = fit(model, (x, xdot), epochs=2, lr=1e-2, progress=False)
    assert constant["lr"] == [1e-2, 1e-2]
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(model, (x, xdot), epochs=1, lr_schedule="linear")


def test_fig5_presets_staged_by_default_and_the_papers_v_by_flag():
    from lyagym.agents.reproduce import fig5

    parser = argparse.ArgumentParser()
    fig5.add_arguments(parser)
    default = fig5.config_from_args(parser.parse_args(["--size", "tiny"]))
    assert (default.training, default.lyap_shift, default.lyap_quadratic) == ("staged", "tangent", True)
    paper = fig5.config_from_args(parser.parse_args(["--size", "tiny", "--paper-v"]))
    assert (paper.training, paper.lyap_shift, paper.lyap_quadratic, paper.icnn_init, paper.d) == ("joint", "value", False, "wide", 0.1)
    with pytest.raises(SystemExit):
        fig5.config_from_args(parser.parse_args(["--size", "tiny", "--no-lyap-quadratic"]))  # staged needs it
    with pytest.raises(SystemExit):
        fig5.config_from_args(parser.parse_args(["--size", "tiny", "--paper-v", "--tangent-v"]))


def test_fig5_staged_training_gives_a_V_the_training_pairs_obey():
    from dataclasses import replace

    from lyagym.agents.reproduce import fig5
    from lyagym.envs import PendulumDynamics

    config = replace(fig5.PRESETS["tiny"], train_steps=30, lyap_steps=60)
    physics = PendulumDynamics(n_links=2)
    data = fig5.training_data(physics, config)
    models = fig5.build_models(2, config)
    seconds = fig5.train_models(models, data, config, progress=False)
    assert set(seconds) == {"simple", "stable"}
    V = models["stable"].lyapunov
    with torch.no_grad():
        violating = float((lyapunov_rate_violation(V, *data, config.alpha) > 0).double().mean())
    assert violating < 0.01
    x = torch.zeros(1, 4)
    assert torch.equal(models["stable"].derivative(x), x)  # exact equilibrium
    with torch.no_grad():
        assert math.isfinite(float(models["stable"].derivative(data[0]).abs().max()))
