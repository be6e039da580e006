"""Real experience for model-based agents: transition buffers and episode collection on any env.

States are the adapter's model states (``EnvAdapter.state`` of the observations, angles
wrapped to ``[-pi, pi)``): a learned model never sees angles beyond one turn, and a
transition is stored as ``(x, u, x + delta(x, x'))`` with the angle part of ``delta``
wrapped too, so it never jumps by 2 pi across the seam.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from lyagym.learned_models.files import atomic_write

from .adapters import EnvAdapter, make_adapter, wrap_angles

__all__ = ["TransitionBuffer", "collect_episode", "collect_random_transitions", "atomic_save"]


def atomic_save(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` atomically (a temp file renamed into place)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write_file(tmp: str) -> None:
        with open(tmp, mode) as f:
            write(f)

    atomic_write(path, write_file)


class TransitionBuffer:
    """Real transitions ``(x, u, x')`` of model states, with the env's rewards and terminations.

    Args:
        state_dim, action_dim: ``x: (n,)``, ``u: (m,)``.
        angle_dims: state entries that are angles (wrapped; their deltas wrapped too).
    """

    def __init__(self, state_dim: int, action_dim: int, angle_dims: Sequence[int] = ()) -> None:
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.angle_dims = tuple(int(i) for i in angle_dims)
        self.states = np.empty((0, self.state_dim))
        self.actions = np.empty((0, self.action_dim))
        self.next_states = np.empty((0, self.state_dim))
        self.rewards = np.empty(0)
        self.terminated = np.empty(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.states)

    def add_trajectory(self, states: np.ndarray, actions: np.ndarray, rewards: np.ndarray | None = None,
                       terminated: bool = False) -> None:
        """``states: (T + 1, n)``, ``actions: (T, m)`` (as applied), ``rewards: (T,)``;
        ``terminated``: the episode ended in a terminal state (its last transition is marked)."""
        states, actions = np.asarray(states, np.float64), np.asarray(actions, np.float64)
        if states.ndim != 2 or states.shape[1] != self.state_dim or actions.shape != (len(states) - 1, self.action_dim):
            raise ValueError(f"expected states (T+1, {self.state_dim}) and actions (T, {self.action_dim}), got {states.shape} and {actions.shape}")
        x = wrap_angles(states[:-1], self.angle_dims)
        x_next = x + wrap_angles(states[1:] - states[:-1], self.angle_dims)
        done = np.zeros(len(x), dtype=bool)
        if terminated and len(done):
            done[-1] = True
        r = np.full(len(x), np.nan) if rewards is None else np.asarray(rewards, np.float64).reshape(len(x))
        self.states = np.concatenate([self.states, x])
        self.actions = np.concatenate([self.actions, actions])
        self.next_states = np.concatenate([self.next_states, x_next])
        self.rewards = np.concatenate([self.rewards, r])
        self.terminated = np.concatenate([self.terminated, done])

    def tensors(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, u, x')`` as tensors ``(N, n), (N, m), (N, n)``."""
        return tuple(torch.as_tensor(a, device=device, dtype=dtype) for a in (self.states, self.actions, self.next_states))  # type: ignore[return-value]

    def windows(self, length: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Windows of ``length`` consecutive transitions of one trajectory, one starting every
        ``stride`` transitions: ``(x0 (W, n), u (W, length, m), targets (W, length, n))``, the
        targets the states after each action with the angles unwrapped along the window
        (``x0`` plus the summed wrapped changes), as a multi-step fit compares them with a
        rollout. A window never crosses from one trajectory into the next (where a transition's
        next state is not the following transition's state) nor past a terminal transition."""
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an int >= 1, got {stride!r}")
        n, m = self.state_dim, self.action_dim
        N = len(self)
        if N < length:
            return np.empty((0, n)), np.empty((0, length, m)), np.empty((0, length, n))
        # joined[i]: transition i + 1 continues transition i (same trajectory, not terminal)
        gap = wrap_angles(self.next_states[:-1] - self.states[1:], self.angle_dims)
        tolerance = 1e-9 * (1.0 + np.abs(self.states[1:]))
        joined = np.all(np.abs(gap) <= tolerance, axis=1) & ~self.terminated[:-1]
        # breaks[i]: transitions before i that do not continue into their successor
        breaks = np.concatenate([[0], np.cumsum(~joined)])
        starts = np.arange(0, N - length + 1, stride)
        starts = starts[breaks[starts + length - 1] == breaks[starts]]
        idx = starts[:, None] + np.arange(length)
        x0 = self.states[starts]
        targets = x0[:, None, :] + np.cumsum(self.next_states[idx] - self.states[idx], axis=1)
        return x0.copy(), self.actions[idx], targets

    def save(self, path: str) -> None:
        atomic_save(path, lambda f: np.savez(f, states=self.states, actions=self.actions, next_states=self.next_states,
                                              rewards=self.rewards, terminated=self.terminated,
                                              angle_dims=np.asarray(self.angle_dims, dtype=np.int64)))

    @classmethod
    def load(cls, path: str) -> "TransitionBuffer":
        try:
            with np.load(path) as data:
                angle_dims = tuple(int(i) for i in data["angle_dims"]) if "angle_dims" in data else ()
                buf = cls(data["states"].shape[1], data["actions"].shape[1], angle_dims)
                buf.states, buf.actions, buf.next_states = data["states"], data["actions"], data["next_states"]
                n = len(buf.states)
                buf.rewards = data["rewards"] if "rewards" in data else np.full(n, np.nan)
                buf.terminated = data["terminated"] if "terminated" in data else np.zeros(n, dtype=bool)
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"corrupt or incomplete transition buffer {path!r}: {e}") from None
        return buf


def collect_episode(env: gym.Env, act: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, *, steps: int,
                    seed: int | None = None, frames: bool = False, progress: bool = False, desc: str = "episode",
                    start_state=None, reset_options: dict[str, Any] | None = None,
                    adapter: EnvAdapter | None = None) -> dict[str, Any]:
    """Run one episode of at most ``steps`` on the real ``env``.

    Args:
        env: any env with an adapter (``make_adapter``).
        act: ``act(state, obs) -> action`` with ``state`` the adapter's model state;
            ``None`` for uniform random actions (seeded by the env's action space).
        steps: episode length (termination or the env's own time limit may end it earlier).
        seed: passed to ``env.reset``.
        frames: also return rendered frames (needs ``render_mode="rgb_array"``).
        progress: show a step progress bar.
        start_state: optional initial state for envs that take ``reset(options={"state": ...})``.
        reset_options: other ``reset`` options.
        adapter: default ``make_adapter(env)``.

    Returns:
        dict with ``states (T+1, n)`` (model states), ``actions (T, m)`` (clipped as
        applied), ``rewards (T,)``, ``return``, ``terminated`` (bool), ``observations``
        ``(T+1, obs_dim)`` and ``frames``.
    """
    adapter = adapter or make_adapter(env)
    options = dict(reset_options or {})
    if start_state is not None:
        options["state"] = np.asarray(start_state, np.float64)
    obs, _ = env.reset(seed=seed, options=options or None)
    if seed is not None:
        env.action_space.seed(seed)
    observations, states, actions, rewards, images = [obs], [adapter.env_state(env, obs)], [], [], []
    if frames:
        images.append(env.render())
    low, high = env.action_space.low, env.action_space.high
    terminated = False
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        a = env.action_space.sample() if act is None else np.asarray(act(states[-1], obs), dtype=np.float32)
        obs, r, terminated, truncated, _ = env.step(a)
        observations.append(obs)
        states.append(adapter.env_state(env, obs))
        actions.append(np.clip(a, low, high))
        rewards.append(float(r))
        if frames:
            images.append(env.render())
        if terminated or truncated:
            break
    return {
        "states": np.asarray(states),
        "observations": np.asarray(observations),
        "actions": np.asarray(actions, dtype=np.float64).reshape(len(actions), -1),
        "rewards": np.asarray(rewards),
        "return": float(np.sum(rewards)),
        "terminated": bool(terminated),
        "frames": images,
    }


def collect_random_transitions(env: gym.Env, episodes: int, steps: int, *, seed: int = 0, adapter: EnvAdapter | None = None,
                               progress: bool = False, **adapter_kwargs: Any) -> TransitionBuffer:
    """World-model training data: ``episodes`` episodes of uniform random actions of at
    most ``steps`` each, started where ``adapter.random_start`` says (spread over the
    state space for envs that can set their state, e.g. the pendulum: angles uniform on the
    circle, speeds uniform in ``[-max_speed, max_speed]``), else from the env's own starts."""
    adapter = adapter or make_adapter(env, **adapter_kwargs)
    rng = np.random.default_rng(seed)
    buffer = TransitionBuffer(adapter.state_dim, adapter.action_dim, adapter.angle_dims)
    for e in tqdm(range(episodes), desc="collect data", disable=not progress, leave=False):
        ep = collect_episode(env, None, steps=steps, seed=seed * 100_003 + e, reset_options=adapter.random_start(env, rng),
                             adapter=adapter)
        buffer.add_trajectory(ep["states"], ep["actions"], ep["rewards"], ep["terminated"])
    return buffer
