"""LyaNet: sampling, early termination, training, Theorem 3, and the LyaNet world model."""

import math

import pytest
import torch
from torchdiffeq import odeint

from lyagym.learned_models import Certificate, check_world_model
from lyagym.learned_models.lyanet import (
    classification_box,
    evaluate,
    fit,
    lipschitz_estimate,
    monte_carlo_loss,
    path_integral_loss,
    robustness_radius,
    sample_hypercube,
    sample_hypersphere,
)
from lyagym.learned_models.lyanet_world_model import LyaNetWorldModel
from lyagym.learned_models.neural_ode import DataControlledMLP, NeuralODE
from lyagym.learned_models.toy_data import concentric_circles, make_toy

torch.set_num_threads(1)


def test_samplers_have_the_stated_support():
    gen = torch.Generator().manual_seed(0)
    cube = sample_hypercube(20000, 3, 1.5, generator=gen)
    assert cube.abs().max() <= 1.5 and cube.abs().max() > 1.45
    # Uniform on the cube: each coordinate has mean 0 and variance s^2 / 3.
    assert cube.mean(0).abs().max() < 0.05
    torch.testing.assert_close(cube.var(0), torch.full((3,), 1.5**2 / 3), atol=0.03, rtol=0)
    ball = sample_hypersphere(20000, 4, 1.0, generator=gen)
    radii = ball.norm(dim=-1)
    r_max = math.sqrt(4)  # the ball through the cube's corners (appendix B)
    assert radii.max() <= r_max + 1e-6 and radii.max() > 0.98 * r_max
    # r ~ U(0, r_max): biased to the origin compared with a uniform ball (mean r = r_max / 2).
    assert abs(radii.mean().item() - r_max / 2) < 0.02
    # Directions are isotropic.
    assert (ball / radii[:, None]).mean(0).abs().max() < 0.03


def test_classification_box_solves_appendix_b_equation():
    for m, kappa in [(10, 1.0), (2, 3.0), (100, 0.5)]:
        s = classification_box(m, kappa)
        corner = torch.full((1, m), -s, dtype=torch.float64)
        corner[0, 0] = s
        ce = torch.nn.functional.cross_entropy(corner, torch.tensor([0]))
        assert ce.item() == pytest.approx(math.exp(-kappa), rel=1e-9)


def test_early_termination_returns_the_ode_state_at_t():
    torch.manual_seed(0)
    model = NeuralODE.mlp(2, 3, width=16, zero_init=False, step_size=0.1).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    func = lambda t, eta: model.f(eta, x, t)  # noqa: E731
    for t in (0.37, 0.5, 1.0):
        reference = odeint(func, torch.zeros(5, 3, dtype=torch.float64), torch.tensor([0.0, t], dtype=torch.float64),
                           method="dopri5", rtol=1e-10, atol=1e-10)[-1]
        torch.testing.assert_close(model(x, t), reference, atol=1e-6, rtol=0)  # rk4, step <= 0.1
        torch.testing.assert_close(model(x, t, method="dopri5", rtol=1e-9, atol=1e-9), reference, atol=1e-7, rtol=0)
    # Early exit costs less: fewer function evaluations.
    model(x, 0.2)
    short = model.last_nfe
    model(x, 1.0)
    assert short < model.last_nfe


def test_max_speed_keeps_paths_in_the_box():
    torch.manual_seed(1)
    dyn = DataControlledMLP(4, 2, 32, zero_init=False, max_speed=0.7)
    with torch.no_grad():
        dyn.net[-1].weight.mul_(100.0)
    model = NeuralODE(dyn, 4)
    path = model.trajectory(torch.randn(64, 2), torch.linspace(0, 1, 6))
    assert path.abs().max() <= 0.7 + 1e-6
    assert path[-1].abs().max() > 0.5


def test_theorem3_radius_matches_hand_computation():
    kappa, delta, lip = 2.0, 0.2, 3.0
    hand = (math.log(2) - 0.2) * 2.0 / (3.0 * (1 - math.exp(-2.0)))
    assert robustness_radius(kappa, delta, lip) == pytest.approx(hand, rel=1e-12)
    # delta at or beyond log 2: nothing certified.
    assert robustness_radius(kappa, math.log(2) + 0.1, lip) == 0.0
    # The radius satisfies eq. 15 with equality.
    eps = robustness_radius(kappa, delta, lip)
    assert delta == pytest.approx(math.log(2) - lip * eps / kappa * (1 - math.exp(-kappa)))
    torch.testing.assert_close(
        robustness_radius(kappa, torch.tensor([0.2, 1.0]), lip), torch.tensor([hand, 0.0]), rtol=1e-6, atol=0
    )
    with pytest.raises(ValueError, match="kappa"):
        robustness_radius(0.0, delta, lip)


def test_lipschitz_estimates_bracket_a_linear_case():
    # f = W x through one linear layer, eta-independent: the sampled local constant can
    # never exceed the certified spectral bound.
    torch.manual_seed(0)
    model = NeuralODE.mlp(5, 3, width=8, zero_init=False)
    x, y = torch.rand(200, 5), torch.randint(0, 3, (200,))
    sampled = lipschitz_estimate(model, norm="linf", method="sampled", x=x, y=y, half_width=2.0, n_samples=512)
    bound = lipschitz_estimate(model, norm="linf", method="spectral")
    assert 0 < sampled <= bound
    sampled_l2 = lipschitz_estimate(model, norm="l2", method="sampled", x=x, y=y, half_width=2.0, n_samples=512)
    assert sampled_l2 <= lipschitz_estimate(model, norm="l2", method="spectral")


def _tiny_task():
    x, y = concentric_circles(256, noise=0.05, seed=3)
    return x, y


def test_monte_carlo_training_lowers_lyapunov_loss_and_error():
    x, y = _tiny_task()
    kappa = 2.0
    s = classification_box(2, kappa)
    torch.manual_seed(0)
    model = NeuralODE.mlp(2, 2, width=32, max_speed=s, step_size=0.25)
    gen = torch.Generator().manual_seed(5)
    probe = lambda: monte_carlo_loss(model, x, y, kappa=kappa, half_width=s, n_samples=8, generator=gen).item()  # noqa: E731
    before_loss, before_err = probe(), evaluate(model, x, y)[0]
    fit(model, x, y, method="monte_carlo", kappa=kappa, epochs=40, batch_size=64, lr=1e-2, progress=False, seed=0)
    gen.manual_seed(5)
    after_loss, after_err = probe(), evaluate(model, x, y)[0]
    assert after_loss < 0.5 * before_loss
    assert before_err >= 0.4 and after_err < 0.15


def test_path_integral_loss_penalises_flat_paths_and_is_differentiable():
    x, y = _tiny_task()
    model = NeuralODE.mlp(2, 2, width=16, step_size=0.25)
    loss = path_integral_loss(model, x[:32], y[:32], kappa=1.0, n_steps=4)
    loss.backward()  # f starts at zero: V is flat along the path, a violation
    assert loss.item() > 0
    assert model.dynamics.net[-1].weight.grad.abs().sum() > 0


def test_fit_rejects_bad_input():
    model = NeuralODE.mlp(2, 2, width=8)
    x, y = _tiny_task()
    with pytest.raises(ValueError, match="kappa"):
        fit(model, x, y, kappa=0.0, epochs=1, progress=False)
    with pytest.raises(ValueError, match="empty"):
        fit(model, x[:0], y[:0], epochs=1, progress=False)
    with pytest.raises(ValueError, match="shape"):
        fit(model, x[:, 0], y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="integer class labels"):
        fit(model, x, y.float(), epochs=1, progress=False)
    with pytest.raises(ValueError, match="method"):
        fit(model, x, y, method="magic", epochs=1, progress=False)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"t must be in \(0, 1\]"):
        model(torch.randn(3, 2), 0.0)
    with pytest.raises(ValueError, match="unknown toy task"):
        make_toy("spirals")


def _linear_system(n=600, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen) * 2 - 1
    u = torch.rand(n, 1, generator=gen) * 2 - 1
    xdot = torch.stack([x[:, 1], -x[:, 0] - 0.5 * x[:, 1] + u[:, 0]], -1)
    return x, u, xdot


def test_world_model_contract_training_certificate_and_save(tmp_path):
    x, u, xdot = _linear_system()
    model = LyaNetWorldModel(2, 1, dt=0.05, target="derivative", integrator="euler", width=32, kappa=4.0, step_size=0.25)
    check_world_model(model)
    history = model.fit(x, u, xdot, epochs=25, batch_size=64, lr=3e-3, progress=False)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    check_world_model(model)
    # Batched prediction of the derivative, compared against the truth on fresh inputs.
    xt, ut, xdot_t = _linear_system(200, seed=1)
    with torch.no_grad():
        pred = model.predict(xt, ut)
        early = model.predict(xt, ut, t=0.5)
    rel = ((pred - xdot_t) ** 2).mean() / (xdot_t**2).mean()
    assert rel < 0.1
    rel_early = ((early - xdot_t) ** 2).mean() / (xdot_t**2).mean()
    assert rel_early < 0.5  # exponential convergence: already close at t = 0.5
    traj = model.rollout(xt[:4], ut[:4, None, :].expand(4, 3, 1))
    assert traj.shape == (4, 4, 2)
    torch.testing.assert_close(traj[:, 1], model.step(xt[:4], ut[:4]))

    cert = model.certificate()
    assert cert.claim == "lyapunov_convergence" and cert.evidence == ["empirical"]
    assert "by_construction" not in cert.evidence
    assert cert.alpha > 0 and cert.applies_to(model)
    assert cert.details["lipschitz_estimate"] > 0
    Certificate.from_json(cert.to_json())

    path = tmp_path / "wm.pt"
    model.save(path)
    with pytest.raises(FileExistsError):
        model.save(path)
    loaded = LyaNetWorldModel.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.step(xt, ut), model.step(xt, ut))
    assert cert.applies_to(loaded)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        LyaNetWorldModel.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        LyaNetWorldModel.load(tmp_path / "missing.pt")


def test_world_model_bad_input():
    with pytest.raises(ValueError, match="kappa"):
        LyaNetWorldModel(2, 1, kappa=-1.0)
    with pytest.raises(ValueError, match="state_dim"):
        LyaNetWorldModel(0, 1)
    model = LyaNetWorldModel(2, 1, width=8)
    with pytest.raises(ValueError, match="u must have shape"):
        model.step(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        model.step(torch.zeros(3, 5), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="target must have shape"):
        model.fit(torch.zeros(4, 2), torch.zeros(4, 1), torch.zeros(4, 3), progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        model.fit(torch.zeros(0, 2), torch.zeros(0, 1), torch.zeros(0, 2), progress=False)
    with pytest.raises(RuntimeError, match="held-out"):
        model.certificate()
