"""The unconstrained baseline of Manek & Kolter: ``xdot = fhat(x, u)``, a plain MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .certificate import Certificate
from .checkpoint import register_model
from .dynamics_net import mlp, network_options, nominal_network
from .integrators import ODEWorldModel
from .mlp_rollout import MLPField

__all__ = ["SimpleDynamics", "mlp"]


@register_model
class SimpleDynamics(ODEWorldModel):
    """``xdot = fhat(x, u)`` with ``fhat`` a ReLU MLP (paper: ``2n-100-100-2n``); no guarantee.

    ``angle_dims``, ``control_affine`` and ``activation`` build ``fhat`` as a ``DynamicsNet``
    instead (periodic in angles, affine in the torques, smooth): the priors of a
    torque-driven mechanical system, which the double pendulum needs (see ``DynamicsNet``).

    Args:
        state_dim: ``n`` in ``x: (batch, n)``.
        action_dim: ``m`` in ``u: (batch, m)``; 0 (default) for an autonomous model.
        hidden: MLP widths.
        dt: step of ``step``.
        integrator: ``"euler"``, ``"rk4"`` (default) or a torchdiffeq method name.
        angle_dims: the first ``angle_dims`` state entries are angles (``fhat`` sees sin, cos).
        control_affine: ``fhat(x, u) = a(x) + B(x) u``.
        activation: ``"relu"`` (default), ``"silu"``, ``"tanh"`` or ``"softplus"``.

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
        angle_dims: int = 0,
        control_affine: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(state_dim, action_dim, dt, integrator)
        self.hidden = tuple(int(h) for h in hidden)
        self.fhat = nominal_network(state_dim, action_dim, self.hidden, angle_dims=angle_dims, control_affine=control_affine,
                                    activation=activation)

    def _derivative(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return self.fhat(x if u is None else torch.cat([x, u], dim=-1))

    def _plain_field(self) -> bool:
        # A subclass that changes the field or the step computes something the lowerings do not.
        return type(self)._derivative is SimpleDynamics._derivative and type(self)._step is ODEWorldModel._step

    def _inference_field(self) -> MLPField | None:
        return MLPField.lower(self.fhat, self.state_dim, self.action_dim) if self._plain_field() else None

    def _inference_rollout(self, x0: torch.Tensor, controls: torch.Tensor | None, horizon: int, wrap: list[int]) -> torch.Tensor | None:
        """While torch runs several threads, the whole rollout in the compiled kernel of
        ``rollout_native`` (its tiles shared between that many threads), where it runs; else,
        and at one thread (where ``MLPField`` runs the network through the compiled MLP kernel),
        the lowered field."""
        if torch.get_num_threads() > 1 and self._plain_field():
            from .rollout_native import compiled_rollout

            fast = compiled_rollout(self, x0, controls, horizon, wrap, (self.integrator, float(self.dt)))
            if fast is not None:
                return fast
        return super()._inference_rollout(x0, controls, horizon, wrap)

    def certificate(self) -> Certificate:
        """A certificate that claims nothing (claim ``"none"``): ``fhat`` is unconstrained, so no
        stability, rate or bound holds by construction. ``check`` passes with nothing to check."""
        return Certificate.claims_nothing(self, "an unconstrained network xdot = fhat(x, u): no stability, rate or bound is claimed")

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim, "hidden": list(self.hidden), "dt": self.dt, "integrator": self.integrator,
                **network_options(self.fhat)}
