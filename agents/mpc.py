"""Receding-horizon control of a real env with a planner on a world model.

``MPCController`` plans from each real state and applies the first action;
``AngleWrappedModel`` keeps a learned model's rollouts on the angle circle it was trained
on; ``mpc_episode`` runs one real episode of MPC on any env with an adapter.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch

from .adapters import EnvAdapter, make_adapter, wrap_angles
from .data import collect_episode
from .planners import make_planner

__all__ = ["AngleWrappedModel", "MPCController", "mpc_episode"]


class AngleWrappedModel:
    """A world model over the wrapped state whose every ``step`` wraps the angles again.

    A learned model only ever saw angles in ``[-pi, pi)`` (``TransitionBuffer``), but a
    planner's rollout of ``H`` steps integrates an angle freely: on the pendulum a swing
    over the top (upright is ``q = pi``, the wrap point) carries the rollout to
    ``q > pi``, where the model extrapolates from no data -- exactly where the swing-up
    must be caught (n = 1, same fitted model: return -286 with wrapping vs -539 without).
    Wrapping after each step keeps every model input on the data's circle. Task costs
    wrap angles themselves, so they are unchanged.

    Args:
        model: a controlled ``WorldModel`` over the adapter's state ``(batch, n)``.
        angle_dims: the angle entries of the state (an int ``k``: the first ``k``).
    """

    def __init__(self, model, angle_dims: Sequence[int] | int) -> None:
        self.model = model
        self.angle_dims = tuple(range(angle_dims)) if isinstance(angle_dims, (int, np.integer)) else tuple(int(i) for i in angle_dims)
        self.state_dim, self.action_dim, self.dt = model.state_dim, model.action_dim, model.dt

    def __getattr__(self, name: str):  # propagation, reset_generator, ... of an ensemble
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def step(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, n)`` next state, angles in ``[-pi, pi)``."""
        return wrap_angles(self.model.step(x, u), self.angle_dims)

    def rollout(self, x0: torch.Tensor, actions: torch.Tensor | int) -> torch.Tensor:
        """``(batch, horizon + 1, n)`` states, each step wrapped."""
        from lyagym.learned_models import rollout

        if getattr(self.model, "rollout_wraps_angles", False):  # an ensemble wraps inside its own (batched) rollout
            return self.model.rollout(x0, actions, wrap_angles=self.angle_dims)
        return rollout(self, x0, actions)


class MPCController:
    """``controller(state)``: plan from the model state ``(n,)`` (numpy), return the first action ``(m,)``.

    ``warmup_iterations`` (> 0) gives the first plan after construction or ``reset`` that
    many iterations instead of the planner's own: that plan starts from a blank sequence,
    while every later one starts from the previous plan shifted by a step, so a few
    iterations per step suffice afterwards. On the pendulum swing-up the first plan picks
    the swing direction and the pumping schedule; a half-optimised one often costs an
    extra swing (return about -410 instead of -290).

    Args:
        planner: a ``Planner``.
        angle_dims: angle entries of the state, wrapped before planning (an int ``k``:
            the first ``k``).
        warmup_iterations: see above.
        safeguard: optional ``(state, action) -> action`` applied to the planned first action,
            e.g. ``CertifiedFallback`` (the plan only where the model predicts the certified
            decrease of a control Lyapunov function, else its fallback input).
    """

    def __init__(self, planner, angle_dims: Sequence[int] | int = (), *, warmup_iterations: int = 0, safeguard=None) -> None:
        if not isinstance(warmup_iterations, (int, np.integer)) or warmup_iterations < 0:
            raise ValueError(f"warmup_iterations must be an int >= 0, got {warmup_iterations!r}")
        self.planner = planner
        self.angle_dims = tuple(range(angle_dims)) if isinstance(angle_dims, (int, np.integer)) else tuple(int(i) for i in angle_dims)
        self.warmup_iterations = int(warmup_iterations)
        if safeguard is not None and not callable(safeguard):
            raise TypeError(f"safeguard must be callable (state, action) -> action, got {type(safeguard).__name__}")
        self.safeguard = safeguard
        self._fresh = True

    def reset(self) -> None:
        self.planner.reset()
        self._fresh = True

    def __call__(self, state: np.ndarray) -> np.ndarray:
        x = wrap_angles(np.asarray(state, dtype=np.float64), self.angle_dims)
        iterations = self.planner.iterations
        if self._fresh and self.warmup_iterations:
            self.planner.iterations = self.warmup_iterations
        try:
            action = self.planner.plan(x)
        finally:
            self.planner.iterations = iterations
        self._fresh = False
        action = action.detach().cpu().numpy().astype(np.float32)
        return action if self.safeguard is None else self.safeguard(x, action)


def mpc_episode(env: gym.Env, model, *, planner: str = "mppi", cost=None, horizon: int = 30, num_samples: int = 500,
                iterations: int = 2, steps: int = 200, seed: int = 0, frames: bool = False, progress: bool = True,
                start_state=None, warmup_iterations: int = 0, adapter: EnvAdapter | None = None,
                **planner_kwargs: Any) -> dict[str, Any]:
    """One real episode of MPC with ``planner`` on ``model`` (see ``collect_episode`` for the
    result; adds ``plans_per_s``). ``cost`` defaults to the adapter's planning cost (the
    env's own reward); ``warmup_iterations``: see ``MPCController``."""
    adapter = adapter or make_adapter(env)
    cost = cost or adapter.planning_cost()
    plan = make_planner(planner, model, cost, horizon=horizon, num_samples=num_samples, iterations=iterations,
                        action_low=adapter.action_low, action_high=adapter.action_high, seed=seed, **planner_kwargs)
    controller = MPCController(plan, adapter.angle_dims, warmup_iterations=warmup_iterations)
    t0 = time.perf_counter()
    ep = collect_episode(env, lambda s, o: controller(s), steps=steps, seed=seed, frames=frames, progress=progress,
                         desc=f"MPC ({planner})", start_state=start_state, adapter=adapter)
    ep["plans_per_s"] = len(ep["actions"]) / max(1e-9, time.perf_counter() - t0)
    return ep
