"""The one seam between world models and planners.

Every model a planner may query -- the true-physics ``PendulumDynamics``, the learned
``SimpleDynamics`` / ``StableDynamics`` / ``LyaNetWorldModel`` -- satisfies this small
structural interface, so planners never special-case a model.

Conventions (all torch tensors, batched, on ``model.device`` with ``model.dtype``):

- ``x``: ``(batch, state_dim)`` states.
- ``u``: ``(batch, action_dim)`` actions; ``None`` (or a ``(batch, 0)`` tensor) for
  autonomous models, whose ``action_dim`` is 0.
- ``step(x, u)`` returns the state one ``dt`` later, ``(batch, state_dim)``; it must be
  differentiable with respect to ``x`` and ``u`` when the model is (gradient planners
  rely on that).
- ``rollout(x0, actions)`` with ``actions`` of shape ``(batch, horizon, action_dim)`` (or an
  int ``horizon`` for autonomous models) returns ``(batch, horizon + 1, state_dim)``
  including ``x0`` at index 0.

Anything with these attributes is a ``WorldModel``; ``isinstance(obj, WorldModel)``
checks their presence. ``check_world_model`` goes further and steps the model once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

__all__ = ["WorldModel", "rollout", "check_world_model", "overflowing_rows_returned"]


@runtime_checkable
class WorldModel(Protocol):
    """Batched, device-agnostic discrete-time model ``x_{k+1} = step(x_k, u_k)``."""

    state_dim: int
    action_dim: int
    dt: float

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def step(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """``x: (batch, state_dim)``, ``u: (batch, action_dim)`` -> ``(batch, state_dim)``."""
        ...

    def rollout(self, x0: torch.Tensor, actions: torch.Tensor | int) -> torch.Tensor:
        """``x0: (batch, state_dim)``, ``actions: (batch, horizon, action_dim)`` -> ``(batch, horizon + 1, state_dim)``."""
        ...


@contextlib.contextmanager
def overflowing_rows_returned(model) -> Iterator[None]:
    """Within the block, ``model.step`` and ``model.rollout`` return the rows they overflowed on
    (inf or NaN) instead of raising, for a caller that ends those rows itself (a model-based
    environment, MBPO's branched rollouts); inputs are still checked. For models with
    ``raise_on_overflow`` (``ODEWorldModel``, ``Ensemble``), also behind wrappers that hold
    them as ``.model``; any other model is left as it is."""
    target = model  # through wrappers (AngleWrappedModel, ...) to the model whose class has the flag
    while target is not None and not hasattr(type(target), "raise_on_overflow"):
        target = getattr(target, "model", None)
    if target is None:
        yield
        return
    own = "raise_on_overflow" in vars(target)
    before = target.raise_on_overflow
    target.raise_on_overflow = False
    try:
        yield
    finally:
        if own:
            target.raise_on_overflow = before
        else:
            del target.raise_on_overflow


def rollout(model, x0: torch.Tensor, actions: torch.Tensor | int) -> torch.Tensor:
    """Roll ``model.step`` forward; the shared implementation of ``WorldModel.rollout``.

    Args:
        model: anything with ``step(x, u)`` and ``action_dim``.
        x0: ``(batch, state_dim)`` initial states.
        actions: ``(batch, horizon, action_dim)`` action sequences, or an ``int`` horizon
            for an autonomous model (``action_dim == 0``).

    Returns:
        ``(batch, horizon + 1, state_dim)`` states, ``x0`` first.
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must have shape (batch, state_dim), got {tuple(x0.shape)}")
    if isinstance(actions, int):
        if actions < 0:
            raise ValueError(f"horizon must be >= 0, got {actions}")
        if model.action_dim != 0:
            raise ValueError(
                f"an int horizon is only valid for autonomous models; this model has "
                f"action_dim={model.action_dim}, pass actions of shape (batch, horizon, {model.action_dim})"
            )
        steps = [None] * actions
    else:
        if actions.ndim != 3 or actions.shape[0] != x0.shape[0] or actions.shape[2] != model.action_dim:
            raise ValueError(
                f"actions must have shape (batch={x0.shape[0]}, horizon, action_dim={model.action_dim}), "
                f"got {tuple(actions.shape)}"
            )
        steps = actions.unbind(1)
    states = [x0]
    x = x0
    for u in steps:
        x = model.step(x, u)
        states.append(x)
    return torch.stack(states, dim=1)


def check_world_model(model, batch: int = 3) -> None:
    """Raise ``TypeError``/``ValueError`` if ``model`` does not honour the ``WorldModel`` contract.

    Steps the model once on a zero batch and checks shapes, device, dtype and finiteness.
    """
    if not isinstance(model, WorldModel):
        missing = [a for a in ("state_dim", "action_dim", "dt", "device", "dtype", "step", "rollout") if not hasattr(model, a)]
        raise TypeError(f"{type(model).__name__} is not a WorldModel: missing {missing}")
    x = torch.zeros(batch, model.state_dim, device=model.device, dtype=model.dtype)
    u = torch.zeros(batch, model.action_dim, device=model.device, dtype=model.dtype) if model.action_dim else None
    with torch.no_grad():
        y = model.step(x, u)
    if tuple(y.shape) != (batch, model.state_dim):
        raise ValueError(f"{type(model).__name__}.step returned shape {tuple(y.shape)}, expected {(batch, model.state_dim)}")
    if y.device != x.device or y.dtype != x.dtype:
        raise ValueError(f"{type(model).__name__}.step changed device/dtype: {x.device}/{x.dtype} -> {y.device}/{y.dtype}")
    if not torch.isfinite(y).all():
        raise ValueError(f"{type(model).__name__}.step returned non-finite values at x = 0")
