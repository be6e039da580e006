"""Sound bounds of our networks over a box: linear relaxations propagated forward.

Every quantity ``q`` computed from the input ``x`` in a box ``[lo, hi]`` is carried as two
linear functions of the box coordinate ``xi in [-1, 1]^n`` (``x = c + r * xi``), one below and
one above it on the *whole* box::

    lA xi + lb  <=  q(x)  <=  uA xi + ub                      (LinearBounds)

Affine layers map them exactly (the positive and negative parts of the weights pick the
lower or upper function). A nonlinearity ``s`` gets, on the concrete interval ``[l, u]`` of
its input, a slope ``k`` and two offsets with ``k t + bl <= s(t) <= k t + bu`` (the chord
slope; the offsets are the exact extremes of ``s(t) - k t`` for piecewise-linear ``s``, and
for smooth ``s`` its extremes on a grid widened by ``M2 h^2 / 8``, the largest gap between a
function with ``|s''| <= M2`` and its interpolant on a grid of step ``h``). A product of two
bounded quantities uses the McCormick planes; the decrease condition's dot product ``grad V .
f`` also gets a second-order bound (``LinearBounds.dot_bounds``: the products of the planes
summed as one exact quadratic in ``xi`` before it is bounded), and the better of the two is kept. This is the forward form of CROWN's linear
bound propagation (Zhang et al. 2018): with the 2-4 inputs of our state spaces, carrying the
``n`` coefficients forward costs about as much as the network itself and keeps the
correlations that plain interval arithmetic loses (``x - x`` is 0, not ``[-2r, 2r]``).

What is bounded: the real-valued function the stored weights define, computed in float64
whatever the model's dtype. Rounding: float64 adds at most ``k * 2^-53`` relative error to a
sum of ``k`` terms (``1.1e-13`` for ``k = 1000``); every affine map, product and relaxation
widens its offsets by ``MARGIN = 1e-10`` times the magnitude of the terms it summed (plus
``1e-10`` absolute in the relaxations), three orders of magnitude above that worst case, so
rounding can only loosen a bound, never make it wrong.

Layers covered: ``nn.Linear``, ReLU, softplus, SiLU, tanh (``nn.Sequential`` of them, the
models' ``fhat``), ``DynamicsNet`` (sin/cos of angle inputs, input/output scaling, the
control-affine output ``a(x) + B(x) u`` with ``u`` in a box), the ICNN (smoothed ReLU of
eq. 13, non-negative ``U_i``) with its gradient, and ``LyapunovFunction`` (eq. 12, value or
tangent shift, learned quadratic; no warp) with ``grad V``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LinearBounds", "MARGIN", "network_bounds", "icnn_bounds", "lyapunov_bounds", "field_bounds", "decrease_bounds",
           "interval_jacobian"]

#: Relative widening of every offset (see the module docstring for why this size).
MARGIN = 1e-10

#: Samples per relaxed interval for smooth activations (the grid error term is M2 w^2 / (8 (K-1)^2)).
_GRID = 9


def _widen(lb: torch.Tensor, ub: torch.Tensor, magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pad = MARGIN * magnitude
    return lb - pad, ub + pad


@dataclass
class LinearBounds:
    """``lA xi + lb <= q <= uA xi + ub`` for ``xi in [-1, 1]^n`` on a batch of boxes.

    ``lA, uA: (batch, k, n)``, ``lb, ub: (batch, k)``: ``k`` bounded quantities per box.
    """

    lA: torch.Tensor
    lb: torch.Tensor
    uA: torch.Tensor
    ub: torch.Tensor

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor) -> "LinearBounds":
        """The identity ``x`` on boxes ``lo, hi: (batch, n)`` (``x = c + r xi``)."""
        c, r = (lo + hi) / 2, (hi - lo) / 2
        A = torch.diag_embed(r)
        return cls(A, c, A.clone(), c.clone())

    @classmethod
    def constant(cls, value: torch.Tensor, batch: int, n: int) -> "LinearBounds":
        """``value: (k,)`` or ``(batch, k)``, the same on the whole box."""
        value = value.expand(batch, -1) if value.ndim == 1 else value
        A = value.new_zeros(batch, value.shape[-1], n)
        return cls(A, value.clone(), A.clone(), value.clone())

    @property
    def width(self) -> int:
        return self.lb.shape[-1]

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Concrete ``(lower, upper)``, each ``(batch, k)``."""
        return self.lb - self.lA.abs().sum(-1), self.ub + self.uA.abs().sum(-1)

    def __getitem__(self, idx) -> "LinearBounds":
        return LinearBounds(self.lA[:, idx], self.lb[:, idx], self.uA[:, idx], self.ub[:, idx])

    @staticmethod
    def cat(parts: Sequence["LinearBounds"]) -> "LinearBounds":
        return LinearBounds(*(torch.cat([getattr(p, a) for p in parts], dim=1) for a in ("lA", "lb", "uA", "ub")))

    def __add__(self, other: "LinearBounds") -> "LinearBounds":
        lb, ub = _widen(self.lb + other.lb, self.ub + other.ub, self.lb.abs() + other.lb.abs() + self.ub.abs() + other.ub.abs())
        return LinearBounds(self.lA + other.lA, lb, self.uA + other.uA, ub)

    def __neg__(self) -> "LinearBounds":
        return LinearBounds(-self.uA, -self.ub, -self.lA, -self.lb)

    def __sub__(self, other: "LinearBounds") -> "LinearBounds":
        return self + (-other)

    def shift(self, value: torch.Tensor) -> "LinearBounds":
        """``q + value`` for a constant ``value: (k,)`` or ``(batch, k)``."""
        lb, ub = _widen(self.lb + value, self.ub + value, self.lb.abs() + self.ub.abs() + value.abs())
        return LinearBounds(self.lA, lb, self.uA, ub)

    def scale(self, s: torch.Tensor) -> "LinearBounds":
        """``s * q`` elementwise for a constant ``s: (k,)`` or ``(batch, k)``."""
        sp, sn = s.clamp(min=0), s.clamp(max=0)
        lA = sp.unsqueeze(-1) * self.lA + sn.unsqueeze(-1) * self.uA
        uA = sp.unsqueeze(-1) * self.uA + sn.unsqueeze(-1) * self.lA
        lb, ub = sp * self.lb + sn * self.ub, sp * self.ub + sn * self.lb
        lb, ub = _widen(lb, ub, s.abs() * (self.lb.abs() + self.ub.abs()))
        return LinearBounds(lA, lb, uA, ub)

    def linear(self, W: torch.Tensor, b: torch.Tensor | None = None) -> "LinearBounds":
        """``W q + b`` with ``W: (k_out, k)``, ``b: (k_out,)``."""
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        lA = torch.einsum("ok,bkn->bon", Wp, self.lA) + torch.einsum("ok,bkn->bon", Wn, self.uA)
        uA = torch.einsum("ok,bkn->bon", Wp, self.uA) + torch.einsum("ok,bkn->bon", Wn, self.lA)
        lb, ub = self.lb @ Wp.T + self.ub @ Wn.T, self.ub @ Wp.T + self.lb @ Wn.T
        magnitude = (self.lb.abs() + self.ub.abs()) @ W.abs().T
        if b is not None:
            lb, ub = lb + b, ub + b
            magnitude = magnitude + b.abs()
        lb, ub = _widen(lb, ub, magnitude)
        return LinearBounds(lA, lb, uA, ub)

    def sum(self) -> "LinearBounds":
        """The sum over the ``k`` quantities, ``k = 1``."""
        return self.linear(self.lb.new_ones(1, self.width))

    def relax(self, relaxation: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> "LinearBounds":
        """``s(q)`` for an elementwise ``s`` given by ``relaxation(l, u) -> (k, bl, bu)`` with
        ``k t + bl <= s(t) <= k t + bu`` on ``[l, u]``."""
        lo, hi = self.bounds()
        k, bl, bu = relaxation(lo, hi)
        out = self.scale(k)
        return LinearBounds(out.lA, out.lb + bl, out.uA, out.ub + bu)

    def mul(self, other: "LinearBounds") -> "LinearBounds":
        """``self * other`` elementwise (McCormick: of its two planes on each side, the one
        whose concrete bound is better)."""
        xl, xu = self.bounds()
        yl, yu = other.bounds()
        lower1 = self.scale(yl) + other.scale(xl)
        lower2 = self.scale(yu) + other.scale(xu)
        upper1 = self.scale(yu) + other.scale(xl)
        upper2 = self.scale(yl) + other.scale(xu)
        lower1, lower2 = lower1.shift(-xl * yl), lower2.shift(-xu * yu)
        upper1, upper2 = upper1.shift(-xl * yu), upper2.shift(-xu * yl)
        pick_l = (lower1.bounds()[0] >= lower2.bounds()[0]).unsqueeze(-1)
        pick_u = (upper1.bounds()[1] <= upper2.bounds()[1]).unsqueeze(-1)
        return LinearBounds(torch.where(pick_l, lower1.lA, lower2.lA), torch.where(pick_l[..., 0], lower1.lb, lower2.lb),
                            torch.where(pick_u, upper1.uA, upper2.uA), torch.where(pick_u[..., 0], upper1.ub, upper2.ub))

    def dot_bounds(self, other: "LinearBounds", extra: "LinearBounds | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Concrete ``(lower, upper)``, each ``(batch,)``, of ``sum_i self_i other_i (+ extra)``
        (``extra`` of width 1), by a second-order bound that keeps the products' correlations.

        For the upper bound, ``g = self`` is its midpoint plane plus a deviation, ``g_i = gm_i(xi)
        + dg_i`` with ``|dg_i| <= Eg_i`` (the largest half-gap between its planes on the box),
        and ``f = other`` is replaced by one plane ``p_i``: its upper plane where ``g_i >= 0`` on
        the whole box, its lower plane where ``g_i <= 0`` (then ``g_i f_i <= g_i p_i`` exactly),
        its midpoint plane otherwise (with the deviation ``|g_i| Ef_i``). The sum of plane
        products is the exact quadratic ``xi^T M xi + c . xi + d`` with ``M = sum_i gA_i pA_i^T``:
        summing before bounding lets the quadratic terms cancel (near an equilibrium ``grad V . f``
        is ``-x^T Q x`` and ``M`` is negative definite), which per-product McCormick planes
        cannot see. The quadratic is bounded exactly along the diagonal (a parabola per
        coordinate on ``[-1, 1]``) and by ``|S_jk|`` off it (``S`` the symmetric part of ``M``).
        The lower bound is minus the upper bound of ``sum_i g_i (-f_i) - extra``.
        """
        upper = _dot_upper(self, other, extra)
        lower = -_dot_upper(self, -other, None if extra is None else -extra)
        return lower, upper

    def square(self) -> "LinearBounds":
        """``q^2`` elementwise: the chord above and the parallel tangent below (both exact)."""
        return self.relax(_square)


def _dot_upper(g: LinearBounds, f: LinearBounds, extra: LinearBounds | None) -> torch.Tensor:
    """The upper bound of ``LinearBounds.dot_bounds``, ``(batch,)``."""
    gA, g0 = (g.lA + g.uA) / 2, (g.lb + g.ub) / 2
    Eg = ((g.ub - g.lb) + (g.uA - g.lA).abs().sum(-1)) / 2
    gl, gu = g.bounds()
    pos, neg = (gl >= 0).unsqueeze(-1), (gu <= 0).unsqueeze(-1)
    mA, m0 = (f.lA + f.uA) / 2, (f.lb + f.ub) / 2
    pA = torch.where(pos, f.uA, torch.where(neg, f.lA, mA))
    p0 = torch.where(pos[..., 0], f.ub, torch.where(neg[..., 0], f.lb, m0))
    Ef = torch.where(pos[..., 0] | neg[..., 0], torch.zeros_like(m0), ((f.ub - f.lb) + (f.uA - f.lA).abs().sum(-1)) / 2)
    M = torch.einsum("bki,bkj->bij", gA, pA)
    S = (M + M.transpose(1, 2)) / 2
    c = torch.einsum("bk,bkn->bn", g0, pA) + torch.einsum("bk,bkn->bn", p0, gA)
    d = (g0 * p0).sum(-1)
    # g_i f_i - gm_i p_i <= |g_i| Ef_i + |dg_i| |p_i|
    rest = (torch.maximum(gl.abs(), gu.abs()) * Ef + Eg * (p0.abs() + pA.abs().sum(-1))).sum(-1)
    # every term summed above, in absolute value (cancellation cannot hide rounding from the margin)
    gn, pn = gA.abs().sum(-1), pA.abs().sum(-1)
    magnitude = (g0.abs() * (p0.abs() + pn) + p0.abs() * gn + gn * pn).sum(-1) + rest
    if extra is not None:
        c, d = c + extra.uA[:, 0], d + extra.ub[:, 0]
        magnitude = magnitude + extra.ub[:, 0].abs() + extra.uA[:, 0].abs().sum(-1)
    s = torch.diagonal(S, dim1=1, dim2=2)
    off = S.abs().sum((1, 2)) - s.abs().sum(-1)
    # each coordinate's parabola s t^2 + c t on [-1, 1]: its ends and its vertex (clamped)
    vertex = torch.where(s != 0, -c / torch.where(s != 0, 2 * s, torch.ones_like(s)), torch.zeros_like(s)).clamp(-1.0, 1.0)
    t = torch.stack([-torch.ones_like(s), torch.ones_like(s), vertex], -1)
    top = (s.unsqueeze(-1) * t * t + c.unsqueeze(-1) * t).max(-1).values.sum(-1)
    return d + top + off + rest + MARGIN * (1.0 + magnitude)


# ---- relaxations: (l, u) -> (slope, lower offset, upper offset) ---------------------------


def _chord(fn: Callable[[torch.Tensor], torch.Tensor], l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    w = u - l
    return torch.where(w > 0, (fn(u) - fn(l)) / torch.where(w > 0, w, torch.ones_like(w)), torch.zeros_like(w))


def _offsets(e: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower/upper offsets from the samples ``e: (..., K)`` of ``s(t) - k t``, widened by ``extra``."""
    lo, hi = e.min(-1).values, e.max(-1).values
    pad = MARGIN * (1.0 + e.abs().max(-1).values) + extra
    return lo - pad, hi + pad


def smooth_relaxation(fn: Callable[[torch.Tensor], torch.Tensor], curvature: float, slack: float = 0.0):
    """Relaxation of a ``C^1`` function with ``|fn''| <= curvature`` (grid + interpolation error),
    widened by ``slack`` (a known deviation of ``fn`` from that smooth function)."""

    def relaxation(l: torch.Tensor, u: torch.Tensor):
        k = _chord(fn, l, u)
        steps = torch.linspace(0.0, 1.0, _GRID, dtype=l.dtype, device=l.device)
        t = l.unsqueeze(-1) + (u - l).unsqueeze(-1) * steps
        e = fn(t) - k.unsqueeze(-1) * t
        h = (u - l) / (_GRID - 1)
        return (k, *_offsets(e, curvature * h * h / 8 + slack))

    return relaxation


def piecewise_linear_relaxation(fn: Callable[[torch.Tensor], torch.Tensor], kinks: Sequence[float]):
    """Exact offsets for a continuous piecewise-linear ``fn``: ``fn(t) - k t`` is extreme at the
    ends or at a kink inside ``[l, u]``."""

    def relaxation(l: torch.Tensor, u: torch.Tensor):
        k = _chord(fn, l, u)
        pts = [l, u] + [torch.clamp(torch.full_like(l, c), l, u) for c in kinks]
        t = torch.stack(pts, -1)
        return (k, *_offsets(fn(t) - k.unsqueeze(-1) * t, torch.zeros_like(l)))

    return relaxation


def _square(l: torch.Tensor, u: torch.Tensor):
    # t^2 - (l + u) t is -l u at both ends and -(l + u)^2 / 4 at the midpoint.
    k = l + u
    lo, hi = -(k * k) / 4, -l * u
    pad = MARGIN * (1.0 + k * k + (l * u).abs())
    return k, lo - pad, hi + pad


def _silu(t: torch.Tensor) -> torch.Tensor:
    return t * torch.sigmoid(t)


# F.softplus returns t itself above t = 20 (its threshold): a jump of log1p(exp(-20)) = 2.1e-9
# that the grid may miss, so softplus' offsets are widened by it.
_SOFTPLUS_THRESHOLD_GAP = 2.1e-9

# |s''| bounds: tanh'' peaks at 4 / (3 sqrt 3) = 0.7698; softplus'' = sigmoid (1 - sigmoid) <= 1/4;
# silu'' = sigmoid (2 + t (1 - 2 sigmoid)) (1 - sigmoid) peaks at t = 0 with 1/2; sin, cos: 1.
ACTIVATION_RELAXATIONS = {
    nn.ReLU: piecewise_linear_relaxation(torch.relu, [0.0]),
    nn.Tanh: smooth_relaxation(torch.tanh, 0.7699),
    nn.Softplus: smooth_relaxation(F.softplus, 0.25, slack=_SOFTPLUS_THRESHOLD_GAP),
    nn.SiLU: smooth_relaxation(_silu, 0.5),
}
_SIN = smooth_relaxation(torch.sin, 1.0)
_COS = smooth_relaxation(torch.cos, 1.0)


def _smooth_relu_relaxation(d: float):
    from .icnn import smooth_relu

    # eq. 13: sigma_d'' = 1/d on (0, d), 0 elsewhere.
    return smooth_relaxation(lambda t: smooth_relu(t, d), 1.0 / d)


def _smooth_relu_slope_relaxation(d: float):
    # sigma_d'(t) = clamp(t / d, 0, 1), kinks at 0 and d.
    return piecewise_linear_relaxation(lambda t: (t / d).clamp(0.0, 1.0), [0.0, d])


# ---- networks ------------------------------------------------------------------------------


def _f64(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device=like.device, dtype=like.dtype)


def network_bounds(net: nn.Module, x: LinearBounds) -> LinearBounds:
    """Bounds of ``net``'s output given bounds ``x`` of its input.

    ``net``: an ``nn.Linear``, an activation of ``ACTIVATION_RELAXATIONS`` (softplus with
    ``beta=1``), an ``nn.Sequential`` of those, or a ``DynamicsNet`` (whose input is ``[x, u]``).
    """
    from .dynamics_net import DynamicsNet

    like = x.lb
    if isinstance(net, nn.Sequential):
        for layer in net:
            x = network_bounds(layer, x)
        return x
    if isinstance(net, nn.Linear):
        return x.linear(_f64(net.weight, like), None if net.bias is None else _f64(net.bias, like))
    if isinstance(net, DynamicsNet):
        return _dynamics_net_bounds(net, x)
    if isinstance(net, nn.Softplus) and (net.beta != 1 or net.threshold < 20):
        raise TypeError(f"only softplus with beta=1 is supported, got {net}")
    for cls, relaxation in ACTIVATION_RELAXATIONS.items():
        if type(net) is cls:
            return x.relax(relaxation)
    raise TypeError(f"no bounds for layer {type(net).__name__}; supported: Linear, {', '.join(c.__name__ for c in ACTIVATION_RELAXATIONS)}, "
                    "Sequential, DynamicsNet")


def _dynamics_net_bounds(net, xu: LinearBounds) -> LinearBounds:
    n, k = net.state_dim, net.angle_dims
    like = xu.lb
    scaled = xu[slice(k, None)].scale(1.0 / _f64(net.input_scale, like))
    u = scaled[slice(n - k, None)]
    parts = [xu[slice(0, k)].relax(_SIN), xu[slice(0, k)].relax(_COS)] if k else []
    parts.append(scaled[slice(0, n - k)] if net.control_affine else scaled)
    out = network_bounds(net.net, LinearBounds.cat(parts))
    if net.control_affine:
        m = net.action_dim
        drift, gain = out[slice(0, n)], out[slice(n, None)]
        # (gain @ u)_i = sum_j gain_{i, j} u_j, gain flattened row-major (n, m)
        u_rep = LinearBounds.cat([u] * n)
        prod = gain.mul(u_rep)
        summed = prod.linear(torch.kron(torch.eye(n, dtype=like.dtype, device=like.device), like.new_ones(1, m)))
        out = drift + summed
    return out.scale(_f64(net.output_scale, like))


@dataclass
class ICNNBounds:
    """Bounds of ``g`` (``(batch, 1)``) and, if asked, ``dg/dx`` (``(batch, in_dim)``)."""

    value: LinearBounds
    grad: LinearBounds | None


def icnn_bounds(icnn: nn.Module, x: LinearBounds, *, grad: bool = True) -> ICNNBounds:
    """Bounds of the ICNN (eq. 11) and of its gradient over the boxes of ``x``.

    ``z_1 = sigma_d(W_0 x + b_0)``, ``z_{i+1} = sigma_d(U_i z_i + W_i x + b_i)``, ``g = U_k z_k +
    W_k x + b_k``; ``dg/dx = sum_i W_i^T delta_i + W_k^T`` with ``delta_{k-1} = U_{k-1}^T *
    sigma_d'(a_{k-1})`` and ``delta_i = (U_i^T delta_{i+1}) * sigma_d'(a_i)``.
    """
    like = x.lb
    W = [_f64(layer.weight, like) for layer in icnn.W]
    b = [_f64(layer.bias, like) for layer in icnn.W]
    U = [_f64(u, like) for u in icnn.positive_weights()]
    d = icnn.d
    act, slope = _smooth_relu_relaxation(d), _smooth_relu_slope_relaxation(d)
    k = len(U)
    pre: list[LinearBounds] = []
    z = None
    for i in range(k):
        a = x.linear(W[i], b[i])
        if i > 0:
            a = a + z.linear(U[i - 1])
        pre.append(a)
        z = a.relax(act)
    g = x.linear(W[k], b[k]) + z.linear(U[k - 1])
    if not grad:
        return ICNNBounds(g, None)
    delta = pre[k - 1].relax(slope).scale(U[k - 1][0])
    total = delta.linear(W[k - 1].T)
    for i in range(k - 2, -1, -1):
        delta = delta.linear(U[i].T).mul(pre[i].relax(slope))
        total = total + delta.linear(W[i].T)
    return ICNNBounds(g, total.shift(W[k][0]))


@dataclass
class LyapunovBounds:
    """Bounds of ``V`` (``(batch, 1)``) and ``grad V`` (``(batch, n)``)."""

    value: LinearBounds
    grad: LinearBounds | None


def lyapunov_bounds(lyapunov: nn.Module, x: LinearBounds, *, grad: bool = True) -> LyapunovBounds:
    """Bounds of ``V`` (eq. 12 with ``LyapunovFunction``'s options) and ``grad V`` over ``x``'s boxes.

    ``V = sigma_d(s) + eps ||dx||^2 + ||L dx||^2`` with ``s = g(x) - g(x_eq)`` (minus
    ``grad g(x_eq) . dx`` for the tangent shift), ``grad V = sigma_d'(s) (grad g(x) - [grad
    g(x_eq)]) + 2 eps dx + 2 L^T L dx``. ``g(x_eq)`` is evaluated once in float64 and its
    rounding (``~1e-16``) absorbed by the widening. No warp (``TypeError`` otherwise).
    """
    if getattr(lyapunov, "warp", None) is not None:
        raise TypeError("bounds of a warped V (coupling layers) are not implemented; use warp=None")
    like = x.lb
    n = x.width
    x_eq = _f64(lyapunov.x_eq, like)
    with torch.no_grad():
        icnn64 = _icnn_float64(lyapunov.g, like)
        g_eq, dg_eq = icnn64.forward_and_grad(x_eq.unsqueeze(0))
    dx = x.shift(-x_eq)
    gb = icnn_bounds(lyapunov.g, x, grad=grad)
    s = gb.value.shift(-g_eq)
    if lyapunov.shift == "tangent":
        s = s - dx.linear(dg_eq)
    d = lyapunov.d
    V = s.relax(_smooth_relu_relaxation(d)) + dx.square().sum().scale(x.lb.new_full((1,), lyapunov.eps))
    L = None if lyapunov.L is None else _f64(lyapunov.L, like)
    Ldx = None
    if L is not None:
        Ldx = dx.linear(L)
        V = V + Ldx.square().sum()
    if not grad:
        return LyapunovBounds(V, None)
    grad_s = gb.grad if lyapunov.shift == "value" else gb.grad.shift(-dg_eq[0])
    m = s.relax(_smooth_relu_slope_relaxation(d))
    gV = grad_s.mul(LinearBounds.cat([m] * n)) + dx.scale(x.lb.new_full((n,), 2.0 * lyapunov.eps))
    if L is not None:
        gV = gV + Ldx.linear(2.0 * L.T)
    return LyapunovBounds(V, gV)


def _icnn_float64(icnn: nn.Module, like: torch.Tensor) -> nn.Module:
    import copy

    return copy.deepcopy(icnn).to(device=like.device, dtype=like.dtype)


def field_bounds(model: nn.Module, x: LinearBounds, u: LinearBounds | None = None) -> LinearBounds:
    """Bounds of a model's derivative ``f(x, u)`` (``(batch, n)``): ``SimpleDynamics`` (its
    ``fhat``), or any network ``network_bounds`` covers, fed ``[x, u]``."""
    if hasattr(model, "lyapunov"):
        raise TypeError(f"{type(model).__name__}: bounds of the projected field (eq. 10) are not implemented; "
                        "verify its nominal field with the Lyapunov function instead")
    net = model.fhat if hasattr(model, "fhat") else model
    xu = x if u is None else LinearBounds.cat([x, u])
    return network_bounds(net, xu)


def decrease_bounds(model: nn.Module, lyapunov: nn.Module, lo: torch.Tensor, hi: torch.Tensor, alpha: float, *,
                    u_lo: torch.Tensor | None = None, u_hi: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Certified bounds over boxes ``lo, hi: (batch, n)`` (float64 recommended) of

    - ``V``, ``f`` (``(batch, n)``) and ``h = grad V . f + alpha V``, the Lyapunov decrease
      condition (``h <= 0`` means ``dV/dt <= -alpha V``);
    - with ``u_lo, u_hi: (batch, m)``, ``f(x, u)`` and ``h`` for every input ``u`` in that box too.

    Returns ``{"V": (lower, upper), "f": (lower, upper), "h": (lower, upper)}``, each a pair of
    ``(batch,)`` (``(batch, n)`` for ``f``) tensors.
    """
    n = lo.shape[1]
    u = None
    if u_lo is not None and u_lo.shape[-1] > 0:
        # u gets box coordinates of its own: the inputs are [x, u] with xi in [-1, 1]^(n + m).
        xu = LinearBounds.from_box(torch.cat([lo, u_lo], -1), torch.cat([hi, u_hi], -1))
        x, u = xu[slice(0, n)], xu[slice(n, None)]
    else:
        x = LinearBounds.from_box(lo, hi)
    Vb = lyapunov_bounds(lyapunov, x)
    f = field_bounds(model, x, u)
    aV = Vb.value.scale(lo.new_full((1,), float(alpha)))
    # McCormick per product and the second-order bound of the whole sum: both sound, keep the better
    h_lo, h_hi = (t[:, 0] for t in (Vb.grad.mul(f).sum() + aV).bounds())
    q_lo, q_hi = Vb.grad.dot_bounds(f, aV)
    h = (torch.maximum(h_lo, q_lo), torch.minimum(h_hi, q_hi))
    return {"V": tuple(t[:, 0] for t in Vb.value.bounds()), "f": f.bounds(), "h": h}


def interval_jacobian(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise bounds ``(J_lo, J_hi)``, ``(batch, out, in)``, of the Jacobian of an
    ``nn.Sequential`` of Linear and ReLU/tanh/softplus/SiLU layers over boxes ``lo, hi: (batch, in)``.

    Forward-mode interval arithmetic: ``J <- W J`` through a linear layer, ``J <- s'(a) J``
    through an activation, with ``s'`` bounded on the pre-activation interval.
    """
    from .dynamics_net import DynamicsNet

    if isinstance(net, DynamicsNet) and net.angle_dims == 0 and not net.control_affine and net.action_dim == 0:
        # fhat(x) = out_scale * net(x / in_scale): scale the columns and rows of the inner Jacobian
        inv = 1.0 / _f64(net.input_scale, lo)
        J_lo, J_hi = interval_jacobian(net.net, lo * inv, hi * inv)
        out = _f64(net.output_scale, lo).unsqueeze(-1) * inv  # both positive
        return J_lo * out, J_hi * out
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"interval_jacobian needs an nn.Sequential MLP (or a DynamicsNet without angles, inputs "
                        f"or control-affine output), got {type(net).__name__}")
    x = LinearBounds.from_box(lo, hi)
    n = lo.shape[1]
    J_lo = torch.eye(n, dtype=lo.dtype, device=lo.device).expand(lo.shape[0], n, n)
    J_hi = J_lo
    for layer in net:
        if isinstance(layer, nn.Linear):
            W = _f64(layer.weight, lo)
            Wp, Wn = W.clamp(min=0), W.clamp(max=0)
            J_lo, J_hi = Wp @ J_lo + Wn @ J_hi, Wp @ J_hi + Wn @ J_lo
            x = network_bounds(layer, x)
            continue
        a_lo, a_hi = x.bounds()
        s_lo, s_hi = _derivative_range(layer, a_lo, a_hi)
        cands = torch.stack([s_lo.unsqueeze(-1) * J_lo, s_lo.unsqueeze(-1) * J_hi, s_hi.unsqueeze(-1) * J_lo, s_hi.unsqueeze(-1) * J_hi])
        J_lo, J_hi = cands.min(0).values, cands.max(0).values
        x = network_bounds(layer, x)
    pad = MARGIN * (1.0 + torch.maximum(J_lo.abs(), J_hi.abs()))
    return J_lo - pad, J_hi + pad


def _derivative_range(layer: nn.Module, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of ``s'`` on ``[l, u]`` for an activation layer."""
    if isinstance(layer, nn.ReLU):
        return (l > 0).to(l.dtype), (u > 0).to(l.dtype)
    if isinstance(layer, nn.Tanh):
        # tanh' = 1 - tanh^2 is largest at the point of [l, u] closest to 0
        near = torch.clamp(torch.zeros_like(l), l, u)
        far = torch.maximum(l.abs(), u.abs())
        return 1 - torch.tanh(far) ** 2, 1 - torch.tanh(near) ** 2
    if isinstance(layer, nn.Softplus):
        return torch.sigmoid(l), torch.sigmoid(u)
    if isinstance(layer, nn.SiLU):
        # silu' ranges over [-0.0998, 1.0998]; on an interval, sample it and widen by |silu''| <= 1/2
        t = l.unsqueeze(-1) + (u - l).unsqueeze(-1) * torch.linspace(0, 1, _GRID, dtype=l.dtype, device=l.device)
        s = torch.sigmoid(t)
        ds = s * (1 + t * (1 - s))
        pad = 0.5 * (u - l) / (_GRID - 1) / 2
        return ds.min(-1).values - pad, ds.max(-1).values + pad
    raise TypeError(f"no derivative bounds for {type(layer).__name__}")
