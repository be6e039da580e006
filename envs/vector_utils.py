"""Conventions shared by lyagym's torch vector envs, matching Gymnasium's own vector envs.

- :func:`autoreset_mode` reads an ``autoreset_mode`` argument: a
  ``gymnasium.vector.AutoresetMode`` member, its ``.value`` (``"NextStep"``, ``"SameStep"``,
  ``"Disabled"``) or the snake-case spelling (``"next_step"``, ``"same_step"``, ``"disabled"``).
- :func:`reset_mask` validates ``reset(options={"reset_mask": mask})`` with the error types
  of ``SyncVectorEnv`` (``TypeError`` for a non-array or a non-bool dtype, ``ValueError`` for
  a wrong shape).
- :func:`reject_scalar_actions` raises ``TypeError`` for a scalar action, as
  ``SyncVectorEnv`` does (it cannot iterate over one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

__all__ = ["autoreset_mode", "reset_mask", "reject_scalar_actions", "AUTORESET_MODE_NAMES"]

_MODES: dict[Any, AutoresetMode] = {}
for _m in AutoresetMode:
    _MODES[_m.value] = _m
    _MODES[_m.name.lower()] = _m
#: Every accepted spelling (besides the members themselves), for error messages.
AUTORESET_MODE_NAMES = tuple(_MODES)


def autoreset_mode(value: Any, name: str = "autoreset_mode") -> AutoresetMode:
    """``value`` as an ``AutoresetMode`` member; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, AutoresetMode):
        return value
    if isinstance(value, str) and value in _MODES:
        return _MODES[value]
    raise ValueError(
        f"{name} must be a gymnasium.vector.AutoresetMode or one of {list(AUTORESET_MODE_NAMES)}, got {value!r}"
    )


def reset_mask(mask: Any, num_envs: int, device: torch.device) -> torch.Tensor:
    """``options["reset_mask"]`` as a ``(num_envs,)`` bool tensor on ``device``.

    Accepts a numpy array (what ``SyncVectorEnv`` accepts) or a torch tensor (so a torch loop
    can pass its ``terminated | truncated`` straight back). An all-false mask is a no-op (it
    is not checked: that would cost a device sync).
    """
    if not isinstance(mask, (np.ndarray, torch.Tensor)):
        raise TypeError(f"options['reset_mask'] must be a numpy array or torch tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != (num_envs,):
        raise ValueError(f"options['reset_mask'] must have shape ({num_envs},), got {tuple(mask.shape)}")
    if mask.dtype not in (np.bool_, torch.bool):
        raise TypeError(f"options['reset_mask'] must have a bool dtype, got {mask.dtype}")
    return torch.as_tensor(mask, device=device)


def reject_scalar_actions(actions: Any, shape: tuple[int, ...]) -> None:
    """``TypeError`` when ``actions`` is a scalar (a Python/numpy number, a 0-d array or
    tensor, ``None``) rather than a batch of shape ``shape``."""
    if actions is None or np.ndim(actions) == 0:
        raise TypeError(
            f"actions must be a batch of shape {shape} (one action per sub-env), got the scalar {actions!r}"
        )
