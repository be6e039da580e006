"""Input-convex neural network (Manek & Kolter eq. 11) and the smoothed ReLU of eq. 13.

``g(x) = z_k`` with

    z_1     = sigma(W_0 x + b_0)
    z_{i+1} = sigma(U_i z_i + W_i x + b_i),   i = 1 .. k-1              (eq. 11)

is convex in ``x`` when every ``U_i`` is elementwise non-negative and ``sigma`` is convex
and non-decreasing. The output layer is affine (no ``sigma``), as in the authors' released
code: a non-negative combination of convex functions plus an affine term is still convex,
and an output ``sigma`` can die (negative pre-activation on all data), freezing ``g`` and
leaving the Lyapunov function stuck at ``eps ||x||^2`` -- which we saw stall training. We keep ``U_i = softplus(U_raw_i)`` (the paper's choice, so gradient
steps never leave the feasible set) and use the smoothed ReLU (eq. 13), which is convex,
non-decreasing, continuously differentiable and 0 at 0:

    sigma_d(t) = 0            for t <= 0
               = t^2 / (2 d)  for 0 < t < d                              (eq. 13)
               = t - d / 2    for t >= d

``ICNN.forward_and_grad`` returns ``g`` and ``dg/dx`` for the whole batch with an explicit
backward pass through the layers (``method="analytic"``, the default) -- plain tensor ops,
so it needs no autograd graph at inference. For training it is one autograd node with a
hand-written backward (``_ICNNValueAndGrad``: a handful of matrix products instead of
dozens of recorded ops), which replaces ``torch.autograd.grad(create_graph=True)``;
it is differentiable once (parameter and input gradients of a loss on ``g`` and ``dg/dx``),
not twice.
``method="autograd"`` gives the same numbers through ``torch.autograd.grad`` and serves as
the reference in tests. The analytic pass is what keeps the stable model's cost close to
the plain MLP's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ICNN", "smooth_relu", "smooth_relu_grad", "smooth_relu_and_grad", "SmoothReLU"]


def smooth_relu(t: torch.Tensor, d: float = 0.1) -> torch.Tensor:
    """Eq. 13: 0 below 0, ``t^2/(2d)`` on ``[0, d]``, ``t - d/2`` above ``d``."""
    return smooth_relu_and_grad(t, d)[0]


def smooth_relu_grad(t: torch.Tensor, d: float = 0.1) -> torch.Tensor:
    """Derivative of ``smooth_relu``: ``clamp(t / d, 0, 1)`` (continuous, so V is C^1)."""
    return (t / d).clamp(0.0, 1.0)


def smooth_relu_and_grad(t: torch.Tensor, d: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(smooth_relu(t), smooth_relu'(t))`` in five elementwise ops.

    With ``r = max(t, 0)`` and ``m = min(r, d)``: ``sigma' = m / d`` and
    ``sigma = sigma' (r - m / 2)``, which is ``r^2 / 2d`` for ``r < d`` and ``r - d/2`` above.
    """
    r = torch.relu(t)
    m = r.clamp(max=d)
    slope = m * (1.0 / d)
    return slope * torch.sub(r, m, alpha=0.5), slope



def _value_and_grad(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, U: Sequence[torch.Tensor], widths: Sequence[int], d: float
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Eq. 11 forward and its explicit reverse pass, without autograd (in-place where safe).

    ``W: (sum widths, in_dim)`` and ``b`` stack every layer's input weights, ``U[i]: (widths[i+1],
    widths[i])``. Returns ``g: (batch,)``, ``dg/dx: (batch, in_dim)`` and what the backward of
    ``_ICNNValueAndGrad`` needs: the activations ``z_i``, the slopes ``sigma'(pre_i)``, the
    reverse-pass inputs ``e_i`` (with ``delta_i = e_i * slope_i``) and the stacked ``delta``.
    """
    g, zs, slopes = _value(x, W, b, U, widths, d, keep=True)
    # Reverse pass: delta_i = dg/d(pre_i) = e_i * sigma'(pre_i), e_{k-1} = U_{k-1} (the
    # affine output), e_i = delta_{i+1} U_i; dg/dx = sum_i delta_i W_i + W_k, one product
    # over the deltas, written side by side into one buffer (no concatenation).
    k = len(widths) - 1
    offsets = [0]
    for w in widths[:-1]:
        offsets.append(offsets[-1] + w)
    D = x.new_empty(x.shape[0], offsets[-1])
    es: list[torch.Tensor] = [U[-1]]
    delta = torch.mul(U[-1], slopes[-1], out=D[:, offsets[k - 1] : offsets[k]])
    for i in range(k - 2, -1, -1):
        e = delta @ U[i]
        es.append(e)
        delta = torch.mul(e, slopes[i], out=D[:, offsets[i] : offsets[i + 1]])
    es.reverse()
    grad = torch.addmm(W[-1:].expand(x.shape[0], -1), D, W[:-1])
    return g, grad, zs, slopes, es, D


def _value(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, U: Sequence[torch.Tensor], widths: Sequence[int], d: float, keep: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Eq. 11 forward without autograd: ``g: (batch,)``, and with ``keep`` the ``z_i`` and slopes."""
    k = len(widths) - 1  # hidden layers
    pre = torch.addmm(b, x, W.t()).split(list(widths), dim=1)
    zs: list[torch.Tensor] = []
    slopes: list[torch.Tensor] = []
    z = x
    for i in range(k):
        a = pre[0] if i == 0 else torch.addmm(pre[i], z, U[i - 1].t())
        # sigma'(a) = clamp(a, 0, d) / d and sigma(a) = sigma'(a) (relu(a) - d sigma'(a) / 2)
        slope = a.clamp(0.0, d).mul_(1.0 / d)
        z = torch.relu(a).sub_(slope, alpha=0.5 * d).mul_(slope)
        if keep:
            zs.append(z)
            slopes.append(slope)
    g = torch.addmm(pre[-1], z, U[-1].t()).squeeze(-1)
    return g, zs, slopes


class _ICNNValueAndGrad(torch.autograd.Function):
    """``(g, dg/dx)`` with a hand-written backward (first order; what training needs).

    Recording the reverse pass op by op costs dozens of autograd nodes per call; this
    backward is a handful of matrix products. Adjoints ``gbar`` of ``g`` and ``Gbar`` of
    ``dg/dx``: ``Dbar = Gbar W^T`` feeds the reverse pass backwards (through ``e_i`` and the
    slopes, ``d sigma'/d pre = 1/d`` on ``(0, d)``), then the forward pass is back-propagated.
    """

    @staticmethod
    def forward(ctx, widths, d, x, W, b, *U):
        g, grad, zs, slopes, es, D = _value_and_grad(x, W, b, U, widths, d)
        ctx.widths, ctx.d, ctx.k = tuple(widths), float(d), len(U)
        ctx.save_for_backward(x, W, D, *U, *zs, *slopes, *es[:-1])
        return g, grad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gbar, Gbar):
        widths, d, k = ctx.widths, ctx.d, ctx.k
        saved = ctx.saved_tensors
        x, W, D = saved[:3]
        U = saved[3 : 3 + k]
        zs = saved[3 + k : 3 + 2 * k]
        slopes = saved[3 + 2 * k : 3 + 3 * k]
        es = list(saved[3 + 3 * k :]) + [U[-1]]
        hidden = list(widths[:-1])
        deltas = D.split(hidden, dim=1)
        Ubar = [torch.zeros_like(u) for u in U]
        # 1. Back through dg/dx = sum_i delta_i W_i + W_k and the reverse pass (i = 0 .. k-1).
        dbar = list((Gbar @ W[:-1].t()).split(hidden, dim=1))
        sbar = []
        for i in range(k):
            sbar.append(dbar[i] * es[i])
            ebar = dbar[i] * slopes[i]
            if i < k - 1:
                dbar[i + 1] = torch.addmm(dbar[i + 1], ebar, U[i].t())
                Ubar[i] += deltas[i + 1].t() @ ebar
            else:
                Ubar[i] += ebar.sum(0, keepdim=True)
        # 2. Back through the forward pass (i = k .. 0); pbar_i = adjoint of pre_i.
        pbars: list[torch.Tensor] = [gbar.unsqueeze(-1)]
        Ubar[k - 1] += pbars[0].t() @ zs[k - 1]
        zbar = pbars[0] @ U[k - 1]
        for i in range(k - 1, -1, -1):
            s = slopes[i]
            inside = (s > 0) & (s < 1)  # where sigma'' = 1/d
            p = torch.addcmul(zbar * s, sbar[i], inside.to(s.dtype), value=1.0 / d)
            pbars.append(p)
            if i > 0:
                Ubar[i - 1] += p.t() @ zs[i - 1]
                zbar = p @ U[i - 1]
        pbars.reverse()
        P = torch.cat(pbars, dim=1)  # (batch, sum widths)
        xbar = P @ W if ctx.needs_input_grad[2] else None
        Wbar = bbar = None
        if ctx.needs_input_grad[3]:
            Wbar = P.t() @ x
            Wbar[:-1] += D.t() @ Gbar
            Wbar[-1] += Gbar.sum(0)
        if ctx.needs_input_grad[4]:
            bbar = P.sum(0)
        return (None, None, xbar, Wbar, bbar, *[ub if ctx.needs_input_grad[5 + i] else None for i, ub in enumerate(Ubar)])


class SmoothReLU(nn.Module):
    """Module form of eq. 13 with width ``d``."""

    def __init__(self, d: float = 0.1) -> None:
        super().__init__()
        if not (d > 0 and math.isfinite(d)):
            raise ValueError(f"d must be a finite number > 0, got {d!r}")
        self.d = float(d)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return smooth_relu(t, self.d)

    def extra_repr(self) -> str:
        return f"d={self.d}"


class ICNN(nn.Module):
    """Scalar input-convex network ``g: (batch, in_dim) -> (batch,)`` (eq. 11).

    Args:
        in_dim: input dimension.
        hidden: widths of the hidden layers (the paper's V uses ``(60, 60)``); the affine
            output layer of width 1 is added on top, so there are ``len(hidden) + 1`` layers.
        d: width of the smoothed ReLU's quadratic region (eq. 13).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (60, 60), d: float = 0.1) -> None:
        super().__init__()
        if int(in_dim) < 1:
            raise ValueError(f"in_dim must be >= 1, got {in_dim!r}")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden!r}")
        if not (d > 0 and math.isfinite(d)):
            raise ValueError(f"d must be a finite number > 0, got {d!r}")
        self.in_dim = int(in_dim)
        self.hidden = hidden
        self.d = float(d)
        widths = hidden + (1,)
        self.widths = widths
        # W_i x + b_i: one Linear per layer from the input.
        self.W = nn.ModuleList(nn.Linear(self.in_dim, w) for w in widths)
        # U_i = softplus(U_raw_i) >= 0 on the z-path (layers 1..k-1).
        self.U_raw = nn.ParameterList(nn.Parameter(torch.empty(widths[i + 1], widths[i])) for i in range(len(widths) - 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in self.W:
            lin.reset_parameters()
        for u in self.U_raw:
            # Kaiming-uniform like nn.Linear, then shifted down so softplus(U) starts ~ 1/fan_in
            # scale instead of ~0.7 per entry (which makes deep ICNNs blow up at init).
            nn.init.kaiming_uniform_(u, a=math.sqrt(5))
            with torch.no_grad():
                u.sub_(math.log(u.shape[1]))

    def positive_weights(self) -> list[torch.Tensor]:
        """The non-negative z-path weights ``U_i = softplus(U_raw_i)``."""
        return [F.softplus(u) for u in self.U_raw]

    def _input_terms(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        # All W_i x + b_i in one matrix product (one kernel instead of k): (batch, sum widths).
        W = torch.cat([lin.weight for lin in self.W])
        b = torch.cat([lin.bias for lin in self.W])
        return torch.addmm(b, x, W.t()).split(self.widths, dim=1), W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (batch, in_dim)`` -> ``g(x): (batch,)``."""
        U = self.positive_weights()
        if not torch.is_grad_enabled():  # inference: in-place activations, no graph
            W = torch.cat([lin.weight for lin in self.W])
            b = torch.cat([lin.bias for lin in self.W])
            return _value(x, W, b, U, self.widths, self.d)[0]
        pre, _ = self._input_terms(x)
        z = smooth_relu(pre[0], self.d)
        for i in range(1, len(pre) - 1):
            z = smooth_relu(torch.addmm(pre[i], z, U[i - 1].t()), self.d)
        return torch.addmm(pre[-1], z, U[-1].t()).squeeze(-1)

    def forward_and_grad(self, x: torch.Tensor, *, method: str = "analytic", create_graph: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``g(x): (batch,)`` and ``dg/dx: (batch, in_dim)`` for the whole batch at once.

        Args:
            x: ``(batch, in_dim)``.
            method: ``"analytic"`` (explicit reverse pass through the layers; once
                differentiable when grad mode is on, via a hand-written backward; no autograd
                graph under ``torch.no_grad``) or ``"autograd"`` (``torch.autograd.grad``,
                twice differentiable with ``create_graph``; the reference).
            create_graph: ``"autograd"`` only; default ``torch.is_grad_enabled()``.
        """
        if method == "autograd":
            if create_graph is None:
                create_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                xg = x if (x.requires_grad and create_graph) else x.detach().requires_grad_(True)
                g = self.forward(xg)
                (grad,) = torch.autograd.grad(g.sum(), xg, create_graph=create_graph)
            return (g, grad) if create_graph else (g.detach(), grad.detach())
        if method != "analytic":
            raise ValueError(f"method must be 'analytic' or 'autograd', got {method!r}")
        U = self.positive_weights()
        W = torch.cat([lin.weight for lin in self.W])
        b = torch.cat([lin.bias for lin in self.W])
        if torch.is_grad_enabled() and (x.requires_grad or W.requires_grad or b.requires_grad or any(u.requires_grad for u in U)):
            return _ICNNValueAndGrad.apply(self.widths, self.d, x, W, b, *U)
        return _value_and_grad(x, W, b, U, self.widths, self.d)[:2]

    def lipschitz_bound(self) -> float:
        """An upper bound on the Lipschitz constant of ``g`` (operator 2-norms, cf. eq. 17).

        ``sigma_d`` is 1-Lipschitz (and the output layer affine), so ``L_1 <= ||W_0||`` and
        ``L_{i+1} <= ||U_i|| L_i + ||W_i||``.
        """
        with torch.no_grad():
            U = self.positive_weights()
            L = torch.linalg.matrix_norm(self.W[0].weight.double(), ord=2)
            for i in range(1, len(self.W)):
                L = torch.linalg.matrix_norm(U[i - 1].double(), ord=2) * L + torch.linalg.matrix_norm(self.W[i].weight.double(), ord=2)
        return float(L)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}, d={self.d}"
