"""Formal verification: sound bounds, branch and bound, the local ball, planted violations."""

import json
import math

import pytest
import torch
from scipy.linalg import solve_continuous_lyapunov
from torch import nn

from lyagym.learned_models import Certificate, DynamicsNet, LyapunovFunction, SimpleDynamics, save_model
from lyagym.learned_models.bounds import LinearBounds, decrease_bounds, icnn_bounds, interval_jacobian, network_bounds
from lyagym.learned_models.branch_and_bound import branch_and_bound
from lyagym.learned_models.local_certificate import local_certificate
from lyagym.learned_models.verification import lyapunov_payload, region_of_attraction, verify_decrease

D64 = torch.float64


def _random_boxes(n, count, width, gen):
    centre = (torch.rand(count, n, generator=gen, dtype=D64) - 0.5) * 4
    half = width * torch.rand(count, n, generator=gen, dtype=D64)
    return centre - half, centre + half


def _samples(lo, hi, k, gen):
    t = torch.rand(lo.shape[0], k, lo.shape[1], generator=gen, dtype=D64)
    return (lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * t).reshape(-1, lo.shape[1])


def _assert_encloses(lower, upper, exact, k):
    exact = exact.reshape(lower.shape[0], k, *lower.shape[1:])
    assert bool((exact >= lower.unsqueeze(1)).all()), float((lower.unsqueeze(1) - exact).max())
    assert bool((exact <= upper.unsqueeze(1)).all()), float((exact - upper.unsqueeze(1)).max())


@pytest.mark.parametrize("activation", ["relu", "tanh", "silu", "softplus"])
@pytest.mark.parametrize("width", [2.0, 0.1])
def test_network_bounds_enclose_sampled_values(activation, width):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    net = SimpleDynamics(3, hidden=(16, 16), activation=activation).fhat.to(D64)
    lo, hi = _random_boxes(3, 32, width, gen)
    lower, upper = network_bounds(net, LinearBounds.from_box(lo, hi)).bounds()
    x = _samples(lo, hi, 64, gen)
    with torch.no_grad():
        _assert_encloses(lower, upper, net(x), 64)


def test_dynamics_net_bounds_with_angles_and_control_affine_input_box():
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    net = DynamicsNet(4, 2, (12,), angle_dims=2, control_affine=True, activation="silu").to(D64)
    with torch.no_grad():
        net.input_scale.uniform_(0.5, 2.0)
        net.output_scale.uniform_(0.5, 2.0)
    lo, hi = _random_boxes(6, 32, 1.0, gen)
    lower, upper = network_bounds(net, LinearBounds.from_box(lo, hi)).bounds()
    x = _samples(lo, hi, 64, gen)
    with torch.no_grad():
        _assert_encloses(lower, upper, net(x), 64)


@pytest.mark.parametrize("shift,quadratic", [("value", False), ("tangent", True)])
def test_lyapunov_and_decrease_bounds_enclose_sampled_values(shift, quadratic):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    V = LyapunovFunction(2, (8, 8), eps=1e-2, shift=shift, quadratic=quadratic, x_eq=[0.1, -0.2]).to(D64)
    V.g.reset_z_path(offset=0.0)  # real curvature, so the smoothed ReLUs are exercised
    f = SimpleDynamics(2, hidden=(16,), activation="tanh").to(D64)
    for width in (1.5, 0.05):
        lo, hi = _random_boxes(2, 32, width, gen)
        b = decrease_bounds(f, V, lo, hi, 0.3)
        x = _samples(lo, hi, 64, gen)
        with torch.no_grad():
            v, g = V.forward_and_grad(x)
            fx = f(x)
        _assert_encloses(*b["V"], v, 64)
        _assert_encloses(*b["f"], fx, 64)
        _assert_encloses(*b["h"], (g * fx).sum(-1) + 0.3 * v, 64)
        gb = icnn_bounds(V.g, LinearBounds.from_box(lo, hi))
        with torch.no_grad():
            gx, dg = V.g.forward_and_grad(x)
        _assert_encloses(*(t for t in gb.grad.bounds()), dg, 64)
        _assert_encloses(*(t[:, 0] for t in gb.value.bounds()), gx, 64)


def test_bounds_tighten_on_small_boxes():
    # The overestimate of h shrinks faster than the box (the linear terms are exact): on boxes
    # 10x smaller the gap between the bound and the sampled maximum falls > 10x.
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    V = LyapunovFunction(2, (8,), eps=1e-2).to(D64)
    f = SimpleDynamics(2, hidden=(16,), activation="tanh").to(D64)
    centre = torch.tensor([[0.7, -0.4]], dtype=D64)
    gaps = []
    torch.set_grad_enabled(False)
    for w in (0.1, 0.01):
        lo, hi = centre - w, centre + w
        upper = decrease_bounds(f, V, lo, hi, 0.1)["h"][1]
        x = _samples(lo, hi, 2000, gen)
        with torch.no_grad():
            v, g = V.forward_and_grad(x)
        gaps.append(float(upper - ((g * f(x)).sum(-1) + 0.1 * v).max()))
    torch.set_grad_enabled(True)
    assert gaps[0] >= 0 and gaps[1] >= 0
    assert gaps[1] < gaps[0] / 10


def test_second_order_dot_bound_encloses_sampled_values():
    # sum_i g_i f_i (+ extra) for unrelated networks g, f, e on wide and narrow boxes
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    g, f = (SimpleDynamics(3, hidden=(16,), activation=a).fhat.to(D64) for a in ("tanh", "relu"))
    e = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(D64)
    for width in (2.0, 0.1):
        lo, hi = _random_boxes(3, 32, width, gen)
        x = LinearBounds.from_box(lo, hi)
        lower, upper = network_bounds(g, x).dot_bounds(network_bounds(f, x), network_bounds(e, x))
        pts = _samples(lo, hi, 256, gen)
        with torch.no_grad():
            _assert_encloses(lower, upper, (g(pts) * f(pts)).sum(-1) + e(pts)[:, 0], 256)


def test_second_order_dot_bound_is_exact_on_a_lyapunov_quadratic():
    # f = J x, grad V = 2 P x with J^T P + P J = -I: grad V . f = -|x|^2, whose range over a box
    # [-r, r] is [-|r|^2, 0]; the second-order bound finds it (per-product McCormick planes
    # would give an upper bound of order |r|^2 above 0).
    J = torch.tensor([[0.0, 1.0], [-2.0, -0.5]], dtype=D64)
    P = torch.as_tensor(solve_continuous_lyapunov(J.T.numpy(), -torch.eye(2, dtype=D64).numpy()))
    assert torch.allclose(J.T @ P + P @ J, -torch.eye(2, dtype=D64))
    r = torch.tensor([[0.3, 0.7]], dtype=D64)
    x = LinearBounds.from_box(-r, r)
    lower, upper = x.linear(2 * P).dot_bounds(x.linear(J))
    assert abs(float(upper)) < 1e-9 and abs(float(lower) + float((r * r).sum())) < 1e-9
    mc_upper = x.linear(2 * P).mul(x.linear(J)).sum().bounds()[1]
    assert float(mc_upper) > 0.1


def test_interval_jacobian_encloses_autograd_jacobians():
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    for activation in ("relu", "tanh", "silu", "softplus"):
        net = SimpleDynamics(2, hidden=(8, 8), activation=activation).fhat.to(D64)
        if activation != "relu":
            with torch.no_grad():
                net.input_scale.uniform_(0.5, 2.0), net.output_scale.uniform_(0.5, 2.0)
        lo, hi = _random_boxes(2, 8, 0.5, gen)
        J_lo, J_hi = interval_jacobian(net, lo, hi)
        x = _samples(lo, hi, 16, gen)
        # rows are independent, so the Jacobian of the batch sum holds every row's Jacobian
        J = torch.autograd.functional.jacobian(lambda y: net(y).sum(0), x, vectorize=True).permute(1, 0, 2)
        _assert_encloses(J_lo, J_hi, J, 16)


# ---- branch and bound on closed forms --------------------------------------------------


def _linear_problem(c):
    # h(x) = x1 + x2 - c on boxes: the exact upper bound is hi1 + hi2 - c.
    def bound_fn(lo, hi):
        return hi.sum(-1) - c, torch.zeros(lo.shape[0], dtype=torch.bool)

    return bound_fn, lambda x: x.sum(-1) - c


@pytest.mark.parametrize("split", ["widest", "best"])
def test_branch_and_bound_verifies_counterexamples_and_runs_out_of_budget(split):
    lo, hi = torch.zeros(2, dtype=D64), torch.ones(2, dtype=D64)
    res = branch_and_bound(*_linear_problem(2.1), lo, hi, split=split)
    assert res.status == "verified" and res.verified_fraction == 1.0
    res = branch_and_bound(*_linear_problem(1.9), lo, hi, split=split)
    assert res.status == "counterexample" and float(res.counterexample.sum()) - 1.9 == pytest.approx(res.counterexample_value)
    assert res.counterexample_value > 0
    # h = x1 + x2 - 2 <= 0 with equality only at the corner: never proven there, never violated
    res = branch_and_bound(*_linear_problem(2.0), lo, hi, max_boxes=2000, split=split)
    assert res.status == "unknown" and res.verified_fraction > 0.99 and res.open_lo.shape[0] > 0 and res.worst_upper >= 0
    # exhaustive: the counterexample is kept and the rest of the box still proven (x1 + x2 < 1.9)
    res = branch_and_bound(*_linear_problem(1.9), lo, hi, exhaustive=True, max_boxes=4000, split=split)
    assert res.status == "counterexample" and res.counterexample_value > 0 and 0.99 < res.verified_fraction < 0.995 + 1e-9
    res = branch_and_bound(*_linear_problem(2.0), lo, hi, max_boxes=2000, split=split)
    # volume accounting: the unresolved boxes are exactly what is not proven
    assert float((res.open_hi - res.open_lo).prod(-1).sum()) == pytest.approx(1 - res.verified_fraction, abs=1e-12)
    with pytest.raises(ValueError, match="split"):
        branch_and_bound(*_linear_problem(2.1), lo, hi, split="random")


# ---- planted violations and a verified region ------------------------------------------


def _relu_linear_field(A, bump=None):
    """``SimpleDynamics(2)`` whose ReLU MLP is exactly ``f(x) = A x`` (``x = relu(x) - relu(-x)``),
    plus, with ``bump = (a, b, K)``, ``K * hat(x1)`` on ``f1``: a triangle of height ``K (b - a) / 2``
    on ``a < x1 < b``, zero elsewhere."""
    model = SimpleDynamics(2, hidden=(7,)).to(D64)
    W1 = torch.zeros(7, 2, dtype=D64)
    b1 = torch.zeros(7, dtype=D64)
    W1[0, 0], W1[1, 0], W1[2, 1], W1[3, 1] = 1, -1, 1, -1
    W2 = torch.zeros(2, 7, dtype=D64)
    W2[:, 0], W2[:, 1], W2[:, 2], W2[:, 3] = A[:, 0], -A[:, 0], A[:, 1], -A[:, 1]
    if bump is not None:
        a, b, K = bump
        W1[4:, 0] = 1
        b1[4], b1[5], b1[6] = -a, -(a + b) / 2, -b
        W2[0, 4], W2[0, 5], W2[0, 6] = K, -2 * K, K
    with torch.no_grad():
        model.fhat[0].weight.copy_(W1), model.fhat[0].bias.copy_(b1)
        model.fhat[2].weight.copy_(W2), model.fhat[2].bias.zero_()
    return model


def _quadratic_V(eps=1.0):
    V = LyapunovFunction(2, (4,), eps=eps).to(D64)
    with torch.no_grad():
        V.g.theta.zero_()  # g == 0, so V = eps ||x||^2
    return V


A_STABLE = torch.tensor([[-1.0, 2.0], [-2.0, -1.0]], dtype=D64)
BOX = [[-1.0, 1.0], [-1.0, 1.0]]


def test_planted_violations_are_never_verified():
    V = _quadratic_V()
    unstable = _relu_linear_field(torch.tensor([[0.1, 2.0], [-2.0, 0.1]], dtype=D64))
    res = verify_decrease(unstable, V, BOX, alpha=0.0, budget_s=10)
    assert res.status == "counterexample"
    # a strip 0.02 wide where f1 points outward: random sampling of the box hits it 1% of the time
    narrow = _relu_linear_field(A_STABLE, bump=(0.5, 0.52, 400.0))
    res = verify_decrease(narrow, V, BOX, alpha=0.1, budget_s=10)
    assert res.status == "counterexample"
    x = torch.tensor([res.counterexample], dtype=D64)
    with torch.no_grad():
        v, g = V.forward_and_grad(x)
        assert float((g * narrow(x)).sum() + 0.1 * v) == pytest.approx(res.counterexample_value) and res.counterexample_value > 0
    assert 0.5 < res.counterexample[0] < 0.52
    # with a budget too small to find it, still never "verified"
    res = verify_decrease(narrow, V, BOX, alpha=0.1, budget_s=10, local=False)
    assert res.status != "verified"


def test_verified_region_shows_no_violation_on_a_million_random_states():
    V = _quadratic_V()
    model = _tanh_model(A_STABLE)
    res = verify_decrease(model, V, BOX, alpha=1.5, budget_s=20)
    assert res.status == "verified" and res.fraction == 1.0
    assert res.local is not None and float(res.local.x_star.abs().max()) < 1e-12
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(1_000_000, 2, generator=gen, dtype=D64) * 2 - 1
    with torch.no_grad():
        v, g = V.forward_and_grad(x)
        h = (g * model(x)).sum(-1) + 1.5 * v
    assert bool((h <= 0).all())
    # at a rate the field does not have (2 eps x.Ax = -2 V, so alpha > 2 fails): a counterexample
    assert verify_decrease(model, V, BOX, alpha=2.2, budget_s=10).status == "counterexample"


def _tanh_field(A, hidden=16, scale=0.1, seed=0):
    """A smooth field with ``f(0) = 0``: ``A x`` (two tanh units with input scale ``s``:
    ``tanh(s x) / s = x + O(s^2 x^3)``) plus a random bias-free tanh layer of size ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    s = 1e-2
    first, second = nn.Linear(2, hidden + 2).to(D64), nn.Linear(hidden + 2, 2).to(D64)
    with torch.no_grad():
        first.weight.copy_(torch.cat([torch.randn(hidden, 2, generator=gen, dtype=D64), s * torch.eye(2, dtype=D64)]))
        second.weight.copy_(torch.cat([scale * torch.randn(2, hidden, generator=gen, dtype=D64) / hidden, A / s], dim=1))
        first.bias.zero_(), second.bias.zero_()
    return nn.Sequential(first, nn.Tanh(), second)


def _tanh_model(A):
    """``_tanh_field`` as a ``SimpleDynamics`` (its ``fhat`` a ``DynamicsNet`` with unit scales)."""
    model = SimpleDynamics(2, hidden=(18,), activation="tanh").to(D64)
    model.fhat.net.load_state_dict(_tanh_field(A).state_dict())
    return model


def test_local_ball_certifies_the_linearisation_and_its_remainder():
    field = _tanh_field(A_STABLE)
    lc = local_certificate(field, torch.zeros(2, dtype=D64))
    assert lc is not None and lc.rate > 0 and float(lc.x_star.abs().max()) < 1e-12
    assert 2 * float(torch.linalg.eigvalsh(lc.P)[-1]) * lc.delta < 1
    # inside E the quadratic V_loc decreases along f (outside the tiny inner ball)
    gen = torch.Generator().manual_seed(7)
    L = torch.linalg.cholesky(torch.linalg.inv(lc.P))
    dirs = torch.randn(20000, 2, generator=gen, dtype=D64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    scale = torch.rand(20000, 1, generator=gen, dtype=D64) * math.sqrt(lc.level)
    x = lc.x_star + (dirs * scale) @ L.T  # dx^T P dx = scale^2 <= level
    assert bool((((x - lc.x_star) @ lc.P * (x - lc.x_star)).sum(-1) <= lc.level * (1 + 1e-9)).all())
    with torch.no_grad():
        rate = 2 * ((x - lc.x_star) @ lc.P * field(x)).sum(-1)
    far = (x - lc.x_star).norm(dim=-1) > lc.inner_radius
    assert bool((rate[far] < 0).all())
    tiny = 1e-6 * lc.radius
    assert bool(lc.contains_boxes((lc.x_star - tiny).unsqueeze(0), (lc.x_star + tiny).unsqueeze(0)).all())
    big = 2 * lc.radius
    assert not bool(lc.contains_boxes((lc.x_star - big).unsqueeze(0), (lc.x_star + big).unsqueeze(0)).any())
    # an unstable equilibrium gets no local certificate
    assert local_certificate(_relu_linear_field(-A_STABLE), torch.zeros(2, dtype=D64)) is None


def test_region_of_attraction_and_formal_certificate():
    V = _quadratic_V(eps=0.5)
    # A stable field (eigenvalues of A with real part -0.35) for which ||x||^2 is no Lyapunov
    # function: x.Ax = -x1^2 + 0.3 x2^2 > 0 near the x2 axis at every scale. Its equilibrium sits on
    # the ReLU kinks, so there is no local certificate either: no sublevel set may be claimed.
    model = _relu_linear_field(torch.tensor([[-1.0, 2.0], [-2.0, 0.3]], dtype=D64))
    res = region_of_attraction(model, V, BOX, alpha=0.1, budget_s=10, steps=4)
    assert res.status != "verified" and res.local is None
    stable = _tanh_model(A_STABLE)
    res = region_of_attraction(stable, V, BOX, alpha=0.1, budget_s=20, steps=6)
    assert res.status == "verified" and res.rho == pytest.approx(0.5, rel=1e-6) and res.rho <= 0.5
    cert = Certificate(claim="exponential_stability", alpha=0.1, evidence=["empirical"])
    formal = cert.verify(stable, box=BOX, lyapunov=V, rho="auto", budget_s=20)
    assert formal.evidence == ["empirical", "formal"] and formal.details["formal"]["rho"] == pytest.approx(0.5, rel=1e-6)
    assert "V <=" in formal.region()
    assert Certificate.from_json(formal.to_json()).evidence == ["empirical", "formal"]
    failed = cert.verify(_relu_linear_field(A_STABLE, bump=(0.5, 0.52, 400.0)), box=BOX, lyapunov=V, budget_s=10)
    assert "formal" not in failed.evidence and failed.details["formal"]["status"] == "counterexample"


def test_cli_verify_writes_json_and_refuses_bad_input(tmp_path, capsys):
    from lyagym.agents import cli

    model = _tanh_model(A_STABLE).float()
    path = tmp_path / "m.pt"
    save_model(model, path, metadata={"lyapunov": lyapunov_payload(_quadratic_V().float()), "alpha": 0.5})
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["verify", str(path), "--box=-1,1", "--box=-1,1", "--budget-s", "20", "--out", str(out), "--no-progress"]) == 0
        result = json.loads(out.read_text())
        assert result["status"] == "verified" and result["fraction"] == 1.0 and result["alpha"] == 0.5
        assert result["local"] is not None and result["margin"]
        capsys.readouterr()
        for bad in (["--box=-1,1"], ["--box=1,-1", "--box=-1,1"], ["--box=-1,1", "--box=-1,1", "--budget-s", "nan"],
                    ["--box=-1,1", "--box=-1,1", "--rho", "-1"]):
            try:
                code = cli.main(["verify", str(path), *bad])
            except SystemExit as e:
                code = e.code
            err = capsys.readouterr().err
            assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (bad, err)
        assert cli.main(["verify", str(path), "--box=-1,1", "--box=-1,1", "--out", str(out)]) == 2  # exists: --overwrite
        assert "--overwrite" in capsys.readouterr().err
        assert cli.main(["verify", str(tmp_path / "missing.pt"), "--box=-1,1", "--box=-1,1"]) == 2
        assert "missing.pt" in capsys.readouterr().err
        # a LyaNet checkpoint: its inference contraction, at alpha / 2
        lyanet = _linear_lyanet(2.0)
        lyanet.half_width = 1.0
        lyanet.save(tmp_path / "lyanet.pt")
        assert cli.main(["verify", str(tmp_path / "lyanet.pt"), "--box=-1,1", "--alpha", "3", "--budget-s", "20", "--out",
                         str(tmp_path / "c.json"), "--no-progress"]) == 0
        result = json.loads((tmp_path / "c.json").read_text())
        assert result["status"] == "verified" and result["alpha"] == 1.5 and "contraction" in result["condition"]
        assert cli.main(["verify", str(tmp_path / "lyanet.pt"), "--box=-1,1", "--box=-1,1", "--alpha", "3"]) == 2
        assert "one per input" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)


# ---- the discrete step map ----------------------------------------------------------------


def test_step_and_discrete_decrease_bounds_enclose_sampled_values():
    from lyagym.learned_models.integrators import integrate
    from lyagym.learned_models.step_bounds import discrete_decrease_bounds, step_bounds, step_jacobian_bounds

    gen = torch.Generator().manual_seed(8)
    torch.manual_seed(0)
    V = LyapunovFunction(2, (8,), eps=1e-2, shift="tangent", quadratic=True).to(D64)
    f = SimpleDynamics(2, hidden=(16,), activation="tanh").to(D64)
    for method, h in (("rk4", 0.1), ("euler", 0.05)):
        lo, hi = _random_boxes(2, 16, 0.3, gen)
        x = _samples(lo, hi, 64, gen)
        with torch.no_grad():
            y = integrate(f.fhat, x, h, method)
            d = V(y) - math.exp(-0.2 * h) * V(x)
        _assert_encloses(*step_bounds(f, LinearBounds.from_box(lo, hi), h, method).bounds(), y, 64)
        _assert_encloses(*discrete_decrease_bounds(f, V, lo, hi, 0.2, h, method)["d"], d, 64)
        J = torch.autograd.functional.jacobian(lambda z: integrate(f.fhat, z, h, method).sum(0), x, vectorize=True).permute(1, 0, 2)
        _assert_encloses(*step_jacobian_bounds(f, lo, hi, h, method), J, 64)


def test_discrete_step_map_verified_and_planted_violation():
    from lyagym.learned_models.local_certificate import local_step_certificate

    V = _quadratic_V()
    model = _tanh_model(A_STABLE)  # dt 0.01, rk4
    lc = local_step_certificate(model, torch.zeros(2, dtype=D64), model.dt, model.integrator)
    assert lc is not None and lc.rate > 0
    box = [[0.5, 1.0], [-1.0, 1.0]]
    res = verify_decrease(model, V, box, alpha=1.5, budget_s=20, time_domain="discrete")
    assert res.status == "verified" and res.details()["condition"].startswith("V(step(x))")
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(100_000, 2, generator=gen, dtype=D64) * torch.tensor([0.5, 2.0], dtype=D64) + torch.tensor([0.5, -1.0], dtype=D64)
    with torch.no_grad():
        assert bool((V(model.step(x)) - math.exp(-1.5 * model.dt) * V(x) <= 0).all())
    narrow = _relu_linear_field(A_STABLE, bump=(0.5, 0.52, 400.0))
    assert verify_decrease(narrow, V, BOX, alpha=0.1, budget_s=10, time_domain="discrete").status == "counterexample"
    cert = Certificate(claim="discrete_exponential_stability", alpha=1.5, time_domain="discrete", integrator="rk4", h=0.01)
    assert "formal" in cert.verify(model, box=box, lyapunov=V, budget_s=20).evidence


# ---- LyaNet inference contraction ------------------------------------------------------------


def test_log_norm_bound_holds_for_sampled_matrices():
    from lyagym.learned_models.contraction import log_norm_bounds

    gen = torch.Generator().manual_seed(9)
    C = torch.randn(64, 3, 3, generator=gen, dtype=D64)
    R = torch.rand(64, 3, 3, generator=gen, dtype=D64) * 0.5
    upper = log_norm_bounds(C - R, C + R)
    J = C.unsqueeze(1) + R.unsqueeze(1) * (2 * torch.rand(64, 500, 3, 3, generator=gen, dtype=D64) - 1)
    exact = torch.linalg.eigvalsh((J + J.transpose(-1, -2)) / 2)[..., -1]
    assert bool((exact <= upper.unsqueeze(1)).all())
    # a point interval is exact: lambda_max of the symmetric part
    assert torch.allclose(log_norm_bounds(C, C), torch.linalg.eigvalsh((C + C.transpose(1, 2)) / 2)[:, -1], atol=1e-8)


def _linear_lyanet(a):
    """A ``LyaNetWorldModel(1)`` whose inference field is exactly ``f(eta, z, t) = -a eta``
    (``silu(s) - silu(-s) = s`` through both hidden layers)."""
    from lyagym.learned_models.lyanet_world_model import LyaNetWorldModel

    model = LyaNetWorldModel(1, 0, width=2, depth=2, dtype=D64)
    first, _, second, _, last = model.ode.dynamics.net
    with torch.no_grad():
        for layer in (first, second, last):
            layer.weight.zero_(), layer.bias.zero_()
        first.weight[:, 0] = torch.tensor([1.0, -1.0], dtype=D64)
        second.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=D64))
        last.weight.copy_(torch.tensor([[-a, a]], dtype=D64))
    return model


def test_contraction_verified_and_refuted_on_a_linear_inference_field():
    from lyagym.learned_models.contraction import verify_contraction

    model = _linear_lyanet(2.0)
    eta = torch.linspace(-1, 1, 5, dtype=D64).unsqueeze(1)
    with torch.no_grad():
        assert torch.allclose(model.ode.f(eta, torch.zeros(5, 1, dtype=D64), 0.3), -2 * eta)
    box, eta_box = [[-1.0, 1.0]], [[-1.0, 1.0]]
    res = verify_contraction(model, box, rate=1.5, eta_box=eta_box, budget_s=20)
    assert res.status == "verified" and res.fraction == 1.0 and "contraction" in res.details()["condition"]
    res = verify_contraction(model, box, rate=2.5, eta_box=eta_box, budget_s=20)
    assert res.status == "counterexample" and res.counterexample_value == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="rate"):
        verify_contraction(model, box, rate=0.0, eta_box=eta_box)
    with pytest.raises(ValueError, match="half_width"):
        verify_contraction(model, box, rate=1.0)
    # Certificate.verify: a LyaNet claim (rate alpha on ||eta - y||^2) gets formal evidence from
    # contraction at alpha / 2
    model.half_width = 1.0
    cert = Certificate(claim="lyapunov_convergence", alpha=3.0, evidence=["empirical"])
    formal = cert.verify(model, box=box, budget_s=20)
    assert formal.evidence == ["empirical", "formal"] and "contracts at rate 1.5" in formal.details["region"]
    failed = Certificate(claim="lyapunov_convergence", alpha=5.0, evidence=["empirical"]).verify(model, box=box, budget_s=20)
    assert "formal" not in failed.evidence and failed.details["formal"]["status"] == "counterexample"


def _controlled_linear_field():
    """``SimpleDynamics(2, 1)`` whose ReLU MLP is exactly ``f(x, u) = A x + (0, u)``."""
    model = SimpleDynamics(2, 1, hidden=(6,)).to(D64)
    W1 = torch.zeros(6, 3, dtype=D64)
    for row, (col, sign) in enumerate([(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)]):
        W1[row, col] = sign
    W2 = torch.zeros(2, 6, dtype=D64)
    W2[:, 0], W2[:, 1], W2[:, 2], W2[:, 3] = A_STABLE[:, 0], -A_STABLE[:, 0], A_STABLE[:, 1], -A_STABLE[:, 1]
    W2[1, 4], W2[1, 5] = 1.0, -1.0
    with torch.no_grad():
        model.fhat[0].weight.copy_(W1), model.fhat[0].bias.zero_()
        model.fhat[2].weight.copy_(W2), model.fhat[2].bias.zero_()
    return model


def test_a_fixed_input_is_a_flat_row_of_the_input_box():
    """``u_box`` rows with lo == hi fix that input: the unforced decrease (u = 0) is proven on the
    whole box but the equilibrium's vanishing neighbourhood (no local certificate with inputs),
    a constant push (u = 0.5) is refuted with a counterexample at that input."""
    model, V = _controlled_linear_field(), _quadratic_V()
    res = verify_decrease(model, V, BOX, alpha=1.5, u_box=[[0.0, 0.0]], budget_s=3)
    assert res.counterexample is None and res.fraction > 0.999 and res.box[-1] == [0.0, 0.0]
    res = verify_decrease(model, V, BOX, alpha=1.5, u_box=[[0.5, 0.5]], budget_s=3)
    assert res.status == "counterexample" and res.counterexample[-1] == 0.5 and res.counterexample_value > 0
    x = torch.tensor([res.counterexample[:2]], dtype=D64)
    with torch.no_grad():
        v, g = V.forward_and_grad(x)
        h = (g * model.derivative(x, torch.tensor([[0.5]], dtype=D64))).sum() + 1.5 * v
    assert float(h) == pytest.approx(res.counterexample_value)
    with pytest.raises(ValueError, match="u_box needs finite lo <= hi"):
        verify_decrease(model, V, BOX, alpha=1.5, u_box=[[1.0, 0.0]], budget_s=1)


def test_cli_u_box_takes_a_fixed_input():
    import argparse

    from lyagym.agents.cli_verify import _input_pair

    assert _input_pair("0,0") == (0.0, 0.0) and _input_pair("-1,2") == (-1.0, 2.0)
    for bad in ("1,0", "nan,nan", "inf,inf", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            _input_pair(bad)
