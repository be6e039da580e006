"""Input-convex neural network (Manek & Kolter eq. 11) and the smoothed ReLU of eq. 13.

``g(x) = z_k`` with

    z_1     = sigma(W_0 x + b_0)
    z_{i+1} = sigma(U_i z_i + W_i x + b_i),   i = 1 .. k-1              (eq. 11)

is convex in ``x`` when every ``U_i`` is elementwise non-negative and ``sigma`` is convex
and non-decreasing. The output layer is affine (no ``sigma``), as in the authors' released
code: a non-negative combination of convex functions plus an affine term is still convex,
and an output ``sigma`` can die (negative pre-activation on all data), freezing ``g`` and
leaving the Lyapunov function stuck at ``eps ||x||^2`` -- which we saw stall training. We
keep ``U_i = softplus(U_raw_i)`` (the paper's choice, so gradient steps never leave the
feasible set) and use the smoothed ReLU (eq. 13), which is convex,
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

Why it is fast (measured by ``examples/benchmarks/bench_stable.py``): every layer's input
term ``W_i x + b_i`` is one matrix product; all weights are one parameter vector ``theta``
(one optimiser update, one gradient; ``W``, ``U_raw`` are views and ``state_dict`` keeps the
per-layer keys ``W.{i}.weight``, ``W.{i}.bias``, ``U_raw.{i}``); ``1/d`` is folded into
``U``, so a layer is ``clamp`` plus two in-place passes; the analytic pass is feature-major
(each layer's block of pre-activations is contiguous and the z-path product accumulates
into it in place); and inside ``ICNN.reuse_weights()`` the stacked weights and
``softplus(U_raw)`` are built once for all the evaluations of one integrator step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .integrators import _FunctorchState

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



def _offsets(widths: Sequence[int]) -> list[int]:
    out = [0]
    for w in widths:
        out.append(out[-1] + w)
    return out


def _z_shapes(widths: Sequence[int]) -> list[tuple[int, int]]:
    """Shapes of the z-path weights ``U_i: (widths[i+1], widths[i])``."""
    return [(widths[i + 1], widths[i]) for i in range(len(widths) - 1)]


def _unflatten(flat: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Views of consecutive blocks of ``flat`` (``(..., total)``: stacked networks' parameters
    keep their leading dimensions) with ``shapes``."""
    out, start = [], 0
    for rows, cols in shapes:
        out.append(flat[..., start : start + rows * cols].unflatten(-1, (rows, cols)))
        start += rows * cols
    return out


class _Plan(NamedTuple):
    """Everything the analytic passes need, as ready-made views (built once per call, or once
    per ``reuse_weights`` block, so that the hot loop issues as few tensor ops as possible).

    ``A: (rows, in_dim)`` the stacked input weights (rows past ``sum widths`` are zero
    padding), ``b1: (rows, 1)``, ``Ud[i] = U_i / d`` and ``UdT[i]`` its transpose,
    ``W: (sum widths, in_dim)`` for the gradient product, ``sizes`` the row blocks of ``A``
    (layers, then padding) and ``dsizes`` those of the delta buffer (hidden layers, then 1).
    """

    A: torch.Tensor
    b1: torch.Tensor
    Ud: list[torch.Tensor]
    UdT: list[torch.Tensor]
    W: torch.Tensor
    sizes: list[int]
    dsizes: list[int]


def _plan(W: torch.Tensor, b: torch.Tensor, Ud: list[torch.Tensor], widths: Sequence[int], Wt: torch.Tensor | None = None) -> _Plan:
    """``W, b`` may carry zero padding rows; ``Wt``: ``W^T`` made contiguous (BLAS is faster
    with it for the input product)."""
    rows = sum(widths)
    pad = W.shape[0] - rows
    sizes = list(widths) + ([pad] if pad else [])
    return _Plan(W if Wt is None else Wt.t(), b.unsqueeze(-1), Ud, [u.t() for u in Ud], W[:rows], sizes, list(widths[:-1]) + [1])


def _centered_activation(a: torch.Tensor, d: float, need_m: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``zh = d sigma(a)`` of one layer in difference form; ``a: (width, batch + 1)``.

    The columns ``:-1`` of ``a`` hold ``delta = a(x_i) - a(x_ref)``, the last ``p = a(x_ref)``;
    ``zh`` comes back in the same form (``zh(x_i) - zh(x_ref)``, then ``zh(x_ref)``) and, with
    ``need_m``, ``m`` absolute (``clamp(a(x_i), 0, d)``, then ``clamp(p, 0, d)``). The difference
    is the integral of ``clamp(t, 0, d)`` from ``p`` to ``p + delta``: with ``P = clamp(p, 0, d)``,
    ``t = delta + p - P`` and ``dC = clamp(t, -P, d - P)`` (the change of the clamp), it is
    ``dC (t - dC / 2) + P delta``. No two nearly equal numbers are subtracted, so near
    ``x_ref`` the difference keeps its relative precision (subtracting ``zh(x_ref)`` from
    ``zh(x_i)`` would leave only the rounding of ``zh(x_ref)``).
    """
    p, delta = a[:, -1:], a[:, :-1]
    P = p.clamp(0.0, d)
    t = delta + (p - P)
    dC = torch.maximum(t, P.neg())  # clamp with tensor bounds is several times slower than max, min
    torch.minimum(dC, d - P, out=dC)
    t.sub_(dC, alpha=0.5).mul_(dC).addcmul_(delta, P)
    m = torch.cat([dC.add_(P), P], dim=1) if need_m else None
    return torch.cat([t, p.sub(P, alpha=0.5).mul_(P)], dim=1), m


def _centered_activation_plain(a: torch.Tensor, d: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``_centered_activation`` batch-major (``a: (..., batch + 1, width)``, the reference row
    last), out of place: differentiable by ordinary autograd and batched by ``vmap``."""
    p, delta = a[..., -1:, :], a[..., :-1, :]
    P = p.clamp(0.0, d)
    e = p - P
    dC = torch.clamp(delta + e, min=-P, max=d - P)
    M = P + dC
    return torch.cat([M * delta + dC * (e - 0.5 * dC), (p - 0.5 * P) * P], dim=-2), torch.cat([M, P], dim=-2)


def _centered_input(x: torch.Tensor) -> torch.Tensor:
    """``[x_i - x_ref; x_ref]`` from ``x = [x_i; x_ref]`` (``(..., batch + 1, in_dim)``): the input
    of the difference form."""
    return torch.cat([x[..., :-1, :] - x[..., -1:, :], x[..., -1:, :]], dim=-2)


def _affine(bias: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """``bias + x @ weight_t``: ``addmm`` for one network, ``baddbmm`` for stacked ones
    (``x: (E, batch, k)``, ``weight_t: (E, k, out)``, ``bias: (E, out)`` or ``(E, batch, out)``)."""
    if x.ndim == 2:
        return torch.addmm(bias, x, weight_t)
    return torch.baddbmm(bias if bias.ndim == 3 else bias.unsqueeze(-2), x, weight_t)


def _value(x: torch.Tensor, plan: _Plan, d: float, keep: bool = False, centered: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Eq. 11 forward without autograd: ``g: (batch,)``, and with ``keep`` the ``zh_i`` and ``m_i``.

    With ``m = clamp(a, 0, d) = d sigma'(a)`` a layer is ``zh = m (a - m / 2) = d sigma(a)``
    (``0`` for ``a <= 0``, ``a^2 / 2`` on ``[0, d]``, ``d (a - d/2)`` above): two in-place
    passes after the clamp, and the ``1 / d`` rides on the (small) next weight matrix.

    Feature-major: the pre-activations of all layers are one ``(rows, batch)`` buffer, so each
    layer's block is contiguous, the z-path product accumulates into it in place (``addmm_``,
    no copy of the input term) and ``zh_i, m_i`` are ``(widths[i], batch)``.

    ``centered``: the last row of ``x`` is a reference ``x_ref`` and ``g`` comes back as
    ``[g(x_i) - g(x_ref); g(x_ref)]``, every layer carried in difference form (see
    ``_centered_activation``; the layers are affine in ``x`` and ``zh`` apart from the
    activation, so the bias only enters the reference column). ``zh_i`` are then in
    difference form too; ``m_i`` are absolute.
    """
    k = len(plan.Ud)  # hidden layers
    if centered:
        pre = torch.mm(plan.A, _centered_input(x).t())
        pre[:, -1:].add_(plan.b1)
    else:
        pre = torch.addmm(plan.b1, plan.A, x.t())
    blocks = pre.split(plan.sizes)
    zs: list[torch.Tensor] = []
    ms: list[torch.Tensor] = []
    z = x
    for i in range(k):
        a = blocks[i]
        if i > 0:
            a.addmm_(plan.Ud[i - 1], z)
        if centered:
            z, m = _centered_activation(a, d, keep)
        else:
            m = a.clamp(0.0, d)
            z = a.sub_(m, alpha=0.5).mul_(m)  # in place: a is this call's own buffer
        if keep:
            zs.append(z)
            ms.append(m)
    g = blocks[k].addmm_(plan.Ud[-1], z).view(-1)
    return g, zs, ms


def _value_and_grad(
    x: torch.Tensor, plan: _Plan, d: float, keep: bool = False, centered: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Eq. 11 forward and its explicit reverse pass, without autograd (in-place where safe).

    Returns ``g: (batch,)``, ``dg/dx: (batch, in_dim)`` and, with ``keep``, what the backward
    of ``_ICNNValueAndGrad`` needs (feature-major): ``zh_i``, ``m_i``, the reverse-pass inputs
    ``e_i`` (``delta_i = e_i * m_i``) and ``D = [delta_0; ...; delta_{k-1}; 1]: (sum hidden + 1, batch)``.
    ``centered``: ``g`` (and ``zh_i``) in difference form, see ``_value``; ``dg/dx`` is absolute.
    """
    g, zs, ms = _value(x, plan, d, keep=True, centered=centered)
    # Reverse pass: delta_i = dg/d(a_i) = e_i * m_i with e_{k-1} = U_{k-1}^T / d (the affine
    # output) and e_i = U_i^T delta_{i+1} / d. The deltas are stacked in one buffer whose last
    # row is 1, so that dg/dx = sum_i delta_i^T W_i + W_k is one product.
    k = len(plan.Ud)
    D = x.new_empty(plan.W.shape[0], x.shape[0])  # sum hidden + 1 rows
    Dblocks = D.split(plan.dsizes)
    Dblocks[k].fill_(1.0)
    es: list[torch.Tensor] = [plan.UdT[-1]]
    delta = torch.mul(ms[-1], plan.UdT[-1], out=Dblocks[k - 1])
    for i in range(k - 2, -1, -1):
        if keep:
            e = plan.UdT[i] @ delta
            es.append(e)
            delta = torch.mul(e, ms[i], out=Dblocks[i])
        else:
            delta = torch.mm(plan.UdT[i], delta, out=Dblocks[i]).mul_(ms[i])
    es.reverse()
    grad = torch.mm(D.t(), plan.W)
    return g, grad, zs, ms, es, D


def _value_and_grad_plain(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, Ud: list[torch.Tensor], widths: Sequence[int], d: float,
                          need_grad: bool = True, centered: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(g: (batch,), dg/dx: (batch, in_dim))`` with plain out-of-place ops (for ``functorch_safe``;
    with stacked networks' ``W: (E, sum widths, in_dim)``, ``b``, ``Ud`` and ``x: (E, batch,
    in_dim)`` every member at once: ``(E, batch)``, ``(E, batch, in_dim)``).

    The same eq. 11 forward and reverse pass as ``_value_and_grad`` (``1/d`` folded into
    ``Ud[i] = softplus(U_raw_i) / d``, so a layer is ``zh = m (a - m/2) = d sigma(a)`` with
    ``m = clamp(a, 0, d)``), batch-major, without ``out=``, in-place updates or a custom
    autograd node: ``vmap`` batches it and ordinary autograd differentiates it (once or more).
    ``W: (sum widths, in_dim)``, ``b: (sum widths,)``. Without ``need_grad`` the gradient is ``None``.
    ``centered``: ``g`` in difference form against the last row, as ``_value``.
    """
    k = len(Ud)
    if centered:
        pre = _centered_input(x) @ W.transpose(-1, -2)
        pre = torch.cat([pre[..., :-1, :], pre[..., -1:, :] + b.unsqueeze(-2)], dim=-2)  # the bias enters the reference row only
    else:
        pre = _affine(b, x, W.transpose(-1, -2))
    # split, not slices: its backward is one cat, where each slice's would zero-fill a full-size buffer
    pre = pre.split(list(widths), dim=-1)  # per layer (..., batch, widths[i])
    ms: list[torch.Tensor] = []
    zh = x
    for i in range(k):
        a = pre[i] if i == 0 else _affine(pre[i], zh, Ud[i - 1].transpose(-1, -2))
        if centered:
            zh, m = _centered_activation_plain(a, d)
        else:
            m = a.clamp(0.0, d)  # d sigma'(a)
            zh = torch.sub(a, m, alpha=0.5) * m  # d sigma_d(a), eq. 13
        ms.append(m)
    g = _affine(pre[k], zh, Ud[-1].transpose(-1, -2)).squeeze(-1)
    if not need_grad:
        return g, None
    # delta_i = dg/da_i = (delta_{i+1} Ud_i) m_i, delta_{k-1} = Ud_{k-1} m_{k-1};
    # dg/dx = sum_i delta_i W_i + W_k, one product with the deltas stacked.
    delta = ms[-1] * Ud[-1]
    deltas = [delta]
    for i in range(k - 2, -1, -1):
        delta = (delta @ Ud[i]) * ms[i]
        deltas.append(delta)
    deltas.reverse()
    rows = W.shape[-2] - widths[-1]
    last = W[rows] if W.ndim == 2 else W[:, rows:rows + 1]  # the output layer's input weights
    grad = _affine(last, torch.cat(deltas, dim=-1), W[..., :rows, :])
    return g, grad


_hardtanh_backward = torch.ops.aten.hardtanh_backward  # (grad, x, lo, hi) -> grad where lo < x < hi, else 0


def _split_theta(theta: torch.Tensor, widths: Sequence[int], in_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views ``(W: (sum widths, in_dim), b: (sum widths,), U_raw: flat)`` of the ICNN's one parameter."""
    rows = sum(widths)
    n_w = rows * in_dim
    return theta[..., :n_w].unflatten(-1, (rows, in_dim)), theta[..., n_w : n_w + rows], theta[..., n_w + rows :]


class _ICNNValueAndGrad(torch.autograd.Function):
    """``(g, dg/dx)`` with a hand-written backward (first order; what training needs).

    Recording the reverse pass op by op costs dozens of autograd nodes per call; this
    backward is a handful of matrix products. Adjoints ``gbar`` of ``g`` and ``Gbar`` of
    ``dg/dx``: ``Dbar = W Gbar^T`` feeds the reverse pass backwards (through ``e_i`` and
    ``m_i``, with ``dm/da = 1`` on ``(0, d)``), then the forward pass is back-propagated
    (``d zh / da = m``). Inputs: ``x`` and the ICNN's single parameter vector ``theta``
    (``U = softplus(U_raw)`` and the ``1 / d`` are applied inside; ``softplus' = sigmoid``).
    Feature-major like ``_value``: ``P`` stacks the adjoints of all pre-activations.
    ``centered``: ``g`` in difference form (``_value``); its adjoint is turned into that of
    the absolute values (the reference row's gets minus the others' sum) and the saved
    ``zh_i`` are made absolute, so the backward itself is the same.
    """

    @staticmethod
    def forward(ctx, widths, d, x, theta, centered=False):
        W, b, U_raw = _split_theta(theta, widths, x.shape[1])
        Ud = _unflatten(F.softplus(U_raw).mul_(1.0 / d), _z_shapes(widths))
        g, grad, zs, ms, es, D = _value_and_grad(x, _plan(W, b, Ud, widths), d, keep=True, centered=centered)
        if centered:  # the backward needs zh(x_i) itself for the z-path weights' adjoints
            zs = [torch.cat([z[:, :-1] + z[:, -1:], z[:, -1:]], dim=1) for z in zs]
        ctx.widths, ctx.d, ctx.k, ctx.centered = tuple(widths), float(d), len(Ud), bool(centered)
        ctx.save_for_backward(x, theta, D, *Ud, *zs, *ms, *es[:-1])
        return g, grad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gbar, Gbar):
        if ctx.centered:
            gbar = torch.cat([gbar[:-1], gbar[-1:] - gbar[:-1].sum(0, keepdim=True)])
        widths, d, k = ctx.widths, ctx.d, ctx.k
        saved = ctx.saved_tensors
        x, theta, D = saved[:3]
        W, _, U_raw = _split_theta(theta, widths, x.shape[1])
        Ud = saved[3 : 3 + k]
        zs = saved[3 + k : 3 + 2 * k]
        ms = saved[3 + 2 * k : 3 + 3 * k]
        es = list(saved[3 + 3 * k :]) + [Ud[-1].t()]
        off = _offsets(widths)
        hidden = list(widths[:-1])
        rows = off[k + 1]
        deltas = D[: off[k]].split(hidden)
        # P: the adjoints of all pre-activations stacked, (rows, batch); the output layer's is gbar.
        P = Gbar.new_empty(rows, Gbar.shape[0])
        P[off[k]].copy_(gbar)
        gbar = gbar.unsqueeze(0)
        Udbar: list[torch.Tensor] = [None] * k  # type: ignore[list-item]
        # 1. Back through dg/dx = D^T W and the reverse pass (i = 0 .. k-1).
        dbar = list((W[: off[k]] @ Gbar.t()).split(hidden))
        mbar = []
        for i in range(k):
            mbar.append(dbar[i] * es[i])
            ebar = dbar[i] * ms[i]
            if i < k - 1:  # e_i = U_i^T delta_{i+1} / d
                dbar[i + 1] = torch.addmm(dbar[i + 1], Ud[i], ebar)
                Udbar[i] = deltas[i + 1] @ ebar.t()
            else:  # e_{k-1} = U_{k-1}^T / d; plus the output layer's g = pre_k + U_{k-1} zh_{k-1} / d
                Udbar[i] = torch.addmm(ebar.sum(1).unsqueeze(0), gbar, zs[i].t())
        # 2. Back through the forward pass (i = k-1 .. 0): abar_i = zbar_i m_i + mbar_i dm/da.
        zbar = Ud[k - 1].t() * gbar
        for i in range(k - 1, -1, -1):
            m = ms[i]
            p = torch.addcmul(_hardtanh_backward(mbar[i], m, 0.0, d), zbar, m, out=P[off[i] : off[i + 1]])
            if i > 0:
                Udbar[i - 1] = torch.addmm(Udbar[i - 1], p, zs[i - 1].t())
                zbar = Ud[i - 1].t() @ p
        xbar = theta_bar = None
        if ctx.needs_input_grad[2]:
            xbar = P.t() @ W
        if ctx.needs_input_grad[3]:
            Wbar = torch.addmm(P @ x, D, Gbar)
            # U = softplus(U_raw) / d inside: dU/dU_raw = sigmoid(U_raw) / d.
            Ubar = torch.cat([u.reshape(-1) for u in Udbar]).mul_(torch.sigmoid(U_raw)).mul_(1.0 / d)
            theta_bar = torch.cat([Wbar.reshape(-1), P.sum(1), Ubar])
        return None, None, xbar, theta_bar, None


class _WeightsCache:
    """State of ``ICNN.reuse_weights`` (a plain object: no ``nn.Module.__setattr__`` per step).
    Copies and pickles start inactive and empty."""

    __slots__ = ("active", "grad_mode", "value")

    def __init__(self) -> None:
        self.active, self.grad_mode, self.value = False, False, None

    def __deepcopy__(self, memo) -> "_WeightsCache":
        return _WeightsCache()

    def __reduce__(self):
        return (_WeightsCache, ())


class _Prepared(NamedTuple):
    """The weights in the form the passes need, built once per call (or per ``reuse_weights`` block)."""

    W: torch.Tensor
    b: torch.Tensor
    U: torch.Tensor
    plan: _Plan | None  # without grad mode only


class _LayerView(NamedTuple):
    """One ICNN layer's input weights: views into the stacked parameters."""

    weight: torch.Tensor
    bias: torch.Tensor


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
        # W_i x + b_i for every layer, stacked: rows off[i]:off[i+1] are layer i's (one matrix
        # product per call). state_dict keeps the per-layer keys "W.{i}.weight", "W.{i}.bias"
        # and "U_raw.{i}" (see _save_to_state_dict): checkpoints and weights hashes unchanged.
        # U_i = softplus(U_raw_i) >= 0 on the z-path. All weights live in ONE parameter vector
        # theta = [input weights | input biases | U_raw], with views for each piece: one tensor
        # for the optimiser to update (its per-tensor cost dominates small models) and one
        # gradient from the hand-written backward.
        rows = sum(widths)
        self._z_shapes = _z_shapes(widths)
        self.theta = nn.Parameter(torch.empty(rows * self.in_dim + rows + sum(r * c for r, c in self._z_shapes)))
        self._cache = _WeightsCache()  # see reuse_weights
        # nn.Linear draws its initial weights at construction and reset_parameters draws them
        # again; drawing twice keeps seeded initialisations identical to the per-layer layout.
        self._reset_input_weights()
        self.reset_parameters()

    @property
    def input_weight(self) -> torch.Tensor:
        """All layers' input weights stacked, ``(sum widths, in_dim)`` (a view of ``theta``)."""
        return _split_theta(self.theta, self.widths, self.in_dim)[0]

    @property
    def input_bias(self) -> torch.Tensor:
        """All layers' biases stacked, ``(sum widths,)`` (a view of ``theta``)."""
        return _split_theta(self.theta, self.widths, self.in_dim)[1]

    @property
    def U_raw_flat(self) -> torch.Tensor:
        """All z-path weights before softplus, flat (a view of ``theta``)."""
        return _split_theta(self.theta, self.widths, self.in_dim)[2]

    def _layer_rows(self) -> list[tuple[int, int]]:
        off = _offsets(self.widths)
        return [(off[i], off[i + 1]) for i in range(len(self.widths))]

    @property
    def W(self) -> list["_LayerView"]:
        """Per-layer views ``W[i].weight: (widths[i], in_dim)``, ``W[i].bias`` of the stacked input weights."""
        return [_LayerView(self.input_weight[a:b], self.input_bias[a:b]) for a, b in self._layer_rows()]

    def _reset_input_weights(self) -> None:
        # Per layer, exactly nn.Linear's initialisation (Kaiming-uniform weight, uniform bias).
        for layer in self.W:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(self.in_dim)
            nn.init.uniform_(layer.bias, -bound, bound)

    def reset_parameters(self) -> None:
        self._reset_input_weights()
        self.reset_z_path()

    def reset_z_path(self, offset: float | None = None) -> None:
        """Re-draw the z-path weights: Kaiming-uniform ``U_raw`` (like ``nn.Linear``) minus ``offset``.

        The default ``offset = log(fan_in)`` starts ``U = softplus(U_raw)`` near ``1 / fan_in``
        per entry instead of ~0.7 (the paper's softplus of PyTorch's default, ``offset = 0``),
        which makes deep ICNNs blow up at initialisation. A smaller offset (e.g. 1) gives ``g``
        more curvature from the start.
        """
        if offset is not None and not math.isfinite(offset):
            raise ValueError(f"offset must be a finite number or None, got {offset!r}")
        with torch.no_grad():
            for u in self.U_raw:
                nn.init.kaiming_uniform_(u, a=math.sqrt(5))
                u.sub_(math.log(u.shape[1]) if offset is None else float(offset))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # The per-layer layout of earlier versions: "W.{i}.weight", "W.{i}.bias", "U_raw.{i}".
        super()._save_to_state_dict(destination, prefix, keep_vars)
        weight, bias, flat = _split_theta(destination.pop(prefix + "theta"), self.widths, self.in_dim)
        for i, (a, b) in enumerate(self._layer_rows()):
            destination[f"{prefix}W.{i}.weight"] = weight[a:b]
            destination[f"{prefix}W.{i}.bias"] = bias[a:b]
        for i, u in enumerate(_unflatten(flat, self._z_shapes)):
            destination[f"{prefix}U_raw.{i}"] = u

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Assemble theta from "W.{i}.weight", "W.{i}.bias", "U_raw.{i}" (a file holding "theta"
        # directly loads too). Shape mismatches are reported per layer, as nn.Module does.
        expected = {f"{prefix}W.{i}.weight": (w, self.in_dim) for i, w in enumerate(self.widths)}
        expected.update({f"{prefix}W.{i}.bias": (w,) for i, w in enumerate(self.widths)})
        expected.update({f"{prefix}U_raw.{i}": shape for i, shape in enumerate(self._z_shapes)})
        if all(key in state_dict for key in expected):
            ok = True
            for key, shape in expected.items():
                if tuple(state_dict[key].shape) != shape:
                    error_msgs.append(
                        f"size mismatch for {key}: copying a param with shape {tuple(state_dict[key].shape)} "
                        f"from checkpoint, the shape in current model is {torch.Size(shape)}."
                    )
                    ok = False
            pieces = {key: state_dict.pop(key) for key in expected}
            if not ok:
                return
            n = len(self.widths)
            order = [f"{prefix}W.{i}.weight" for i in range(n)] + [f"{prefix}W.{i}.bias" for i in range(n)]
            order += [f"{prefix}U_raw.{i}" for i in range(len(self._z_shapes))]
            state_dict[prefix + "theta"] = torch.cat([pieces[key].reshape(-1) for key in order])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    @property
    def U_raw(self) -> list[torch.Tensor]:
        """The z-path weights before softplus, ``U_raw[i]: (widths[i+1], widths[i])`` (views)."""
        return _unflatten(self.U_raw_flat, self._z_shapes)

    def positive_weights(self) -> list[torch.Tensor]:
        """The non-negative z-path weights ``U_i = softplus(U_raw_i)``."""
        return _unflatten(F.softplus(self.U_raw_flat), self._z_shapes)

    def _stacked_input_weights(self, pad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        # All W_i x + b_i as one matrix product (one kernel instead of k), padded with zero
        # rows to a multiple of 8: BLAS is markedly slower for odd widths (121 vs 128 columns).
        rows = sum(self.widths)
        pad = -rows % 8 if pad else 0
        if not pad:
            return self.input_weight, self.input_bias
        W, b = self.input_weight, self.input_bias
        return torch.cat([W, W.new_zeros(pad, self.in_dim)]), torch.cat([b, b.new_zeros(pad)])

    def _prepared(self) -> _Prepared:
        """Stacked input weights ``W, b``, the flat positive z-path weights ``U`` and, without
        grad mode, the ``_Plan`` of the analytic passes.

        Inside ``reuse_weights()`` they are built once (per grad mode) and shared by every
        call; otherwise rebuilt on each call.
        """
        grad_mode = torch.is_grad_enabled()
        cache = self._cache
        if cache.active and cache.value is not None and cache.grad_mode == grad_mode:
            return cache.value
        W, b = self._stacked_input_weights(pad=not grad_mode)
        U = F.softplus(self.U_raw_flat)
        if grad_mode:
            prepared = _Prepared(W, b, U, None)
        else:
            prepared = _Prepared(W, b, U, _plan(W, b, _unflatten(U * (1.0 / self.d), self._z_shapes), self.widths, W.t().contiguous()))
        if cache.active:
            cache.grad_mode, cache.value = grad_mode, prepared
        return prepared

    @contextlib.contextmanager
    def reuse_weights(self):
        """Within the block, build the stacked input weights and ``softplus(U_raw)`` once.

        For a fixed set of weights evaluated many times (the stages of one RK4 step and its
        rescale); do not update the parameters inside the block. Re-entrant.
        """
        cache = self._cache
        if cache.active:
            yield
            return
        cache.active = True
        try:
            yield
        finally:
            cache.active, cache.value = False, None

    def forward(self, x: torch.Tensor, *, centered: bool = False) -> torch.Tensor:
        """``x: (batch, in_dim)`` -> ``g(x): (batch,)``.

        ``centered``: the last row of ``x`` is a reference ``x_ref``; returns
        ``[g(x_i) - g(x_ref); g(x_ref)]`` with the differences computed layer by layer in
        difference form, so that they keep their relative precision however close ``x_i``
        is to ``x_ref`` (``g(x_i) - g(x_ref)`` from two full evaluations keeps only the
        rounding of ``g(x_ref)`` there).
        """
        if _FunctorchState.depth:  # under vmap: no weights cache, no in-place passes
            return self._plain_value_and_grad(x, need_grad=False, centered=centered)[0]
        W, b, U, plan = self._prepared()
        if plan is not None:  # no grad mode: in-place activations, no graph
            return _value(x, plan, self.d, centered=centered)[0]
        if centered:
            return self._plain_value_and_grad(x, need_grad=False, centered=True)[0]
        off = _offsets(self.widths)
        pre = torch.addmm(b, x, W.t())  # (batch, sum widths + padding)
        U = _unflatten(U, self._z_shapes)
        z = smooth_relu(pre[:, : off[1]], self.d)
        for i in range(1, len(self.widths) - 1):
            z = smooth_relu(torch.addmm(pre[:, off[i] : off[i + 1]], z, U[i - 1].t()), self.d)
        return torch.addmm(pre[:, off[-2] : off[-1]], z, U[-1].t()).squeeze(-1)

    def forward_and_grad(
        self, x: torch.Tensor, *, method: str = "analytic", create_graph: bool | None = None, centered: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``g(x): (batch,)`` and ``dg/dx: (batch, in_dim)`` for the whole batch at once.

        Args:
            x: ``(batch, in_dim)``.
            method: ``"analytic"`` (explicit reverse pass through the layers; once
                differentiable when grad mode is on, via a hand-written backward; no autograd
                graph under ``torch.no_grad``) or ``"autograd"`` (``torch.autograd.grad``,
                twice differentiable with ``create_graph``; the reference).
            create_graph: ``"autograd"`` only; default ``torch.is_grad_enabled()``.
            centered: ``g`` as ``[g(x_i) - g(x_ref); g(x_ref)]`` against the last row (see
                ``forward``); ``dg/dx`` stays absolute.
        """
        if method == "autograd":
            if create_graph is None:
                create_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                xg = x if (x.requires_grad and create_graph) else x.detach().requires_grad_(True)
                g = self.forward(xg)
                (grad,) = torch.autograd.grad(g.sum(), xg, create_graph=create_graph)
                if centered:
                    g = self.forward(xg, centered=True)
            return (g, grad) if create_graph else (g.detach(), grad.detach())
        if method != "analytic":
            raise ValueError(f"method must be 'analytic' or 'autograd', got {method!r}")
        if _FunctorchState.depth:
            return self._plain_value_and_grad(x, centered=centered)
        if torch.is_grad_enabled() and (x.requires_grad or self.theta.requires_grad):
            return _ICNNValueAndGrad.apply(self.widths, self.d, x, self.theta, centered)
        W, b, U, plan = self._prepared()
        if plan is None:  # grad mode, nothing to differentiate
            plan = _plan(W, b, _unflatten(U * (1.0 / self.d), self._z_shapes), self.widths)
        return _value_and_grad(x, plan, self.d, centered=centered)[:2]

    def _plain_value_and_grad(self, x: torch.Tensor, need_grad: bool = True, centered: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The functorch_safe pass: weights from theta as they are now (under functional_call,
        # the swapped-in tensors), plain ops throughout.
        W, b, U_raw = _split_theta(self.theta, self.widths, self.in_dim)
        return _value_and_grad_plain(x, W, b, _unflatten(F.softplus(U_raw) * (1.0 / self.d), self._z_shapes), self.widths, self.d,
                                     need_grad, centered)

    def lipschitz_bound(self) -> float:
        """An upper bound on the Lipschitz constant of ``g`` (operator 2-norms, cf. eq. 17).

        ``sigma_d`` is 1-Lipschitz (and the output layer affine), so ``L_1 <= ||W_0||`` and
        ``L_{i+1} <= ||U_i|| L_i + ||W_i||``.
        """
        with torch.no_grad():
            U = self.positive_weights()
            W = [layer.weight for layer in self.W]
            L = torch.linalg.matrix_norm(W[0].double(), ord=2)
            for i in range(1, len(W)):
                L = torch.linalg.matrix_norm(U[i - 1].double(), ord=2) * L + torch.linalg.matrix_norm(W[i].double(), ord=2)
        return float(L)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}, d={self.d}"
