"""Lyapunov potentials and Lyapunov losses (LyaNet paper, eq. 11, 12, 16-17).

The point-wise Lyapunov loss (eq. 12)

    max(0, dV/deta . f(eta) + kappa * V(eta))

is zero exactly where the exponential decrease condition ``dV/dt <= -kappa V`` (eq. 10)
holds. It is written here for *any* differentiable ``V`` and *any* ``f`` -- the supervised
potentials ``V_y(eta) = L(psi(eta), y)`` of LyaNet (eq. 11), but equally a learned ICNN
``V`` or the pendulum's energy with state-space dynamics ``xdot = f(x)`` -- so that soft
(penalty) and hard (projection, Manek & Kolter) stability can be compared on the same data.

``dV/deta . f`` is a Jacobian-vector product, computed in one batched forward-mode pass
with ``torch.func.jvp``; it stays differentiable with respect to the parameters of both
``V`` and ``f``.

The path-integral version (Alg. 2) checks the condition between consecutive states of a
rolled-out path. The paper's printed eq. 16, ``V_j + (kappa - 1) V_{j-1}``, is garbled; we
use the exact discrete form of ``V(t_j) <= exp(-kappa (t_j - t_{j-1})) V(t_{j-1})``:

    max(0, V_j - exp(-kappa * dt_j) * V_{j-1}).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "POTENTIALS",
    "truncated_cross_entropy",
    "squared_error",
    "lyapunov_derivative",
    "pointwise_lyapunov_loss",
    "lyapunov_loss",
    "discrete_lyapunov_loss",
]


def _check_kappa(kappa: float) -> float:
    if not isinstance(kappa, (int, float)) or not math.isfinite(kappa) or kappa <= 0:
        raise ValueError(f"kappa must be a finite number > 0 (the exponential convergence rate), got {kappa!r}")
    return float(kappa)


def truncated_cross_entropy(logits: torch.Tensor, y: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """``max(0, CE(logits, y) - gamma)`` per sample (section 3.1), ``(batch,)``.

    Args:
        logits: ``(batch, m)`` outputs ``psi(eta)``.
        y: ``(batch,)`` integer class labels.
        gamma: truncation level ``>= 0``; the paper takes machine precision and ignores it,
            which ``gamma = 0`` does.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, n_classes), got {tuple(logits.shape)}")
    if y.shape != logits.shape[:1] or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"y must be integer labels of shape ({logits.shape[0]},), got {y.dtype} {tuple(y.shape)}")
    ce = F.cross_entropy(logits, y.long(), reduction="none")
    return ce if gamma == 0 else torch.clamp(ce - gamma, min=0.0)


def squared_error(prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||prediction - y||^2`` per sample, ``(batch,)``: the regression potential."""
    if prediction.shape != y.shape or prediction.ndim != 2:
        raise ValueError(f"prediction and y must both be (batch, m); got {tuple(prediction.shape)} and {tuple(y.shape)}")
    return (prediction - y).pow(2).sum(-1)


#: Supervised losses ``L(y_hat, y) -> (batch,)`` usable as potentials ``V_y = L(psi(eta), y)`` (eq. 11).
POTENTIALS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": truncated_cross_entropy,
    "squared_error": squared_error,
}


def lyapunov_derivative(
    potential: Callable[[torch.Tensor], torch.Tensor],
    dynamics: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor,
    states: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``V(eta)`` and ``dV/dt = dV/deta . f(eta)`` by one batched JVP.

    Args:
        potential: ``V``, ``(batch, k) -> (batch,)``; row ``i`` of the output must depend on
            row ``i`` of the input only (true of any per-sample potential).
        dynamics: ``f``, either a callable ``(batch, k) -> (batch, k)`` or its values at
            ``states``, ``(batch, k)``.
        states: ``(batch, k)`` points ``eta``.

    Returns:
        ``(V, Vdot)``, both ``(batch,)``.
    """
    if states.ndim != 2 or states.shape[0] == 0:
        raise ValueError(f"states must have shape (batch >= 1, state_dim), got {tuple(states.shape)}")
    f = dynamics(states) if callable(dynamics) else dynamics
    if f.shape != states.shape:
        raise ValueError(f"dynamics must give (batch, state_dim) = {tuple(states.shape)}, got {tuple(f.shape)}")
    v, vdot = torch.func.jvp(potential, (states,), (f,))
    if v.shape != states.shape[:1]:
        raise ValueError(f"potential must return (batch,) = ({states.shape[0]},), got {tuple(v.shape)}")
    return v, vdot


def pointwise_lyapunov_loss(v: torch.Tensor, vdot: torch.Tensor, kappa: float) -> torch.Tensor:
    """``max(0, Vdot + kappa V)`` (eq. 12), elementwise."""
    return torch.relu(vdot + _check_kappa(kappa) * v)


def lyapunov_loss(
    potential: Callable[[torch.Tensor], torch.Tensor],
    dynamics: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor,
    states: torch.Tensor,
    kappa: float,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """The Lyapunov loss of eq. 12 at ``states``, for any ``V`` and ``f``.

    Zero exactly where ``dV/deta . f <= -kappa V``. Averaging over states drawn from a
    measure on the state space (and time, through ``f``) is the Monte Carlo estimate of
    eq. 13 (Alg. 1).

    Args:
        potential: ``V``, ``(batch, k) -> (batch,)``.
        dynamics: ``f`` as a callable ``(batch, k) -> (batch, k)`` or its values.
        states: ``(batch, k)``.
        kappa: the required decay rate, ``> 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, ``(batch,)``).
    """
    kappa = _check_kappa(kappa)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    v, vdot = lyapunov_derivative(potential, dynamics, states)
    loss = pointwise_lyapunov_loss(v, vdot, kappa)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def discrete_lyapunov_loss(
    values: torch.Tensor, times: torch.Tensor, kappa: float, *, reduction: str = "mean"
) -> torch.Tensor:
    """Path-integral Lyapunov loss (Alg. 2, eq. 16-17 in the corrected exponential form).

    ``sum_j max(0, V_j - exp(-kappa (t_j - t_{j-1})) V_{j-1})`` over a path.

    Args:
        values: ``(n_times, batch)`` potentials ``V(eta(t_j))`` along rolled-out paths.
        times: ``(n_times,)`` strictly increasing times ``t_j``.
        kappa: decay rate ``> 0``.
        reduction: ``"mean"`` over the batch of the per-path sums, ``"sum"`` or ``"none"``
            (``(batch,)`` per-path sums).
    """
    kappa = _check_kappa(kappa)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"values must have shape (n_times >= 2, batch), got {tuple(values.shape)}")
    times = torch.as_tensor(times, dtype=values.dtype, device=values.device)
    if times.shape != values.shape[:1]:
        raise ValueError(f"times must have shape ({values.shape[0]},), got {tuple(times.shape)}")
    decay = torch.exp(-kappa * (times[1:] - times[:-1])).unsqueeze(-1)
    per_path = torch.relu(values[1:] - decay * values[:-1]).sum(0)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return per_path.mean() if reduction == "mean" else per_path.sum() if reduction == "sum" else per_path
