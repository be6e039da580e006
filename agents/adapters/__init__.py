"""Environment adapters: the one seam between Gymnasium envs and lyagym's model-based agents.

``make_adapter(env)`` picks the built-in adapter of a known env (by its registered id) or,
for any other env with Box spaces, needs a reward (and, if its episodes end, a termination)
function::

    adapter = make_adapter(gym.make("Pendulum-v1"))
    adapter = make_adapter(my_env, reward_fn=reward, termination_fn=done)

Built in: ``lyagym/NLinkPendulum-v0`` (any n, every task), ``Pendulum-v1``,
``MountainCarContinuous-v0``, and the MuJoCo ``InvertedPendulum-v5`` /
``InvertedDoublePendulum-v5``. See ``EnvAdapter`` for what an adapter provides.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym

from .base import EnvAdapter, RewardFn, TerminationFn, wrap_angles
from .classic_control import MountainCarContinuousAdapter, PendulumV1Adapter
from .mujoco import InvertedDoublePendulumAdapter, InvertedPendulumAdapter
from .n_link_pendulum import NLinkPendulumAdapter, default_horizon, make_pendulum_env, true_physics_model

__all__ = [
    "ADAPTERS",
    "EnvAdapter",
    "RewardFn",
    "TerminationFn",
    "make_adapter",
    "wrap_angles",
    "NLinkPendulumAdapter",
    "PendulumV1Adapter",
    "MountainCarContinuousAdapter",
    "InvertedPendulumAdapter",
    "InvertedDoublePendulumAdapter",
    "default_horizon",
    "make_pendulum_env",
    "true_physics_model",
]

#: registered env id (without namespace version suffix match) -> adapter class
ADAPTERS: dict[str, Callable[..., EnvAdapter]] = {
    "lyagym/NLinkPendulum-v0": NLinkPendulumAdapter,
    "Pendulum-v1": PendulumV1Adapter,
    "MountainCarContinuous-v0": MountainCarContinuousAdapter,
    "InvertedPendulum-v5": InvertedPendulumAdapter,
    "InvertedDoublePendulum-v5": InvertedDoublePendulumAdapter,
}


def make_adapter(env: gym.Env, **kwargs: Any) -> EnvAdapter:
    """The adapter of ``env``: the built-in one for a registered id in ``ADAPTERS``, an
    ``NLinkPendulumAdapter`` for an unregistered ``NLinkPendulumEnv``, else
    ``EnvAdapter(env, **kwargs)`` (which needs ``reward_fn=``). With ``reward_fn`` given, a
    custom adapter is built whatever the env."""
    if isinstance(env, EnvAdapter):
        return env
    if "reward_fn" in kwargs:
        return EnvAdapter(env, **kwargs)
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    if spec is not None and spec.id in ADAPTERS:
        return ADAPTERS[spec.id](env, **kwargs)
    from lyagym.envs import NLinkPendulumEnv

    if isinstance(env.unwrapped, NLinkPendulumEnv):
        return NLinkPendulumAdapter(env, **kwargs)
    return EnvAdapter(env, **kwargs)
