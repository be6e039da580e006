"""Model-based RL on the pendulum: a PETS-style MPC loop and a Dyna/MBPO-style loop.

PETS (Chua et al. 2018), without the ensemble -- any ``WorldModel`` plays the model::

    D <- episodes of random torques on the real env
    repeat:
        fit the world model to D                      (one-step loss through model.step)
        run one real episode with MPC (CEM/MPPI/...) planning on the world model
        D <- D + that episode

Dyna / MBPO (Sutton 1991; Janner et al. 2019) with Stable-Baselines3 SAC::

    D <- random episodes;  fit the world model
    repeat:
        SAC learns on short imagined rollouts branched from real states of D
            (a batched ``WorldModelVectorEnv`` whose episodes start at states of D)
        run one real episode with SAC's policy;  D <- D + episode;  refit the model

Both loops log one CSV row per real episode (return, real steps so far, ``learn_steps``: the
real steps the acting agent had learned from, ``policy``, final angle error, model validation
loss, wall time; Dyna adds ``eval_*``: its greedy policy on a separate env copy), save a checkpoint of the model and the data after every
episode (``resume=True`` continues from it), seed everything, and show progress bars.

States fed to models are the env's physical state with angles wrapped to ``[-pi, pi)``
(``wrap_state``): a learned model never sees angles beyond one turn it was not trained on,
and a transition is stored as ``(wrap(x), u, wrap(x) + (x' - x))`` so it never jumps by 2 pi.
PETS plans on ``AngleWrappedModel(model)``, which wraps the angles after every step of a
rollout too: upright (``q = pi``) is the wrap point, so without it every planned swing over
the top extrapolates the model past ``pi``, where it has no data (n = 1 swing-up, same
fitted model: return -286 with wrapping vs -539 without; ``lyagym reproduce mbrl-swingup``).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from .planners import make_planner
from lyagym.learned_models.files import atomic_write

__all__ = [
    "MBRLConfig",
    "WORLD_MODELS",
    "make_world_model",
    "make_pendulum_env",
    "true_physics_model",
    "mpc_episode",
    "TransitionBuffer",
    "MPCController",
    "AngleWrappedModel",
    "wrap_state",
    "default_horizon",
    "model_priors",
    "collect_episode",
    "collect_random_transitions",
    "fit_transitions",
    "angle_error",
    "run_pets",
    "run_dyna",
    "write_csv",
    "TensorBoardLog",
    "require_tensorboard",
]


@dataclass
class MBRLConfig:
    """Hyper-parameters of both loops (defaults: n = 1 swing-up at ``dt = 0.05``)."""

    episodes: int = 5  #: real episodes after the random ones
    random_episodes: int = 1  #: episodes of uniform random torques to start the data
    episode_steps: int = 200  #: real env steps per episode
    random_episode_steps: int | None = None  #: length of the random episodes (default ``episode_steps``)
    seed: int = 0
    # world-model fitting (one-step loss through model.step)
    fit_epochs: int = 60
    #: at least this many Adam steps per fit: with little data an epoch is one or two batches,
    #: so epochs (and ``patience``) are scaled up until ``fit_epochs`` epochs make ``fit_steps`` steps
    fit_steps: int = 0
    batch_size: int = 256
    lr: float = 1e-3
    val_fraction: float = 0.1
    patience: int = 15
    # PETS planner. Defaults tuned on the true physics of the n = 1 swing-up (dt 0.05, torque 5):
    # MPPI K = 300, H = 50 (2.5 s: a whole swing-up), 3 iterations per step, 30 for an
    # episode's first plan, noise std 1 -- return -288.1 +- 3.3 from SAC's evaluation starts
    # (SAC's final return: -289.0), where K = 300, H = 30, 2 iterations, std 2.5 swung up in
    # one go from 1 of 5 starts (``lyagym reproduce mbrl-swingup`` docstring). For n = 2 a
    # horizon of 15 works and 50 does not; from near upright H = 50 tends to let the
    # pendulum fall through a full turn (H <= 40 catches it).
    planner: str = "mppi"
    horizon: int = 50
    num_samples: int = 300
    iterations: int = 3
    #: iterations of the first plan of each episode (no warm start yet); 0: ``iterations``
    warmup_iterations: int = 30
    noise_std: float | None = 1.0  #: ``None``: a quarter of the torque range
    temperature: float = 0.5
    #: plan on ``AngleWrappedModel(model)``: rollouts wrap the angles after every step, so a
    #: swing over the top stays on the data's ``[-pi, pi)`` instead of extrapolating past pi
    wrap_angles: bool = True
    # Dyna / MBPO
    imagined_envs: int = 128  #: parallel imagined rollouts
    imagined_horizon: int = 20  #: steps of each rollout branched from a real state
    imagined_steps: int = 3000  #: SAC env steps (per imagined env batch) per real episode
    sac_gradient_steps: int = 1
    sac_batch_size: int = 256


def default_horizon(n_links: int) -> int:
    """The MPPI horizon of the swing-up: 50 steps (2.5 s, a whole swing-up) for one link, 15 for more.

    Measured on the true physics from SAC's evaluation starts (seeds 0-2, K = 300, 3
    iterations, 30 warmup, noise std 1): n = 2 with H = 15 ends 0.009-0.037 rad from upright
    (return -180), with H = 20 0.02-0.07 rad, with H = 30 holds only within 0.4 rad and with
    H = 50 never swings up (2 rad); n = 1 needs the long horizon (``lyagym reproduce mbrl-swingup``).
    """
    return 50 if n_links == 1 else 15


def model_priors(n_links: int, enabled: bool = True) -> dict[str, Any]:
    """Options of ``make_world_model`` for the pendulum: the mechanical priors of its ``fhat``
    (``lyagym.learned_models.DynamicsNet``: sin/cos of the ``n_links`` angles, affine in the
    torques, SiLU) when ``enabled`` (the default), else none (the paper's plain MLP).

    Measured in the swing-up study (``lyagym reproduce mbrl-swingup`` docstring): on the
    double pendulum the plain MLP's one-step validation error stays near 1e-2 and PETS with
    2,400 real steps never swings up, with the priors it does after 600-1,800 (9 of 10 runs). On the single
    pendulum PETS reaches SAC's return after 400 real steps on 9 of 10 runs with the priors,
    600-800 with the plain MLP.
    """
    return {"angle_dims": int(n_links), "control_affine": True, "activation": "silu"} if enabled else {}


def wrap_state(x, n_links: int):
    """Wrap the ``n_links`` angles of ``x: (..., 2 n)`` to ``[-pi, pi)``; numpy or torch."""
    from lyagym.envs.rewards import wrap_angle

    if isinstance(x, torch.Tensor):
        return torch.cat([wrap_angle(x[..., :n_links]), x[..., n_links:]], -1)
    return np.concatenate([wrap_angle(x[..., :n_links]), x[..., n_links:]], -1)


def angle_error(x: np.ndarray, n_links: int, target: float) -> np.ndarray:
    """``max_i |wrap(q_i - target)|`` of states ``(..., 2 n)`` -> ``(...)``."""
    from lyagym.envs.rewards import wrap_angle

    return np.abs(wrap_angle(np.asarray(x)[..., :n_links] - target)).max(-1)


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


#: world-model kinds for the pendulum experiments: name -> factory(state_dim, action_dim, dt, **kw)
WORLD_MODELS: dict[str, Callable[..., Any]] = {}


def _register_world_models() -> None:
    from lyagym.learned_models import SimpleDynamics, StableControlledDynamics

    WORLD_MODELS["simple"] = lambda n, m, dt, **kw: SimpleDynamics(n, m, dt=dt, **kw)
    # Certified towards hanging at rest (x_eq = 0) without input, ISS with input.
    WORLD_MODELS["stable"] = lambda n, m, dt, **kw: StableControlledDynamics(n, m, dt=dt, **kw)


def make_world_model(kind: str, state_dim: int, action_dim: int, dt: float, *, seed: int = 0,
                     device: str | torch.device = "cpu", **kwargs: Any):
    """A fresh controlled world model ``kind`` (``"simple"`` or ``"stable"``), seeded, on ``device``."""
    if not WORLD_MODELS:
        _register_world_models()
    if kind not in WORLD_MODELS:
        raise ValueError(f"unknown world model {kind!r}; choose one of {sorted(WORLD_MODELS)}")
    torch.manual_seed(seed)
    return WORLD_MODELS[kind](state_dim, action_dim, dt, **kwargs).to(device)


class TransitionBuffer:
    """Real transitions ``(x, u, x')`` (``x`` angle-wrapped, see the module docstring)."""

    def __init__(self, state_dim: int, action_dim: int) -> None:
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.states = np.empty((0, self.state_dim))
        self.actions = np.empty((0, self.action_dim))
        self.next_states = np.empty((0, self.state_dim))

    def __len__(self) -> int:
        return len(self.states)

    def add_trajectory(self, states: np.ndarray, actions: np.ndarray) -> None:
        """``states: (T + 1, n)`` physical states, ``actions: (T, m)`` applied (clipped) torques."""
        states, actions = np.asarray(states, np.float64), np.asarray(actions, np.float64)
        if states.ndim != 2 or states.shape[1] != self.state_dim or actions.shape != (len(states) - 1, self.action_dim):
            raise ValueError(f"expected states (T+1, {self.state_dim}) and actions (T, {self.action_dim}), got {states.shape} and {actions.shape}")
        n = self.state_dim // 2
        x = wrap_state(states[:-1], n)
        x_next = x + (states[1:] - states[:-1])
        self.states = np.concatenate([self.states, x])
        self.actions = np.concatenate([self.actions, actions])
        self.next_states = np.concatenate([self.next_states, x_next])

    def tensors(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(torch.as_tensor(a, device=device, dtype=dtype) for a in (self.states, self.actions, self.next_states))  # type: ignore[return-value]

    def save(self, path: str) -> None:
        _atomic(path, lambda f: np.savez(f, states=self.states, actions=self.actions, next_states=self.next_states))

    @classmethod
    def load(cls, path: str) -> "TransitionBuffer":
        try:
            with np.load(path) as data:
                buf = cls(data["states"].shape[1], data["actions"].shape[1])
                buf.states, buf.actions, buf.next_states = data["states"], data["actions"], data["next_states"]
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"corrupt or incomplete transition buffer {path!r}: {e}") from None
        return buf


def _atomic(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write_file(tmp: str) -> None:
        with open(tmp, mode) as f:
            write(f)

    atomic_write(path, write_file)


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as CSV, atomically."""
    if not rows:
        return
    fields = list(rows[0])
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]

    def write(f):
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)

    _atomic(path, write, mode="w")


def read_csv(path: str) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(v: str):
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    except (TypeError, ValueError):
        return v


# ---------------------------------------------------------------------- acting
class AngleWrappedModel:
    """A world model over the wrapped state whose every ``step`` wraps the angles again.

    A learned model only ever saw angles in ``[-pi, pi)`` (``TransitionBuffer``), but a
    planner's rollout of ``H`` steps integrates the angle freely: a swing over the top
    (upright is ``q = pi``, the wrap point) carries the rollout to ``q > pi``, where the
    model extrapolates from no data -- exactly where the swing-up must be caught.
    Wrapping after each step keeps every model input on the data's circle. The task
    cost wraps angles itself, so it is unchanged.

    Args:
        model: a controlled ``WorldModel`` over the physical state ``(batch, 2 n)``.
        n_links: ``n``: the first ``n`` state entries are angles.
    """

    def __init__(self, model, n_links: int) -> None:
        self.model = model
        self.n_links = int(n_links)
        self.state_dim, self.action_dim, self.dt = model.state_dim, model.action_dim, model.dt

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def step(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, 2 n)`` next state, angles in ``[-pi, pi)``."""
        return wrap_state(self.model.step(x, u), self.n_links)

    def rollout(self, x0: torch.Tensor, actions: torch.Tensor | int) -> torch.Tensor:
        """``(batch, horizon + 1, 2 n)`` states, each step wrapped."""
        from lyagym.learned_models import rollout

        return rollout(self, x0, actions)


class MPCController:
    """Receding-horizon control of a real pendulum env with a planner on a world model.

    ``controller(state)`` takes the env's physical state ``(2 n,)`` (numpy), wraps its
    angles, plans, and returns the first action as numpy ``(m,)``.

    ``warmup_iterations`` (> 0) gives the first plan after construction or ``reset`` that
    many iterations instead of the planner's own: that plan starts from a blank sequence,
    while every later one starts from the previous plan shifted by a step, so a few
    iterations per step suffice afterwards. On the pendulum swing-up the first plan picks
    the swing direction and the pumping schedule; a half-optimised one often costs an
    extra swing (return about -410 instead of -290).
    """

    def __init__(self, planner, n_links: int, *, warmup_iterations: int = 0) -> None:
        if not isinstance(warmup_iterations, (int, np.integer)) or warmup_iterations < 0:
            raise ValueError(f"warmup_iterations must be an int >= 0, got {warmup_iterations!r}")
        self.planner = planner
        self.n_links = int(n_links)
        self.warmup_iterations = int(warmup_iterations)
        self._fresh = True

    def reset(self) -> None:
        self.planner.reset()
        self._fresh = True

    def __call__(self, state: np.ndarray) -> np.ndarray:
        x = wrap_state(np.asarray(state, dtype=np.float64), self.n_links)
        iterations = self.planner.iterations
        if self._fresh and self.warmup_iterations:
            self.planner.iterations = self.warmup_iterations
        try:
            action = self.planner.plan(x)
        finally:
            self.planner.iterations = iterations
        self._fresh = False
        return action.detach().cpu().numpy().astype(np.float32)


def mpc_episode(env: gym.Env, model, *, planner: str = "mppi", cost=None, horizon: int = 30, num_samples: int = 500,
                iterations: int = 2, steps: int = 200, seed: int = 0, frames: bool = False, progress: bool = True,
                start_state=None, warmup_iterations: int = 0, **planner_kwargs: Any) -> dict[str, Any]:
    """One real episode of MPC with ``planner`` on ``model`` (see ``collect_episode`` for the
    result; adds ``plans_per_s``). ``cost`` defaults to the env's own task cost;
    ``warmup_iterations``: see ``MPCController``."""
    from .costs import PendulumCost

    base = env.unwrapped
    n = int(base.n_links)
    cost = cost or PendulumCost(n, base.task, action_dim=base.action_dim, **base.weights)
    plan = make_planner(planner, model, cost, horizon=horizon, num_samples=num_samples, iterations=iterations,
                        action_low=base.action_space.low, action_high=base.action_space.high, seed=seed, **planner_kwargs)
    controller = MPCController(plan, n, warmup_iterations=warmup_iterations)
    t0 = time.perf_counter()
    ep = collect_episode(env, lambda s, o: controller(s), steps=steps, seed=seed, frames=frames, progress=progress,
                         desc=f"MPC ({planner})", start_state=start_state)
    ep["plans_per_s"] = len(ep["actions"]) / max(1e-9, time.perf_counter() - t0)
    return ep


def collect_episode(env: gym.Env, act: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, *, steps: int,
                    seed: int | None = None, frames: bool = False, progress: bool = False,
                    desc: str = "episode", start_state=None) -> dict[str, Any]:
    """Run one episode of ``steps`` on the real ``env``.

    Args:
        env: an ``NLinkPendulumEnv`` (possibly wrapped).
        act: ``act(state, obs) -> action``; ``None`` for uniform random torques (seeded by
            the env's action space).
        steps: episode length (the env's own time limit may end it earlier).
        seed: passed to ``env.reset``.
        frames: also return rendered frames (needs ``render_mode="rgb_array"``).
        progress: show a step progress bar.
        start_state: optional initial physical state (``reset(options={"state": ...})``).

    Returns:
        dict with ``states (T+1, 2n)``, ``actions (T, m)`` (clipped as applied),
        ``rewards (T,)``, ``return``, ``frames``.
    """
    base = env.unwrapped
    obs, _ = env.reset(seed=seed, options=None if start_state is None else {"state": np.asarray(start_state, np.float64)})
    if seed is not None:
        env.action_space.seed(seed)
    states, actions, rewards, images = [base.state], [], [], []
    if frames:
        images.append(env.render())
    low, high = env.action_space.low, env.action_space.high
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        a = env.action_space.sample() if act is None else np.asarray(act(states[-1], obs), dtype=np.float32)
        obs, r, terminated, truncated, _ = env.step(a)
        states.append(base.state)
        actions.append(np.clip(a, low, high))
        rewards.append(r)
        if frames:
            images.append(env.render())
        if terminated or truncated:
            break
    return {
        "states": np.asarray(states),
        "actions": np.asarray(actions, dtype=np.float64).reshape(len(actions), -1),
        "rewards": np.asarray(rewards),
        "return": float(np.sum(rewards)),
        "frames": images,
    }


def collect_random_transitions(env: gym.Env, episodes: int, steps: int, *, seed: int = 0, max_speed: float = 6.0,
                               progress: bool = False) -> TransitionBuffer:
    """World-model training data from the real env: ``episodes`` short episodes of uniform
    random torques, each from a random state (angles uniform on the circle, speeds uniform
    in ``[-max_speed, max_speed]``), so the data covers hanging, swinging and upright states."""
    base = env.unwrapped
    n = int(base.n_links)
    rng = np.random.default_rng(seed)
    buffer = TransitionBuffer(base.state_dim, base.action_dim)
    for e in tqdm(range(episodes), desc="collect data", disable=not progress, leave=False):
        x0 = np.concatenate([rng.uniform(-np.pi, np.pi, n), rng.uniform(-max_speed, max_speed, n)])
        ep = collect_episode(env, None, steps=steps, seed=seed * 100_003 + e, start_state=x0)
        buffer.add_trajectory(ep["states"], ep["actions"])
    return buffer


# ---------------------------------------------------------------------- fitting
def fit_transitions(model: torch.nn.Module, buffer: TransitionBuffer, *, epochs: int = 60, batch_size: int = 256,
                    lr: float = 1e-3, val_fraction: float = 0.1, patience: int = 15, seed: int = 0,
                    progress: bool = True) -> dict[str, Any]:
    """Fit a controlled world model to real transitions with ``lyagym.learned_models.fit``:
    each transition is a one-step trajectory, so the loss is ``||model.step(x, u) - x'||^2``
    through the model's own integrator at the env's ``dt`` (no finite differences).
    Returns ``fit``'s history (validation split, early stopping, best weights restored).
    """
    from lyagym.learned_models import fit

    if len(buffer) < 2:
        raise ValueError(f"need at least 2 transitions to fit, got {len(buffer)}")
    x, u, y = buffer.tensors(model.device, model.dtype)
    states = torch.stack([x, y], dim=1)  # (N, 2, n)
    return fit(model, (states, u.unsqueeze(1)), epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
               patience=patience, seed=seed, progress=progress)


def require_tensorboard() -> None:
    """Raise a clear ``ImportError`` when the tensorboard package (which torch's and SB3's
    TensorBoard writers need) is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as error:
        raise ImportError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from error


class TensorBoardLog:
    """Per-episode rows as TensorBoard scalars, the x axis being real env steps.

    Every numeric, finite field of a row except its identifiers (``method``, ``seed``,
    ``episode``, ``real_steps``) becomes the scalar ``"<prefix>/<field>"`` at step
    ``row["real_steps"]``, so runs of different methods line up on the data they used.
    Call it with each row (it fits the loops' ``on_episode`` hook); ``close()`` flushes.

    Args:
        log_dir: event-file folder (``tensorboard --logdir`` it).
        prefix: scalar-name prefix, e.g. the method (``"pets-stable"``) or ``"eval"``.

    Needs the ``tensorboard`` package (``pip install tensorboard`` or ``lyagym[tensorboard]``).
    """

    _IDENTIFIERS = ("method", "seed", "episode", "real_steps")

    def __init__(self, log_dir: str, prefix: str = "episode") -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.prefix = prefix
        self.writer = SummaryWriter(log_dir)

    def __call__(self, row: dict[str, Any]) -> None:
        if "real_steps" not in row:
            raise ValueError(f"row must have a 'real_steps' field (the x axis), got fields {sorted(row)}")
        step = int(row["real_steps"])
        for key, value in row.items():
            if key in self._IDENTIFIERS or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                continue
            if math.isfinite(float(value)):
                self.writer.add_scalar(f"{self.prefix}/{key}", float(value), step)
        self.writer.flush()  # once per episode: a crashed run keeps its curves

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------- loops
def _episode_row(method: str, seed: int, episode: int, real_steps: int, ep: dict, task_target: float | None,
                 n_links: int, fit_loss: float | None, t0: float) -> dict[str, Any]:
    states = ep["states"]
    tail = states[-max(1, len(states) // 5):]
    row = {"method": method, "seed": seed, "episode": episode, "real_steps": real_steps, "return": ep["return"]}
    if task_target is not None:
        row["final_angle_error"] = float(angle_error(states[-1], n_links, task_target))
        row["hold_angle_error"] = float(angle_error(tail, n_links, task_target).max())
    row["model_val_loss"] = float("nan") if fit_loss is None else fit_loss
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return row


def _resume(out_dir: str | None, model, resume: bool):
    """Load ``(rows, buffer)`` from ``out_dir`` when resuming, else ``([], None)``."""
    if not (resume and out_dir and os.path.exists(os.path.join(out_dir, "episodes.csv"))):
        return [], None
    state = torch.load(os.path.join(out_dir, "model_weights.pt"), map_location=model.device, weights_only=True)
    model.load_state_dict(state)
    return read_csv(os.path.join(out_dir, "episodes.csv")), TransitionBuffer.load(os.path.join(out_dir, "buffer.npz"))


def _checkpoint(out_dir: str | None, model, buffer: TransitionBuffer, rows: list[dict]) -> None:
    if not out_dir:
        return
    _atomic(os.path.join(out_dir, "model_weights.pt"), lambda f: torch.save(model.state_dict(), f))
    buffer.save(os.path.join(out_dir, "buffer.npz"))
    write_csv(os.path.join(out_dir, "episodes.csv"), rows)


def run_pets(env: gym.Env, model, cost, config: MBRLConfig = MBRLConfig(), *, out_dir: str | None = None,
             method: str = "pets", resume: bool = False, progress: bool = True,
             on_episode: Callable[[dict], None] | None = None, tensorboard_dir: str | None = None) -> list[dict[str, Any]]:
    """PETS-style loop (module docstring) on a real pendulum ``env`` with ``model``.

    Args:
        env: real ``NLinkPendulumEnv`` (its ``dt`` must equal ``model.dt``).
        model: a controlled ``WorldModel`` (``nn.Module``) over the wrapped state; trained in place.
        cost: planning cost, e.g. ``PendulumCost(n_links, env.task)``.
        config: ``MBRLConfig``.
        out_dir: where ``episodes.csv``, ``model_weights.pt`` and ``buffer.npz`` go
            (after every episode); ``None`` writes nothing.
        method: label of the CSV rows.
        resume: continue from ``out_dir``'s checkpoint when present.
        on_episode: called with each episode's row.
        tensorboard_dir: also log each row there as TensorBoard scalars (``TensorBoardLog``).

    Returns:
        the per-episode rows (also in ``episodes.csv``).
    """
    base = env.unwrapped
    n = int(base.n_links)
    target = _task_target(base)
    if abs(float(model.dt) - float(base.dt)) > 1e-12:
        raise ValueError(f"model.dt={model.dt} must equal the env's step dt={base.dt}")
    torch.manual_seed(config.seed)
    tensorboard = TensorBoardLog(tensorboard_dir, method) if tensorboard_dir else None
    rows, buffer = _resume(out_dir, model, resume)
    buffer = buffer or TransitionBuffer(base.state_dim, base.action_dim)
    real_steps = int(rows[-1]["real_steps"]) if rows else 0
    t0 = time.perf_counter()
    total = config.random_episodes + config.episodes
    fit_loss = None
    bar = tqdm(range(len(rows), total), desc=f"{method} episodes", disable=not progress, initial=len(rows), total=total)
    for episode in bar:
        ep_seed = config.seed * 10_000 + episode
        if episode < config.random_episodes:
            ep = collect_episode(env, None, steps=config.random_episode_steps or config.episode_steps, seed=ep_seed)
        else:
            if fit_loss is None:  # first planned episode after a resume: the model is refit on the saved data
                fit_loss = _fit(model, buffer, config, progress)
            planner = make_planner(
                config.planner, AngleWrappedModel(model, n) if config.wrap_angles else model, cost, horizon=config.horizon, num_samples=config.num_samples,
                iterations=config.iterations, action_low=base.action_space.low, action_high=base.action_space.high,
                noise_std=config.noise_std, seed=ep_seed, **({"temperature": config.temperature} if config.planner == "mppi" else {}),
            )
            controller = MPCController(planner, n, warmup_iterations=config.warmup_iterations)
            ep = collect_episode(env, lambda s, o: controller(s), steps=config.episode_steps, seed=ep_seed)
        buffer.add_trajectory(ep["states"], ep["actions"])
        real_steps += len(ep["actions"])
        row = _episode_row(method, config.seed, episode, real_steps, ep, target, n, fit_loss, t0)
        # the MPC episode shows what the agent can do after learning from the steps before it
        row["policy"] = "random" if episode < config.random_episodes else "mpc"
        row["learn_steps"] = real_steps - len(ep["actions"])
        rows.append(row)
        if episode >= config.random_episodes - 1 and episode < total - 1:
            fit_loss = _fit(model, buffer, config, progress)
        _checkpoint(out_dir, model, buffer, rows)
        bar.set_postfix(ret=f"{row['return']:.1f}", err=f"{row.get('final_angle_error', float('nan')):.2f}")
        if tensorboard is not None:
            tensorboard(row)
        if on_episode is not None:
            on_episode(row)
    if tensorboard is not None:
        tensorboard.close()
    return rows


def _task_target(base) -> float | None:
    from lyagym.envs.rewards import TASK_TARGETS

    return TASK_TARGETS.get(getattr(base, "task", "swingup"))


def _fit(model, buffer: TransitionBuffer, config: MBRLConfig, progress: bool) -> float:
    batches = math.ceil(len(buffer) * (1 - config.val_fraction) / config.batch_size) if config.batch_size else 1
    scale = max(1, math.ceil(config.fit_steps / (max(1, batches) * config.fit_epochs)))
    history = fit_transitions(model, buffer, epochs=config.fit_epochs * scale, batch_size=config.batch_size, lr=config.lr,
                              val_fraction=config.val_fraction, patience=config.patience * scale, seed=config.seed,
                              progress=progress)
    losses = history["val_loss"] or history["train_loss"]
    return float(min(losses))


def run_dyna(env: gym.Env, model, config: MBRLConfig = MBRLConfig(), *, out_dir: str | None = None,
             method: str = "dyna-sac", progress: bool = True, device: str = "cpu",
             on_episode: Callable[[dict], None] | None = None, tensorboard_dir: str | None = None) -> list[dict[str, Any]]:
    """Dyna/MBPO-style loop (module docstring): SB3 SAC trained only on imagined rollouts
    of ``model`` branched from real states, acting on the real ``env``.

    Returns the per-episode rows; writes ``episodes.csv``, ``model_weights.pt``,
    ``buffer.npz`` and ``sac.zip`` to ``out_dir`` after every episode when given. With
    ``tensorboard_dir``, each row and SAC's training statistics also go there as TensorBoard
    scalars.
    """
    from stable_baselines3 import SAC

    from .world_model_env import SB3WorldModelVecEnv, StateBank, pendulum_world_model_env

    base = env.unwrapped
    n = int(base.n_links)
    target = _task_target(base)
    torch.manual_seed(config.seed)
    buffer = TransitionBuffer(base.state_dim, base.action_dim)
    bank = StateBank(base.state_dim, device=model.device, dtype=model.dtype)
    imagined = pendulum_world_model_env(model, env, num_envs=config.imagined_envs, initial_state_fn=bank,
                                        max_episode_steps=config.imagined_horizon)
    sac = SAC("MlpPolicy", SB3WorldModelVecEnv(imagined), seed=config.seed, device=device, batch_size=config.sac_batch_size,
              gradient_steps=config.sac_gradient_steps, learning_starts=config.imagined_envs * 2, verbose=0)
    from .sb3_baselines import sb3_logger

    tensorboard = TensorBoardLog(tensorboard_dir, method) if tensorboard_dir else None
    sac.set_logger(sb3_logger(out_dir, tensorboard_dir=tensorboard_dir))  # not SB3's default, which leaves an empty folder in the temp dir
    from .sb3_baselines import evaluation_episode

    eval_env = gym.make(env.spec) if env.spec is not None else None
    rows: list[dict[str, Any]] = []
    real_steps, fit_loss, t0 = 0, None, time.perf_counter()
    total = config.random_episodes + config.episodes
    for episode in tqdm(range(total), desc=f"{method} episodes", disable=not progress):
        ep_seed = config.seed * 10_000 + episode
        evaluation = None
        if episode < config.random_episodes:
            ep = collect_episode(env, None, steps=config.random_episode_steps or config.episode_steps, seed=ep_seed)
        else:
            sac.learn(total_timesteps=config.imagined_steps * config.imagined_envs, reset_num_timesteps=False)
            if eval_env is not None:  # the greedy policy on a separate copy of the env (steps not learned from)
                evaluation = evaluation_episode(eval_env, lambda s, o: sac.predict(o, deterministic=True)[0], seed=config.seed)
            ep = collect_episode(env, lambda s, o: sac.predict(o, deterministic=False)[0], steps=config.episode_steps, seed=ep_seed)
        buffer.add_trajectory(ep["states"], ep["actions"])
        bank.add(buffer.states[-len(ep["actions"]):])
        real_steps += len(ep["actions"])
        fit_loss = _fit(model, buffer, config, progress)
        row = _episode_row(method, config.seed, episode, real_steps, ep, target, n, fit_loss, t0)
        row["policy"] = "random" if episode < config.random_episodes else "sac"
        row["learn_steps"] = real_steps - len(ep["actions"])
        if evaluation is not None:
            row.update({f"eval_{k}": v for k, v in evaluation.items()})
        rows.append(row)
        _checkpoint(out_dir, model, buffer, rows)
        if out_dir:
            sac.save(os.path.join(out_dir, "sac.zip"))
        if tensorboard is not None:
            tensorboard(rows[-1])
        if on_episode is not None:
            on_episode(rows[-1])
    if tensorboard is not None:
        tensorboard.close()
    return rows


def config_from_args(args, **overrides) -> MBRLConfig:
    """An ``MBRLConfig`` from argparse ``args`` attributes with the same names."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(MBRLConfig) if getattr(args, f.name, None) is not None}
    values.update(overrides)
    return MBRLConfig(**values)
