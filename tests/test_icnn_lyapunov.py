"""ICNN (eq. 11), smoothed ReLU (eq. 13) and the Lyapunov function (eq. 12/14) as properties."""

import pytest
import torch

from lyagym.learned_models import ICNN, LyapunovFunction, smooth_relu
from lyagym.learned_models.icnn import smooth_relu_grad

SIZES = [(1, (8,)), (2, (60, 60)), (4, (16, 16, 16)), (8, (32, 32))]


def test_smooth_relu_is_eq13_and_c1():
    d = 0.3
    t = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    expected = torch.where(t <= 0, torch.zeros_like(t), torch.where(t < d, t * t / (2 * d), t - d / 2))
    torch.testing.assert_close(smooth_relu(t, d), expected, rtol=0, atol=1e-15)
    tg = t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(smooth_relu(tg, d).sum(), tg)
    torch.testing.assert_close(g, smooth_relu_grad(t, d))
    # C^1: the derivative is continuous at both kinks.
    for kink in (0.0, d):
        k = torch.tensor([kink - 1e-9, kink + 1e-9], dtype=torch.float64)
        assert abs(float(smooth_relu_grad(k, d).diff())) < 1e-7


@pytest.mark.parametrize("n,hidden", SIZES)
def test_icnn_is_convex_with_nonnegative_z_weights(n, hidden):
    g = ICNN(n, hidden, d=0.1).double()
    assert all((U >= 0).all() for U in g.positive_weights())
    a, b = torch.randn(2000, n, dtype=torch.float64) * 3, torch.randn(2000, n, dtype=torch.float64) * 3
    lam = torch.rand(2000, 1, dtype=torch.float64)
    lhs = g(lam * a + (1 - lam) * b)
    rhs = lam.squeeze(-1) * g(a) + (1 - lam.squeeze(-1)) * g(b)
    assert (lhs <= rhs + 1e-12).all()


@pytest.mark.parametrize("n,hidden", SIZES)
def test_icnn_analytic_gradient_matches_autograd_including_second_order(n, hidden):
    g = ICNN(n, hidden).double()
    with torch.no_grad():  # move the biases so that the quadratic region of sigma is exercised
        for lin in g.W:
            lin.bias.mul_(5.0)
    x = torch.randn(64, n, dtype=torch.float64)
    v1, g1 = g.forward_and_grad(x)
    v2, g2 = g.forward_and_grad(x, method="autograd", create_graph=True)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)
    # Training back-propagates through grad g: both paths give the same parameter gradients.
    w = torch.randn(64, n, dtype=torch.float64)
    p1 = torch.autograd.grad((g1 * w).sum(), list(g.parameters()), allow_unused=True)
    p2 = torch.autograd.grad((g2 * w).sum(), list(g.parameters()), allow_unused=True)
    for a, b in zip(p1, p2):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n,hidden", [(3, (5, 4)), (2, (6,)), (2, (4, 3, 5))])
def test_icnn_hand_written_backward_passes_gradcheck(n, hidden):
    """The custom backward of (g, dg/dx) against finite differences, float64, all inputs."""
    from lyagym.learned_models.icnn import _ICNNValueAndGrad, _value

    torch.manual_seed(0)
    g = ICNN(n, hidden, d=0.5).double()
    with torch.no_grad():
        g.U_raw_flat.add_(1.0)  # stronger z-path, so that every layer visits every branch of sigma
    x = torch.randn(7, n, dtype=torch.float64)
    with torch.no_grad():
        for m in _value(x, g._prepared().plan, g.d, keep=True)[2]:  # m = clamp(pre-activation, 0, d)
            assert (m == 0).any() and ((m > 0) & (m < g.d)).any() and (m == g.d).any()
    inputs = (x.requires_grad_(True), g.theta.detach().clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda *a: _ICNNValueAndGrad.apply(g.widths, g.d, *a), inputs, eps=1e-6, atol=1e-6)


def test_icnn_reuse_weights_gives_the_same_numbers_and_gradients():
    torch.manual_seed(0)
    g = ICNN(4, (8, 8)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    with torch.no_grad():
        ref = g.forward_and_grad(x), g(x)
        with g.reuse_weights():
            for _ in range(2):
                got = g.forward_and_grad(x), g(x)
                torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # In grad mode the shared weights carry the graph: two uses accumulate both gradients.
    with g.reuse_weights():
        loss = g.forward_and_grad(x)[1].square().sum() + g(x).sum()
    p_shared = torch.autograd.grad(loss, list(g.parameters()))
    loss = g.forward_and_grad(x)[1].square().sum() + g(x).sum()
    p_fresh = torch.autograd.grad(loss, list(g.parameters()))
    for a, b in zip(p_shared, p_fresh):
        torch.testing.assert_close(a, b)
    assert not g._cache.active and g._cache.value is None  # released on exit
    with g.reuse_weights():
        g(x)
        import copy
        import pickle

        for clone in (copy.deepcopy(g), pickle.loads(pickle.dumps(g))):  # copies start without a cache
            assert not clone._cache.active and clone._cache.value is None


def test_icnn_state_dict_keeps_the_per_layer_layout_and_loads_it():
    """Input weights are one stacked parameter, but state_dict (checkpoints, weights hashes)
    keeps the per-layer keys W.{i}.weight / W.{i}.bias, and files in that layout load."""
    torch.manual_seed(0)
    g = ICNN(3, (5, 4))
    sd = g.state_dict()
    assert list(sd) == ["W.0.weight", "W.0.bias", "W.1.weight", "W.1.bias", "W.2.weight", "W.2.bias", "U_raw.0", "U_raw.1"]
    assert [tuple(sd[f"W.{i}.weight"].shape) for i in range(3)] == [(5, 3), (4, 3), (1, 3)]
    assert len(list(g.parameters())) == 1  # one vector: input weights, biases, U_raw
    fresh = ICNN(3, (5, 4))
    fresh.load_state_dict({k: v.clone() for k, v in sd.items()})
    x = torch.randn(10, 3)
    torch.testing.assert_close(fresh(x), g(x), rtol=0, atol=0)
    # Per-layer views write through to the stacked parameters.
    with torch.no_grad():
        fresh.W[1].bias.fill_(0.25)
    assert (fresh.input_bias[5:9] == 0.25).all()
    with torch.no_grad():
        fresh.U_raw[1].fill_(-1.0)
    assert (fresh.U_raw_flat[20:] == -1.0).all() and fresh.state_dict()["U_raw.1"].eq(-1.0).all()
    # A checkpoint of another architecture names the offending layer.
    bad = dict(sd)
    bad["W.1.weight"] = torch.zeros(6, 3)
    with pytest.raises(RuntimeError, match=r"size mismatch for W\.1\.weight"):
        fresh.load_state_dict(bad)
    bad = dict(sd)
    bad["U_raw.0"] = torch.zeros(5, 4)
    with pytest.raises(RuntimeError, match=r"size mismatch for U_raw\.0"):
        fresh.load_state_dict(bad)


def test_shipped_checkpoint_with_an_icnn_loads_bit_for_bit():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "envs" / "assets" / "video_texture_default.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    from lyagym.learned_models.video_vae import VideoVAE

    model = VideoVAE.load(path)
    saved = {k: v for k, v in payload["state_dict"].items() if ".g." in k}
    assert saved and any(".g.W.0.weight" in k for k in saved)
    now = model.state_dict()
    for k, v in saved.items():
        assert torch.equal(now[k], v), k


def test_icnn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="in_dim"):
        ICNN(0)
    with pytest.raises(ValueError, match="d must be"):
        ICNN(2, (4,), d=0.0)
    with pytest.raises(ValueError, match="method"):
        ICNN(2).forward_and_grad(torch.zeros(1, 2), method="finite-differences")


@pytest.mark.parametrize("shift", ["value", "tangent"])
@pytest.mark.parametrize("warp", [None, "coupling"])
@pytest.mark.parametrize("n,hidden", SIZES)
def test_lyapunov_positive_definite_with_arbitrary_equilibrium(n, hidden, warp, shift):
    x_eq = torch.randn(n, dtype=torch.float64)
    V = LyapunovFunction(n, hidden, eps=0.01, warp=warp, x_eq=x_eq, shift=shift).double()
    x_eq = V.x_eq  # stored in the default dtype, then converted with the module
    torch.testing.assert_close(x_eq, x_eq.float().double())
    with torch.no_grad():
        assert V(x_eq.unsqueeze(0)).shape == (1,)
        assert float(V(x_eq.unsqueeze(0))) == 0.0
        assert float(V.grad(x_eq.unsqueeze(0)).abs().max()) == 0.0
    for radius in (1e-6, 1e-2, 1.0, 1e3):
        dx = torch.randn(500, n, dtype=torch.float64)
        dx = dx / dx.norm(dim=-1, keepdim=True) * radius
        v = V(x_eq + dx)
        assert v.shape == (500,)
        assert (v > 0).all()
        assert (v >= 0.01 * radius**2 * (1 - 1e-9)).all()  # V >= eps ||x - x_eq||^2


def test_lyapunov_offset_is_recomputed_after_weights_change():
    V = LyapunovFunction(3).double()
    x0 = torch.zeros(1, 3, dtype=torch.float64)
    with torch.no_grad():
        for p in V.parameters():
            p.add_(torch.randn_like(p))
    # A g(x_eq) frozen at construction would now give V(x_eq) != 0 (and V < 0 nearby).
    assert float(V(x0).detach()) == 0.0
    assert (V(torch.randn(100, 3, dtype=torch.float64) * 1e-3) > 0).all()


@pytest.mark.parametrize("shift,quadratic", [("value", False), ("tangent", False), ("tangent", True)])
def test_lyapunov_without_warp_is_convex_and_bounded_by_c2(shift, quadratic):
    V = LyapunovFunction(4, shift=shift, quadratic=quadratic).double()
    if quadratic:
        with torch.no_grad():
            V.L.copy_(torch.randn(4, 4, dtype=torch.float64))
    a, b = torch.randn(1000, 4, dtype=torch.float64) * 2, torch.randn(1000, 4, dtype=torch.float64) * 2
    assert (V(0.5 * (a + b)) <= 0.5 * (V(a) + V(b)) + 1e-12).all()
    c2 = V.upper_constant()
    x = torch.randn(5000, 4, dtype=torch.float64) * torch.logspace(-4, 4, 5000, dtype=torch.float64).unsqueeze(-1)
    assert (V(x) <= c2 * (x * x).sum(-1) * (1 + 1e-9)).all()


@pytest.mark.parametrize("shift,quadratic", [("value", False), ("tangent", False), ("tangent", True)])
@pytest.mark.parametrize("warp", [None, "coupling"])
def test_lyapunov_batched_gradient_matches_autograd(warp, shift, quadratic):
    V = LyapunovFunction(5, (20, 20), warp=warp, shift=shift, quadratic=quadratic).double()
    if quadratic:
        with torch.no_grad():
            V.L.copy_(torch.randn(5, 5, dtype=torch.float64))
    if warp:
        with torch.no_grad():
            for p in V.warp.parameters():
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(200, 5, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(V(xg).sum(), xg)
    torch.testing.assert_close(V.grad(x), ref)
    v, g = V.forward_and_grad(x)
    torch.testing.assert_close(v, V(x))


@pytest.mark.parametrize("tangent", [False, True])
def test_lyapunov_outer_backward_passes_gradcheck(tangent):
    """The one-node V, grad V of eq. 12 from (g, dg) against finite differences, float64."""
    from lyagym.learned_models.lyapunov import _outer_value_and_grad

    torch.manual_seed(0)
    b, n, d = 9, 3, 0.5
    gx = (torch.randn(b + 1, dtype=torch.float64) * 0.6).requires_grad_(True)  # all three branches of sigma
    dg = torch.randn(b + 1, n, dtype=torch.float64, requires_grad=True)
    dx = torch.randn(b, n, dtype=torch.float64, requires_grad=True)

    def fn(gx, dg, dx):
        return _outer_value_and_grad(gx, dg, dx, (dx * dx).sum(-1).detach(), 0.05, d, tangent)

    assert torch.autograd.gradcheck(fn, (gx, dg, dx))
    # A row at x_eq is pinned: V = 0, grad V = 0 and no gradient reaches g from it.
    at_eq = dx.detach().clone()
    at_eq[4] = 0.0
    V, grad = fn(gx, dg, at_eq)
    assert V[4] == 0 and grad[4].abs().max() == 0
    (g_gx,) = torch.autograd.grad(V[4] + grad[4].sum(), gx)
    assert g_gx.abs().max() == 0


def test_tangent_shift_leaves_no_flat_region_around_the_equilibrium():
    # Move g's minimum away from x_eq = 0: with the paper's shift, sigma(g(x) - g(0)) is
    # then 0 on a whole region around 0 (V = eps ||x||^2 there, no gradient reaches g);
    # the tangent (Bregman) shift is positive everywhere except at x_eq.
    torch.manual_seed(0)
    value = LyapunovFunction(2, (16, 16), shift="value").double()
    with torch.no_grad():
        value.g.W[-1].weight.copy_(torch.tensor([[3.0, 0.0]]))  # g grows along +x_1
    tangent = LyapunovFunction(2, (16, 16), shift="tangent").double()
    tangent.load_state_dict(value.state_dict())
    x = torch.randn(2000, 2, dtype=torch.float64) * 0.5
    quad = 0.01 * (x * x).sum(-1)
    with torch.no_grad():
        assert ((value(x) - quad) == 0).double().mean() > 0.2
        assert ((tangent(x) - quad) > 0).all()


def test_coupling_warp_is_invertible():
    V = LyapunovFunction(5, warp="coupling").double()
    with torch.no_grad():
        for p in V.warp.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(300, 5, dtype=torch.float64) * 3
    y = V.warp(x)
    assert not torch.allclose(y, x)
    torch.testing.assert_close(V.warp.inverse(y), x)


def test_lyapunov_rejects_bad_arguments():
    with pytest.raises(ValueError, match="eps"):
        LyapunovFunction(2, eps=0.0)
    with pytest.raises(ValueError, match="warp"):
        LyapunovFunction(2, warp="mlp")
    with pytest.raises(ValueError, match="x_eq"):
        LyapunovFunction(2, x_eq=[0.0, float("nan")])
    with pytest.raises(ValueError, match="shift"):
        LyapunovFunction(2, shift="mean")


def test_reset_z_path_offset_sets_the_scale_of_U():
    # The default offset log(fan_in) keeps softplus(U_raw) small (about 1/fan_in per entry);
    # offset 0 is the paper's softplus of PyTorch's default init (about 0.7 per entry).
    import torch.nn.functional as F
    from lyagym.learned_models.icnn import ICNN

    torch.manual_seed(0)
    g = ICNN(4, hidden=(60, 60))
    default = F.softplus(g.U_raw_flat).mean().item()
    g.reset_z_path(0.0)
    paper = F.softplus(g.U_raw_flat).mean().item()
    assert default < 0.1 < 0.5 < paper
    assert (F.softplus(g.U_raw_flat) > 0).all()
    with pytest.raises(ValueError, match="offset"):
        g.reset_z_path(float("nan"))
