"""PETS: probabilistic ensembles with trajectory sampling (Chua et al. 2018), on any env with an adapter.

The algorithm box::

    D <- episodes of uniform random actions on the real env
    repeat:
        fit the world model to D                     (an ensemble: Gaussian NLL, a bootstrap
                                                      resample of D per member)
        run one real episode with MPC: at every step, CEM / iCEM / MPPI optimise an action
            sequence on the model, each candidate rolled out by P particles
            (TS-infinity: particle p stays on member p mod E; TS1: a random member each step)
            and scored by the env's reward with nothing after a predicted termination
            (``EnvAdapter.planning_cost``), the cost averaged over the particles;
            apply the first action
        D <- D + that episode

Any ``WorldModel`` plays the model (a single deterministic one uses one particle).

For a plant that is not open-loop stable (``control_lyapunov=True``, the world-model kinds
``"clf"`` / ``"ensemble-clf"``): after every fit a control Lyapunov function ``V`` is fitted to
the model (``fit_control_lyapunov``), the plan's final state is charged ``V`` up to the
largest level inside the data's box (``LyapunovTerminalCost(cap=...)``: uncapped, the LQR
quadratic's extrapolation outside the data outweighed the reward on
``InvertedDoublePendulum-v5`` and 4 of 5 seeds learned 2-4x worse than without ``V``), and each planned first action is applied only where the model
predicts the certified decrease of ``V`` (``CertifiedFallback``; else the fallback input), so
the model's closed loop converges from the certified region whatever the planner does.
Models see the adapter's state with angles wrapped; with ``wrap_angles`` the planner's
rollouts wrap them after every step too (``AngleWrappedModel``).

One CSV row per real episode (return, steps, real steps so far, ``learn_steps``: the real
steps the planner's model had learned from, ``policy``, the adapter's task metrics, model
validation loss, wall time). After every episode the run folder commits the model, the
data, the rows and the random-number states as one unit (``RunFolder``); ``resume=True``
continues from the committed state and gives the same rows as an uninterrupted run. The
committed model is there twice: the weights a resume loads (``model_weights.pt``) and a
checkpoint that stands alone (``model.pt``: ``load_model``, ``lyagym plan --model``), whose
metadata names the env it learned.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from lyagym.learned_models.control_lyapunov import control_lyapunov_payload

from .adapters import EnvAdapter, make_adapter
from .costs import LyapunovTerminalCost
from .data import TransitionBuffer, collect_episode
from .mbrl_config import MBRLConfig
from .mpc import AngleWrappedModel, MPCController
from .planners import make_planner
from .run_log import RunFolder, TensorBoardLog
from .safeguard import CertifiedFallback
from .world_models import fit_control_lyapunov, fit_model, is_ensemble

__all__ = ["run_pets", "check_config", "check_model_fits"]

#: weight of ``V(x_H)`` in a plan's cost with ``control_lyapunov`` (V is 1 on the boundary of
#: the largest ellipsoid in the data's box, of the order of one step's reward)
CLF_TERMINAL_WEIGHT = 1.0


def check_config(config: MBRLConfig) -> None:
    """Refuse settings under which a loop would silently do nothing or nonsense."""
    if not isinstance(config, MBRLConfig):
        raise TypeError(f"config must be an MBRLConfig, got {type(config).__name__}")
    for name in ("episodes", "random_episodes"):
        value = getattr(config, name)
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"config.{name} must be an int >= 0, got {value!r}")
    if config.episodes + config.random_episodes < 1:
        raise ValueError("config.episodes + config.random_episodes must be >= 1 (nothing to run)")
    for name in ("episode_steps", "horizon", "num_samples", "iterations", "fit_epochs", "batch_size", "particles", "ensemble_size"):
        value = getattr(config, name)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"config.{name} must be an int >= 1, got {value!r}")
    if config.max_real_steps is not None and (not isinstance(config.max_real_steps, (int, np.integer)) or config.max_real_steps < 1):
        raise ValueError(f"config.max_real_steps must be None or an int >= 1, got {config.max_real_steps!r}")
    if config.random_episode_steps is not None and config.random_episode_steps < 1:
        raise ValueError(f"config.random_episode_steps must be None or >= 1, got {config.random_episode_steps!r}")
    if not isinstance(config.rollout_fit_steps, (int, np.integer)) or config.rollout_fit_steps < 0:
        raise ValueError(f"config.rollout_fit_steps must be an int >= 0, got {config.rollout_fit_steps!r}")
    if not (isinstance(config.rollout_fit_lr, (int, float)) and math.isfinite(config.rollout_fit_lr) and config.rollout_fit_lr > 0):
        raise ValueError(f"config.rollout_fit_lr must be a finite number > 0, got {config.rollout_fit_lr!r}")
    if config.propagation not in ("tsinf", "ts1", "expectation"):
        raise ValueError(f"config.propagation must be 'tsinf', 'ts1' or 'expectation', got {config.propagation!r}")


def check_model_fits(model, adapter: EnvAdapter) -> None:
    if int(model.state_dim) != adapter.state_dim or int(model.action_dim) != adapter.action_dim:
        raise ValueError(f"model (state_dim={model.state_dim}, action_dim={model.action_dim}) does not match the env's adapter "
                         f"(state_dim={adapter.state_dim}, action_dim={adapter.action_dim})")
    if abs(float(model.dt) - adapter.dt) > 1e-12:
        raise ValueError(f"model.dt={model.dt} must equal the env's step dt={adapter.dt}")


def _rng_state(model) -> dict[str, Any]:
    state = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # SAC's and the planners' draws on a GPU
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(model, "generator", None)
    if isinstance(generator, torch.Generator):
        state["model_generator"] = generator.get_state()
    return state


def _set_rng_state(model, state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = getattr(model, "generator", None)
    if "model_generator" in state and isinstance(generator, torch.Generator):
        generator.set_state(state["model_generator"])


def _commit(run: RunFolder | None, model, buffer: TransitionBuffer, rows: list[dict], fit_loss: float | None,
            extra_writers: dict[str, Any] | None = None, env_id: str | None = None,
            metadata: dict[str, Any] | None = None) -> None:
    """Commit the run's state; ``model.pt``'s metadata: ``env_id`` (the env the model learns) as
    ``"env"``, and ``metadata`` (a control Lyapunov run's ``V``)."""
    if run is None:
        return
    from lyagym.learned_models.checkpoint import MODEL_CLASSES, save_model

    rng = _rng_state(model)
    writers = {
        "model_weights.pt": lambda p: torch.save(model.state_dict(), p),
        "buffer.npz": lambda p: buffer.save(p),
        "rng.pt": lambda p: torch.save(rng, p),
    }
    if MODEL_CLASSES.get(type(model).__name__) is type(model):
        # The model as a checkpoint that stands alone (load_model, ``lyagym plan --model``,
        # ``lyagym verify`` with a control Lyapunov function), beside the bare weights a resume reads.
        meta = {**({"env": env_id} if env_id else {}), **(metadata or {})}
        writers["model.pt"] = lambda p: save_model(model, p, metadata=meta)
    writers.update(extra_writers or {})
    run.commit(rows, writers, extra={"fit_loss": fit_loss})


def _restore(run: RunFolder, manifest: dict[str, Any], model) -> tuple[list[dict], TransitionBuffer, float | None]:
    from .run_log import read_csv

    state = torch.load(run.file(manifest, "model_weights.pt"), map_location=model.device, weights_only=True)
    model.load_state_dict(state)
    _set_rng_state(model, torch.load(run.file(manifest, "rng.pt"), weights_only=True))
    rows = read_csv(run.file(manifest, "episodes.csv"))
    return rows, TransitionBuffer.load(run.file(manifest, "buffer.npz")), manifest.get("fit_loss")


def _row(method: str, config: MBRLConfig, episode: int, real_steps: int, ep: dict, adapter: EnvAdapter,
         fit_loss: float | None, t0: float, policy: str) -> dict[str, Any]:
    row = {"method": method, "seed": config.seed, "episode": episode, "real_steps": real_steps, "return": ep["return"],
           "steps": len(ep["actions"]), "terminated": int(ep["terminated"]), **adapter.metrics(ep["states"])}
    row["model_val_loss"] = float("nan") if fit_loss is None else float(fit_loss)
    row["policy"] = policy
    row["learn_steps"] = real_steps - len(ep["actions"])
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return row


def make_mpc_planner(model, adapter: EnvAdapter, cost, config: MBRLConfig, seed: int, terminal_cost=None):
    """The PETS planner of one episode: ``config.planner`` on the (angle-wrapped) model, with
    ``config.particles`` particles per candidate for an ensemble (one for a single model)."""
    plan_model = AngleWrappedModel(model, adapter.angle_dims) if config.wrap_angles and adapter.angle_dims else model
    options: dict[str, Any] = {} if terminal_cost is None else {"terminal_cost": terminal_cost}
    if config.planner == "mppi":
        options["temperature"] = config.temperature
    if is_ensemble(model):
        model.propagation = config.propagation
        # expectation rolls a candidate out on the members' mean map, which draws nothing: more
        # particles would be copies of that one rollout
        if config.particles > 1 and config.propagation != "expectation":
            options["num_particles"] = config.particles
    return make_planner(config.planner, plan_model, cost, horizon=config.horizon, num_samples=config.num_samples,
                        iterations=config.iterations, action_low=adapter.action_low, action_high=adapter.action_high,
                        noise_std=config.noise_std, seed=seed, **options)


def run_pets(env: gym.Env, model, cost=None, config: MBRLConfig = MBRLConfig(), *, adapter: EnvAdapter | None = None,
             out_dir: str | None = None, method: str = "pets", resume: bool = False, overwrite: bool = False,
             progress: bool = True, on_episode: Callable[[dict], None] | None = None,
             tensorboard_dir: str | None = None, control_lyapunov: bool | dict[str, Any] = False) -> list[dict[str, Any]]:
    """PETS (module docstring) on the real ``env`` with ``model``.

    Args:
        env: the real env (any env with an adapter).
        model: a controlled ``WorldModel`` (``nn.Module``; an ``Ensemble`` for PETS proper)
            over the adapter's state; trained in place. Its ``dt`` must be the env's step.
        cost: planning cost; default ``adapter.planning_cost()`` (the env's reward).
        config: ``MBRLConfig``.
        adapter: default ``make_adapter(env)``.
        out_dir: the run folder (``RunFolder``), committed after every episode; ``None`` writes nothing.
        method: label of the CSV rows.
        resume: continue from ``out_dir``'s committed state (refused if another algorithm or
            other settings made it). Without it, a folder that already holds a run is
            refused unless ``overwrite``.
        on_episode: called with each episode's row.
        tensorboard_dir: also log each row there as TensorBoard scalars (``TensorBoardLog``).
        control_lyapunov: certify the model's stabilisability and plan with it (module
            docstring; needs a control-affine model); a dict: also the options of
            ``fit_control_lyapunov`` (``fit_steps``, ``hidden``). Rows then add ``clf_rho``,
            ``clf_box_fraction`` (of the data's box, certified for the model the episode
            planned on) and ``clf_replaced`` (planned actions the safeguard replaced).

    Returns:
        the per-episode rows (also in ``out_dir/episodes.csv``).
    """
    check_config(config)
    adapter = adapter or make_adapter(env)
    check_model_fits(model, adapter)
    cost = cost or adapter.planning_cost()
    run = RunFolder(out_dir, algo="pets", settings={"method": method, **dataclasses.asdict(config)}) if out_dir else None
    manifest = run.prepare(resume, overwrite) if run is not None else None
    torch.manual_seed(config.seed)
    if manifest is not None:
        rows, buffer, fit_loss = _restore(run, manifest, model)
    else:
        rows, buffer, fit_loss = [], TransitionBuffer(adapter.state_dim, adapter.action_dim, adapter.angle_dims), None
    tensorboard = TensorBoardLog(tensorboard_dir, method) if tensorboard_dir else None
    clf, clf_info = None, {}
    clf_options = control_lyapunov if isinstance(control_lyapunov, dict) else {}
    if control_lyapunov and fit_loss is not None:  # resumed: the committed model's V, fitted again (seeded)
        clf, clf_info = fit_control_lyapunov(None, model, buffer, adapter, seed=config.seed, **clf_options)
    real_steps = int(rows[-1]["real_steps"]) if rows else 0
    t0 = time.perf_counter() - (float(rows[-1]["wall_s"]) if rows else 0.0)
    total = config.random_episodes + config.episodes
    bar = tqdm(range(len(rows), total), desc=f"{method} episodes", disable=not progress, initial=len(rows), total=total)
    for episode in bar:
        if config.max_real_steps is not None and real_steps >= config.max_real_steps:
            break
        ep_seed = config.seed * 10_000 + episode
        if episode < config.random_episodes:
            ep = collect_episode(env, None, steps=config.random_episode_steps or config.episode_steps, seed=ep_seed, adapter=adapter)
            policy = "random"
        else:
            if hasattr(model, "reset_generator"):
                model.reset_generator(ep_seed)
            safeguard = CertifiedFallback(clf, model) if clf is not None else None
            # V beyond the largest level inside the data's box is the linearisation's extrapolation: capped there
            terminal = LyapunovTerminalCost(clf, weight=CLF_TERMINAL_WEIGHT, cap=clf.max_level()) if clf is not None else None
            controller = MPCController(make_mpc_planner(model, adapter, cost, config, ep_seed, terminal), adapter.angle_dims,
                                       warmup_iterations=config.warmup_iterations, safeguard=safeguard)
            reset_seed = ep_seed if config.mpc_reset_seed is None else int(config.mpc_reset_seed)
            ep = collect_episode(env, lambda s, o: controller(s), steps=config.episode_steps, seed=reset_seed, adapter=adapter)
            policy = "mpc"
        buffer.add_trajectory(ep["states"], ep["actions"], ep["rewards"], ep["terminated"])
        real_steps += len(ep["actions"])
        row = _row(method, config, episode, real_steps, ep, adapter, fit_loss, t0, policy)
        if control_lyapunov:
            replaced = safeguard.counts["replaced"] if policy == "mpc" and safeguard is not None else 0
            row.update(clf_rho=clf_info.get("rho", 0.0), clf_box_fraction=clf_info.get("box_fraction", 0.0), clf_replaced=replaced)
        rows.append(row)
        # the model the next episode plans on is fitted here (after the last episode too), so
        # the commit holds it fitted on all the data so far: a resume, also one that extends a
        # finished run, plans on exactly that model without fitting it again
        if episode >= config.random_episodes - 1:
            fit_loss = fit_model(model, buffer, config, progress)
            if control_lyapunov:
                clf, clf_info = fit_control_lyapunov(clf, model, buffer, adapter, seed=config.seed, **clf_options)
        extra, metadata = None, None
        if clf is not None:  # V beside the model, and in its model.pt (``lyagym verify PATH``)
            extra = {"clf_weights.pt": lambda p: torch.save(clf.state_dict(), p)}
            metadata = {"control_lyapunov": control_lyapunov_payload(clf)}
        _commit(run, model, buffer, rows, fit_loss, extra, env_id=adapter.env_id, metadata=metadata)
        bar.set_postfix(ret=f"{row['return']:.1f}")
        if tensorboard is not None:
            tensorboard(row)
        if on_episode is not None:
            on_episode(row)
    if tensorboard is not None:
        tensorboard.close()
    if run is not None:
        run.release()
    return rows
