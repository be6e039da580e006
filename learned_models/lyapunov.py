"""The learned Lyapunov function of Manek & Kolter (eq. 12 / eq. 14).

    V(x) = sigma_d( g(F(x)) - g(F(x_eq)) ) + eps * ||x - x_eq||^2          (eq. 12 / 14)

with ``g`` an ``ICNN`` (convex), ``sigma_d`` the smoothed ReLU (convex, non-decreasing,
``sigma_d(0) = 0``), ``eps > 0`` and an optional invertible warp ``F``.

Two optional extensions (off by default, so the default is the paper's ``V``), both
keeping every property below; measured on the damped pendulum they are what makes the
stable model train as reliably and predict as well as the unconstrained MLP:

- ``shift="tangent"``: ``sigma_d(g(F x) - g(F x_eq) - grad g(F x_eq) . (F x - F x_eq))``,
  the Bregman divergence of ``g``; with the paper's shift ``sigma_d`` is flat (zero, no
  gradient to ``g``) on the region ``{g(F x) < g(F x_eq)}`` around ``x_eq``;
- ``quadratic=True``: ``+ ||L (x - x_eq)||^2`` with a learned matrix ``L``, so that ``V``'s
  shape near ``x_eq`` (where the ICNN term is of higher order) is learned rather than
  ``eps I``.

Properties, and why each piece is there:

- ``V(x_eq) = 0`` exactly and ``V(x) >= eps ||x - x_eq||^2``: ``sigma_d >= 0`` and the
  shift by ``g(F(x_eq))``. The shift is recomputed on every call -- it depends on the
  weights, so a value frozen at construction goes stale as soon as training moves ``g``.
- Without a warp, ``V`` is convex (a convex non-decreasing function of a convex function,
  plus a strongly convex quadratic), hence ``2 eps``-strongly convex with its unique
  minimum at ``x_eq``; so ``||grad V(x)|| >= 2 eps ||x - x_eq||`` and the projection of
  eq. 10 is defined everywhere except at ``x_eq`` itself, where it is not needed.
  Convexity is also what makes ``V(x_eq + s (y - x_eq)) <= s V(y)`` for ``s in [0, 1]``,
  the fact behind the guarantee-keeping discrete step (``integrators.lyapunov_rescale``).
- ``V(x) <= c2 ||x - x_eq||^2`` with ``c2 = L^2 / (2d) + eps`` where ``L`` bounds the
  Lipschitz constant of ``g o F``: ``sigma_d(t) <= t^2 / (2d)`` for all ``t``.

Why the warp must be invertible (eq. 14): the sublevel sets of ``g`` are convex, and
``F^{-1}`` maps them to the sublevel sets of ``g o F``. If ``F`` is a bijection these are
connected and nested, and ``g o F`` has no local minima except the preimage of ``g``'s
(which ``sigma_d(. - g(F(x_eq)))`` flattens to the set around ``x_eq``). A non-injective ``F``
could fold the space so that two distant states map to the same point, giving ``V`` extra
minima or flat valleys away from ``x_eq`` where ``grad V = 0`` while ``V > 0``: the
projection of eq. 10 is then undefined (division by ``||grad V||^2 = 0``) and trajectories
can get stuck. In short: a non-invertible warp can create spurious minima, and then ``V``
is not a valid Lyapunov function. We use affine coupling layers
(``F(x)_b = x_b * exp(s(x_a)) + t(x_a)`` on alternating halves), which are smooth
bijections with an explicit inverse (``AffineCoupling.inverse``).

Invertibility is necessary, not sufficient: with a warp ``V`` is no longer convex, and the
``eps ||x - x_eq||^2`` term could in principle cancel the gradient of ``sigma(g o F)`` at
some state. So warped models do not claim stability *by construction*: their certificates
carry ``falsification`` evidence, and their discrete step checks the decrease of ``V``
numerically instead of relying on convexity (see ``integrators.lyapunov_rescale``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .icnn import ICNN, smooth_relu
from .integrators import _FunctorchState

__all__ = ["LyapunovFunction", "AffineCoupling", "CouplingWarp", "WARPS"]


class AffineCoupling(nn.Module):
    """One invertible affine coupling layer on ``(batch, dim)``.

    The coordinates where ``mask == 1`` pass through unchanged and condition a scale and
    shift for the others: ``y = x_a + (1 - mask) * (x * exp(s(x_a)) + t(x_a))`` with
    ``x_a = mask * x`` and ``s = scale * tanh(.)`` bounded, so the layer and its inverse
    ``x = x_a + (1 - mask) * (y - t(x_a)) * exp(-s(x_a))`` are smooth: a diffeomorphism,
    bi-Lipschitz on bounded sets only (``dy_b/dx_a`` carries ``x_b exp(s) s'(x_a)``, which grows
    with ``|x_b|``), so a warped ``V`` gets no global quadratic bounds from it
    (``upper_constant`` is ``None`` with a warp).
    For ``dim == 1`` one of the halves is empty and the layer is an elementwise affine map.
    """

    def __init__(self, dim: int, mask: torch.Tensor, hidden: int = 32, max_log_scale: float = 1.0) -> None:
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        self.max_log_scale = float(max_log_scale)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * dim))
        # Start at the identity map.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(xa).chunk(2, dim=-1)
        keep = 1.0 - self.mask
        return self.max_log_scale * torch.tanh(s) * keep, t * keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xa = x * self.mask
        s, t = self._scale_shift(xa)
        return xa + (1.0 - self.mask) * (x * torch.exp(s) + t)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        ya = y * self.mask
        s, t = self._scale_shift(ya)
        return ya + (1.0 - self.mask) * ((y - t) * torch.exp(-s))


class CouplingWarp(nn.Module):
    """``F``: a stack of ``AffineCoupling`` layers with alternating masks (a smooth bijection)."""

    def __init__(self, dim: int, layers: int = 4, hidden: int = 32) -> None:
        super().__init__()
        even = (torch.arange(dim) % 2 == 0).float()
        self.layers = nn.ModuleList(AffineCoupling(dim, even if i % 2 == 0 else 1.0 - even, hidden) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


#: Registry of input warps by name.
WARPS = {"coupling": CouplingWarp}


def _outer(gx, dg, dx, dx_sq, eps, d, tangent):
    """Eq. 12 from ``g`` and ``dg/dx`` on ``[x; x_eq]`` (no autograd): ``V``, ``grad V`` and the
    pieces the backward needs (the shifted value ``s``, ``m = clamp(s, 0, d)``, ``grad s``).

    ``gx`` is the ICNN's centered output, ``[g(x) - g(x_eq); g(x_eq)]`` (``ICNN.forward_and_grad
    (centered=True)``): the difference already carries its relative precision near ``x_eq``.
    """
    s = gx[..., :-1]
    dshift = dg[..., :-1, :]
    if tangent:
        if dg.ndim == 2:
            s = s - dx @ dg[-1]
        else:  # stacked networks: each member's own x_eq row
            s = s - (dx * dg[:, -1:]).sum(-1)
        dshift = dshift - dg[..., -1:, :]
    # Pin the shifted g to 0 at x_eq (see _exact_at_eq): times sign(||dx||^2), 0 only there.
    s = s * torch.sign(dx_sq)
    m = s.clamp(0.0, d)  # d sigma'(s)
    # sigma(s) = m (s - m/2) / d (eq. 13), V = sigma(s) + eps ||dx||^2, grad V = sigma'(s) grad s + 2 eps dx
    V = torch.addcmul(dx_sq * eps, m, torch.sub(s, m, alpha=0.5), value=1.0 / d)
    grad = torch.addcmul(dx * (2.0 * eps), m.unsqueeze(-1), dshift, value=1.0 / d)
    return V, grad, s, m, dshift


class _OuterValueAndGrad(torch.autograd.Function):
    """``_outer`` as one autograd node (its dozen elementwise ops recorded as one).

    Adjoints ``Vbar``, ``Gbar``: ``sbar = pin (Vbar sigma'(s) + (Gbar . grad s) sigma''(s))``
    with ``sigma'' = 1/d`` on ``(0, d)``; the centered ``g`` gets ``sbar`` on the rows and ``0``
    on the ``x_eq`` row (the ICNN's centered backward routes it on), ``dg`` gets
    ``sigma'(s) Gbar`` (and, with the tangent shift, the ``x_eq`` row
    ``-sum(sbar dx) - sum(sigma'(s) Gbar)``); ``dx`` gets ``2 eps (Gbar + Vbar dx)`` (``dx_sq``
    is taken as ``||dx||^2``) minus ``sbar dg(x_eq)`` with the tangent shift.
    """

    @staticmethod
    def forward(ctx, gx, dg, dx, dx_sq, eps, d, tangent):
        V, grad, s, m, dshift = _outer(gx, dg, dx, dx_sq, eps, d, tangent)
        ctx.eps, ctx.d, ctx.tangent = eps, d, tangent
        ctx.save_for_backward(dg, dx, dx_sq, s, m, dshift)
        return V, grad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, Vbar, Gbar):
        grads = _outer_backward(ctx.saved_tensors, ctx.eps, ctx.d, ctx.tangent, Vbar, Gbar, ctx.needs_input_grad[:3])
        return (*grads, None, None, None, None)


def _outer_backward(saved, eps, d, tangent, Vbar, Gbar, needs):
    """Adjoints ``(gx, dg, dx)`` of ``_outer`` from those of ``(V, grad V)`` (see
    ``_OuterValueAndGrad``); ``saved = (dg, dx, dx_sq, s, m, dshift)``, ``needs`` three flags."""
    dg, dx, dx_sq, s, m, dshift = saved
    slope = m * (1.0 / d)
    # d sigma'(s)/ds = 1/d where 0 < s < d (hardtanh's backward), pinned rows get nothing.
    curv = torch.ops.aten.hardtanh_backward((Gbar * dshift).sum(-1).mul_(1.0 / d), s, 0.0, d)
    sbar = torch.addcmul(curv, Vbar, slope).mul_(torch.sign(dx_sq))
    gx_bar = dg_bar = dx_bar = None
    if needs[0]:
        gx_bar = torch.cat([sbar, sbar.new_zeros(1)])  # adjoint of the centered g (V ignores g(x_eq))
    dshift_bar = Gbar * slope.unsqueeze(-1)
    if needs[1]:
        eq_row = dshift_bar.new_zeros(1, dshift_bar.shape[1])
        if tangent:
            eq_row = torch.addmm(dshift_bar.sum(0, keepdim=True), sbar.unsqueeze(0), dx).neg_()
        dg_bar = torch.cat([dshift_bar, eq_row])
    if needs[2]:
        dx_bar = torch.addcmul(Gbar, dx, Vbar.unsqueeze(-1)).mul_(2.0 * eps)
        if tangent:
            dx_bar = torch.addr(dx_bar, sbar, dg[-1], alpha=-1.0)
    return gx_bar, dg_bar, dx_bar


def _outer_value_and_grad(gx, dg, dx, dx_sq, eps, d, tangent):
    """``V: (batch,)`` and ``grad V: (batch, n)`` of eq. 12 from ``g, dg/dx`` on ``[x; x_eq]``."""
    if torch.is_grad_enabled() and not _FunctorchState.depth and (gx.requires_grad or dg.requires_grad or dx.requires_grad):
        return _OuterValueAndGrad.apply(gx, dg, dx, dx_sq, float(eps), float(d), bool(tangent))
    return _outer(gx, dg, dx, dx_sq, eps, d, tangent)[:2]


class LyapunovFunction(nn.Module):
    """``V: (batch, state_dim) -> (batch,)``, eq. 12 (no warp) or eq. 14 (``warp="coupling"``).

    Args:
        state_dim: dimension of ``x``.
        hidden: ICNN widths (paper: ``(60, 60)``).
        eps: weight of ``eps ||x - x_eq||^2``; the certified lower constant ``c1``
            (0.01, the value of the paper's released code).
        d: smoothed-ReLU width (eq. 13) used in the ICNN and the outer ``sigma``.
        warp: ``None`` or ``"coupling"`` (invertible affine coupling layers, see module doc).
        x_eq: the equilibrium, ``(state_dim,)``; default the origin. Stored as a buffer.
        shift: ``"value"`` (the paper's eq. 12/14: ``sigma(g(F(x)) - g(F(x_eq)))``) or
            ``"tangent"``: subtract the tangent plane of ``g`` at ``F(x_eq)`` too,
            ``sigma(g(F x) - g(F x_eq) - grad g(F x_eq) . (F x - F x_eq))``. The Bregman
            divergence of the convex ``g`` is ``>= 0`` and vanishes only at ``x_eq``
            (``F`` is injective), so ``sigma`` is never flat on a region around ``x_eq``.
            With ``"value"`` it is flat on ``{g(F x) <= g(F x_eq)}`` whenever ``g``'s
            minimum is not at ``F(x_eq)``: there ``V = eps ||x - x_eq||^2`` and the ICNN gets
            no gradient from those states, which we saw stall training. Convexity (without
            a warp), ``V(x_eq) = 0``, ``V >= eps ||dx||^2`` and the ``c2`` bound hold for both.
        quadratic: add a learned quadratic ``||L (x - x_eq)||^2`` (``L`` a full matrix,
            initialised to ``0.1 I``). Near ``x_eq`` the ICNN term is of higher order
            (``sigma`` is quadratic at 0, so ``sigma(g - g_eq)`` is ``O(||dx||^2)`` only along
            one direction or ``O(||dx||^4)``), so without it ``V``'s local shape is the
            isotropic ``eps ||dx||^2``: for a system whose natural Lyapunov function is an
            elongated ellipse (the pendulum's energy) the projection then has to distort
            the dynamics right around the equilibrium. Convexity and the bounds are kept
            (``c2`` grows by ``||L||^2``).
    """

    def __init__(
        self,
        state_dim: int,
        hidden: Sequence[int] = (60, 60),
        *,
        eps: float = 0.01,
        d: float = 0.1,
        warp: str | None = None,
        x_eq: torch.Tensor | Sequence[float] | None = None,
        shift: str = "value",
        quadratic: bool = False,
    ) -> None:
        super().__init__()
        if shift not in ("value", "tangent"):
            raise ValueError(f"shift must be 'value' or 'tangent', got {shift!r}")
        self.shift = shift
        if int(state_dim) < 1:
            raise ValueError(f"state_dim must be >= 1, got {state_dim!r}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number > 0 (it makes V positive definite), got {eps!r}")
        if warp is not None and warp not in WARPS:
            raise ValueError(f"warp must be None or one of {sorted(WARPS)}, got {warp!r}")
        self.state_dim = int(state_dim)
        self.eps = float(eps)
        self.d = float(d)
        self.warp_name = warp
        self.g = ICNN(self.state_dim, hidden, d=d)
        self.warp = WARPS[warp](self.state_dim) if warp is not None else None
        if x_eq is None:
            x_eq = torch.zeros(self.state_dim)
        x_eq = torch.as_tensor(x_eq, dtype=torch.get_default_dtype()).detach().clone().reshape(-1)
        if x_eq.numel() != self.state_dim or not torch.isfinite(x_eq).all():
            raise ValueError(f"x_eq must be {self.state_dim} finite numbers, got {x_eq.tolist()}")
        self.register_buffer("x_eq", x_eq)
        self.L = nn.Parameter(0.1 * torch.eye(self.state_dim)) if quadratic else None

    @property
    def convex(self) -> bool:
        """True when ``V`` is convex (no warp): the rescaled step is then exact without checks."""
        return self.warp is None

    def _with_eq(self, x: torch.Tensor) -> torch.Tensor:
        # One batched pass over [x; x_eq] instead of two calls: g(F(x_eq)) is recomputed
        # with the current weights every time, at the cost of one extra row.
        return torch.cat([x, self.x_eq.to(x.dtype).unsqueeze(0)], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (batch, state_dim)`` -> ``V(x): (batch,)``.

        ``g(F(x)) - g(F(x_eq))`` is the ICNN's centered pass (layer by layer in difference
        form), not the difference of two evaluations: near ``x_eq`` the latter keeps only the
        rounding of ``g(F(x_eq))``, which made ``V``, and the certified decrease measured
        with it, wrong by up to 1e-3 relative within 1e-11 of ``x_eq`` in float64 and by
        more than ``V`` itself within 1e-6 in float32.
        """
        xx = self._with_eq(x)
        Fxx = self.warp(xx) if self.warp is not None else xx
        shifted = self.g(Fxx, centered=True)[:-1]
        if self.shift == "tangent":
            # a warped V's grad V is taken through this forward and fitting differentiates it once
            # more: autograd's gradient then (the analytic one is once differentiable outside
            # functorch_safe, where its plain-op form is differentiated as often as needed)
            twice = self.warp is not None and not _FunctorchState.depth
            _, dg_eq = self.g.forward_and_grad(Fxx[-1:], method="autograd" if twice else "analytic")
            shifted = shifted - ((Fxx[:-1] - Fxx[-1:]) * dg_eq).sum(-1)
        dx = x - self.x_eq
        dx_sq = (dx * dx).sum(-1)
        shifted = self._exact_at_eq(shifted, dx_sq)
        V = torch.add(smooth_relu(shifted, self.d), dx_sq, alpha=self.eps)
        if self.L is not None:
            Ldx = dx @ self.L.t()
            V = V + (Ldx * Ldx).sum(-1)
        return V

    @staticmethod
    def _exact_at_eq(shifted: torch.Tensor, dx_sq: torch.Tensor) -> torch.Tensor:
        # The same row through a matrix product can round differently depending on its
        # position in the batch, so g(F(x)) - g(F(x_eq)) may be 1e-16 instead of 0 at
        # x = x_eq exactly; pin it, so that V(x_eq) = 0 and grad V(x_eq) = 0 exactly.
        # (Tested on ||x - x_eq||^2 == 0, which also holds where the square underflows,
        # below ~1e-23 in float32: states that close are x_eq to this precision.)
        return shifted.masked_fill(dx_sq == 0, 0.0)

    def forward_and_grad(
        self,
        x: torch.Tensor,
        *,
        create_graph: bool | None = None,
        x_with_eq: torch.Tensor | None = None,
        dx: torch.Tensor | None = None,
        dx_sq: torch.Tensor | None = None,
        precise: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``V(x): (batch,)`` and ``grad V(x): (batch, state_dim)`` for the whole batch.

        Without a warp the gradient is the ICNN's explicit reverse pass (fast; no autograd
        graph under ``torch.no_grad``, and differentiable when grad mode is on, which is how
        training back-propagates through ``grad V``). With a warp it goes through
        ``torch.autograd.grad`` on ``V.sum()``; ``create_graph`` defaults to
        ``torch.is_grad_enabled()`` (on while training, off under ``torch.no_grad``).
        A caller that already has them may pass ``x_with_eq = [x; x_eq]``, ``dx = x - x_eq``
        and ``dx_sq = ||dx||^2`` (the stable models share them with ``fhat``).
        ``precise=False`` (no warp): ``g(x) - g(x_eq)`` as the difference of two evaluations,
        cheaper and good to ~``u |g|`` absolute instead of relative precision down to ``x_eq``.
        """
        if self.warp is None:
            if dx is None:
                dx = x - self.x_eq
            if dx_sq is None:
                dx_sq = (dx * dx).sum(-1)
            gx, dg = self.g.forward_and_grad(self._with_eq(x) if x_with_eq is None else x_with_eq, centered=precise)
            if not precise:
                gx = torch.cat([gx[:-1] - gx[-1:], gx[-1:]])  # the centered form _outer takes
            V, grad = _outer_value_and_grad(gx, dg, dx, dx_sq, self.eps, self.d, self.shift == "tangent")
            if self.L is not None:
                Ldx = dx @ self.L.t()
                V = V + (Ldx * Ldx).sum(-1)
                grad = torch.addmm(grad, Ldx, self.L, alpha=2.0)
            return V, grad
        if _FunctorchState.depth:
            # Under vmap, torch.autograd.grad cannot batch; torch.func.vjp composes with it
            # (and its result stays differentiable for an outer backward). V is a sum of
            # per-row terms, so the vector-Jacobian product with ones is the per-row gradient.
            V, vjp = torch.func.vjp(self.forward, x)
            return V, vjp(torch.ones_like(V))[0]
        if create_graph is None:
            create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if (x.requires_grad and create_graph) else x.detach().requires_grad_(True)
            V = self.forward(xg)
            (grad,) = torch.autograd.grad(V.sum(), xg, create_graph=create_graph)
        if not create_graph:
            V, grad = V.detach(), grad.detach()
        return V, grad

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``grad V(x): (batch, state_dim)``; see ``forward_and_grad``."""
        return self.forward_and_grad(x)[1]

    def lower_constant(self) -> float:
        """A proven ``c1`` with ``V(x) >= c1 ||x - x_eq||^2`` everywhere: ``eps``, plus
        ``sigma_min(L)^2`` with the learned quadratic (the ICNN term is ``>= 0``).

        The smallest singular value is computed in float64 and shrunk by ``1e-12 ||L||^2``,
        more than its rounding, so the bound stays a lower one. A larger ``c1`` means a
        smaller certified overshoot ``sqrt(c2 / c1)``.
        """
        if self.L is None:
            return self.eps
        sv = torch.linalg.svdvals(self.L.detach().to("cpu", torch.float64))
        return self.eps + max(float(sv[-1]) ** 2 - 1e-12 * float(sv[0]) ** 2, 0.0)

    def upper_constant(self) -> float | None:
        """A proven ``c2`` with ``V(x) <= c2 ||x - x_eq||^2`` everywhere, or ``None`` with a warp.

        ``sigma_d(t) <= t^2 / (2d)`` and ``|g(x) - g(x_eq)| <= L ||x - x_eq||`` give
        ``c2 = L^2 / (2d) + eps`` with ``L = ICNN.lipschitz_bound()`` (loose but rigorous);
        with ``shift="tangent"`` the shifted value is at most ``2 L ||x - x_eq||``.
        """
        if self.warp is not None:
            return None
        L = self.g.lipschitz_bound() * (2.0 if self.shift == "tangent" else 1.0)
        quad = float(torch.linalg.matrix_norm(self.L.detach().double(), ord=2)) ** 2 if self.L is not None else 0.0
        return L * L / (2.0 * self.d) + self.eps + quad

    def extra_repr(self) -> str:
        return f"state_dim={self.state_dim}, eps={self.eps}, d={self.d}, warp={self.warp_name!r}, shift={self.shift!r}, quadratic={self.L is not None}"
