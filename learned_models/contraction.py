"""Formal contraction of a LyaNet inference ODE: interval Jacobians plus branch and bound.

A ``LyaNetWorldModel`` predicts by solving ``deta/dt = f(eta, z, t)`` (eq. 2) from ``eta(0) =
0``. LyaNet's own condition (eq. 10 on ``V_y = ||eta - y||^2``) needs the target ``y`` of each
input, which the model does not hold as a function, and it fails next to ``eta = y`` wherever
the model is not exact (``verification.formal_certificate`` says why). What can be proven
without ``y`` is that inference *contracts*: if the logarithmic norm
``mu(J) = lambda_max((J + J^T) / 2)`` of ``J = df/deta`` is ``<= -c`` for every inference state
``eta`` in a box ``H``, every input ``z`` in a box and every ``t in [0, t_exit]``, then two
paths of one input in ``H`` approach as ``e^{-ct}``, and for any point ``y`` (a target)
``d/dt ||eta - y|| <= -c ||eta - y|| + ||f(y, z, t)||``, so, while the path stays in ``H``::

    ||eta(t) - y|| <= e^{-ct} ||eta(0) - y|| + (1 - e^{-ct}) max_s ||f(y, z, s)|| / c

``V_y`` decays at rate ``2c`` down to the floor the model's residual at the target sets.

Bound on a box of ``(eta, z, t)``: the interval Jacobian ``[J_lo, J_hi]``
(``bounds.interval_jacobian``) of the MLP on ``[eta, z, t]``, its ``eta`` columns; with centre
``C`` and radius ``R`` every ``J`` in it has ``mu(J) <= lambda_max(sym C) + rho((R + R^T) / 2)``
(Weyl's inequality, and a symmetric matrix bounded entrywise in absolute value by a
non-negative one has no larger spectral radius). The eigenvalues come from ``eigvalsh`` in
float64 (error ``~ k 2^-53`` times the norm), widened by ``1e-10 (1 + ||C||_F + ||R||_F)``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .bounds import MARGIN, interval_jacobian
from .branch_and_bound import branch_and_bound

__all__ = ["log_norm_bounds", "log_norm_at", "verify_contraction"]


def log_norm_bounds(J_lo: torch.Tensor, J_hi: torch.Tensor) -> torch.Tensor:
    """Certified upper bound of ``lambda_max((J + J^T) / 2)`` over every ``J`` with
    ``J_lo <= J <= J_hi`` (entrywise; ``(batch, k, k)`` each), ``(batch,)``."""
    C, R = (J_lo + J_hi) / 2, (J_hi - J_lo) / 2
    sym_c, sym_r = (C + C.transpose(1, 2)) / 2, (R + R.transpose(1, 2)) / 2
    top = torch.linalg.eigvalsh(sym_c)[:, -1] + torch.linalg.eigvalsh(sym_r)[:, -1]
    return top + MARGIN * (1.0 + C.flatten(1).norm(dim=1) + R.flatten(1).norm(dim=1))


def log_norm_at(net: nn.Module, points: torch.Tensor, k: int) -> torch.Tensor:
    """``lambda_max(sym(df/deta))`` at ``points: (batch, k + d [+ 1])`` by autograd, ``(batch,)``."""
    with torch.enable_grad():
        J = torch.func.vmap(torch.func.jacrev(lambda p: net(p.unsqueeze(0))[0]))(points)[:, :, :k]
    return torch.linalg.eigvalsh((J + J.transpose(1, 2)) / 2)[:, -1].detach()


def verify_contraction(
    model: nn.Module,
    box: Any,
    *,
    rate: float,
    eta_box: Any = None,
    budget_s: float = 30.0,
    batch: int = 512,
    progress: Callable[[float, int], None] | None = None,
    exhaustive: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> Any:
    """Prove ``mu(df/deta) + rate < 0`` for a ``LyaNetWorldModel``'s inference ODE.

    Args:
        model: a ``LyaNetWorldModel`` (its ``ode.dynamics`` an MLP on ``[eta, z, t]``).
        box: ``state_dim + action_dim`` rows ``[lo, hi]``: the model's inputs ``[x, u]`` in
            their own units (normalised inside with the model's ``in_mean``, ``in_std``).
        rate: the contraction rate ``c > 0`` to prove (``V_y`` then decays at ``2c``).
        eta_box: ``state_dim`` rows for the inference state (normalised target units);
            default the training cube ``[-half_width, half_width]`` that holds every path
            from ``0`` to a training target.
        budget_s, batch, progress, exhaustive, clock: see ``verification.verify_decrease``.

    Returns a ``verification.VerificationResult`` whose box lists the ``eta`` rows, then the
    input rows (normalised), then ``t`` (time-dependent dynamics), and whose counterexample is
    such a point with ``mu + rate > 0``.
    """
    from .verification import VerificationResult, parse_box

    k, m = int(model.state_dim), int(model.action_dim)
    X = parse_box(box, k + m)
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
    if not (isinstance(budget_s, (int, float)) and budget_s > 0):
        raise ValueError(f"budget_s must be a number > 0, got {budget_s!r}")
    if eta_box is None:
        if model.half_width is None:
            raise ValueError("the model has no training cube (half_width is None: fit it first) -- pass eta_box")
        eta_box = [[-model.half_width, model.half_width]] * k
    H = parse_box(eta_box, k, "eta_box")
    dynamics = model.ode.dynamics
    net = dynamics.net
    if not isinstance(net, nn.Sequential) or getattr(dynamics, "max_speed", None) is not None:
        raise TypeError("verify_contraction needs inference dynamics that are an MLP without max_speed")
    start = clock()
    net64 = copy.deepcopy(net).to(torch.float64)
    mean, std = model.in_mean.detach().to(torch.float64).cpu(), model.in_std.detach().to(torch.float64).cpu()
    Z = (X - mean.unsqueeze(1)) / std.unsqueeze(1)  # std > 0: the rows stay ordered
    rows = [H, Z] + ([torch.tensor([[0.0, float(model.early_exit_t)]], dtype=torch.float64)] if dynamics.time_dependent else [])
    B = torch.cat(rows).to(next(net64.parameters()).device)

    def bound_fn(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            J_lo, J_hi = interval_jacobian(net64, lo, hi)
        upper = log_norm_bounds(J_lo[:, :, :k], J_hi[:, :, :k]) + rate
        return upper, torch.zeros_like(upper, dtype=torch.bool)

    def value_fn(points: torch.Tensor) -> torch.Tensor:
        return log_norm_at(net64, points, k) + rate

    res = branch_and_bound(bound_fn, value_fn, B[:, 0], B[:, 1], budget_s=max(1e-3, budget_s - (clock() - start)), batch=batch,
                           progress=progress, exhaustive=exhaustive, clock=clock)
    return VerificationResult(
        status=res.status, fraction=res.verified_fraction, boxes=res.boxes, seconds=clock() - start, alpha=float(rate),
        box=B.tolist(), counterexample=None if res.counterexample is None else res.counterexample.tolist(),
        counterexample_value=res.counterexample_value, worst_upper=res.worst_upper,
        condition="lambda_max(sym(df/deta)) + rate < 0 (inference contraction; box rows: eta, normalised inputs, t)",
    )
