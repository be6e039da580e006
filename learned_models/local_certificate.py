"""The local certificate near an equilibrium: linearisation plus a certified remainder.

Near ``x_eq`` the decrease condition ``grad V . f + alpha V`` is ``O(||x - x_eq||^2)`` and no
bound over a box can prove its sign there; this file covers a small ball instead. With
``x*`` the model's own equilibrium (Newton on ``f(x) = 0`` from ``x_eq``), ``J* = Df(x*)``
Hurwitz and ``P`` the solution of the Lyapunov equation ``J*^T P + P J* = -I``, on the box
``B = [x* - r, x* + r]`` the mean value theorem gives ``f(x) = f(x*) + M (x - x*)`` with ``M``
in the interval hull of the Jacobian over ``B`` (``bounds.interval_jacobian``), so with
``delta >= ||M - J*||_F`` and ``phi >= ||f(x*)||`` (both certified)::

    d/dt (dx^T P dx) = 2 dx^T P f(x) <= -(1 - 2 ||P|| delta) ||dx||^2 + 2 ||P|| phi ||dx||.

When ``2 ||P|| delta < 1`` the quadratic ``V_loc = dx^T P dx`` decreases at rate
``beta = (1 - 2 ||P|| delta) / lambda_max(P)`` on the ellipsoid ``E = {V_loc <= c}``,
``c = lambda_min(P) r^2`` (inside ``B``), outside the tiny ball of radius
``2 ||P|| phi / (1 - 2 ||P|| delta)`` (``phi`` is the rounding of ``x*`` plus the bounds'
margin, ``~1e-8``; the ball must fit ten times over inside ``E``): ``E`` is invariant and every
trajectory in it converges to the equilibrium inside that ball. The radius ``r`` is halved
from ``max_radius`` until the inequality holds (for a ReLU field, until ``B`` holds no kink).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .bounds import LinearBounds, field_bounds, interval_jacobian

__all__ = ["LocalCertificate", "local_certificate", "local_step_certificate"]


@dataclass
class LocalCertificate:
    """``E = {(x - x_star)^T P (x - x_star) <= level}``: invariant, ``V_loc`` decays at ``rate``.

    ``x_star: (n,)``, ``P: (n, n)`` float64; ``radius``: half-width of the box ``B`` the
    remainder was bounded on; ``delta``, ``phi``: the certified ``||M - J*||_F`` and
    ``||f(x*)||``; ``inner_radius``: the ball around ``x_star`` where the equilibrium lies.
    """

    x_star: torch.Tensor
    P: torch.Tensor
    level: float
    rate: float
    radius: float
    delta: float
    phi: float
    inner_radius: float

    def contains_boxes(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` bool: boxes ``lo, hi: (batch, n)`` wholly inside ``E`` (a convex quadratic
        is largest at a vertex, so the ``2^n`` vertices decide)."""
        n = lo.shape[1]
        corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=lo.dtype, device=lo.device)] * n).reshape(-1, n)
        pts = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * corners  # (batch, 2^n, n)
        dx = pts - self.x_star.to(lo)
        q = torch.einsum("bki,ij,bkj->bk", dx, self.P.to(lo), dx)
        # 1e-9 relative: the quadratic form's rounding must not let a vertex slip outside E.
        return q.max(-1).values <= self.level * (1 - 1e-9)

    def to_dict(self) -> dict:
        return {"x_star": self.x_star.tolist(), "P": self.P.tolist(), "level": self.level, "rate": self.rate,
                "radius": self.radius, "delta": self.delta, "phi": self.phi, "inner_radius": self.inner_radius}


def _field(model: nn.Module):
    return model.fhat if hasattr(model, "fhat") else model


def find_equilibrium(model: nn.Module, x0: torch.Tensor, *, steps: int = 30, tol: float = 1e-12, reach: float = 1.0) -> torch.Tensor:
    """Newton's method on ``f(x) = 0`` (float64) from ``x0: (n,)``; raises ``ValueError`` if it
    does not converge to ``||f|| <= tol`` within ``reach`` of ``x0``."""
    net = _field(model)
    x = x0.detach().clone()

    def f(y: torch.Tensor) -> torch.Tensor:
        return net(y.unsqueeze(0))[0]

    for _ in range(steps):
        with torch.no_grad():
            fx = f(x)
        if float(fx.norm()) <= tol:
            return x
        if float((x - x0).norm()) > reach:
            break
        J = torch.autograd.functional.jacobian(f, x)
        x = x - torch.linalg.solve(J, fx)
    with torch.no_grad():
        residual = float(f(x).norm())
    if residual <= tol and float((x - x0).norm()) <= reach:
        return x
    raise ValueError(f"Newton's method found no equilibrium within {reach} of x_eq (||f|| = {residual:.3g})")


def local_certificate(model: nn.Module, x_eq: torch.Tensor, *, max_radius: float = 1.0, halvings: int = 40) -> LocalCertificate | None:
    """The local certificate of the model's equilibrium near ``x_eq: (n,)`` (module docstring),
    or ``None`` when there is no equilibrium nearby, ``Df`` is not Hurwitz there, or no radius
    down to ``max_radius * 2^-halvings`` satisfies the inequality.

    ``model``: a ``SimpleDynamics`` without inputs, angle features or control-affine output
    (or a bare ``nn.Sequential`` MLP); the computation is in float64 on a copy.
    """
    import copy

    from scipy.linalg import solve_continuous_lyapunov

    net = copy.deepcopy(_field(model)).to(torch.float64)
    x_eq = x_eq.detach().to(torch.float64).cpu()
    try:
        x_star = find_equilibrium(net, x_eq)
    except (ValueError, RuntimeError):  # singular Jacobian or no convergence
        return None
    J = torch.autograd.functional.jacobian(lambda y: net(y.unsqueeze(0))[0], x_star).detach()
    if not float(torch.linalg.eigvals(J).real.max()) < 0:
        return None
    n = J.shape[0]
    P = torch.as_tensor(solve_continuous_lyapunov(J.numpy().T, -torch.eye(n, dtype=torch.float64).numpy()))
    P = 0.5 * (P + P.T)
    lam = torch.linalg.eigvalsh(P)
    norm_P = float(lam[-1])
    with torch.no_grad():
        point = LinearBounds.from_box(x_star.unsqueeze(0), x_star.unsqueeze(0))
        f_lo, f_hi = field_bounds(net, point).bounds()
        phi = float(torch.maximum(f_lo.abs(), f_hi.abs()).norm())
        r = float(max_radius)
        for _ in range(halvings):
            try:
                J_lo, J_hi = interval_jacobian(net, (x_star - r).unsqueeze(0), (x_star + r).unsqueeze(0))
            except TypeError:  # a field whose Jacobian we cannot bound: no local certificate
                return None
            delta = float(torch.maximum((J_lo[0] - J).abs(), (J_hi[0] - J).abs()).norm())
            slack = 1.0 - 2.0 * norm_P * delta
            if slack > 0:
                inner = 2.0 * norm_P * phi / slack
                level = float(lam[0]) * r * r
                # the inner ball must sit well inside E, or E says nothing beyond it
                if inner < 0.1 * math.sqrt(level / norm_P):
                    return LocalCertificate(x_star, P, level, slack / norm_P, r, delta, phi, inner)
            r /= 2
    return None


def local_step_certificate(model: nn.Module, x_eq: torch.Tensor, h: float, method: str = "rk4", *, max_radius: float = 1.0,
                           halvings: int = 40) -> LocalCertificate | None:
    """The local certificate of the model's discrete step map ``step`` (``method``, step ``h``)
    at the field's equilibrium ``x*`` near ``x_eq``, or ``None`` (as ``local_certificate``).

    ``M = D step(x*)`` must be Schur stable; ``P`` solves ``M^T P M - P = -I``. On the box ``B``
    of half-width ``r``, ``step(x) - x* = Mbar dx + c`` with ``||Mbar - M||_F <= delta``
    (``step_bounds.step_jacobian_bounds``) and ``||c|| <= phi`` (``c = step(x*) - x*``, rounding
    only), so with ``kappa = (2 ||M^T P|| delta + ||P|| delta^2) / lambda_min(P)``::

        V_loc(step(x)) <= (1 - 1/lambda_max(P) + kappa) V_loc(x) + 2 ||P|| (||M|| + delta) phi ||dx|| + ||P|| phi^2.

    With ``s = 1/lambda_max(P) - kappa > 0`` the ``phi`` terms take at most ``s/2`` of it
    outside the inner radius, so ``V_loc`` contracts by ``1 - s/2`` per step on ``E`` (outside
    that tiny ball, whose image stays in ``E``); ``rate`` is ``-log(1 - s/2) / h``.
    """
    import copy

    from scipy.linalg import solve_discrete_lyapunov

    from .step_bounds import step_bounds, step_jacobian_bounds

    net = copy.deepcopy(_field(model)).to(torch.float64)
    x_eq = x_eq.detach().to(torch.float64).cpu()
    try:
        x_star = find_equilibrium(net, x_eq)
    except (ValueError, RuntimeError):
        return None
    from .integrators import integrate

    M = torch.autograd.functional.jacobian(lambda y: integrate(lambda z: net(z), y.unsqueeze(0), h, method)[0], x_star).detach()
    if not float(torch.linalg.eigvals(M).abs().max()) < 1:
        return None
    n = M.shape[0]
    P = torch.as_tensor(solve_discrete_lyapunov(M.numpy().T, torch.eye(n, dtype=torch.float64).numpy()))
    P = 0.5 * (P + P.T)
    lam = torch.linalg.eigvalsh(P)
    norm_P, norm_M, norm_MP = float(lam[-1]), float(torch.linalg.matrix_norm(M, 2)), float(torch.linalg.matrix_norm(M.T @ P, 2))
    with torch.no_grad():
        point = LinearBounds.from_box(x_star.unsqueeze(0), x_star.unsqueeze(0))
        s_lo, s_hi = step_bounds(net, point, h, method).bounds()
        phi = float(torch.maximum((s_lo - x_star).abs(), (s_hi - x_star).abs()).norm())
        r = float(max_radius)
        for _ in range(halvings):
            try:
                J_lo, J_hi = step_jacobian_bounds(net, (x_star - r).unsqueeze(0), (x_star + r).unsqueeze(0), h, method)
            except TypeError:
                return None
            delta = float(torch.maximum((J_lo[0] - M).abs(), (J_hi[0] - M).abs()).norm())
            slack = 1.0 / norm_P - (2 * norm_MP * delta + norm_P * delta * delta) / float(lam[0])
            if slack > 0:
                a = slack * float(lam[0]) / 2
                b = 2 * norm_P * (norm_M + delta) * phi
                inner = (b + math.sqrt(b * b + 4 * a * norm_P * phi * phi)) / (2 * a)
                level = float(lam[0]) * r * r
                image = norm_P * ((norm_M + delta) * inner + phi) ** 2  # V_loc of the inner ball's image
                if inner < 0.1 * math.sqrt(level / norm_P) and image < level:
                    return LocalCertificate(x_star, P, level, -math.log(1 - slack / 2) / h, r, delta, phi, inner)
            r /= 2
    return None
