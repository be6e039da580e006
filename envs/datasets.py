"""Datasets for model learning from the true pendulum physics.

- :func:`sample_derivative_dataset`: ``(x, xdot, u)`` triples with states drawn uniformly
  from a box (Manek & Kolter 2019 draw angles and velocities from ``[-pi, pi]``) -- the
  supervised target of a continuous-time dynamics model.
- :func:`trajectory_dataset`: batched trajectories from given initial states and actions.

Both are seeded (a private ``torch.Generator``, so the global RNG is untouched), batched
(one call to the physics for the whole dataset) and return torch tensors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .dynamics import PendulumDynamics

__all__ = ["DerivativeData", "sample_derivative_dataset", "trajectory_dataset"]


class DerivativeData(NamedTuple):
    """``x: (n, 2 n_links)`` states, ``xdot: (n, 2 n_links)`` their time derivatives under
    torques ``u: (n, action_dim)``."""

    x: torch.Tensor
    xdot: torch.Tensor
    u: torch.Tensor


def _bounds(value, dim: int, name: str, default) -> np.ndarray:
    arr = np.asarray(default if value is None else value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(dim, float(arr))
    if arr.shape != (dim,):
        raise ValueError(f"{name} must be a scalar or have shape ({dim},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def sample_derivative_dataset(
    dyn: PendulumDynamics,
    n: int,
    *,
    low=-math.pi,
    high=math.pi,
    action_low=None,
    action_high=None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> DerivativeData:
    """Draw ``n`` states uniformly from the box ``[low, high]^(2 n_links)`` and label them
    with ``xdot = dyn.derivative(x, u)`` (computed in float64, then cast).

    Args:
        dyn: the physics.
        n: number of samples.
        low, high: box bounds, scalars or per state dimension ``(2 n_links,)``.
        action_low, action_high: torque bounds (scalar or ``(action_dim,)``); both ``None``
            means zero torques. Giving one bound requires the other.
        seed: seed of the private generator; the same seed gives the same dataset.
        dtype, device: of the returned tensors.

    Returns:
        :class:`DerivativeData` with ``x, xdot: (n, 2 n_links)``, ``u: (n, action_dim)``.
    """
    if not isinstance(dyn, PendulumDynamics):
        raise ValueError(f"dyn must be a PendulumDynamics, got {type(dyn).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    d, m = dyn.state_dim, dyn.action_dim
    lo = _bounds(low, d, "low", None)
    hi = _bounds(high, d, "high", None)
    if np.any(hi < lo):
        raise ValueError(f"high must be >= low elementwise, got low={lo.tolist()}, high={hi.tolist()}")
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.from_numpy(lo) + torch.rand(n, d, generator=gen, dtype=torch.float64) * torch.from_numpy(hi - lo)
    if (action_low is None) != (action_high is None):
        raise ValueError("action_low and action_high must be given together (or both None for zero torques)")
    if action_low is None or m == 0:
        u = torch.zeros(n, m, dtype=torch.float64)
    else:
        alo = _bounds(action_low, m, "action_low", None)
        ahi = _bounds(action_high, m, "action_high", None)
        if np.any(ahi < alo):
            raise ValueError(f"action_high must be >= action_low, got {alo.tolist()}, {ahi.tolist()}")
        u = torch.from_numpy(alo) + torch.rand(n, m, generator=gen, dtype=torch.float64) * torch.from_numpy(ahi - alo)
    xdot = torch.from_numpy(dyn.derivative(x.numpy(), u.numpy() if m else None))
    return DerivativeData(*(t.to(device=device, dtype=dtype) for t in (x, xdot, u)))


def trajectory_dataset(
    dyn: PendulumDynamics,
    x0,
    n_steps: int,
    *,
    actions=None,
    dt: float | None = None,
    method: str = "rk4",
    substeps: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll the physics forward from every initial state at once.

    Args:
        dyn: the physics.
        x0: ``(batch, 2 n_links)`` initial states (tensor or array; a tensor's dtype/device
            is kept, arrays become float32 on cpu).
        n_steps: number of steps ``T``.
        actions: ``(batch, T, action_dim)`` torques, or ``None`` for zero torques.
        dt, method, substeps: as in :meth:`PendulumDynamics.step`.

    Returns:
        ``(states, actions)``: ``(batch, T + 1, 2 n_links)`` with ``x0`` first, and
        ``(batch, T, action_dim)``.
    """
    if not isinstance(dyn, PendulumDynamics):
        raise ValueError(f"dyn must be a PendulumDynamics, got {type(dyn).__name__}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    if not isinstance(x0, torch.Tensor):
        x0 = torch.as_tensor(np.asarray(x0), dtype=torch.float32)
    if x0.ndim != 2 or x0.shape[1] != dyn.state_dim:
        raise ValueError(f"x0 must have shape (batch, {dyn.state_dim}), got {tuple(x0.shape)}")
    batch = x0.shape[0]
    if actions is None:
        actions = torch.zeros(batch, n_steps, dyn.action_dim, dtype=x0.dtype, device=x0.device)
    else:
        actions = torch.as_tensor(actions, dtype=x0.dtype, device=x0.device)
        if tuple(actions.shape) != (batch, n_steps, dyn.action_dim):
            raise ValueError(f"actions must have shape (batch={batch}, n_steps={n_steps}, action_dim={dyn.action_dim}), got {tuple(actions.shape)}")
    states = [x0]
    x = x0
    for k in range(n_steps):
        x = dyn.step(x, actions[:, k] if dyn.action_dim else None, dt=dt, method=method, substeps=substeps)
        states.append(x)
    return torch.stack(states, dim=1), actions
