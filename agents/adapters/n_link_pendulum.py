"""``lyagym/NLinkPendulum-v0`` (any number of links, every task) as a model-based agent sees it.

State: ``(q_1..q_n, qdot_1..qdot_n)`` with the angles measured from hanging and wrapped to
``[-pi, pi)``: read from the ``"trig"`` observation as ``atan2(sin, cos)`` (the ``"raw"``
one is already that). Angles: the first ``n`` entries. Reward: the env's own
(``lyagym.envs.rewards.pendulum_reward`` of the state before the step and the clipped
torque); the env never terminates. Rest state: hanging at rest, the origin (a damped
pendulum comes to rest there without torque, so a stable / ISS model certified towards it
describes the plant).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .base import EnvAdapter

__all__ = ["NLinkPendulumAdapter", "default_horizon", "make_pendulum_env", "true_physics_model", "wrap_state", "angle_error"]


def default_horizon(n_links: int) -> int:
    """The MPPI horizon of the swing-up: 50 steps (2.5 s, a whole swing-up) for one link, 15 for more.

    Measured on the true physics from SAC's evaluation starts (seeds 0-2, K = 300, 3
    iterations, 30 warmup, noise std 1): n = 2 with H = 15 ends 0.009-0.037 rad from upright
    (return -180), with H = 20 0.02-0.07 rad, with H = 30 holds only within 0.4 rad and with
    H = 50 never swings up (2 rad); n = 1 needs the long horizon (``lyagym reproduce mbrl-swingup``).
    """
    return 50 if n_links == 1 else 15


#: Adam steps per world-model fit for n >= 2 (``MBRLConfig.fit_steps`` is 2000). On the double
#: pendulum's swing-up (``lyagym reproduce mbrl-envs --links 2``, 5 seeds) PETS with 2000 steps
#: reached SAC's return on 4 of 5 seeds (after 600-1,600 real steps learned from), with 6000 on
#: all 5 (600-1,600; last episodes -187 to -220); offline, on 600-800 transitions of swing-ups, the
#: ensemble's mean 15-step prediction error was 15-46% lower on 3 of 4 fits (equal on the fourth;
#: a fit from scratch: 14-17 s instead of 5-6 s, one thread). The certified ensemble too: 4 -> 5 of 5 seeds, median 12.0x -> 15.6x fewer real
#: steps than SAC; its last episode was within 10% of the unconstrained one's on 3 of 5 seeds
#: (5 of 5 at 2000)
DOUBLE_PENDULUM_FIT_STEPS = 6000

#: PETS's propagation of an ensemble's particles for n >= 2 (``MBRLConfig.propagation`` is
#: ``"tsinf"``). On the double pendulum's swing-up (``lyagym reproduce mbrl-envs --links 2``, 5
#: seeds) scoring every candidate on the members' mean map reached SAC's return after 400-1000
#: steps learned from on every seed (15.6-20.5x fewer real steps, final returns -180.2 +- 1.0; the
#: certified ensemble 400-1400, 11.1-24.5x); with TS-infinity after 600-1600 (seed 4 7.8x, final
#: returns -194.7 +- 12.8). A particle that keeps one member follows that member's errors over the
#: 15 steps; the mean map averages them
DOUBLE_PENDULUM_PROPAGATION = "expectation"


class NLinkPendulumReward:
    """The ``NLinkPendulumEnv`` reward ``-cost(x, u)`` of the state before the step (picklable)."""

    def __init__(self, task: str, weights: dict[str, float]) -> None:
        self.task, self.weights = task, dict(weights)

    def __call__(self, x: torch.Tensor, u: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        from lyagym.envs.rewards import pendulum_reward

        return pendulum_reward(x, u, self.task, **self.weights)


class NLinkPendulumAdapter(EnvAdapter):
    """Adapter of ``NLinkPendulumEnv`` (see the module docstring).

    Args:
        env: the env (``gym.make("lyagym/NLinkPendulum-v0", ...)`` or the class itself).
        max_speed: random data episodes start at angles uniform on the circle and speeds
            uniform in ``[-max_speed, max_speed]`` (so early data covers hanging, swinging
            and upright states).
    """

    name = "n-link-pendulum"

    def __init__(self, env: gym.Env, *, max_speed: float = 6.0) -> None:
        base = env.unwrapped
        self.n_links = n = int(base.n_links)
        self.state_dim = 2 * n
        self.angle_dims = tuple(range(n))
        self.rest_state = np.zeros(2 * n)
        self.task = base.task
        self.observation_mode = getattr(base, "observation_mode", "trig")
        self.weights = dict(base.weights)
        self.max_speed = float(max_speed)
        from lyagym.envs.rewards import TASK_TARGETS

        self.target = TASK_TARGETS.get(self.task)
        super().__init__(env, reward_fn=NLinkPendulumReward(self.task, self.weights))
        self.config_overrides = {"horizon": default_horizon(n)}
        if n >= 2:
            self.config_overrides.update(fit_steps=DOUBLE_PENDULUM_FIT_STEPS, propagation=DOUBLE_PENDULUM_PROPAGATION)

    def state(self, obs) -> np.ndarray:
        obs = np.asarray(obs, np.float64)
        n = self.n_links
        if self.observation_mode == "trig":
            q = np.arctan2(obs[..., n:2 * n], obs[..., :n])
            return self.wrap(np.concatenate([q, obs[..., 2 * n:]], -1))
        return self.wrap(obs)

    def env_state(self, env: gym.Env, obs) -> np.ndarray:
        """The env's exact float64 state (velocities unclipped), angles wrapped."""
        state = getattr(env.unwrapped, "state", None)
        return self.state(obs) if state is None else self.wrap(np.asarray(state, np.float64))

    def metrics(self, states: np.ndarray) -> dict[str, float]:
        if self.target is None:
            return {}
        from lyagym.envs.rewards import wrap_angle

        err = np.abs(wrap_angle(np.asarray(states)[..., : self.n_links] - self.target)).max(-1)
        tail = err[-max(1, len(err) // 5):]
        return {"final_angle_error": float(err[-1]), "hold_angle_error": float(tail.max())}

    planning_reward = "the env's reward, and the plan's final state scored as one more step"

    def planning_cost(self, **kwargs: Any):
        """The env's task cost over a plan with the final state scored too (``PendulumCost``)."""
        from ..costs import PendulumCost

        return PendulumCost(self.n_links, self.task, action_dim=self.action_dim, **self.weights, **kwargs)

    def random_start(self, env: gym.Env, rng: np.random.Generator) -> dict[str, Any] | None:
        n = self.n_links
        return {"state": np.concatenate([rng.uniform(-np.pi, np.pi, n), rng.uniform(-self.max_speed, self.max_speed, n)])}


def make_pendulum_env(n_links: int, *, task: str = "swingup", dt: float = 0.05, max_torque: float = 5.0,
                      episode_steps: int = 200, render_mode: str | None = None, **env_kwargs: Any) -> gym.Env:
    """The real env of the MBRL/MPC experiments: ``lyagym/NLinkPendulum-v0`` with a control
    step ``dt`` (physics integrated at 0.01 s substeps), ``trig`` observations, truncated
    after ``episode_steps``."""
    import lyagym.envs  # noqa: F401  (registers the env id)

    substeps = max(1, int(round(dt / 0.01)))
    return gym.make("lyagym/NLinkPendulum-v0", n_links=n_links, task=task, dt=dt, substeps=substeps, max_torque=max_torque,
                    max_episode_steps=episode_steps, render_mode=render_mode, **env_kwargs)


def true_physics_model(env: gym.Env, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``PendulumDynamics`` with the env's physical parameters, one RK4 step per env step:
    the "perfect world model" an MPC planner can use."""
    from lyagym.envs import PendulumDynamics

    dyn = env.unwrapped.dynamics
    params = {k: getattr(dyn, k) for k in ("masses", "lengths", "gravity", "damping", "damping_mode", "actuated") if hasattr(dyn, k)}
    for k in ("masses", "lengths", "actuated"):
        if k in params and params[k] is not None:
            params[k] = [v.item() if hasattr(v, "item") else v for v in np.asarray(params[k]).ravel()]
    model = PendulumDynamics(n_links=int(env.unwrapped.n_links), dt=float(env.unwrapped.dt), **params)
    return model.to(device, dtype)


def wrap_state(x, n_links: int):
    """Wrap the ``n_links`` angles of a pendulum state ``x: (..., 2 n)`` to ``[-pi, pi)``; numpy or torch."""
    from .base import wrap_angles

    return wrap_angles(x, range(int(n_links)))


def angle_error(x: np.ndarray, n_links: int, target: float) -> np.ndarray:
    """``max_i |wrap(q_i - target)|`` of pendulum states ``(..., 2 n)`` -> ``(...)``."""
    from lyagym.envs.rewards import wrap_angle

    return np.abs(wrap_angle(np.asarray(x)[..., :n_links] - target)).max(-1)
