"""StableDynamics / StableControlledDynamics / SimpleDynamics: guarantees as properties of random models."""

import math

import pytest
import torch

from lyagym.learned_models import (
    Certificate,
    SimpleDynamics,
    StableControlledDynamics,
    StableDynamics,
    check_world_model,
    fit,
    load_model,
    odeint,
)

CONFIGS = [
    dict(state_dim=1, hidden=(16,), lyap_hidden=(8,)),
    dict(state_dim=2),  # the paper's sizes
    dict(state_dim=4, hidden=(32, 32), lyap_hidden=(16, 16, 16), alpha=0.5),
    dict(state_dim=8, hidden=(64, 64), lyap_hidden=(32, 32), alpha=2.0, eps=1e-3),
    dict(state_dim=3, hidden=(32,), lyap_hidden=(16,), alpha=0.3, lyap_shift="tangent", lyap_quadratic=True),
]


def _states(n, count, radii=(1e-3, 1e-1, 1.0, 10.0), dtype=torch.float64, x_eq=None):
    x = torch.randn(count * len(radii), n, dtype=dtype)
    r = torch.tensor(radii, dtype=dtype).repeat_interleave(count).unsqueeze(-1)
    x = x / x.norm(dim=-1, keepdim=True) * r
    return x if x_eq is None else x + x_eq


@pytest.mark.parametrize("cfg", CONFIGS)
def test_lyapunov_decrease_holds_for_random_models(cfg):
    model = StableDynamics(**cfg).double()
    V = model.lyapunov
    x = _states(model.state_dim, 500)
    with torch.no_grad():
        f = model.derivative(x)
        v, g = V.forward_and_grad(x)
        assert (v > 0).all()
        lhs = (g * f).sum(-1)
        assert (lhs <= -model.alpha * v + 1e-9 * v).all()
        # The projection is active somewhere: the nominal fhat alone violates the condition.
        fhat = model._fhat_centered(x, None)
        assert ((g * fhat).sum(-1) > -model.alpha * v).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", CONFIGS[:3])
def test_exactly_zero_at_equilibrium_and_finite_everywhere(cfg, dtype):
    x_eq = torch.randn(cfg["state_dim"])
    model = StableDynamics(**cfg, x_eq=x_eq).to(dtype)
    eq = model.x_eq.unsqueeze(0).repeat(3, 1)
    with torch.no_grad():
        assert model.derivative(eq).abs().max() == 0
        assert torch.equal(model.step(eq), eq)
        assert float(model.lyapunov(eq).max()) == 0.0
        for norm in (1e-9, 1e-6, 1e-3, 1.0, 1e3, 1e6):
            x = _states(cfg["state_dim"], 64, radii=(norm,), dtype=dtype, x_eq=model.x_eq)
            f, y, v = model.derivative(x), model.step(x), model.lyapunov(x)
            assert torch.isfinite(f).all() and torch.isfinite(y).all() and torch.isfinite(v).all(), norm
    # Gradients for training are finite at the equilibrium too (no 0/0 in the backward pass).
    eq = eq.clone().requires_grad_(True)
    model.derivative(eq).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(eq.grad).all()


@pytest.mark.parametrize(
    "integrator,dt,alpha",
    [("rk4", 0.2, 0.5), ("euler", 0.01, 0.5), ("rk4", 0.05, 5.0), ("midpoint", 0.1, 1.0)],
)
def test_discrete_step_keeps_the_decrease(integrator, dt, alpha):
    torch.manual_seed(1)
    kw = dict(state_dim=2, alpha=alpha, dt=dt, integrator=integrator)
    kept = StableDynamics(**kw).double()
    raw = StableDynamics(**kw, keep_guarantee=False).double()
    raw.load_state_dict(kept.state_dict())
    x = _states(2, 600, radii=(0.01, 0.3, 1.0, 3.0))
    bound_factor = math.exp(-alpha * dt)
    with torch.no_grad():
        vx = kept.lyapunov(x)
        y_kept, y_raw = kept.step(x), raw.step(x)
        ratio_kept = kept.lyapunov(y_kept) / vx
        ratio_raw = kept.lyapunov(y_raw) / vx
    assert (ratio_kept <= bound_factor * (1 + 1e-10)).all()
    # The plain integrator breaks it on some states: the rescale is doing real work.
    assert (ratio_raw > bound_factor * (1 + 1e-10)).any()
    # ... and only moves the states the integrator got wrong.
    moved = (y_kept != y_raw).any(-1)
    assert torch.equal(moved, ratio_raw > bound_factor)


def test_discrete_step_keeps_the_decrease_with_a_warp():
    model = StableDynamics(2, warp="coupling", alpha=0.5, dt=0.2).double()
    with torch.no_grad():
        for p in model.lyapunov.warp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = _states(2, 300)
    with torch.no_grad():
        assert (model.lyapunov(model.step(x)) <= math.exp(-0.5 * 0.2) * model.lyapunov(x) * (1 + 1e-10)).all()


def test_a_warped_tangent_shifted_model_trains_and_keeps_the_decrease():
    # fitting differentiates grad V once more; with the tangent shift that went through the
    # ICNN's once-differentiable analytic gradient and failed
    torch.manual_seed(0)
    model = StableDynamics(2, hidden=(16,), lyap_hidden=(16,), warp="coupling", lyap_shift="tangent", alpha=0.5, dt=0.2)
    x = torch.randn(64, 2)
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, (x, -x + 0.3 * x.flip(-1)), epochs=2, batch_size=32, progress=False)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    model = model.double()
    states = _states(2, 300)
    with torch.no_grad():
        assert (model.lyapunov(model.step(states)) <= math.exp(-0.5 * 0.2) * model.lyapunov(states) * (1 + 1e-10)).all()


@pytest.mark.parametrize("batched_by_vmap", [False, True])
def test_verified_rescale_stops_near_the_bound_for_a_nonconvex_V(batched_by_vmap):
    # V = sqrt(|x|) is not convex: x_eq + s (y - x_eq) with s = b / V(y) misses b = 0.6 V(y)
    # (V there is sqrt(s) V(y) > s V(y)); the largest scale that meets it is s^2 = 0.36
    # (halving s stops at 0.3).
    from lyagym.learned_models.integrators import functorch_safe, lyapunov_rescale

    def V(z: torch.Tensor) -> torch.Tensor:
        return z.norm(dim=-1).sqrt()

    x_eq = torch.zeros(2, dtype=torch.float64)
    y = torch.randn(32, 2, dtype=torch.float64)
    x = 4.0 * y  # V(x) = 2 V(y)
    alpha, h = -math.log(0.3) / 0.1, 0.1  # exp(-alpha h) = 0.3: b = 0.3 V(x) = 0.6 V(y)
    if batched_by_vmap:
        with functorch_safe():  # the ensembles' path: no data-dependent branch
            out = torch.func.vmap(lambda a, b: lyapunov_rescale(a[None], b[None], V, alpha, h, x_eq, verify=True)[0])(x, y)
    else:
        out = lyapunov_rescale(x, y, V, alpha, h, x_eq, verify=True)
    assert (V(out) <= 0.6 * V(y) * (1 + 1e-12)).all()
    scale = out.norm(dim=-1) / y.norm(dim=-1)
    assert torch.allclose(scale, torch.full_like(scale, 0.36), rtol=1e-3)


def test_float32_step_keeps_the_decrease_up_to_rounding():
    # V's ICNN term is computed as g(x) - g(x_eq) in difference form (no cancellation), so in
    # float32 the bound holds to a few units of rounding relative to V at every distance from
    # x_eq, down to 1e-9 (it held to only 1e-3 within 1e-3 of x_eq with the plain difference).
    model = StableDynamics(4, alpha=1.0, dt=0.2)
    for radius in (1e-9, 1e-6, 1e-3, 0.1, 1.0, 10.0):
        x = _states(4, 500, radii=(radius,), dtype=torch.float32)
        with torch.no_grad():
            ratio = model.lyapunov(model.step(x)) / model.lyapunov(x)
        assert (ratio <= math.exp(-0.2) * (1 + 1e-5)).all(), radius


def test_controlled_model_is_ges_without_input_and_iss_with_bounded_input():
    torch.manual_seed(2)
    model = StableControlledDynamics(2, 1, alpha=1.0, input_gain=3.0, dt=0.05).double()
    cert = model.certificate()
    assert cert.claim == "input_to_state_stability" and cert.iss_gain["gamma"] == 3.0
    x0 = _states(2, 50, radii=(0.1, 1.0, 5.0))
    V = model.lyapunov
    with torch.no_grad():
        # No input: V decreases by exp(-alpha dt) every step, and f(x_eq, 0) = 0.
        traj = model.rollout(x0, torch.zeros(x0.shape[0], 40, 1, dtype=torch.float64))
        v = V(traj.reshape(-1, 2)).reshape(traj.shape[:2])
        assert (v[:, 1:] <= math.exp(-0.05) * v[:, :-1] * (1 + 1e-10)).all()
        assert model.derivative(torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)).abs().max() == 0
        # Bounded random torques |u| <= 2: V(x_k) <= exp(-alpha t) V(x_0) + gamma |u|^2 / alpha.
        u = (2 * torch.rand(x0.shape[0], 100, 1, dtype=torch.float64) - 1) * 2.0
        traj = model.rollout(x0, u)
        v = V(traj.reshape(-1, 2)).reshape(traj.shape[:2])
        t = torch.arange(101, dtype=torch.float64) * 0.05
        bound = torch.exp(-t) * v[:, :1] + 3.0 * 4.0 / 1.0
        assert (v <= bound * (1 + 1e-9)).all()
        # The input can inject energy (sigma > 0) -- needed for a swing-up -- at the equilibrium.
        push = model.step(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
        assert float(V(push)) > 0
        s = model.sigma(traj[:, 0], u[:, 0])
        assert (s >= 0).all() and (s <= 3.0 * (u[:, 0] ** 2).sum(-1)).all()
        assert model.sigma(x0, torch.zeros(x0.shape[0], 1, dtype=torch.float64)).abs().max() == 0


def test_models_satisfy_world_model_and_step_is_differentiable():
    for model in (StableDynamics(3), SimpleDynamics(3), SimpleDynamics(3, 2), StableControlledDynamics(3, 2)):
        check_world_model(model)
        x = torch.randn(5, 3, requires_grad=True)
        u = torch.randn(5, model.action_dim, requires_grad=True) if model.action_dim else None
        out = model.rollout(x, torch.zeros(5, 4, model.action_dim) if model.action_dim else 4)
        assert out.shape == (5, 5, 3)
        model.step(x, u).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        if u is not None:
            assert u.grad is not None and u.grad.abs().sum() > 0


def _reference_projection(fhat, V, grad_V, alpha, slack=None):
    """Eq. 10 written plainly, for autograd to differentiate."""
    excess = (grad_V * fhat).sum(-1) + alpha * V - (0.0 if slack is None else slack)
    return fhat - grad_V * (torch.relu(excess) / (grad_V * grad_V).sum(-1)).unsqueeze(-1)


@pytest.mark.parametrize("with_slack", [False, True])
def test_projection_backward_passes_gradcheck_and_matches_autograd(with_slack):
    from lyagym.learned_models.stable import _project_onto_decrease, project_onto_decrease

    torch.manual_seed(0)
    b, n = 12, 3
    fhat = torch.randn(b, n, dtype=torch.float64, requires_grad=True)
    V = torch.rand(b, dtype=torch.float64).add_(0.1).requires_grad_(True)
    grad_V = torch.randn(b, n, dtype=torch.float64, requires_grad=True)
    slack = torch.rand(b, dtype=torch.float64, requires_grad=True) if with_slack else None
    keep = torch.ones(b, dtype=torch.float64)
    keep[3] = 0.0
    inputs = (fhat, V, grad_V) + ((slack,) if with_slack else ())

    def fn(*a):
        return _project_onto_decrease(a[0], a[1], a[2], 0.7, a[3] if with_slack else None, keep)

    assert torch.autograd.gradcheck(fn, inputs)
    # Centred inside: the first input is fhat on [x; x_eq] and fhat(x) - fhat(x_eq) is projected.
    out = torch.randn(b + 1, n, dtype=torch.float64, requires_grad=True)

    def centred(o, *a):
        return _project_onto_decrease(o, a[0], a[1], 0.7, a[2] if with_slack else None, keep, center=True)

    assert torch.autograd.gradcheck(centred, (out,) + inputs[1:])
    torch.testing.assert_close(centred(out, *inputs[1:]), fn(out[:-1] - out[-1:], *inputs[1:]))
    f = project_onto_decrease(fhat, V, grad_V, 0.7, slack)
    ref = _reference_projection(fhat, V, grad_V, 0.7, slack)
    torch.testing.assert_close(f, ref)
    # Some rows are projected, some are not: both branches of the backward are exercised.
    excess = (grad_V * fhat).sum(-1) + 0.7 * V - (0.0 if slack is None else slack)
    assert (excess > 0).any() and (excess < 0).any()
    w = torch.randn(b, n, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad((f * w).sum(), inputs), torch.autograd.grad((ref * w).sum(), inputs)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("tangent", [False, True])
def test_fused_convex_field_passes_gradcheck(tangent):
    """Eq. 12 + eq. 10 as one node (the default model's training path) against finite differences."""
    from lyagym.learned_models.stable import _ConvexField

    torch.manual_seed(0)
    b, n = 10, 3
    kw = dict(dtype=torch.float64)
    fhat_out = torch.randn(b + 1, n, **kw).requires_grad_(True)
    gx = (torch.randn(b + 1, **kw) * 0.3).requires_grad_(True)  # all branches of sigma (d = 0.5)
    dg = torch.randn(b + 1, n, **kw).requires_grad_(True)
    dx = torch.randn(b, n, **kw).requires_grad_(True)
    slack = torch.rand(b, **kw).requires_grad_(True)

    def fn(fhat_out, gx, dg, dx, slack):
        dx_sq = (dx * dx).sum(-1).detach()
        return _ConvexField.apply(fhat_out, gx, dg, dx, dx_sq, slack, torch.sign(dx_sq), 0.7, 0.05, 0.5, tangent)

    assert torch.autograd.gradcheck(fn, (fhat_out, gx, dg, dx, slack))


@pytest.mark.parametrize(
    "cfg", [dict(), dict(lyap_shift="tangent"), dict(lyap_shift="tangent", lyap_quadratic=True), dict(action_dim=2)]
)
def test_training_gradients_match_a_pure_autograd_model(cfg):
    """The hand-written backwards (ICNN value+gradient, projection) give autograd's gradients."""
    torch.manual_seed(0)
    cls = StableControlledDynamics if "action_dim" in cfg else StableDynamics
    kw = dict(cfg)
    args = (3, kw.pop("action_dim")) if cls is StableControlledDynamics else (3,)
    model = cls(*args, hidden=(16,), lyap_hidden=(8, 8), alpha=0.5, **kw).double()
    with torch.no_grad():  # push biases so that every branch of the smoothed ReLU is visited
        for lin in model.lyapunov.g.W:
            lin.bias.mul_(5.0)
    x = torch.randn(32, 3, dtype=torch.float64)
    u = torch.randn(32, 2, dtype=torch.float64) if model.action_dim else None
    target = torch.randn(32, 3, dtype=torch.float64)
    params = [p for p in model.parameters()]

    fast = model._derivative(x, u)
    # Reference: V by a plain forward, grad V by autograd.grad(create_graph), eq. 10 written out.
    xg = x.clone().requires_grad_(True)
    Vr = model.lyapunov(xg)
    (gr,) = torch.autograd.grad(Vr.sum(), xg, create_graph=True)
    ref = _reference_projection(model._fhat_centered(x, u), Vr, gr, model.alpha, model._slack(x, u))
    torch.testing.assert_close(fast, ref)
    g_fast = torch.autograd.grad(((fast - target) ** 2).mean(), params, allow_unused=True)
    g_ref = torch.autograd.grad(((ref - target) ** 2).mean(), params, allow_unused=True)
    for p, a, r in zip(params, g_fast, g_ref):
        if a is None or r is None:
            assert (a if a is not None else r) is None or (a if a is not None else r).abs().max() == 0
        else:
            torch.testing.assert_close(a, r)


def test_odeint_matches_fixed_step_rollout():
    model = StableDynamics(2, alpha=0.5, dt=0.01, keep_guarantee=False).double()
    x0 = torch.randn(4, 2, dtype=torch.float64)
    with torch.no_grad():
        steps = model.rollout(x0, 20)
        cont = odeint(model, x0, torch.linspace(0, 0.2, 21, dtype=torch.float64), rtol=1e-6, atol=1e-8)
    # The ReLU MLP's kinks limit RK4's accuracy to ~1e-6 here.
    torch.testing.assert_close(cont.transpose(0, 1), steps, rtol=1e-4, atol=1e-5)
    assert (cont[-1] - x0).abs().max() > 1e-4  # it did move


@pytest.mark.parametrize(
    "model",
    [
        StableDynamics(3, alpha=0.3, x_eq=[0.1, -0.2, 0.3]),
        StableDynamics(2, warp="coupling", lyap_shift="tangent", lyap_quadratic=True),
        StableControlledDynamics(3, 2, input_gain=2.0),
        SimpleDynamics(3, 1, hidden=(7,), integrator="euler"),
    ],
    ids=["stable", "warp", "controlled", "simple"],
)
def test_save_load_round_trip(model, tmp_path):
    model = model.double()
    path = tmp_path / "m.pt"
    model.save(path, metadata={"note": "unit test", "epochs": 3})
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.dtype == torch.float64
    assert loaded.config() == model.config()
    assert loaded.checkpoint_metadata == {"note": "unit test", "epochs": 3}
    x = torch.randn(6, model.state_dim, dtype=torch.float64)
    u = torch.randn(6, model.action_dim, dtype=torch.float64) if model.action_dim else None
    with torch.no_grad():
        assert torch.equal(loaded.step(x, u), model.step(x, u))
    assert type(model).load(path).config() == model.config()
    if hasattr(model, "certificate"):
        assert model.certificate().applies_to(loaded)


def test_checkpoint_errors_name_the_file(tmp_path):
    model = StableDynamics(2)
    path = tmp_path / "good.pt"
    model.save(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.pt.*corrupt or truncated"):
        load_model(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt.*not a lyagym model checkpoint"):
        load_model(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="holds a StableDynamics, not a SimpleDynamics"):
        SimpleDynamics.load(path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fhat.0.weight"][0, 0] += 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="tampered.pt.*hash"):
        load_model(tmp_path / "tampered.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden"] = [5, 5]
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt.*weights do not match"):
        load_model(tmp_path / "mismatch.pt")
    # Saving is atomic: no temp files are left behind.
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_bad_inputs_get_clear_errors():
    model = StableDynamics(3)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, state_dim=3\)"):
        model.step(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x must have shape"):
        model.step(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        model.step(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="float64.*float32"):
        model.derivative(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="autonomous"):
        model.step(torch.zeros(2, 3), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="horizon"):
        model.rollout(torch.zeros(2, 3), -1)
    ctrl = StableControlledDynamics(3, 2)
    with pytest.raises(ValueError, match=r"u must have shape \(batch=2, action_dim=2\)"):
        ctrl.step(torch.zeros(2, 3), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="actions must have shape"):
        ctrl.rollout(torch.zeros(2, 3), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="actions contains NaN"):
        ctrl.rollout(torch.zeros(2, 3), torch.full((2, 5, 2), float("nan")))
    with pytest.raises(ValueError, match="int horizon"):
        ctrl.rollout(torch.zeros(2, 3), 5)
    for kwargs, match in [
        (dict(alpha=-1.0), "alpha"),
        (dict(integrator="leapfrog"), "integrator"),
        (dict(warp="spline"), "warp"),
        (dict(dt=0.0), "dt"),
        (dict(x_eq=[0.0, 1.0]), "x_eq"),
        (dict(eps=0.0), "eps"),
    ]:
        with pytest.raises(ValueError, match=match):
            StableDynamics(3, **kwargs)
    with pytest.raises(ValueError, match="action_dim"):
        StableControlledDynamics(3, 0)


def test_certificate_states_the_claim_and_round_trips(tmp_path):
    model = StableDynamics(3, alpha=0.2, eps=0.02, dt=0.05, x_eq=[1.0, 0.0, -1.0]).double()
    cert = model.certificate()
    assert cert.claim == "discrete_exponential_stability" and cert.time_domain == "discrete"
    assert cert.h == 0.05 and cert.integrator == "rk4+lyapunov_rescale"
    assert cert.alpha == 0.2 and cert.c1 == 0.02 and cert.equilibrium == [1.0, 0.0, -1.0]
    assert cert.evidence == ["by_construction"] and cert.model_class == "StableDynamics"
    # c2 really bounds V from above; the overshoot follows.
    x = _states(3, 500, radii=(1e-3, 1.0, 1e3), x_eq=model.x_eq)
    with torch.no_grad():
        assert (model.lyapunov(x) <= cert.c2 * ((x - model.x_eq) ** 2).sum(-1) * (1 + 1e-9)).all()
    assert cert.overshoot == pytest.approx(math.sqrt(cert.c2 / cert.c1))
    cont = model.certificate("continuous")
    assert cont.claim == "exponential_stability" and cont.h is None
    cert.save(tmp_path / "c.json")
    assert Certificate.load(tmp_path / "c.json") == cert
    assert cert.applies_to(model)
    with pytest.raises(ValueError, match="keep_guarantee"):
        StableDynamics(2, keep_guarantee=False).certificate("discrete")
    assert StableDynamics(2, warp="coupling").certificate().evidence == []
