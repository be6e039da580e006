"""Gymnasium's classic-control envs with continuous actions: ``Pendulum-v1`` and
``MountainCarContinuous-v0``.

``Pendulum-v1``: the observation is ``(cos th, sin th, thdot)`` with ``th`` measured from
*upright*. The model state is ``(phi, thdot)`` with ``phi = wrap(th - pi)``, the angle from
*hanging* (as in ``NLinkPendulum``): the plant's rest state (hanging, the certified model's
``x_eq``) is then the origin and the wrap seam is at upright, away from it. With ``x_eq``
at ``th = 0`` a certified model would claim the *inverted* pendulum is stable. Reward
(Gymnasium's, of the state before the step and the clipped torque):
``-(wrap(th)^2 + 0.1 thdot^2 + 0.001 u^2)``; no termination.

``MountainCarContinuous-v0``: state = observation ``(position, velocity)``; terminates
when ``position >= 0.45`` and ``velocity >= 0``; reward ``100`` on termination minus
``0.1 u^2``. Rest state: the valley floor ``(-pi/6, 0)`` (the track's height is ``sin 3x``).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from .base import EnvAdapter

__all__ = ["PendulumV1Adapter", "MountainCarContinuousAdapter"]


def _pendulum_v1_reward(x: torch.Tensor, u: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
    th = torch.remainder(x[..., 0], 2 * math.pi) - math.pi  # upright angle wrap(phi + pi), in [-pi, pi)
    torque = u[..., 0].clamp(-2.0, 2.0)
    return -(th * th + 0.1 * x[..., 1] ** 2 + 0.001 * torque * torque)


class PendulumV1Adapter(EnvAdapter):
    """Adapter of Gymnasium's ``Pendulum-v1`` (see the module docstring)."""

    name = "pendulum-v1"

    def __init__(self, env: gym.Env) -> None:
        self.state_dim = 2
        self.angle_dims = (0,)
        self.rest_state = np.zeros(2)
        super().__init__(env, reward_fn=_pendulum_v1_reward)
        self.config_overrides = {"horizon": 30, "episode_steps": 200, "noise_std": 1.0}

    def state(self, obs) -> np.ndarray:
        obs = np.asarray(obs, np.float64)
        th = np.arctan2(obs[..., 1], obs[..., 0])
        return self.wrap(np.stack([th - np.pi, obs[..., 2]], -1))

    def metrics(self, states: np.ndarray) -> dict[str, float]:
        err = np.abs(np.mod(np.asarray(states)[..., 0], 2 * np.pi) - np.pi)  # distance from upright
        return {"final_angle_error": float(err[-1]), "hold_angle_error": float(err[-max(1, len(err) // 5):].max())}

    def random_start(self, env, rng):
        return None  # Pendulum-v1 starts uniformly on the circle already


def _mountain_car_done(x_next: torch.Tensor) -> torch.Tensor:
    return (x_next[..., 0] >= 0.45) & (x_next[..., 1] >= 0.0)


def _mountain_car_reward(x: torch.Tensor, u: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
    return 100.0 * _mountain_car_done(x_next).to(x.dtype) - 0.1 * u[..., 0] ** 2


class MountainCarContinuousAdapter(EnvAdapter):
    """Adapter of Gymnasium's ``MountainCarContinuous-v0`` (see the module docstring)."""

    name = "mountain-car-continuous"

    def __init__(self, env: gym.Env) -> None:
        self.rest_state = np.array([-math.pi / 6, 0.0])
        super().__init__(env, reward_fn=_mountain_car_reward, termination_fn=_mountain_car_done, dt=1.0)
        # the goal is ~100 steps of pumping away: plans must be long and coarse
        self.config_overrides = {"horizon": 60, "episode_steps": 999, "noise_std": 1.0}

    def metrics(self, states: np.ndarray) -> dict[str, float]:
        return {"max_position": float(np.asarray(states)[:, 0].max())}
