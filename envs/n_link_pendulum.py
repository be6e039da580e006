"""``lyagym/NLinkPendulum-v0``: a planar chain of n point masses, one env per file.

The physics lives in :class:`lyagym.envs.dynamics.PendulumDynamics` (sympy-derived, compiled);
this file is only the Gymnasium shell around it: spaces, action clipping, task reward, the
starting-state distribution and rendering hooks.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import rewards
from .dynamics import PendulumDynamics

__all__ = ["NLinkPendulumEnv", "INTEGRATORS", "OBSERVATION_MODES", "STATE_LIMIT", "initial_state_box", "observation_box", "check_start_state"]

#: Integrators the env accepts (the ``method`` of ``PendulumDynamics.step``).
INTEGRATORS = ("rk4", "euler")
#: ``"raw"``: wrapped angles and velocities; ``"trig"``: cos, sin and velocities.
OBSERVATION_MODES = ("raw", "trig")

_TWO_PI = 2.0 * math.pi

#: Largest ``|q_i|`` (rad) and ``|qdot_i|`` (rad/s) a starting state may have: far beyond any
#: motion of a real pendulum, and well inside what float64 integrates (at 1e200 rad/s one RK4
#: step already overflows; at 1e16 rad an angle has no digits left below one turn).
STATE_LIMIT = 1e6


def check_start_state(state, shapes: tuple[tuple[int, ...], ...], name: str = "options['state']") -> np.ndarray:
    """``state`` as float64 if it is real, finite, of one of ``shapes`` and within
    ``STATE_LIMIT``; else a ``ValueError``/``TypeError`` naming ``name`` and what it accepts."""
    if hasattr(state, "detach"):  # a torch tensor, possibly requiring grad
        state = state.detach().cpu()
        if state.is_complex():
            raise TypeError(f"{name} must be real, got a complex tensor")
        state = state.numpy()
    if np.iscomplexobj(state):
        raise TypeError(f"{name} must be real, got a complex value")
    try:
        arr = np.array(state, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of real numbers, got {state!r}") from None
    if arr.shape not in shapes:
        wanted = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name} must have shape {wanted} = (q_1..q_n, qdot_1..qdot_n), got {arr.shape}")
    if not np.all(np.abs(arr) <= STATE_LIMIT):  # also false for NaN
        raise ValueError(f"{name} must be finite with every |q_i| and |qdot_i| <= {STATE_LIMIT:g}, got {arr.tolist()}")
    return arr


def initial_state_box(n_links: int, task: str, init_angle: float | None, init_velocity: float | None):
    """Half-widths ``(angle, velocity)`` of the uniform starting-state box for ``task``.

    ``swingup`` starts near the bottom (the swing-up is the whole job); ``regulate`` and
    ``free`` start anywhere on the circle with moderate speed. Returns ``(low, high)``,
    two ``(2 * n_links,)`` float64 arrays.
    """
    if task == "swingup":
        angle, velocity = 0.1, 0.1
    else:
        angle, velocity = math.pi, 1.0
    angle = angle if init_angle is None else float(init_angle)
    velocity = velocity if init_velocity is None else float(init_velocity)
    high = np.concatenate([np.full(n_links, angle), np.full(n_links, velocity)])
    return -high, high


def observation_box(n_links: int, mode: str, max_velocity: float) -> spaces.Box:
    """The ``float32`` observation space for ``mode`` (``"raw"`` or ``"trig"``)."""
    if mode == "trig":
        high = np.concatenate([np.ones(2 * n_links), np.full(n_links, max_velocity)])
    else:
        high = np.concatenate([np.full(n_links, math.pi), np.full(n_links, max_velocity)])
    return spaces.Box(-high.astype(np.float32), high.astype(np.float32), dtype=np.float32)


def _positive(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _non_negative(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _choice(name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def _torque_limits(max_torque: Any, action_dim: int) -> np.ndarray:
    """``max_torque`` (scalar or one per actuated joint) -> ``(action_dim,)`` float64."""
    try:
        limits = np.asarray(max_torque, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"max_torque must be a number or a sequence of numbers, got {max_torque!r}") from None
    if limits.ndim > 1 or (limits.ndim == 1 and limits.shape[0] != action_dim):
        raise ValueError(
            f"max_torque must be a scalar or have one entry per actuated joint ({action_dim}), "
            f"got shape {limits.shape}"
        )
    if not np.all(np.isfinite(limits)) or np.any(limits <= 0):
        raise ValueError(f"max_torque must be positive and finite, got {max_torque!r}")
    return np.broadcast_to(limits, (action_dim,)).copy()


class NLinkPendulumEnv(gym.Env[np.ndarray, np.ndarray]):
    r"""A planar n-link pendulum: point masses on massless rods, torque at chosen joints.

    ## Description

    A chain of ``n_links`` point masses hangs from a fixed pivot on massless rods and swings
    in the vertical plane. Angles are **absolute**, measured from the downward vertical
    (``q_i = 0`` hangs straight down, ``q_i = pi`` points straight up), positive
    counter-clockwise. The equations of motion are derived once with
    ``sympy.physics.mechanics`` (Kane's method) and compiled
    (:class:`lyagym.envs.PendulumDynamics`); each env step integrates them over ``dt``
    with ``substeps`` steps of the chosen ``integrator``. ``n_links=1`` is the classic
    pendulum, ``n_links=2`` with ``actuated=[1]`` is the acrobot.

    The default parameters are those of Manek & Kolter (2019): unit masses, links of
    length ``1 / n_links`` (the whole chain is 1 m long), ``g = 9.81``, and damping 0.3
    acting on each link's absolute angular velocity.

    ## Action Space

    ``Box(-max_torque, max_torque, (action_dim,), float32)``, one torque (N m) per actuated
    joint. Joint ``j`` connects link ``j - 1`` (the pivot for ``j = 0``) to link ``j``; its
    torque acts ``+u`` on link ``j`` and ``-u`` on link ``j - 1``.

    | Num | Action                    | Min               | Max              | Unit |
    |-----|---------------------------|-------------------|------------------|------|
    | k   | torque at joint actuated[k] | -max_torque[k]  | max_torque[k]    | N m  |

    Out-of-range actions are **clipped** to the box, as Gymnasium's classic-control envs
    (``Pendulum-v1``) do; the clipped torque is what the physics and the reward see.
    NaN or infinite actions raise ``ValueError``.

    ## Observation Space

    ``observation_mode="trig"`` (default), shape ``(3 * n_links,)``:

    | Num            | Observation          | Min            | Max           | Unit  |
    |----------------|----------------------|----------------|---------------|-------|
    | 0 .. n-1       | cos(q_i)             | -1             | 1             |       |
    | n .. 2n-1      | sin(q_i)             | -1             | 1             |       |
    | 2n .. 3n-1     | angular velocity q̇_i | -max_velocity  | max_velocity  | rad/s |

    ``observation_mode="raw"``, shape ``(2 * n_links,)``:

    | Num            | Observation                     | Min           | Max          | Unit  |
    |----------------|---------------------------------|---------------|--------------|-------|
    | 0 .. n-1       | q_i wrapped to [-pi, pi)        | -pi           | pi           | rad   |
    | n .. 2n-1      | angular velocity q̇_i            | -max_velocity | max_velocity | rad/s |

    Velocities are clipped to ``[-max_velocity, max_velocity]`` **in the observation
    only**, so observations always lie in the space; the physical state is never clipped
    (energy and momentum stay exact). The unclipped state ``(q, q̇)`` (float64, angles not
    wrapped) is ``env.unwrapped.state``. For ``n_links=1`` the ``trig`` observation is
    laid out as ``Pendulum-v1``'s ``(cos, sin, q̇)``, but its angle is measured from the
    bottom (``Pendulum-v1`` measures from the top).

    ## Rewards

    With ``wrap`` mapping angles to ``[-pi, pi)`` and ``x, u`` the state *before* the step
    and the clipped torque (as in ``Pendulum-v1``)::

        r = -( angle_weight    * sum_i wrap(q_i - q*)^2
             + velocity_weight * sum_i q̇_i^2
             + torque_weight   * sum_j u_j^2 )

    with target ``q* = pi`` for ``task="swingup"`` (reach and hold every link upright),
    ``q* = 0`` for ``task="regulate"`` (come back to rest hanging down), and ``r = 0`` for
    ``task="free"``. Default weights ``(1, 0.1, 0.001)`` are ``Pendulum-v1``'s, so
    ``n_links=1`` swing-up is scored like it. The same function, batched for numpy and
    torch, is :func:`lyagym.envs.rewards.pendulum_reward` (planners use it as their cost).

    ## Starting State

    Uniform in a box around the origin: for ``swingup`` angles and velocities in
    ``[-0.1, 0.1]`` (hanging near rest); for ``regulate`` and ``free`` angles in
    ``[-pi, pi]`` and velocities in ``[-1, 1]``. ``init_angle`` / ``init_velocity``
    change the half-widths. ``reset(options={"state": x0})`` starts from a given
    ``(2 * n_links,)`` state instead (real, with every ``|q_i|``, ``|qdot_i|`` at most
    ``STATE_LIMIT = 1e6``). Should the motion still diverge until float64 overflows (an
    integrator step too long for stiff parameters), ``step`` raises ``ValueError``
    instead of returning NaN.

    ## Episode End

    The pendulum never terminates (``terminated`` is always ``False``). Under
    ``gym.make`` the episode is truncated after ``max_episode_steps`` (500 by default) by
    Gymnasium's ``TimeLimit``; an env constructed directly truncates itself when its own
    ``max_episode_steps`` argument is given.

    ## Arguments

    ```python
    >>> import gymnasium as gym
    >>> import lyagym.envs
    >>> env = gym.make("lyagym/NLinkPendulum-v0", n_links=2, task="swingup", max_torque=5.0)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    (6,)

    ```

    - ``n_links`` (int, 2): number of links, ``>= 1``.
    - ``masses``, ``lengths`` (float or sequence, ``1`` and ``1 / n_links``): per link.
    - ``gravity`` (9.81), ``damping`` (0.3), ``damping_mode`` (``"absolute"`` or
      ``"joint"``), ``actuated`` (joint indices with motors; all by default): physics,
      see :class:`lyagym.envs.PendulumDynamics`.
    - ``task`` (``"swingup"``): ``"swingup"``, ``"regulate"`` or ``"free"``.
    - ``dt`` (0.01 s): time per env step; ``substeps`` (1): integrator steps per env step;
      ``integrator`` (``"rk4"``): ``"rk4"`` or ``"euler"``.
    - ``observation_mode`` (``"trig"``): ``"trig"`` or ``"raw"``.
    - ``max_torque`` (5.0 N m): torque limit, scalar or one per actuated joint.
    - ``max_velocity`` (``8 pi`` rad/s): observation bound on angular velocities.
    - ``init_angle``, ``init_velocity``: half-widths of the starting-state box.
    - ``angle_weight`` (1.0), ``velocity_weight`` (0.1), ``torque_weight`` (0.001): reward.
    - ``max_episode_steps`` (``None``): self-truncation for directly constructed envs.
    - ``render_mode``: ``None``, ``"rgb_array"`` or ``"human"`` (needs ``pygame``);
      ``render_size`` (500): frame side in pixels. ``metadata["render_fps"]`` is ``1 / dt``.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 100}

    def __init__(
        self,
        n_links: int = 2,
        masses: float | Sequence[float] | None = None,
        lengths: float | Sequence[float] | None = None,
        gravity: float = 9.81,
        damping: float = 0.3,
        damping_mode: str = "absolute",
        actuated: Sequence[int] | None = None,
        task: str = "swingup",
        dt: float = 0.01,
        substeps: int = 1,
        integrator: str = "rk4",
        observation_mode: str = "trig",
        max_torque: float | Sequence[float] = 5.0,
        max_velocity: float = 8 * math.pi,
        init_angle: float | None = None,
        init_velocity: float | None = None,
        angle_weight: float = rewards.ANGLE_WEIGHT,
        velocity_weight: float = rewards.VELOCITY_WEIGHT,
        torque_weight: float = rewards.TORQUE_WEIGHT,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        render_size: int = 500,
    ):
        self.task = _choice("task", task, tuple(rewards.TASK_TARGETS))
        self.integrator = _choice("integrator", integrator, INTEGRATORS)
        self.observation_mode = _choice("observation_mode", observation_mode, OBSERVATION_MODES)
        if render_mode is not None:
            _choice("render_mode", render_mode, self.metadata["render_modes"])
        if isinstance(substeps, bool) or not isinstance(substeps, (int, np.integer)) or substeps < 1:
            raise ValueError(f"substeps must be an int >= 1, got {substeps!r}")
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps must be an int >= 1 or None, got {max_episode_steps!r}")
        self.dt = _positive("dt", dt)
        self.substeps = int(substeps)
        self.max_velocity = _positive("max_velocity", max_velocity)
        self.render_size = int(_positive("render_size", render_size))
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.weights = {
            name: _non_negative(name, value)
            for name, value in (
                ("angle_weight", angle_weight),
                ("velocity_weight", velocity_weight),
                ("torque_weight", torque_weight),
            )
        }
        init_angle = None if init_angle is None else _non_negative("init_angle", init_angle)
        init_velocity = None if init_velocity is None else _non_negative("init_velocity", init_velocity)

        self.dynamics = PendulumDynamics(
            n_links=n_links,
            masses=masses,
            lengths=lengths,
            gravity=gravity,
            damping=damping,
            damping_mode=damping_mode,
            actuated=actuated,
            dt=self.dt,
        )
        self.n_links = n = self.dynamics.n_links
        self.state_dim = self.dynamics.state_dim
        self.action_dim = self.dynamics.action_dim
        if self.action_dim == 0:
            raise ValueError("actuated must name at least one joint (the env needs an action)")
        self.max_torque = _torque_limits(max_torque, self.action_dim)

        self.init_low, self.init_high = initial_state_box(n, self.task, init_angle, init_velocity)

        self.action_space = spaces.Box(-self.max_torque.astype(np.float32), self.max_torque.astype(np.float32), dtype=np.float32)
        self.observation_space = observation_box(n, self.observation_mode, self.max_velocity)

        self.metadata = {**self.metadata, "render_fps": max(1, int(round(1.0 / self.dt)))}
        self.render_mode = render_mode
        self._window = None
        self._state: np.ndarray | None = None
        self._last_u: list[float] | None = None
        self._elapsed = 0
        self._target = rewards.TASK_TARGETS[self.task]
        self._default_integration = self.integrator == "rk4" and self.substeps == 1
        self._trig = self.observation_mode == "trig"
        self._u_high = self.max_torque.tolist()
        self._u_low = (-self.max_torque).tolist()
        self._xs: list[float] = []

    # ----------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; ``options={"state": x0}`` sets the ``(2 * n_links,)`` initial state."""
        super().reset(seed=seed)
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        unknown = set(options) - {"state"}
        if unknown:
            raise ValueError(f"options accepts only the key 'state', got unknown keys {sorted(unknown)}")
        if options.get("state") is not None:
            state = check_start_state(options["state"], ((self.state_dim,),))
        else:
            state = self.np_random.uniform(self.init_low, self.init_high)
        self._state = state
        self._xs = state.tolist()
        self._last_u = None
        self._elapsed = 0
        if self.render_mode == "human":
            self.render()
        return self._observe(self._xs), {}

    def step(self, action):
        """Apply the (clipped) torque for ``dt``; returns ``(obs, reward, terminated, truncated, info)``."""
        if self._state is None:
            raise gym.error.ResetNeeded("NLinkPendulumEnv: call reset() before step()")
        u = self._clip_action(action)
        # Plain floats from here on: on a handful of numbers Python arithmetic is several
        # times faster than numpy's per-call overhead (see examples/benchmarks/bench_envs.py).
        if self._target is None:
            reward = 0.0
        else:
            reward = -rewards.pendulum_cost_floats(self._xs, u, self._target, **self.weights)
        if not math.isfinite(reward):  # a finite state whose squared velocity overflows float64
            raise ValueError(
                f"NLinkPendulumEnv.step: the reward overflowed at the state {self._xs} (the motion diverged); "
                "a smaller dt or more substeps keeps the integrator stable for these parameters"
            )
        if self._default_integration:  # the compiled RK4 step on plain floats; inputs checked above
            xs = self.dynamics._step_floats(self._xs, u)
        else:
            xs = self.dynamics.step_single(self._xs, u, method=self.integrator, substeps=self.substeps).tolist()
        self._state = np.array(xs)
        self._xs = xs
        self._last_u = u
        self._elapsed += 1
        truncated = self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps
        if self.render_mode == "human":
            self.render()
        return self._observe(xs), reward, False, truncated, {}

    def render(self):
        """An ``(render_size, render_size, 3)`` uint8 frame (``rgb_array``) or a window update (``human``)."""
        if self.render_mode is None:
            gym.logger.warn(
                "render() called without a render_mode; pass render_mode='rgb_array' or 'human' "
                'to gym.make("lyagym/NLinkPendulum-v0", render_mode=...)'
            )
            return None
        if self._state is None:
            raise gym.error.ResetNeeded("NLinkPendulumEnv: call reset() before render()")
        from .rendering import HumanWindow, draw_pendulum

        frame = draw_pendulum(
            self.dynamics.positions(self._state),
            masses=self.dynamics.masses,
            size=self.render_size,
            torque=self._last_u,
            max_torque=self.max_torque,
            actuated=getattr(self.dynamics, "actuated", None),
            target=self._target,
        )
        if self.render_mode == "rgb_array":
            return frame
        if self._window is None:
            self._window = HumanWindow(self.render_size, self.metadata["render_fps"], title="lyagym NLinkPendulum")
        self._window.show(frame)
        return None

    def close(self):
        if self._window is not None:
            self._window.close()
            self._window = None

    def __getstate__(self) -> dict[str, Any]:
        # A human-render window belongs to this process; the copy opens its own on demand.
        state = self.__dict__.copy()
        state["_window"] = None
        return state

    # ----------------------------------------------------------------- helpers
    @property
    def state(self) -> np.ndarray | None:
        """The current physical state ``(q_1..q_n, qdot_1..qdot_n)``, float64, a copy."""
        return None if self._state is None else self._state.copy()

    def _clip_action(self, action) -> list[float]:
        """Validate and clip one action; returns ``action_dim`` plain floats."""
        if type(action) is np.ndarray and action.shape == self.action_space.shape and action.dtype.kind == "f":
            u = action.tolist()
        else:
            if hasattr(action, "detach"):  # a torch tensor (maybe requiring grad), as the vector env takes it
                action = action.detach().cpu()
                action = action.resolve_conj().numpy() if action.is_complex() else action.numpy()
            if np.iscomplexobj(action) or isinstance(action, complex):
                raise TypeError(f"action must be real, got a complex value {action!r}")
            try:
                arr = np.asarray(action, dtype=np.float64)
            except (TypeError, ValueError):
                raise TypeError(f"action must be an array of {self.action_dim} numbers, got {action!r}") from None
            if arr.shape != (self.action_dim,) and (arr.size != self.action_dim or arr.ndim > 1):
                raise ValueError(f"action must have shape ({self.action_dim},), got {arr.shape}")
            u = arr.reshape(self.action_dim).tolist()
        for a in u:
            if not math.isfinite(a):
                raise ValueError(f"action must be finite, got {u}")
        return [lo if a < lo else hi if a > hi else a for a, lo, hi in zip(u, self._u_low, self._u_high)]

    def _observe(self, xs: list[float]) -> np.ndarray:
        n, v = self.n_links, self.max_velocity
        qdot = [-v if w < -v else v if w > v else w for w in xs[n:]]
        if self._trig:
            q = xs[:n]
            return np.array([*map(math.cos, q), *map(math.sin, q), *qdot], dtype=np.float32)
        return np.array([*((q + math.pi) % _TWO_PI - math.pi for q in xs[:n]), *qdot], dtype=np.float32)
