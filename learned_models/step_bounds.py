"""Sound bounds of a model's discrete step map (Euler or RK4 on its field) and of its Jacobian.

The step ``x_{k+1} = step(x_k)`` is built from the field's bounds (``bounds.field_bounds``)
stage by stage, as the integrator computes it: every stage input ``x + c h k_i`` is a
``LinearBounds`` of the box coordinate, so ``V(step(x)) - exp(-alpha h) V(x)``, the discrete
decrease condition (``V(x_{k+1}) <= exp(-alpha h) V(x_k)``), keeps the correlation between the
two terms. The Jacobian of the step map follows the chain rule through the stages with
interval matrices (centre-radius products), from the field's interval Jacobian
(``bounds.interval_jacobian``) over each stage's input range.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .bounds import MARGIN, LinearBounds, field_bounds, interval_jacobian, lyapunov_bounds

__all__ = ["step_bounds", "discrete_decrease_bounds", "step_jacobian_bounds", "STEP_METHODS"]

STEP_METHODS = ("euler", "rk4")


def _const(value: float, like: torch.Tensor, k: int) -> torch.Tensor:
    return like.new_full((k,), float(value))


def _check(method: str) -> None:
    if method not in STEP_METHODS:
        raise ValueError(f"method must be one of {STEP_METHODS} for bounds of the step map, got {method!r}")


def step_bounds(model: nn.Module, x: LinearBounds, h: float, method: str = "rk4", u: LinearBounds | None = None) -> LinearBounds:
    """Bounds of ``step(x)`` (``(batch, n)``): ``method`` (``"euler"`` or ``"rk4"``, the
    classical scheme of ``integrators.rk4``) with step ``h`` on the field of ``model``; with
    ``u`` (bounds of the input, ``(batch, m)``, in the same box coordinate as ``x``: a
    feedback of the state keeps its correlation with it) held over the step in every stage."""
    _check(method)
    n, like = x.width, x.lb

    def f(y: LinearBounds) -> LinearBounds:
        return field_bounds(model, y, u)

    if method == "euler":
        return x + f(x).scale(_const(h, like, n))
    k1 = f(x)
    k2 = f(x + k1.scale(_const(h / 2, like, n)))
    k3 = f(x + k2.scale(_const(h / 2, like, n)))
    k4 = f(x + k3.scale(_const(h, like, n)))
    two = _const(2.0, like, n)
    return x + (k1 + k2.scale(two) + k3.scale(two) + k4).scale(_const(h / 6, like, n))


def discrete_decrease_bounds(model: nn.Module, lyapunov: nn.Module, lo: torch.Tensor, hi: torch.Tensor, alpha: float, h: float,
                             method: str = "rk4") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Certified bounds over boxes ``lo, hi: (batch, n)`` of ``V`` and of
    ``d = V(step(x)) - exp(-alpha h) V(x)`` (``d <= 0``: the discrete decrease at rate ``alpha``).

    Returns ``{"V": (lower, upper), "d": (lower, upper)}``, each ``(batch,)``.
    """
    x = LinearBounds.from_box(lo, hi)
    V = lyapunov_bounds(lyapunov, x, grad=False).value
    y = step_bounds(model, x, h, method)
    decay = math.exp(-alpha * h)
    direct = lyapunov_bounds(lyapunov, y, grad=False).value - V.scale(_const(decay, lo, 1))
    # Mean value form: V(y) - V(x) = G . (y - x) with G = grad V somewhere on the segment, so in
    # grad V's interval over the hull of the box and the step's range. Both terms of the direct
    # form carry their own O(w^2) relaxation error while their difference is O(h): this one's
    # error scales with the step (y - x = O(h)), as the continuous condition's does.
    y_lo, y_hi = y.bounds()
    g_lo, g_hi = lyapunov_bounds(lyapunov, LinearBounds.from_box(torch.minimum(lo, y_lo), torch.maximum(hi, y_hi))).grad.bounds()
    n = lo.shape[1]
    G = LinearBounds(lo.new_zeros(lo.shape[0], n, n), g_lo, lo.new_zeros(lo.shape[0], n, n), g_hi)
    mean_value = G.mul(y - x).sum() + V.scale(_const(1.0 - decay, lo, 1))
    d_lo = torch.maximum(direct.bounds()[0], mean_value.bounds()[0])
    d_hi = torch.minimum(direct.bounds()[1], mean_value.bounds()[1])
    return {"V": tuple(t[:, 0] for t in V.bounds()), "d": (d_lo[:, 0], d_hi[:, 0])}


def _imul(A: tuple[torch.Tensor, torch.Tensor], B: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval matrix product ``[A] [B]`` in centre-radius form, widened by ``MARGIN``."""
    Ac, Ar = (A[0] + A[1]) / 2, (A[1] - A[0]) / 2
    Bc, Br = (B[0] + B[1]) / 2, (B[1] - B[0]) / 2
    c = Ac @ Bc
    r = Ac.abs() @ Br + Ar @ Bc.abs() + Ar @ Br + MARGIN * (Ac.abs() @ Bc.abs() + 1.0)
    return c - r, c + r


def _iaffine(I: torch.Tensor, s: float, J: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``I + s [J]`` for ``s >= 0``."""
    return I + s * J[0], I + s * J[1]


def step_jacobian_bounds(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, h: float, method: str = "rk4") -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise bounds ``(lower, upper)``, ``(batch, n, n)``, of ``D step`` over boxes
    ``lo, hi: (batch, n)`` (chain rule through the stages with interval matrices)."""
    _check(method)
    net = model.fhat if hasattr(model, "fhat") else model
    n = lo.shape[1]
    I = torch.eye(n, dtype=lo.dtype, device=lo.device).expand(lo.shape[0], n, n)
    x = LinearBounds.from_box(lo, hi)

    def jac(y: LinearBounds) -> tuple[torch.Tensor, torch.Tensor]:
        ylo, yhi = y.bounds()
        return interval_jacobian(net, ylo, yhi)

    J1 = jac(x)
    if method == "euler":
        return _iaffine(I, h, J1)
    k1 = field_bounds(model, x)
    y2 = x + k1.scale(_const(h / 2, lo, n))
    J2 = _imul(jac(y2), _iaffine(I, h / 2, J1))
    k2 = field_bounds(model, y2)
    y3 = x + k2.scale(_const(h / 2, lo, n))
    J3 = _imul(jac(y3), _iaffine(I, h / 2, J2))
    k3 = field_bounds(model, y3)
    y4 = x + k3.scale(_const(h, lo, n))
    J4 = _imul(jac(y4), _iaffine(I, h, J3))
    total = (J1[0] + 2 * J2[0] + 2 * J3[0] + J4[0], J1[1] + 2 * J2[1] + 2 * J3[1] + J4[1])
    J_lo, J_hi = _iaffine(I, h / 6, total)
    pad = MARGIN * (1.0 + torch.maximum(J_lo.abs(), J_hi.abs()))
    return J_lo - pad, J_hi + pad
