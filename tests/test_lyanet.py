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


def test_target_sampler_covers_every_scale_and_the_cube():
    from lyagym.learned_models.lyanet import sample_around_targets

    gen = torch.Generator().manual_seed(0)
    y = torch.randn(30000, 3, generator=gen)
    near = sample_around_targets(y, 2.0, min_radius=1e-3, box_fraction=0.0, generator=gen)
    decades = torch.log10((near - y).norm(dim=-1) / 2.0)
    # log(r / s) uniform on [log 1e-3, 0]: each of the three decades holds a third.
    assert decades.min() >= -3 - 1e-5 and decades.max() <= 1e-6
    for lo in (-3, -2, -1):
        assert abs(((decades >= lo) & (decades < lo + 1)).float().mean().item() - 1 / 3) < 0.02
    cube = sample_around_targets(y, 2.0, box_fraction=1.0, generator=gen)
    assert cube.abs().max() <= 2.0 and cube.abs().max() > 1.99
    assert cube.mean(0).abs().max() < 0.05  # uniform on the cube, independent of y
    mixed = sample_around_targets(y, 2.0, min_radius=1e-3, box_fraction=0.25, generator=gen)
    assert abs(((mixed - y).norm(dim=-1) > 2.0).float().mean().item() - 0.25 * ((cube - y).norm(dim=-1) > 2.0).float().mean().item()) < 0.02
    with pytest.raises(ValueError, match="min_radius"):
        sample_around_targets(y, 2.0, min_radius=0.0)


def test_relative_weighting_has_the_same_zero_set():
    # f = -c (eta - y): V = ||eta - y||^2 decays at rate 2c. Zero loss iff 2c >= kappa, both weightings;
    # the relative loss is the absolute one divided by V, so it is the same at every distance.
    torch.manual_seed(0)
    y = torch.randn(64, 2)
    for c, zero in ((3.0, True), (1.0, False)):
        model = NeuralODE(_LinearPull(y, c), 2)
        losses = {}
        for w in ("absolute", "relative"):
            gen = torch.Generator().manual_seed(1)
            losses[w] = monte_carlo_loss(model, y, y, kappa=4.0, half_width=2.0, potential="squared_error",
                                         sampler="targets", weighting=w, n_samples=4, generator=gen).item()
        if zero:
            assert losses["absolute"] == 0.0 and losses["relative"] == 0.0
        else:
            assert losses["relative"] == pytest.approx(4.0 - 2 * c, rel=1e-5)  # max(0, -2c + kappa) everywhere
            assert losses["absolute"] > 0
    # The rate band [kappa, kappa_max]: decay at 2c = 6 is too fast for kappa_max = 5 by exactly 1.
    model = NeuralODE(_LinearPull(y, 3.0), 2)
    capped = monte_carlo_loss(model, y, y, kappa=4.0, half_width=2.0, potential="squared_error", sampler="targets",
                              weighting="relative", kappa_max=5.0, n_samples=4)
    assert capped.item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="kappa_max"):
        monte_carlo_loss(model, y, y, kappa=4.0, half_width=2.0, potential="squared_error", kappa_max=3.0)


class _LinearPull(torch.nn.Module):
    """``f(eta, x, t) = -c (eta - x)``: the input is the target (for the weighting test)."""

    def __init__(self, y, c):
        super().__init__()
        self.c = c
        self.input_dim = y.shape[1]

    def forward(self, eta, x, t):
        return -self.c * (eta - x)


def test_feasible_speed_is_where_eq10_becomes_satisfiable_at_the_origin():
    from lyagym.learned_models.lyanet import feasible_speed

    m, kappa = 10, 4.0
    v = feasible_speed(m, kappa)
    assert v == pytest.approx(kappa * math.log(m) / (2 * (1 - 1 / m)))
    # At eta = 0 the best f within |f_i| <= v is v * sign(e_y - p): its decrease rate is 2 v (1 - 1/m).
    eta = torch.zeros(1, m, requires_grad=True)
    ce = torch.nn.functional.cross_entropy(eta, torch.tensor([0]))
    (g,) = torch.autograd.grad(ce, eta)
    for speed, holds in ((1.01 * v, True), (0.99 * v, False)):
        vdot = (g * (-speed * g.sign())).sum()
        assert (vdot.item() + kappa * ce.item() <= 0) == holds
    assert classification_box(m, kappa) < v  # appendix B's box is too slow at kappa = 4


def test_paths_from_random_starts():
    torch.manual_seed(0)
    model = NeuralODE.mlp(2, 2, width=8, zero_init=False)
    x, y = _tiny_task()
    eta0 = torch.full((4, 2), 0.5)
    path = model.trajectory(x[:4], [0.0, 0.5], eta0=eta0)
    torch.testing.assert_close(path[0], eta0)
    with pytest.raises(ValueError, match="eta0"):
        model.trajectory(x[:4], [0.0, 0.5], eta0=torch.zeros(3, 2))
    loss = path_integral_loss(model, x[:8], y[:8], kappa=1.0, n_steps=4, random_starts=True, half_width=2.0)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="half_width"):
        path_integral_loss(model, x[:8], y[:8], kappa=1.0, random_starts=True)


def test_world_model_default_training_is_precise_and_reports_the_premise():
    # The default Monte Carlo loss (targets sampler, sqrt weighting, kappa 12) pins the fixed
    # point: far below the paper-style exp(-4) ~ 2e-2 precision limit of kappa = 4.
    x, u, xdot = _linear_system(800)
    torch.manual_seed(0)
    model = LyaNetWorldModel(2, 1, dt=0.05, target="derivative", width=32)
    model.fit(x, u, xdot, epochs=20, batch_size=64, lr=3e-3, progress=False)
    xt, ut, xdot_t = _linear_system(200, seed=1)
    with torch.no_grad():
        rel = ((model.predict(xt, ut) - xdot_t) ** 2).mean() / (xdot_t**2).mean()
    assert rel < 5e-4
    cert = model.certificate()
    d = cert.details
    assert d["rate_p5"] > 4.0  # measured rate on held-out inputs, above the old default kappa
    assert 0.0 <= cert.alpha <= d["rate_p5"] <= d["rate_median"]
    # alpha is the claim "every held-out inference converges at least this fast": check it.
    z, yn = model._heldout
    times = torch.linspace(0.0, 1.0, 21)
    with torch.no_grad():
        v = ((model.ode.trajectory(z, times, step_size=0.05) - yn) ** 2).sum(-1)
    assert bool((v[1:] <= v[:1] * torch.exp(-cert.alpha * times[1:, None]) * (1 + 1e-5) + 1e-12).all())
    assert 0.0 <= d["eq10_share_of_whole_paths"] <= d["eq10_share_of_path_points"] <= 1.0
    holds = d["eq10_share_of_whole_paths"] == 1.0
    assert ("NOT" in d["theorem3_radius_status"]) != holds


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fast_fixed_step_matches_torchdiffeq(method):
    # The plain-loop integrator is an opt-in speed path: same scheme, same grid (including
    # requested times that are not multiples of the step), so it must agree with
    # torchdiffeq to rounding, and torchdiffeq stays the default.
    torch.manual_seed(3)
    dyn = DataControlledMLP(3, 2, 16, zero_init=False)
    model = NeuralODE(dyn, 3, method=method, step_size=0.07)
    assert model.fast_fixed_step is False
    x = torch.randn(8, 2, dtype=torch.float64)
    model = model.double()
    times = [0.0, 0.13, 0.5, 0.91]
    reference = model.trajectory(x, times)
    fast = model.trajectory(x, times, fast_fixed_step=True)
    torch.testing.assert_close(fast, reference, atol=1e-12, rtol=0)
    model.fast_fixed_step = True
    torch.testing.assert_close(model(x, 0.37), model(x, 0.37, fast_fixed_step=False), atol=1e-12, rtol=0)


def test_float32_times_take_the_requested_steps_and_path_integral_matches_the_path():
    # float32 0.1 is 0.10000000149: the grid must still take one step of 0.1 per interval
    # (not two of 0.05), so a fixed-step solve costs what the step size says.
    torch.manual_seed(0)
    model = NeuralODE.mlp(3, 2, width=8, zero_init=False, method="euler", step_size=0.1)
    x = torch.randn(5, 3)
    times = torch.linspace(0.0, 1.0, 11)
    path = model.trajectory(x, times)
    assert model.last_nfe == 10
    f0 = model.f(torch.zeros(5, 2), x, 0.0)
    torch.testing.assert_close(path[1], 0.1 * f0)
    # The path-integral loss re-takes each segment's step from the detached path state; with
    # the same scheme (torchdiffeq's rk4 is the 3/8 rule) it reproduces the path, so the loss
    # equals the discrete Lyapunov loss of the rolled-out path itself.
    from lyagym.learned_models.lyapunov_loss import discrete_lyapunov_loss, squared_error

    y = torch.randn(5, 2)
    for method in ("euler", "midpoint", "rk4"):
        with torch.no_grad():
            rolled = model.trajectory(x, times, method=method, step_size=0.1)
            values = torch.stack([squared_error(p, y) for p in rolled])
            expected = discrete_lyapunov_loss(values, times, 1.0)
            got = path_integral_loss(model, x, y, kappa=1.0, potential="squared_error", n_steps=10, method=method)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
