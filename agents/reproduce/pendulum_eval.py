"""The Fig. 5 evaluation protocol of Manek & Kolter (2019), shared by every pendulum study.

The protocol (section 4.2, Fig. 5), stated once so that every model is scored the same way:

1. ``n_states = 1000`` initial states drawn uniformly from ``[-pi/8, pi/8]^(2n)`` (angles and
   angular velocities), from a fixed seed.
2. The true physics and each model are both integrated with classic RK4 at ``h = 0.01`` for
   ``n_steps = 999`` steps from the same initial states. Each model is integrated by the
   RK4 routine below applied to its ``derivative(x)``, so a model's own discrete step (for
   instance the guarantee-keeping rescaled step of ``StableDynamics``) never changes its
   score; ``model_step="step"`` scores ``model.step`` instead.
3. The error at step ``k`` of one trajectory is the squared state error
   ``||wrap(q_k - qhat_k)||^2 + ||qdot_k - qhatdot_k||^2``: angle differences are wrapped
   into ``[-pi, pi)`` because angles ``q`` and ``q + 2 pi`` are the same configuration.
4. ``per_step[k]`` is that error averaged over the trajectories (Fig. 5, left); each
   trajectory's error is averaged over steps ``1..n_steps`` (``per_trajectory``), and
   ``average`` is the mean of those (Fig. 5, right).

Example::

    from lyagym.envs import PendulumDynamics
    from lyagym.agents.reproduce.pendulum_eval import rollout_error

    physics = PendulumDynamics(n_links=2)
    scores = rollout_error(physics, {"simple": simple_model, "stable": stable_model})
    scores["stable"].average, scores["stable"].per_step.shape   # float, (1000,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

__all__ = [
    "RolloutError",
    "initial_states",
    "rk4_step",
    "wrapped_state_difference",
    "squared_state_error",
    "true_trajectories",
    "rollout_error",
]

#: The paper's settings.
N_STATES = 1000
N_STEPS = 999
STEP_SIZE = 0.01
HALF_WIDTH = math.pi / 8


@dataclass(frozen=True)
class RolloutError:
    """One model's score under the protocol.

    Attributes:
        per_step: ``(n_steps + 1,)`` squared state error at each step, averaged over
            trajectories (index 0 is the initial state, error 0).
        per_trajectory: ``(n_states,)`` each trajectory's error averaged over steps ``1..n_steps``.
        average: mean of ``per_trajectory`` (the number in Fig. 5, right).
        diverged: how many trajectories produced a non-finite state (their error counts as inf).
    """

    per_step: np.ndarray
    per_trajectory: np.ndarray
    average: float
    diverged: int

    @property
    def median(self) -> float:
        """Median over trajectories of the per-trajectory average error (robust to a few outliers)."""
        return float(np.median(self.per_trajectory))


def initial_states(
    n_links: int,
    n_states: int = N_STATES,
    *,
    half_width: float = HALF_WIDTH,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(n_states, 2 * n_links)`` states uniform in ``[-half_width, half_width]^(2 n_links)``."""
    if int(n_links) < 1:
        raise ValueError(f"n_links must be >= 1, got {n_links!r}")
    if int(n_states) < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states!r}")
    if not half_width > 0:
        raise ValueError(f"half_width must be > 0, got {half_width!r}")
    gen = torch.Generator().manual_seed(int(seed))
    x = (torch.rand(int(n_states), 2 * int(n_links), generator=gen, dtype=torch.float64) * 2 - 1) * half_width
    return x.to(device=device, dtype=dtype)


def rk4_step(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float) -> torch.Tensor:
    """One classic Runge-Kutta 4 step of ``xdot = f(x)``; ``x: (batch, state_dim)``."""
    k1 = f(x)
    k2 = f(x + 0.5 * h * k1)
    k3 = f(x + 0.5 * h * k2)
    k4 = f(x + h * k3)
    return x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)


def wrapped_state_difference(x: torch.Tensor, y: torch.Tensor, n_angles: int) -> torch.Tensor:
    """``x - y`` with the first ``n_angles`` coordinates wrapped into ``[-pi, pi)``.

    ``x, y: (..., state_dim)`` -> ``(..., state_dim)``.
    """
    d = x - y
    angles = torch.remainder(d[..., :n_angles] + math.pi, 2 * math.pi) - math.pi
    return torch.cat([angles, d[..., n_angles:]], dim=-1)


def squared_state_error(x: torch.Tensor, y: torch.Tensor, n_angles: int) -> torch.Tensor:
    """``(..., state_dim)`` pair -> ``(...,)`` squared state error with wrapped angles."""
    return wrapped_state_difference(x, y, n_angles).square().sum(dim=-1)


def _diverged_stays_nan(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f`` on the finite rows of ``x: (batch, dim)``; rows that already blew up stay NaN.

    A model integrated with RK4 may blow up on a few trajectories; models reject non-finite
    input, so those rows are fed zeros and their output is NaN (scored as diverged, ``inf``),
    while the other trajectories carry on. No host sync: a ``torch.where`` mask.
    """

    def guarded(x: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(x).all(dim=-1, keepdim=True)
        y = f(torch.where(bad, torch.zeros_like(x), x))
        return torch.where(bad, torch.full_like(y, math.nan), y)

    return guarded


def _derivative_of(name: str, obj) -> Callable[[torch.Tensor], torch.Tensor]:
    if hasattr(obj, "derivative"):
        return lambda x: obj.derivative(x)
    if callable(obj):
        return obj
    raise TypeError(f"{name} must have derivative(x) or be a callable x -> xdot, got {type(obj).__name__}")


def _model_dtype_device(model) -> tuple[torch.dtype, torch.device]:
    dtype = getattr(model, "dtype", None)
    device = getattr(model, "device", None)
    if (dtype is None or device is None) and hasattr(model, "parameters"):
        param = next(iter(model.parameters()), None)
        if param is not None:
            dtype, device = dtype or param.dtype, device or param.device
    return dtype or torch.float64, torch.device(device if device is not None else "cpu")


def true_trajectories(physics, x0: torch.Tensor, n_steps: int, h: float) -> torch.Tensor:
    """``(n_states, n_steps + 1, state_dim)`` float64 physics trajectories by RK4 at step ``h``.

    Uses ``physics.simulate`` (the fast float64 path of ``PendulumDynamics``) when it has
    one, otherwise the RK4 routine of this module on ``physics.derivative``.
    """
    if hasattr(physics, "simulate"):
        traj = physics.simulate(x0.detach().cpu().numpy(), n_steps, dt=h, method="rk4")
        traj = torch.as_tensor(np.asarray(traj), dtype=torch.float64)
        expected = (x0.shape[0], n_steps + 1, x0.shape[1])
        if tuple(traj.shape) != expected:
            raise ValueError(f"physics.simulate returned shape {tuple(traj.shape)}, expected {expected}")
        return traj
    f = _derivative_of("physics", physics)
    states = [x0.detach().to(torch.float64)]
    with torch.no_grad():
        for _ in range(n_steps):
            states.append(rk4_step(f, states[-1], h))
    return torch.stack(states, dim=1)


def rollout_error(
    physics,
    models: Mapping[str, object],
    *,
    n_states: int = N_STATES,
    n_steps: int = N_STEPS,
    h: float = STEP_SIZE,
    half_width: float = HALF_WIDTH,
    seed: int = 0,
    x0: torch.Tensor | None = None,
    model_step: str | Mapping[str, str] = "rk4",
    equilibrium_baseline: bool = False,
    progress: bool = True,
) -> dict[str, RolloutError]:
    """Score ``models`` against ``physics`` under the Fig. 5 protocol (see the module docstring).

    The physics is integrated once (in float64) and every model alongside it, so scoring
    several models costs one physics rollout. Models run under ``torch.no_grad`` in their
    own dtype and device; their train/eval mode is restored afterwards.

    Args:
        physics: the true system: ``simulate(x0, n_steps, dt=, method="rk4")`` or
            ``derivative(x)`` (``x: (batch, 2n)``), and ``n_links`` (else ``state_dim // 2``).
        models: name -> model with ``derivative(x)`` (or a callable ``x -> xdot``); with
            ``model_step="step"``, anything with ``step(x)`` whose ``dt`` equals ``h``.
        n_states, n_steps, h, half_width, seed: the protocol's settings (defaults: the paper's).
        x0: optional ``(n_states, 2n)`` initial states instead of the seeded uniform draw.
        model_step: ``"rk4"`` (integrate ``model.derivative`` with the same RK4 as the physics)
            or ``"step"`` (use the model's own discrete ``step``, e.g. the guarantee-keeping
            step of ``StableDynamics``); or a mapping name -> one of those per model.
        equilibrium_baseline: also score, as ``"equilibrium"``, the constant prediction
            ``x = 0`` (hanging at rest): a model worse than this has learned nothing useful.
        progress: show a tqdm bar over the steps.

    Returns:
        name -> ``RolloutError``.
    """
    modes = {name: model_step for name in models} if isinstance(model_step, str) else dict(model_step)
    for name in models:
        if modes.get(name, "rk4") not in ("rk4", "step"):
            raise ValueError(f"model_step must be 'rk4' or 'step', got {modes[name]!r} for model {name!r}")
    if not models:
        raise ValueError("models must name at least one model")
    if equilibrium_baseline and "equilibrium" in models:
        raise ValueError("the name 'equilibrium' is taken by equilibrium_baseline; rename that model")
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps!r}")
    if not h > 0:
        raise ValueError(f"h must be > 0, got {h!r}")
    n_links = getattr(physics, "n_links", None)
    if n_links is None:
        state_dim = getattr(physics, "state_dim", None)
        if state_dim is None:
            raise TypeError("physics must expose n_links or state_dim")
        n_links = int(state_dim) // 2
    if x0 is None:
        x0 = initial_states(n_links, n_states, half_width=half_width, seed=seed)
    else:
        if not isinstance(x0, torch.Tensor):
            x0 = torch.as_tensor(np.asarray(x0))
        if x0.ndim != 2 or x0.shape[1] != 2 * n_links:
            raise ValueError(f"x0 must have shape (n_states, {2 * n_links}), got {tuple(x0.shape)}")
        if not torch.isfinite(x0).all():
            raise ValueError("x0 contains NaN or inf")
    x0 = x0.detach().to(device="cpu", dtype=torch.float64)

    steppers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    states: dict[str, torch.Tensor] = {}
    for name, model in models.items():
        if modes.get(name, "rk4") == "step":
            if not hasattr(model, "step"):
                raise TypeError(f"model {name!r} has no step(x); use model_step='rk4'")
            if abs(float(getattr(model, "dt", h)) - h) > 1e-12:
                raise ValueError(f"model {name!r} has dt={model.dt}, the protocol needs h={h}")
            steppers[name] = _diverged_stays_nan(lambda x, m=model: m.step(x))
        else:
            f = _diverged_stays_nan(_derivative_of(f"model {name!r}", model))
            steppers[name] = (lambda f: (lambda x: rk4_step(f, x, h)))(f)
        dtype, device = _model_dtype_device(model)
        states[name] = x0.to(device=device, dtype=dtype)

    x_true = true_trajectories(physics, x0, int(n_steps), float(h))
    errors = {name: torch.zeros(int(n_steps) + 1, x0.shape[0], dtype=torch.float64) for name in models}

    was_training = {name: getattr(m, "training", None) for name, m in models.items()}
    for m in models.values():
        if hasattr(m, "eval"):
            m.eval()
    try:
        steps = range(1, int(n_steps) + 1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=f"evaluate n={n_links}", unit="step", leave=False, mininterval=1.0)
        with torch.no_grad():
            # Store model states per step on their device and compare in chunks afterwards,
            # so the loop does no host sync (no .cpu() per step).
            trajs = {name: [x] for name, x in states.items()}
            for _ in steps:
                for name, step in steppers.items():
                    trajs[name].append(step(trajs[name][-1]))
            for name, traj in trajs.items():
                for start in range(0, len(traj), 100):  # chunks of steps bound the memory
                    chunk = torch.stack(traj[start : start + 100], dim=1).to(device="cpu", dtype=torch.float64)
                    errors[name][start : start + chunk.shape[1]] = squared_state_error(
                        x_true[:, start : start + chunk.shape[1]], chunk, n_links
                    ).T
    finally:
        for name, m in models.items():
            if was_training[name] and hasattr(m, "train"):
                m.train()

    if equilibrium_baseline:
        errors["equilibrium"] = squared_state_error(x_true, torch.zeros_like(x_true), n_links).T
    results = {}
    for name, err in errors.items():
        # A trajectory that blew up scores inf rather than a silent NaN.
        bad = ~torch.isfinite(err)
        diverged = int(bad.any(dim=0).sum())
        err = torch.where(bad, torch.full_like(err, math.inf), err)
        per_traj = err[1:].mean(dim=0)
        results[name] = RolloutError(
            per_step=err.mean(dim=1).numpy(),
            per_trajectory=per_traj.numpy(),
            average=float(per_traj.mean()),
            diverged=diverged,
        )
    return results
