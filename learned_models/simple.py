"""The unconstrained baseline of Manek & Kolter: ``xdot = fhat(x, u)``, a plain MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .checkpoint import register_model
from .integrators import ODEWorldModel

__all__ = ["SimpleDynamics", "mlp"]


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """``in_dim -> hidden... -> out_dim`` with ReLU between layers (the paper's ``fhat``)."""
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {hidden!r}")
    widths = (in_dim, *hidden, out_dim)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@register_model
class SimpleDynamics(ODEWorldModel):
    """``xdot = fhat(x, u)`` with ``fhat`` a ReLU MLP (paper: ``2n-100-100-2n``); no guarantee.

    Args:
        state_dim: ``n`` in ``x: (batch, n)``.
        action_dim: ``m`` in ``u: (batch, m)``; 0 (default) for an autonomous model.
        hidden: MLP widths.
        dt: step of ``step``.
        integrator: ``"euler"``, ``"rk4"`` (default) or a torchdiffeq method name.

    Example::

        model = SimpleDynamics(2)
        history = fit(model, (x, xdot), epochs=200)
        traj = model.rollout(x0, 999)   # (batch, 1000, 2)
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int = 0,
        *,
        hidden: Sequence[int] = (100, 100),
        dt: float = 0.01,
        integrator: str = "rk4",
    ) -> None:
        super().__init__(state_dim, action_dim, dt, integrator)
        self.hidden = tuple(int(h) for h in hidden)
        self.fhat = mlp(state_dim + action_dim, self.hidden, state_dim)

    def _derivative(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return self.fhat(x if u is None else torch.cat([x, u], dim=-1))

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim, "hidden": list(self.hidden), "dt": self.dt, "integrator": self.integrator}
