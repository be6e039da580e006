"""Formal verification of a *stabilisability* certificate (a control Lyapunov function).

The claim of ``control_lyapunov.ControlLyapunov`` (module docstring there): for every ``x``
with ``inner * rho <= V(x) <= rho``, the fallback input ``u_fb(x) = clip(u_eq - K e, lo, hi)``
gives the discrete decrease ``d(x) = V(step(x, u_fb(x))) - exp(-alpha h) V(x) <= 0`` (the
model's own integrator and step; the continuous claim: ``grad V . f(x, u_fb(x)) + alpha V <= 0``),
for every member's mean map of an ensemble or for the members' mean map.

``verify_stabilisability`` proves ``d < 0`` by branch and bound (``branch_and_bound.py``) over
the cube ``|w_i| <= sqrt(rho)`` in the coordinates ``x = x_eq + L^-T w`` (``P = L L^T``), where
``e^T P e = |w|^2``: the cube holds the ellipsoid ``{e^T P e <= rho}``, which holds ``{V <= rho}``
because ``V >= e^T P e``. (In state coordinates the LQR ellipsoid of ``InvertedPendulum-v5``'s
model is thin and oblique: boxes of states cover it badly and the cross terms of ``e^T P e``
spoil its bounds; in ``w`` it is a ball and that part of ``V`` is bounded exactly. With a 30 s
budget the proven share of the claimed set went from 0.09% to 23%.) A box whose certified
lower bound of ``V`` exceeds ``rho``, or whose upper bound is below ``inner * rho``, is outside
the claim and is discharged; every other box must have a certified upper bound below 0 of
``d``, or of ``d + lam (rho - V)`` or ``d + mu (V - inner * rho)`` for one of a few multipliers
``lam, mu >= 0`` (the S-procedure: each is ``>= d`` on the part of the box in the annulus, the
only part claimed; without them a box on either boundary of the annulus, where ``d`` may turn
positive just outside, is proven only once it is split down to lie on one side). No local
certificate is needed at ``x_eq``: the claim itself leaves ``{V < inner * rho}`` out.

The bound of one box (``stabilisability_bounds``), all as linear functions of the box
coordinate (``bounds.LinearBounds``), so that every quantity keeps its dependence on ``x``:

- ``e = x - x_eq`` (exact); the input ``z = u_eq - K e`` (exact) and ``u = clip(z, lo, hi)``
  relaxed on ``z``'s interval by its chord and exact offsets (``clip`` is piecewise linear, its
  extremes of ``clip(t) - k t`` are at the ends and the kinks);
- the step ``y`` through the model's field with that ``u`` (``step_bounds.step_bounds``, ``u``
  held over the step), averaged over the members for the mean map;
- ``V = |N e|^2 + D . D`` with ``N^T N = P`` and ``D = h(e) - h(0)`` (``bounds.network_bounds``
  of the tanh correction), so ``d = |N ey|^2 + Dy . Dy - c |N e|^2 - c Dx . Dx``,
  ``c = exp(-alpha h)``, is *one* sum of products, bounded by ``LinearBounds.dot_bounds``: the products of the planes
  are summed as one quadratic in the box coordinate before it is bounded, so the quadratic
  parts of ``V(y)`` and ``c V(x)`` cancel as they do in the exact value (near ``x_eq``, ``d`` is
  ``e^T (A^T P A - c P) e``, a small difference of large terms; bounding the two terms apart
  would need boxes ``sqrt(alpha h)`` times smaller). The continuous condition is the sum
  ``2 e . (P f) + 2 D . (J_h f) + alpha (|N e|^2 + D . D)`` with ``J_h f`` the correction's
  directional derivative, propagated forward through the layers (``tanh' = 1 - tanh^2``
  relaxed like every smooth activation, the products by McCormick planes).

Soundness margin: the bounds of ``bounds.py`` widen every offset by ``MARGIN = 1e-10`` times
the magnitude of the terms summed (float64 rounding of a ``k``-term sum is below
``k 2^-53``); outside them, ``c``, ``h(0)`` and the multipliers' constants are computed once in
float64 (relative error ~1e-16, below the same widening, which is also applied to the
constants' additions), and ``N`` (a Cholesky factor) satisfies ``N^T N = P`` only up to
rounding: that error is bounded elementwise (``_factor``: the computed residual plus the
product's error bound, doubled) and ``|e|^T G |e|`` is added to every bound. ``K``, ``P`` and
the weights are used exactly as stored (a float32 buffer converts to float64 exactly).
``bounds.py``'s widening has an absolute part of about ``1e-10``, while at the inner level of
``InvertedPendulum-v5``'s CLF (``7.6e-8``) ``d`` is about ``-alpha h V ~ -1e-10``: the bounds
are taken of ``4^k V`` (``4^k`` about ``1 / inner level``; ``P`` times ``4^k`` and the
correction's last layer times ``2^k``, exact in floating point), which is the same claim.

Angles: ``V`` wraps ``e`` in its angle entries; the verified box must lie within ``pi`` of
``x_eq`` there (so the wrap is the identity), and a box whose step may leave that range
gets no proof (its bound is ``+inf``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .bounds import ACTIVATION_RELAXATIONS, LinearBounds, field_bounds, network_bounds, piecewise_linear_relaxation, smooth_relaxation
from .branch_and_bound import branch_and_bound
from .certificate import model_hash
from .control_lyapunov import ControlLyapunov, MeanMap, _members
from .step_bounds import STEP_METHODS, step_bounds
from .verification import VerificationResult, parse_box

__all__ = ["fallback_bounds", "stabilisability_bounds", "verify_stabilisability", "stabilisability_formal_certificate", "region_box",
           "region_coordinates", "region_fraction"]

#: Multipliers of ``rho - V`` tried on every box, in units of the claimed decrease per unit of ``V``
#: (``1 - exp(-alpha h)``, or ``alpha``): up to two decades above it.
MULTIPLIERS = (1.0, 8.0, 64.0)
#: Multipliers of ``V - inner * rho``, same units: near the decrease the claim asks for (one well
#: above the actual rate costs more on the box's part above the inner level than it wins below).
INNER_MULTIPLIERS = (0.5, 2.0)

# tanh' = 1 - tanh^2 has |tanh'''| <= 2 (at 0): its relaxation's grid error term.
_TANH_SLOPE = smooth_relaxation(lambda t: 1.0 - torch.tanh(t) ** 2, 2.0)


def _members64(model: nn.Module, ensemble: str) -> list[nn.Module]:
    """The models the claim is about, as float64 copies: each one's field has bounds."""
    members = [copy.deepcopy(m).to(dtype=torch.float64) for m in _members(model, ensemble)]
    for m in members:
        for leaf in _leaves(m):
            if not hasattr(leaf, "fhat") and not isinstance(leaf, nn.Sequential):
                raise TypeError(f"no bounds for the field of {type(leaf).__name__}: formal verification of a stabilisability "
                                "claim covers models whose field is a network bounds.py covers (SimpleDynamics with a "
                                "DynamicsNet, ensembles of them)")
    return members


def _leaves(member: nn.Module) -> list[nn.Module]:
    return list(member.models) if isinstance(member, MeanMap) else [member]


def fallback_bounds(V: ControlLyapunov, e: LinearBounds) -> LinearBounds:
    """The fallback input ``u_fb = clip(u_eq - K e, lo, hi)`` (``(batch, m)``) as linear functions
    of the box coordinate, from bounds of ``e = x - x_eq`` (``(batch, n)``): the affine map is
    exact, the clip relaxed per input entry (the few inputs one at a time)."""
    like = e.lb
    z = e.linear(-V.gain.to(like), V.u_eq.to(like))
    parts = []
    for j in range(z.width):
        a, b = float(V.u_low[j]), float(V.u_high[j])
        parts.append(z[slice(j, j + 1)].relax(piecewise_linear_relaxation(lambda t, a=a, b=b: t.clamp(a, b), [a, b])))
    return LinearBounds.cat(parts)


def _correction(V: ControlLyapunov, e: LinearBounds) -> LinearBounds | None:
    """``D = h(e) - h(0)``: ``(batch, n)`` bounds, or ``None`` without a correction."""
    if V.correction is None:
        return None
    with torch.no_grad():
        h0 = V.correction(torch.zeros(1, V.state_dim, dtype=e.lb.dtype, device=e.lb.device))[0]
    return network_bounds(V.correction, e).shift(-h0)


def _directional(net: nn.Sequential, e: LinearBounds, v: LinearBounds) -> LinearBounds:
    """``J_net(e) v``: the Jacobian-vector product through Linear and Tanh layers, forward."""
    for layer in net:
        if isinstance(layer, nn.Linear):
            e = network_bounds(layer, e)
            v = v.linear(layer.weight.detach().to(v.lb))
        elif isinstance(layer, nn.Tanh):
            v = e.relax(_TANH_SLOPE).mul(v)
            e = e.relax(ACTIVATION_RELAXATIONS[nn.Tanh])
        else:
            raise TypeError(f"no directional-derivative bounds for {type(layer).__name__} in V's correction (Linear, Tanh)")
    return v


def _factor(V: ControlLyapunov, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``N`` with ``N^T N = P`` (``N = L^T``, ``P = L L^T``) and ``G: (n, n) >= 0`` bounding the
    rounding of that identity elementwise: ``|N^T N - P| <= G``, so ``|e^T P e - |N e|^2| <=
    a^T G a`` for ``|e| <= a``. ``G`` is the computed residual plus the error bound of the
    product that computed it, ``(n + 2) 2^-53 (|N|^T |N| + |P|)``, doubled."""
    P = V.P.detach().to(like)
    N = torch.linalg.cholesky(P).T
    n = P.shape[0]
    gamma = (n + 2) * 2.0 ** -53
    G = 2 * ((N.T @ N - P).abs() + gamma * (N.abs().T @ N.abs() + P.abs()))
    return N, G


def _gram_slack(G: torch.Tensor, z: LinearBounds) -> torch.Tensor:
    """``a^T G a`` with ``a`` the largest ``|z|`` on each box: ``(batch,)``."""
    lo, hi = z.bounds()
    a = torch.maximum(lo.abs(), hi.abs())
    return ((a @ G) * a).sum(-1)


def _quadratic_terms(V: ControlLyapunov, e: LinearBounds, D: LinearBounds | None, weight: float, N: torch.Tensor
                     ) -> tuple[list[LinearBounds], list[LinearBounds]]:
    """``weight * V`` as ``g . f`` with ``g = [N e, D]``, ``f = weight [N e, D]`` (``D`` the
    correction's bounds at ``e``, ``_correction``; ``N^T N = P`` up to ``_factor``'s ``G``). As
    ``|N e|^2`` the quadratic part is a sum of squares: written ``e . (P e)`` instead, the
    relaxation gap of every entry of ``e`` would be multiplied by a row of ``P``, whose entries
    are large for the thin oblique ellipsoids of LQR (on ``InvertedPendulum-v5``'s model a box
    of a tenth of the region's width got bounds 10x looser)."""
    Ne = e.linear(N)
    g, f = [Ne], [Ne.scale(e.lb.new_full((V.state_dim,), weight))]
    if D is not None:
        g.append(D)
        f.append(D.scale(e.lb.new_full((V.state_dim,), weight)))
    return g, f


def _sum_upper(g: list[LinearBounds], f: list[LinearBounds]) -> torch.Tensor:
    return LinearBounds.cat(g).dot_bounds(LinearBounds.cat(f))[1]


def stabilisability_bounds(V: ControlLyapunov, members: Sequence[nn.Module], lo: torch.Tensor, hi: torch.Tensor, *, alpha: float,
                           time_domain: str = "discrete", h: float | None = None, method: str | None = None,
                           transform: torch.Tensor | None = None, levels: tuple[float, float] | None = None,
                           multipliers: Sequence[tuple[float, float]] = ()) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Certified bounds over boxes ``lo, hi: (batch, n)`` (float64 ``V`` and ``members``) of ``V``
    and of the condition under ``u_fb`` (module docstring): discrete ``d = V(step(x, u_fb(x))) -
    exp(-alpha h) V(x)`` with ``method`` (``"euler"``, ``"rk4"``) and step ``h``; continuous
    ``grad V . f(x, u_fb(x)) + alpha V``. For several members, the worst member's bounds.

    ``transform``: ``None``, the boxes are of states ``x``; else ``(n, n)`` ``T``, the boxes are of
    ``w`` with ``x = x_eq + T w`` (``region_coordinates``: where ``e^T P e = |w|^2``, so the
    quadratic part of ``V`` is bounded exactly on every box).

    ``levels = (inner, rho)`` and ``multipliers``, pairs ``(lam, mu) >= 0``: also ``"d_region"``,
    an upper bound of ``d`` over the part of each box in the annulus ``inner <= V <= rho`` only:
    the least over ``(0, 0)`` and the pairs of the upper bound of ``d + lam (rho - V) + mu (V -
    inner)``, which is ``>= d`` wherever ``inner <= V <= rho`` (the S-procedure). A box on either
    boundary of the annulus, where ``d`` turns positive just outside, is then proven without
    splitting it down to the boundary. It is the same sum of products with another weight on
    ``V(x)``, so it costs one more ``dot_bounds`` per pair.

    Returns ``{"V": (lower, upper), "d": (lower, upper), "u": (lower, upper)}`` (and
    ``"d_region": (None, upper)``), ``V`` and ``d`` ``(batch,)``, ``u`` ``(batch, m)``; the upper
    bounds of ``d`` are ``+inf`` where a step may leave the range within ``pi`` of ``x_eq`` in an
    angle entry.
    """
    x_eq = V.x_eq.to(lo)
    if transform is None:
        x = LinearBounds.from_box(lo, hi)
        e = x.shift(-x_eq)
    else:
        e = LinearBounds.from_box(lo, hi).linear(transform.to(lo))
        x = e.shift(x_eq)
    u = fallback_bounds(V, e)
    D = _correction(V, e)
    N, G = _factor(V, lo)
    slack = _gram_slack(G, e)  # |e^T P e - |N e|^2| on each box
    g_v, f_v = _quadratic_terms(V, e, D, 1.0, N)
    V_lo, V_hi = LinearBounds.cat(g_v).dot_bounds(LinearBounds.cat(f_v))
    V_lo, V_hi = V_lo - slack, V_hi + slack
    n = V.state_dim
    angles = list(V.angle_dims)
    pairs = [(0.0, 0.0)] + ([(float(a), float(b)) for a, b in multipliers] if levels is not None else [])
    inner, rho = levels if levels is not None else (0.0, 0.0)
    uppers, lowers, regions = [], [], []
    for member in members:
        leaves = _leaves(member)
        mean = lo.new_full((n,), 1.0 / len(leaves))
        if time_domain == "discrete":
            y = step_bounds(leaves[0], x, h, method, u)
            for leaf in leaves[1:]:
                y = y + step_bounds(leaf, x, h, method, u)
            ey = y.scale(mean).shift(-x_eq)
            g1, f1 = _quadratic_terms(V, ey, _correction(V, ey), 1.0, N)
            decay = math.exp(-alpha * h)
            sums, slacks = [], []
            slack_y = _gram_slack(G, ey)
            for lam, mu in pairs:  # d + lam (rho - V) + mu (V - inner): V(x)'s weight -decay becomes -(decay + lam - mu)
                weight = -(decay + lam - mu)
                g0, f0 = _quadratic_terms(V, e, D, weight, N)
                sums.append((g1 + g0, f1 + f0))
                slacks.append(slack_y + abs(weight) * slack)
            d_lo, d_hi = LinearBounds.cat(sums[0][0]).dot_bounds(LinearBounds.cat(sums[0][1]))
            escape = None
            if angles:
                ey_lo, ey_hi = ey.bounds()
                escape = ((ey_lo[:, angles] <= -math.pi) | (ey_hi[:, angles] >= math.pi)).any(-1)
        else:
            f = field_bounds(leaves[0], x, u)
            for leaf in leaves[1:]:
                f = f + field_bounds(leaf, x, u)
            f = f.scale(mean)
            g_dot, f_dot = [e], [f.linear(2.0 * V.P.to(lo))]
            if D is not None:
                g_dot.append(D)
                f_dot.append(_directional(V.correction, e, f).scale(lo.new_full((n,), 2.0)))
            sums, slacks = [], []
            for lam, mu in pairs:  # grad V . f + (alpha - lam + mu) V + lam rho - mu inner
                g, fs = _quadratic_terms(V, e, D, alpha - lam + mu, N)
                sums.append((g + g_dot, fs + f_dot))
                slacks.append(abs(alpha - lam + mu) * slack)
            d_lo, d_hi = LinearBounds.cat(sums[0][0]).dot_bounds(LinearBounds.cat(sums[0][1]))
            escape = None
        d_lo, d_hi = d_lo - slacks[0], d_hi + slacks[0]
        region = d_hi
        for (lam, mu), (g, fs), extra in zip(pairs[1:], sums[1:], slacks[1:]):
            upper = _sum_upper(g, fs) + extra
            constant = lam * rho - mu * inner
            shifted = upper + constant
            # the one addition outside bounds.py's sums: widened as they widen theirs
            region = torch.minimum(region, shifted + 1e-10 * (shifted.abs() + upper.abs() + abs(constant)))
        if escape is not None:
            d_hi = torch.where(escape, torch.full_like(d_hi, math.inf), d_hi)
            region = torch.where(escape, torch.full_like(region, math.inf), region)
        lowers.append(d_lo)
        uppers.append(d_hi)
        regions.append(region)
    return {"V": (V_lo, V_hi), "d": (torch.stack(lowers).amax(0), torch.stack(uppers).amax(0)), "u": u.bounds(),
            "d_region": (None, torch.stack(regions).amax(0))}


def _condition_fn(V: ControlLyapunov, members: Sequence[nn.Module], alpha: float, time_domain: str, h: float | None
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Plain float64 evaluation of the condition at states ``(batch, n)``, the worst member."""

    def d(x: torch.Tensor) -> torch.Tensor:
        u = V.fallback(None, x)
        if time_domain == "discrete":
            with torch.no_grad():
                v = V(x)
                return torch.stack([V(m.step(x, u)) for m in members]).amax(0) - math.exp(-alpha * h) * v
        v, g = V.value_and_grad(x)
        with torch.no_grad():
            return torch.stack([(g * m.derivative(x, u)).sum(-1) for m in members]).amax(0) + alpha * v

    return d


def region_coordinates(V: ControlLyapunov, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``T: (n, n)`` and ``s: (n,)``: with ``x = x_eq + T w``, ``e^T P e = |w|^2`` (``T = L^-T``,
    ``P = L L^T``), and the cube ``|w_i| <= s_i`` holds the ellipsoid ``{e^T P e <= rho}`` (hence
    ``{V <= rho}``). ``s_i = sqrt(rho (N P^-1 N^T)_ii)`` with ``N = T^-1`` as computed (the exact
    extent of the ellipsoid along ``w_i``, so rounding in ``T`` cannot leave a sliver out),
    widened by ``1e-6`` relative."""
    P = V.P.detach().to(torch.float64).cpu()
    L = torch.linalg.cholesky(P)
    T = torch.linalg.inv(L.T)
    N = torch.linalg.inv(T)
    s = torch.sqrt(rho * (N @ torch.linalg.inv(P) @ N.T).diagonal()) * (1 + 1e-6)
    return T.to(V.x_eq.device), s.to(V.x_eq.device)


def region_box(V: ControlLyapunov, rho: float) -> torch.Tensor:
    """The bounding box ``(n, 2)`` (float64) of the ellipsoid ``{e^T P e <= rho}``, which holds
    ``{V <= rho}``: ``x_eq +- sqrt(rho (P^-1)_ii)``, widened by ``1e-9`` relative for rounding."""
    P = V.P.detach().to(torch.float64)
    half = torch.sqrt(rho * torch.linalg.inv(P).diagonal()) * (1 + 1e-9) + 1e-300
    x_eq = V.x_eq.detach().to(torch.float64)
    return torch.stack([x_eq - half, x_eq + half], -1)


def verify_stabilisability(
    model: nn.Module,
    lyapunov: ControlLyapunov,
    *,
    alpha: float,
    rho: float,
    inner_level: float,
    time_domain: str = "discrete",
    box: Any = None,
    budget_s: float = 30.0,
    batch: int = 512,
    progress: Callable[[float, int], None] | None = None,
    exhaustive: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> VerificationResult:
    """Prove the stabilisability claim's decrease under ``u_fb`` on ``inner_level <= V <= rho``.

    Args:
        model: the model the claim is about (a control-affine ``SimpleDynamics``, an ensemble of
            them; ``lyapunov.ensemble`` says which of its maps).
        lyapunov: the ``ControlLyapunov`` (its ``P``, correction, ``K``, ``u_eq``, input box).
        alpha: the claimed rate; rho, inner_level: the claimed annulus ``inner_level <= V <= rho``.
        time_domain: ``"discrete"`` (``V(step(x, u_fb(x))) <= exp(-alpha h) V(x)`` with the
            model's ``dt`` and ``integrator``, ``"euler"`` or ``"rk4"``) or ``"continuous"``.
        box: ``None`` (default): the whole region, searched in the coordinates ``w`` of
            ``region_coordinates`` (``x = x_eq + T w``, ``V``'s quadratic part is ``|w|^2``: boxes
            of ``w`` fit the ellipsoid, and ``V`` is bounded exactly on them); or ``n`` rows
            ``[lo, hi]`` of states to search instead (the claim is then proven on that box only).
        budget_s, batch, progress, exhaustive, clock: see ``branch_and_bound``.

    Returns a ``VerificationResult``: ``"verified"`` (the whole annulus inside the searched
    box), ``"counterexample"`` (a state ``(n,)`` where plain float64 evaluation gives ``d > 0``)
    or ``"unknown"``, with the proven share of the searched box's volume (parts outside the
    annulus count as covered); ``box`` is the state box searched (for ``box=None`` the bounding
    box of the region, ``region_box``).
    """
    if not isinstance(lyapunov, ControlLyapunov):
        raise TypeError(f"lyapunov must be the ControlLyapunov of the claim, got {type(lyapunov).__name__}")
    if time_domain not in ("continuous", "discrete"):
        raise ValueError(f"time_domain must be 'continuous' or 'discrete', got {time_domain!r}")
    for name, value in (("alpha", alpha), ("rho", rho), ("inner_level", inner_level)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0 (the certified region {{V <= rho}} is empty), got {rho!r}")
    if not (isinstance(budget_s, (int, float)) and budget_s > 0):
        raise ValueError(f"budget_s must be a number > 0, got {budget_s!r}")
    n = lyapunov.state_dim
    X = region_box(lyapunov, rho) if box is None else parse_box(box, n)
    x_eq = lyapunov.x_eq.detach().to(torch.float64)
    for i in lyapunov.angle_dims:
        if float(X[i, 0] - x_eq[i]) <= -math.pi or float(X[i, 1] - x_eq[i]) >= math.pi:
            raise ValueError(f"box: angle entry {i} must lie within pi of x_eq ({float(x_eq[i]):.4g}), where V's wrap is the "
                             f"identity; got [{float(X[i, 0]):.4g}, {float(X[i, 1]):.4g}]")
    start = clock()
    V64 = copy.deepcopy(lyapunov).to(torch.float64)
    members = _members64(model, lyapunov.ensemble)
    device = V64.x_eq.device
    if box is None:
        T, half = region_coordinates(V64, rho)
        root_lo, root_hi = -half, half
    else:
        T = None
        root_lo, root_hi = X[:, 0].to(device), X[:, 1].to(device)
    step = None
    h = method = None
    if time_domain == "discrete":
        h, method = float(members[0].dt), getattr(members[0], "integrator", None)
        if method not in STEP_METHODS:
            raise ValueError(f"the discrete claim is verified for the integrators {STEP_METHODS}; the model steps with {method!r}")
        step = {"h": h, "integrator": method}

    def to_state(w: torch.Tensor) -> torch.Tensor:
        return w if T is None else V64.x_eq + w @ T.T

    # S-procedure multipliers (stabilisability_bounds) around the rate the claim asks for per unit of V
    scale = 1.0 - math.exp(-alpha * h) if time_domain == "discrete" else alpha
    multipliers = [(max(scale, 1e-6) * k, 0.0) for k in MULTIPLIERS] + [(0.0, max(scale, 1e-6) * k) for k in INNER_MULTIPLIERS]

    # The bounds keep an absolute floor of about 1e-10 (bounds.MARGIN's absolute terms), and at the
    # inner level d is about -alpha h V: on InvertedPendulum-v5's model (inner level 7.6e-8) 1e-10
    # itself. The bounds are of 4^k V instead, with 4^k about 1 / inner level: P times 4^k and h's
    # last layer times 2^k, powers of two, so the scaled V is exactly 4^k V in floating point.
    k = round(-math.log(max(inner_level, 1e-6 * rho), 4))
    V_scaled = copy.deepcopy(V64)
    with torch.no_grad():
        V_scaled.P.mul_(4.0 ** k)
        if V_scaled.correction is not None:
            V_scaled.correction[-1].weight.mul_(2.0 ** k)
            V_scaled.correction[-1].bias.mul_(2.0 ** k)
    levels = (inner_level * 4.0 ** k, rho * 4.0 ** k)

    def bound_fn(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            b = stabilisability_bounds(V_scaled, members, lo, hi, alpha=alpha, time_domain=time_domain, h=h, method=method,
                                       transform=T, levels=levels, multipliers=multipliers)
        V_lo, V_hi = b["V"]
        return b["d_region"][1], (V_lo > levels[1]) | (V_hi < levels[0])

    condition_at = _condition_fn(V64, members, float(alpha), time_domain, h)
    res = branch_and_bound(bound_fn, lambda w: condition_at(to_state(w)), root_lo, root_hi,
                           budget_s=max(1e-3, budget_s - (clock() - start)), batch=batch, progress=progress,
                           exhaustive=exhaustive, clock=clock)
    condition = ("V(step(x, u_fb(x))) - exp(-alpha h) V(x) < 0" if time_domain == "discrete"
                 else "grad V . f(x, u_fb(x)) + alpha V < 0") + f" where {inner_level:.4g} <= V(x) <= {rho:.4g}"
    cex = None if res.counterexample is None else to_state(res.counterexample.unsqueeze(0))[0].tolist()
    out = VerificationResult(
        status=res.status, fraction=res.verified_fraction, boxes=res.boxes, seconds=clock() - start, alpha=float(alpha),
        box=X.tolist(), rho=float(rho), covered_fraction=res.covered_fraction, counterexample=cex,
        counterexample_value=res.counterexample_value, local=None, worst_upper=res.worst_upper, time_domain=time_domain,
        step=step, condition=condition)
    # what region_fraction needs; not part of details()
    out.open_boxes = (res.open_lo, res.open_hi, root_lo, root_hi, T)
    return out


def region_fraction(result: VerificationResult, lyapunov: ControlLyapunov, inner_level: float, *, samples: int = 20_000,
                    seed: int = 0) -> float:
    """Monte Carlo share (by volume) of the claimed annulus ``inner_level <= V <= rho`` inside the
    searched box that lies in no box left open: the proven share of the claim itself (the
    box's ``fraction`` also counts what is outside the annulus). ``nan`` if no sample lands in it."""
    if result.status == "verified":
        return 1.0
    open_lo, open_hi, root_lo, root_hi, T = result.open_boxes
    gen = torch.Generator().manual_seed(seed)
    root_lo, root_hi = root_lo.cpu(), root_hi.cpu()
    w = root_lo + (root_hi - root_lo) * torch.rand(samples, root_lo.shape[0], generator=gen, dtype=torch.float64)
    V64 = copy.deepcopy(lyapunov).to(torch.float64).cpu()
    x = w if T is None else V64.x_eq + w @ T.cpu().T
    with torch.no_grad():
        v = V64(x)
    w = w[(v <= result.rho) & (v >= inner_level)]
    if not w.shape[0]:
        return math.nan
    open_lo, open_hi = open_lo.cpu(), open_hi.cpu()
    inside = torch.zeros(w.shape[0], dtype=torch.bool)
    for k in range(0, open_lo.shape[0], 256):  # chunks of open boxes bound the (samples, boxes) memory
        lo, hi = open_lo[k:k + 256], open_hi[k:k + 256]
        inside |= ((w.unsqueeze(1) >= lo) & (w.unsqueeze(1) <= hi)).all(-1).any(-1)
    return float(1.0 - inside.double().mean())


def stabilisability_formal_certificate(cert: Any, model: nn.Module, *, lyapunov: ControlLyapunov | None, box: Any = None,
                                       budget_s: float = 30.0, progress: Callable[[float, int], None] | None = None) -> Any:
    """``Certificate.verify`` for a ``"stabilisability"`` claim: a copy with ``details["formal"]``
    (the keys of the other claims, plus ``inner_level``, ``region_fraction`` and ``covers_claim``:
    whether the searched box holds the whole claimed set) and, when the whole set is proven,
    evidence ``"formal"`` (a ``box`` that leaves part of the set out can be verified, but adds
    no evidence)."""
    if not isinstance(lyapunov, ControlLyapunov):
        raise TypeError(f"lyapunov must be the ControlLyapunov the certificate was issued with (pass lyapunov=V), "
                        f"got {type(lyapunov).__name__}")
    if cert.details.get("lyapunov_hash") != model_hash(lyapunov):
        raise ValueError("lyapunov is not the ControlLyapunov this certificate was issued with (its lyapunov_hash differs)")
    if cert.weights_hash and isinstance(model, nn.Module) and not cert.applies_to(model):
        raise ValueError("this certificate was issued for other weights (cert.applies_to(model) is False)")
    rho, inner = float(cert.details.get("rho", 0.0)), float(cert.details.get("inner_level", 0.0))
    if rho <= 0:
        raise ValueError("this certificate's region is empty (rho = 0): nothing to verify")
    if cert.time_domain == "discrete":
        dt = float(_members(model, lyapunov.ensemble)[0].dt)
        if cert.h is not None and abs(cert.h - dt) > 1e-12 * max(1.0, dt):
            raise ValueError(f"the certificate's step h={cert.h} is not the model's dt={dt}")
    res = verify_stabilisability(model, lyapunov, alpha=cert.alpha, rho=rho, inner_level=inner, time_domain=cert.time_domain,
                                 box=box, budget_s=budget_s, progress=progress)
    details = dict(cert.details)
    formal = res.details()
    formal["inner_level"] = inner
    formal["region_fraction"] = region_fraction(res, lyapunov, inner)
    formal["tool"] = formal["tool"] + " (u_fb relaxed through its affine map and clip, kept as a function of x)"
    formal["margin"] += ("; V's quadratic part bounded as |N e|^2 with N^T N = P up to a bounded rounding G (|e|^T G |e| "
                         "added); the bounds are of 4^k V, a power-of-two scaling that is exact in floating point")
    # a box given by the caller may leave part of the claimed set out: then the proof is of that part only
    enclosing = region_box(lyapunov, rho)
    searched = torch.tensor(res.box, dtype=torch.float64)
    formal["covers_claim"] = bool(((searched[:, 0] <= enclosing[:, 0]) & (enclosing[:, 1] <= searched[:, 1])).all())
    details["formal"] = formal
    evidence = list(cert.evidence)
    if res.status == "verified" and formal["covers_claim"]:
        if "formal" not in evidence:
            evidence.append("formal")
        box_text = "[" + ", ".join(f"[{a:.4g}, {b:.4g}]" for a, b in res.box) + "]"
        step = f" for the {res.step['integrator']} step map with h = {res.step['h']:g}" if res.step else ""
        details["region"] = (f"{{V <= {rho:.4g}}} inside the box, states with V >= {inner:.3g} (proven by bound propagation on "
                             f"the box {box_text}{step})")
    return dataclasses.replace(cert, evidence=evidence, details=details)
