"""``DynamicsNet``: the nominal network ``fhat([x, u])`` with the priors of a mechanical system.

A plain MLP on the raw state (the paper's ``fhat``) learns the single pendulum from a few
hundred transitions but not the double pendulum: fitted to 2,400 real transitions its
one-step validation error stays near 1e-2 and MPC planned on it never swings up. Three
priors that hold for any torque-driven rigid-body system, each a constructor argument:

- ``angle_dims = k``: the first ``k`` state entries are angles; the network sees
  ``sin q, cos q`` instead of ``q``, so the model is periodic in them (no seam where
  ``q`` wraps from pi to -pi, the upright position of a pendulum) and rollouts may cross
  a turn freely.
- ``control_affine``: ``fhat(x, u) = a(x) + B(x) u``: torques enter the equations of motion
  linearly (``M(q) qddot = tau - ...``), so the network learns the drift ``a`` and the
  input matrix ``B`` of the state only.
- ``activation``: a smooth one (``"silu"``, ``"tanh"``, ``"softplus"``) gives a smooth
  field. On the same data, the other two priors with ReLU: validation MSE 3.6e-3 and MPC from
  hanging ended 0.74 and 3.1 rad from upright (two starts); with SiLU, 8.1e-4 and 0.65 rad
  from both (one fit each, before PETS added data near upright).

Inputs (velocities, torques) and outputs (each derivative) are scaled by per-entry
constants, ``calibrate(x, u, xdot)`` sets them to the data's standard deviations (``fit``
does it on a model's first fit); they live in the state dict, so a checkpoint keeps them.

Measured on the double pendulum (the 2,400 real transitions of one PETS run without the
priors): fitted with long cosine schedules, validation MSE 7.8e-3 for the plain MLP and
8.1e-4 with all three priors. In the PETS loop, the plain MLP never swings the double
pendulum up within 2,400 real steps; with the priors it does within 600-1,800 on 9 of 10 runs,
and the single pendulum after 400 instead of 600-800 (``lyagym reproduce mbrl-swingup`` docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["DynamicsNet", "ACTIVATIONS", "mlp", "nominal_network", "network_options"]

#: activation name -> module class, for ``mlp`` and ``DynamicsNet``
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, *, activation: str = "relu") -> nn.Sequential:
    """``in_dim -> hidden... -> out_dim`` with ``activation`` (default ReLU, the paper's ``fhat``) between layers."""
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {hidden!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    widths = (in_dim, *hidden, out_dim)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class DynamicsNet(nn.Module):
    """``fhat: (batch, state_dim + action_dim) -> (batch, state_dim)`` with optional priors.

    Args:
        state_dim, action_dim: ``x: (batch, n)``, ``u: (batch, m)``; the input is ``[x, u]``.
        hidden: MLP widths.
        angle_dims: the first ``angle_dims`` state entries are angles (fed as sin, cos).
        control_affine: ``a(x) + B(x) u`` (needs ``action_dim >= 1``).
        activation: a key of ``ACTIVATIONS``.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden: Sequence[int], *, angle_dims: int = 0,
                 control_affine: bool = False, activation: str = "relu") -> None:
        super().__init__()
        if not isinstance(angle_dims, int) or not 0 <= angle_dims <= state_dim:
            raise ValueError(f"angle_dims must be an int in [0, state_dim={state_dim}], got {angle_dims!r}")
        if control_affine and action_dim < 1:
            raise ValueError("control_affine=True needs action_dim >= 1")
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.angle_dims, self.control_affine, self.activation = angle_dims, bool(control_affine), activation
        features = state_dim + angle_dims + (0 if control_affine else action_dim)
        outputs = state_dim * (1 + action_dim) if control_affine else state_dim
        self.net = mlp(features, hidden, outputs, activation=activation)
        self.register_buffer("input_scale", torch.ones(state_dim - angle_dims + action_dim))
        self.register_buffer("output_scale", torch.ones(state_dim))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    def forward(self, xu: torch.Tensor) -> torch.Tensor:
        n, k = self.state_dim, self.angle_dims
        q = xu[..., :k].contiguous()  # sin and cos of a strided slice take ~3x longer (also under vmap)
        scaled = xu[..., k:] / self.input_scale  # the non-angle state entries, then u
        u = scaled[..., n - k:]
        parts = [torch.sin(q), torch.cos(q), scaled] if k else [scaled]
        if self.control_affine:
            parts[-1] = scaled[..., : n - k]
        out = self.net(torch.cat(parts, dim=-1))
        if self.control_affine:
            drift, gain = out[..., :n], out[..., n:].unflatten(-1, (n, self.action_dim))
            out = drift + (gain @ u.unsqueeze(-1)).squeeze(-1)
        return out * self.output_scale

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, u: torch.Tensor | None, xdot: torch.Tensor) -> None:
        """Scale inputs and outputs by the standard deviations of ``x: (N, n)``, ``u: (N, m)``,
        ``xdot: (N, n)`` (entries that do not vary keep scale 1)."""
        if x.shape[0] < 2:
            raise ValueError(f"calibrate needs at least 2 samples, got {x.shape[0]}")
        inputs = x[:, self.angle_dims:] if u is None or self.action_dim == 0 else torch.cat([x[:, self.angle_dims:], u], -1)

        def spread(t: torch.Tensor) -> torch.Tensor:
            std = t.std(0)
            return torch.where(std > 1e-6, std, torch.ones_like(std))

        self.input_scale.copy_(spread(inputs))
        self.output_scale.copy_(spread(xdot))
        self.calibrated.fill_(True)

    def extra_repr(self) -> str:
        return f"angle_dims={self.angle_dims}, control_affine={self.control_affine}, activation={self.activation!r}"


def nominal_network(state_dim: int, action_dim: int, hidden: Sequence[int], *, angle_dims: int = 0,
                    control_affine: bool = False, activation: str = "relu") -> nn.Module:
    """The models' ``fhat``: the paper's plain ReLU MLP on ``[x, u]`` when no prior is asked
    for (same state dict as before the priors existed, so older checkpoints load), else a
    ``DynamicsNet``."""
    if angle_dims == 0 and not control_affine and activation == "relu":
        return mlp(state_dim + action_dim, hidden, state_dim)
    return DynamicsNet(state_dim, action_dim, hidden, angle_dims=angle_dims, control_affine=control_affine, activation=activation)


def network_options(fhat: nn.Module) -> dict:
    """``{"angle_dims", "control_affine", "activation"}`` of a ``DynamicsNet``, ``{}`` for the
    plain MLP (so the ``config()`` of a model without priors is unchanged)."""
    if isinstance(fhat, DynamicsNet):
        return {"angle_dims": fhat.angle_dims, "control_affine": fhat.control_affine, "activation": fhat.activation}
    return {}
