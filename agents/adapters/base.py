"""The seam between environments and agents: what a model-based agent must know about an env.

A model-based loop plans on a learned model of a *state* ``x`` and scores imagined
transitions itself, so it needs, per environment family (cf. mbrl-lib's ``reward_fn`` /
``termination_fn``):

- ``state(obs)``: the model state from an observation (identity by default; a documented
  mapping where the observation is trig features),
- ``angle_dims``: which state entries are angles (wrapped to ``[-pi, pi)``; the world
  model's mechanical priors feed them as sin/cos; they must lead the state),
- ``reward(x, u, x_next) -> (N,)`` and ``termination(x_next) -> (N,) bool``: batched torch,
- the action bounds, the env step ``dt``, and
- ``rest_state``: where the plant comes to rest without input -- the certified model's
  default equilibrium ``x_eq`` (``None`` where the plant is open-loop unstable everywhere
  it is observed, e.g. an inverted pendulum on a cart, whose certificate must be of
  another kind).

Nothing outside an adapter asks which env it is talking to. A user's own env with Box
spaces needs only a reward and a termination function::

    adapter = EnvAdapter(env, reward_fn=my_reward, termination_fn=my_done)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

__all__ = ["EnvAdapter", "RewardFn", "TerminationFn", "wrap_angles"]

#: ``reward(x: (N, n), u: (N, m), x_next: (N, n)) -> (N,)``, torch, batched
RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``termination(x_next: (N, n)) -> (N,)`` bool, torch, batched
TerminationFn = Callable[[torch.Tensor], torch.Tensor]

_TWO_PI = 2.0 * math.pi


def wrap_angles(x, angle_dims: Sequence[int]):
    """Wrap the entries ``angle_dims`` of ``x: (..., n)`` to ``[-pi, pi)``; numpy or torch, a new array."""
    if not len(angle_dims):
        return x.clone() if isinstance(x, torch.Tensor) else np.array(x, dtype=np.float64, copy=True)
    idx = list(angle_dims)
    if isinstance(x, torch.Tensor):
        out = x.clone()
        out[..., idx] = torch.remainder(x[..., idx] + math.pi, _TWO_PI) - math.pi
        return out
    out = np.array(x, dtype=np.float64, copy=True)
    out[..., idx] = np.mod(out[..., idx] + math.pi, _TWO_PI) - math.pi
    return out


def _never(x_next: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x_next.shape[:-1], dtype=torch.bool, device=x_next.device)


class EnvAdapter:
    """An env as a model-based agent sees it. Subclass per env family, or pass functions.

    Args:
        env: a Gymnasium env with ``Box`` observation and action spaces (read for its
            spaces and ``dt``; the adapter keeps only those, so it pickles).
        reward_fn: ``reward(x, u, x_next) -> (N,)``; required unless a subclass defines
            ``reward``.
        termination_fn: ``done(x_next) -> (N,)`` bool; default: never.
        angle_dims: indices of the angle entries of the state (default none).
        rest_state: the plant's rest state ``(state_dim,)`` (default the origin).
        dt: the env's step in seconds (default ``env.unwrapped.dt``, else 1).

    Attributes:
        name, state_dim, action_dim, action_low, action_high (float64 ``(action_dim,)``),
        dt, angle_dims, rest_state, open_loop_stable.
    """

    name = "custom"
    #: does the plant come to rest at ``rest_state`` without input (is a globally stable /
    #: ISS certificate the right kind of guarantee for it)?
    open_loop_stable: bool = True

    def __init__(self, env: gym.Env, *, reward_fn: RewardFn | None = None, termination_fn: TerminationFn | None = None,
                 angle_dims: Sequence[int] | None = None, rest_state: Sequence[float] | None = None,
                 dt: float | None = None) -> None:
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(obs_space, gym.spaces.Box) or not isinstance(act_space, gym.spaces.Box):
            raise TypeError(f"env must have Box observation and action spaces, got {type(obs_space).__name__} and {type(act_space).__name__}")
        if len(act_space.shape) != 1 or len(obs_space.shape) != 1:
            raise ValueError(f"env spaces must be flat vectors, got observation {obs_space.shape} and action {act_space.shape}")
        if reward_fn is None and type(self).reward is EnvAdapter.reward:
            raise ValueError(f"env {_env_id(env)!r} has no built-in adapter: make one with make_adapter(env, reward_fn=(x, u, "
                             "x_next) -> (N,)) (and termination_fn=x_next -> (N,) bool if its episodes can end) and pass it on "
                             "as adapter= (run_pets, run_mbpo, mpc_episode, ...)")
        for name, fn in (("reward_fn", reward_fn), ("termination_fn", termination_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        self.env_id = _env_id(env)
        self.observation_space, self.action_space = obs_space, act_space
        self.action_dim = int(act_space.shape[0])
        self.action_low = np.asarray(act_space.low, np.float64).copy()
        self.action_high = np.asarray(act_space.high, np.float64).copy()
        if not (np.isfinite(self.action_low).all() and np.isfinite(self.action_high).all()):
            raise ValueError(f"the action space must be bounded, got low={self.action_low}, high={self.action_high}")
        if not hasattr(self, "state_dim"):
            self.state_dim = int(obs_space.shape[0])
        self._reward_fn, self._termination_fn = reward_fn, termination_fn
        if angle_dims is not None:
            self.angle_dims = tuple(int(i) for i in angle_dims)
        elif not hasattr(self, "angle_dims"):
            self.angle_dims = ()
        if any(not 0 <= i < self.state_dim for i in self.angle_dims) or len(set(self.angle_dims)) != len(self.angle_dims):
            raise ValueError(f"angle_dims must be distinct indices in [0, state_dim={self.state_dim}), got {self.angle_dims}")
        if rest_state is not None:
            self.rest_state = np.asarray(rest_state, np.float64).reshape(-1)
        elif not hasattr(self, "rest_state"):
            self.rest_state = np.zeros(self.state_dim)
        if self.rest_state is not None and self.rest_state.shape != (self.state_dim,):
            raise ValueError(f"rest_state must have shape (state_dim={self.state_dim},), got {self.rest_state.shape}")
        if dt is None:
            dt = getattr(env.unwrapped, "dt", None)
        self.dt = float(dt) if dt is not None else 1.0
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt must be a finite number > 0, got {dt!r}")

    # ------------------------------------------------------------------ observations
    def state(self, obs) -> np.ndarray:
        """Model state of observations ``(..., obs_dim) -> (..., state_dim)``, float64, angles wrapped."""
        return wrap_angles(np.asarray(obs, np.float64), self.angle_dims)

    def env_state(self, env: gym.Env, obs) -> np.ndarray:
        """The model state of the real ``env`` now, whose observation is ``obs``: ``state(obs)``
        unless the env exposes its exact state (adapters may read it, e.g. in float64)."""
        return self.state(obs)

    def wrap(self, x):
        """``x`` with its angle entries wrapped to ``[-pi, pi)`` (numpy or torch)."""
        return wrap_angles(x, self.angle_dims)

    def delta(self, x, x_next):
        """``x_next - x`` with angle differences wrapped (a step never turns by more than pi)."""
        return wrap_angles(x_next - x, self.angle_dims)

    @property
    def leading_angles(self) -> int:
        """``k`` if the angles are exactly the first ``k`` state entries (the layout the
        world model's sin/cos prior needs), else 0."""
        k = len(self.angle_dims)
        return k if tuple(sorted(self.angle_dims)) == tuple(range(k)) else 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What a policy sees of a state: angles as (sin, cos), the rest as is: ``(N, n) -> (N, n + k)``."""
        if not self.angle_dims:
            return x
        idx = list(self.angle_dims)
        rest = [i for i in range(self.state_dim) if i not in set(idx)]
        q = x[..., idx]
        return torch.cat([torch.sin(q), torch.cos(q), x[..., rest]], -1)

    @property
    def feature_dim(self) -> int:
        return self.state_dim + len(self.angle_dims)

    # ------------------------------------------------------------------ task
    def reward(self, x: torch.Tensor, u: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        """The env's reward of transitions, batched: ``(N, n), (N, m), (N, n) -> (N,)``."""
        return self._reward_fn(x, u, x_next)  # type: ignore[misc]

    def termination(self, x_next: torch.Tensor) -> torch.Tensor:
        """Whether the env would terminate in ``x_next``: ``(N, n) -> (N,)`` bool."""
        return (self._termination_fn or _never)(x_next)

    def metrics(self, states: np.ndarray) -> dict[str, float]:
        """Task-specific figures of one real episode's states ``(T + 1, n)`` for its log row."""
        return {}

    #: what ``planning_cost`` scores, in words (part of a stored study cell's key)
    planning_reward: str = "the env's reward"

    def planning_cost(self, **kwargs: Any):
        """The planner's cost: minus the env's return over a planned trajectory, with no
        reward after a predicted termination (``RewardCost``). An adapter may plan on a
        shaped reward instead (and says so in ``planning_reward``)."""
        from ..costs import RewardCost

        return RewardCost(self.reward, self.termination, state_dim=self.state_dim, action_dim=self.action_dim, **kwargs)

    # ------------------------------------------------------------------ data collection
    def random_start(self, env: gym.Env, rng: np.random.Generator) -> dict[str, Any] | None:
        """``reset`` options for a random-action data episode (``None``: the env's own
        start distribution). Adapters that can set the state spread starts over the
        state space, so early data covers more than the start region."""
        return None

    #: MBRL settings that work on this env (``MBRLConfig`` field -> value), e.g. the horizon
    config_overrides: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(env={self.env_id!r}, state_dim={self.state_dim}, action_dim={self.action_dim}, "
                f"angle_dims={self.angle_dims}, dt={self.dt})")


def _env_id(env: gym.Env) -> str:
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__
