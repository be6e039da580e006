"""Batched planning costs: the pendulum tasks (the env's own reward), quadratic costs, and a
terminal cost from a certified Lyapunov function.

Every running cost is a callable

    cost(states: (N, H + 1, state_dim), actions: (N, H, action_dim)) -> (N,)

evaluated on the model's device without leaving it; every terminal cost is
``(N, state_dim) -> (N,)``. Each cost object declares its ``state_dim`` / ``action_dim`` so a
planner can refuse a mismatched model with a clear error before planning.

The pendulum costs call ``lyagym.envs.rewards.pendulum_cost``, the very function the env
uses for its reward, so "minimise the planner's cost" and "maximise the env's return" are
the same objective (up to the constant cost of the current state).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch

__all__ = ["PendulumCost", "QuadraticCost", "RewardCost", "LyapunovTerminalCost", "COSTS", "make_cost"]


class PendulumCost:
    """The ``NLinkPendulumEnv`` task cost summed over a planned trajectory.

    ``J = sum_{k=0}^{H-1} c(x_k, u_k) + terminal_weight * c(x_H, 0)`` with ``c`` the env's
    per-step cost ``-reward`` (``lyagym.envs.rewards.pendulum_cost``): wrapped angle error
    to the task's target, velocities and torques. The env scores the state *before* each
    step together with the action, so ``c(x_k, u_k)`` is exactly minus the env's reward for
    step ``k``; the final state, which the env would score on the next step, is added with
    ``terminal_weight`` (1 by default) so the plan does not ignore where it ends.

    Args:
        n_links: number of links; ``state_dim = 2 * n_links``.
        task: ``"swingup"`` or ``"regulate"`` (``"free"`` has nothing to plan for).
        action_dim: torques the model takes (default ``n_links``, every joint actuated).
        terminal_weight: weight of the final state's cost.
        angle_weight, velocity_weight, torque_weight: the env's reward weights (defaults
            are the env's own; pass the same values you gave the env).
    """

    def __init__(
        self,
        n_links: int,
        task: str = "swingup",
        *,
        action_dim: int | None = None,
        terminal_weight: float = 1.0,
        angle_weight: float | None = None,
        velocity_weight: float | None = None,
        torque_weight: float | None = None,
    ) -> None:
        from lyagym.envs import rewards

        if not isinstance(n_links, int) or n_links < 1:
            raise ValueError(f"n_links must be an int >= 1, got {n_links!r}")
        if task not in rewards.TASK_TARGETS or rewards.TASK_TARGETS[task] is None:
            plannable = sorted(t for t, v in rewards.TASK_TARGETS.items() if v is not None)
            raise ValueError(f"task must be one of {plannable}, got {task!r}")
        self._cost_fn = rewards.pendulum_cost
        self.task = task
        self.n_links = n_links
        self.state_dim = 2 * n_links
        self.action_dim = n_links if action_dim is None else int(action_dim)
        self.terminal_weight = float(terminal_weight)
        self.weights = {
            "angle_weight": rewards.ANGLE_WEIGHT if angle_weight is None else float(angle_weight),
            "velocity_weight": rewards.VELOCITY_WEIGHT if velocity_weight is None else float(velocity_weight),
            "torque_weight": rewards.TORQUE_WEIGHT if torque_weight is None else float(torque_weight),
        }

    def step_cost(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """The env's per-step cost ``-reward(x, u)``: ``(..., state_dim)``, ``(..., action_dim)`` -> ``(...)``."""
        return self._cost_fn(x, u, self.task, **self.weights)

    def __call__(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        running = self.step_cost(states[:, :-1], actions).sum(-1)
        if self.terminal_weight:
            running = running + self.terminal_weight * self.step_cost(states[:, -1])
        return running

    def __repr__(self) -> str:
        return f"PendulumCost(n_links={self.n_links}, task={self.task!r}, action_dim={self.action_dim})"


class QuadraticCost:
    """``J = sum_{k=0}^{H-1} (x_k - x*)^T Q (x_k - x*) + u_k^T R u_k + (x_H - x*)^T Q_f (x_H - x*)``.

    Args:
        state_dim, action_dim: dimensions.
        Q, R, Q_f: scalars or diagonal vectors (``(state_dim,)`` / ``(action_dim,)``), or full
            matrices; ``Q_f`` defaults to ``Q``.
        target: ``x*``, default the origin.
        device, dtype: where the weights live (the model's).
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        *,
        Q: float | Sequence[float] | torch.Tensor = 1.0,
        R: float | Sequence[float] | torch.Tensor = 0.0,
        Q_f: float | Sequence[float] | torch.Tensor | None = None,
        target: Sequence[float] | torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)

        def matrix(value, dim: int, name: str) -> torch.Tensor:
            t = torch.as_tensor(value, dtype=dtype, device=device)
            if t.ndim == 0:
                t = t * torch.eye(dim, dtype=dtype, device=device)
            elif t.ndim == 1 and t.shape == (dim,):
                t = torch.diag(t)
            if t.shape != (dim, dim):
                raise ValueError(f"{name} must be a scalar, ({dim},) or ({dim}, {dim}), got {tuple(t.shape)}")
            return t

        self.Q = matrix(Q, self.state_dim, "Q")
        self.R = matrix(R, self.action_dim, "R")
        self.Q_f = self.Q if Q_f is None else matrix(Q_f, self.state_dim, "Q_f")
        self.target = torch.zeros(self.state_dim, dtype=dtype, device=device) if target is None else torch.as_tensor(target, dtype=dtype, device=device)
        if self.target.shape != (self.state_dim,):
            raise ValueError(f"target must have shape ({self.state_dim},), got {tuple(self.target.shape)}")

    def __call__(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        e = states - self.target
        running = torch.einsum("nhi,ij,nhj->n", e[:, :-1], self.Q, e[:, :-1])
        control = torch.einsum("nhi,ij,nhj->n", actions, self.R, actions)
        final = torch.einsum("ni,ij,nj->n", e[:, -1], self.Q_f, e[:, -1])
        return running + control + final


class RewardCost:
    """Minus an env's return over a planned trajectory, with nothing earned after a predicted termination.

    ``J = -sum_{k=0}^{H-1} alive_k r(x_k, u_k, x_{k+1})`` with ``alive_0 = 1`` and
    ``alive_{k+1} = alive_k * (1 - done(x_{k+1}))``: the step that terminates still earns its
    reward, the steps after it do not (as the real env would end the episode there; the
    convention of mbrl-lib's ``ModelEnv``). An optional ``terminal_reward_fn(x_H) -> (N,)``
    adds a value for the final state of plans that are still alive.

    Args:
        reward_fn: ``r(x, u, x_next) -> (N,)``, batched torch (an adapter's ``reward``).
        termination_fn: ``done(x_next) -> (N,)`` bool, or ``None`` (never).
        state_dim, action_dim: declared dimensions (a planner refuses a mismatched model).
        terminal_reward_fn: optional value of the last state.
    """

    def __init__(self, reward_fn: Callable, termination_fn: Callable | None = None, *, state_dim: int, action_dim: int,
                 terminal_reward_fn: Callable | None = None) -> None:
        for name, fn in (("reward_fn", reward_fn), ("termination_fn", termination_fn), ("terminal_reward_fn", terminal_reward_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        self.reward_fn, self.termination_fn, self.terminal_reward_fn = reward_fn, termination_fn, terminal_reward_fn
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)

    def __call__(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        n, h = actions.shape[:2]
        x, x_next = states[:, :-1].reshape(n * h, -1), states[:, 1:].reshape(n * h, -1)
        rewards = self.reward_fn(x, actions.reshape(n * h, -1), x_next).reshape(n, h)
        if self.termination_fn is None:
            total = rewards.sum(-1)
            alive_end = None
        else:
            done = self.termination_fn(x_next).reshape(n, h).to(rewards.dtype)
            # alive before step k: no termination at steps < k
            alive = torch.cumprod(torch.cat([torch.ones_like(done[:, :1]), 1.0 - done[:, :-1]], 1), 1)
            total = (alive * rewards).sum(-1)
            alive_end = alive[:, -1] * (1.0 - done[:, -1])
        if self.terminal_reward_fn is not None:
            value = self.terminal_reward_fn(states[:, -1])
            total = total + (value if alive_end is None else alive_end * value)
        return -total

    def __repr__(self) -> str:
        return f"RewardCost(state_dim={self.state_dim}, action_dim={self.action_dim}, termination={self.termination_fn is not None})"


class LyapunovTerminalCost:
    """``weight * V(x_H)`` from a model's certified Lyapunov function: the classic MPC
    stability ingredient (a terminal cost that is a control Lyapunov function).

    With ``V`` decreasing along the model's own flow (``dV/dt <= -alpha V``, or its ISS
    version), a plan that ends with small ``V`` ends where the model can be left to itself
    and still converge to ``V``'s equilibrium. ``V``'s minimum is the model's certified
    equilibrium ``x_eq``; use it as a terminal cost for tasks whose goal is ``x_eq``
    (e.g. ``regulate`` for a pendulum model certified towards hanging down). For a
    swing-up, whose goal (upright) is *not* the certified equilibrium, it would pull the
    plan the wrong way -- the planner cannot tell, so choose it deliberately.

    A control Lyapunov function (``ControlLyapunov``, for a plant that is not open-loop stable)
    is the classic case: ``V`` decreases at rate ``alpha`` on ``{V <= rho}`` under the fallback
    input, so a plan that ends inside that set ends where the fallback finishes the job (pass it
    as ``source``, its ``"stabilisability"`` certificate as ``certificate``).

    Args:
        source: a model with ``.lyapunov`` (``(N, n) -> (N,)``), or the ``V`` callable itself
            (e.g. a ``ControlLyapunov``).
        weight: scale of ``V`` relative to the running cost.
        certificate: optional ``Certificate`` of ``source``; refused (``ValueError``) if it
            was issued for another model (``certificate.applies_to(model)`` is false: other
            weights, or ``alpha``, the integrator, the rescale or the dtype changed since),
            because then ``V`` is no longer certified; a ``"stabilisability"`` certificate is
            refused when it names another ``V`` (``details["lyapunov_hash"]``).
        state_dim: declared state dimension (read from the model when it has one).
        cap: ``None`` (default) or a level: the cost is ``weight * min(V, cap)``, so end states
            beyond the level all cost the same. For a ``V`` built from data (a control Lyapunov
            function's LQR part comes from the model's linearisation on the data's box) its
            values outside that box are extrapolation, and a large one there pulls the plan
            towards what the linearisation says rather than what the reward does.
    """

    def __init__(self, source, *, weight: float = 1.0, certificate=None, state_dim: int | None = None,
                 cap: float | None = None) -> None:
        V: Callable[[torch.Tensor], torch.Tensor] | None = getattr(source, "lyapunov", None)
        if V is None:
            if not callable(source):
                raise TypeError(f"source must be a model with a `.lyapunov` or a callable V(x), got {type(source).__name__}")
            V = source
        if certificate is not None and getattr(certificate, "claim", None) == "stabilisability":
            # a control Lyapunov function's certificate is about the model; it names V by its hash
            from lyagym.learned_models import model_hash

            if not isinstance(source, torch.nn.Module) or certificate.details.get("lyapunov_hash") != model_hash(source):
                raise ValueError("the stabilisability certificate was issued with another control Lyapunov function than "
                                 "this one (lyapunov_hash differs: refitted or re-certified since); re-issue it with V.certificate(model)")
        elif certificate is not None and isinstance(source, torch.nn.Module) and not certificate.applies_to(source):
            raise ValueError(
                "the certificate was issued for another model than this one (weights_hash, of class, config, dtype "
                "and weights, differs: fine-tuned, or alpha, the integrator, the rescale or the dtype changed); "
                "re-certify with model.certificate()"
            )
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < math.inf:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")  # inf * V(x_eq) = inf * 0 = NaN
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not 0 < cap < math.inf):
            raise ValueError(f"cap must be None or a finite number > 0 (the level V is saturated at), got {cap!r}")
        self.V = V
        self.weight = float(weight)
        self.cap = None if cap is None else float(cap)
        self.certificate = certificate
        declared = state_dim if state_dim is not None else getattr(source, "state_dim", None)
        if declared is not None:
            self.state_dim = int(declared)

    def __call__(self, final_states: torch.Tensor) -> torch.Tensor:
        v = self.V(final_states)
        return self.weight * (v if self.cap is None else v.clamp(max=self.cap))

    def __repr__(self) -> str:
        return f"LyapunovTerminalCost(weight={self.weight}{'' if self.cap is None else f', cap={self.cap:.4g}'})"


#: name -> cost factory; ``make_cost("swingup", n_links=2)``.
COSTS: dict[str, Callable[..., Callable]] = {
    "swingup": lambda **kw: PendulumCost(task="swingup", **kw),
    "regulate": lambda **kw: PendulumCost(task="regulate", **kw),
    "quadratic": lambda **kw: QuadraticCost(**kw),
}


def make_cost(name: str, **kwargs):
    """Build the stock cost called ``name`` (one of ``COSTS``) with ``kwargs``."""
    try:
        factory = COSTS[name]
    except KeyError:
        raise ValueError(f"unknown cost {name!r}; choose one of {sorted(COSTS)}") from None
    return factory(**kwargs)
