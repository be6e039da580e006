"""Model-based RL on any Gymnasium env with an adapter: one place to import the loops from.

- ``run_pets`` (``lyagym.agents.pets``): PETS, MPC with CEM / iCEM / MPPI on a
  (probabilistic ensemble) world model, trajectory sampling, termination-aware returns;
- ``run_mbpo`` (``lyagym.agents.mbpo``): MBPO, SB3 SAC trained on short model rollouts
  branched from real states, mixed with real data;
- ``run_dyna``: the earlier Dyna loop (SAC on imagined episodes only), kept for the
  paper studies; it never learned the swing-up (use ``run_mbpo``).

Around them: ``MBRLConfig``/``config_for`` (settings, an env's own overrides), the world
models (``world_model_for``, ``make_world_model``, ``model_priors``, ``fit_transitions``),
the real data (``TransitionBuffer``, ``collect_episode``, ``collect_random_transitions``),
MPC (``MPCController``, ``AngleWrappedModel``, ``mpc_episode``) and the logs
(``write_csv``, ``TensorBoardLog``, ``RunFolder``). What a loop knows of its env comes
from its adapter (``lyagym.agents.adapters``), never from the env itself.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import gymnasium as gym
import torch
from tqdm.auto import tqdm

from .adapters import EnvAdapter, default_horizon, make_adapter, make_pendulum_env, true_physics_model
from .adapters.n_link_pendulum import angle_error, wrap_state
from .data import TransitionBuffer, atomic_save as _atomic, collect_episode, collect_random_transitions
from .mbpo import run_mbpo
from .mbrl_config import MBRLConfig, config_for, config_from_args
from .mpc import AngleWrappedModel, MPCController, mpc_episode
from .pets import _row, check_config, run_pets
from .run_log import RunFolder, TensorBoardLog, read_csv, require_tensorboard, write_csv
from .world_models import WORLD_MODELS, fit_model as _fit, fit_transitions, is_ensemble, make_world_model, model_priors, world_model_for

__all__ = [
    "MBRLConfig",
    "config_for",
    "config_from_args",
    "WORLD_MODELS",
    "make_world_model",
    "world_model_for",
    "model_priors",
    "is_ensemble",
    "fit_transitions",
    "make_adapter",
    "make_pendulum_env",
    "true_physics_model",
    "default_horizon",
    "wrap_state",
    "angle_error",
    "TransitionBuffer",
    "collect_episode",
    "collect_random_transitions",
    "AngleWrappedModel",
    "MPCController",
    "mpc_episode",
    "run_pets",
    "run_mbpo",
    "run_dyna",
    "write_csv",
    "read_csv",
    "RunFolder",
    "TensorBoardLog",
    "require_tensorboard",
]


def run_dyna(env: gym.Env, model, config: MBRLConfig = MBRLConfig(), *, adapter: EnvAdapter | None = None,
             out_dir: str | None = None, method: str = "dyna-sac", progress: bool = True, device: str = "cpu",
             on_episode: Callable[[dict], None] | None = None, tensorboard_dir: str | None = None) -> list[dict[str, Any]]:
    """The earlier Dyna loop: SB3 SAC trained only on imagined episodes of ``model``
    (a batched ``WorldModelVectorEnv`` whose episodes start at real states), acting on the
    real ``env``; refit after every episode. Kept for the stored studies; it did not learn
    the swing-up (final return -2774 at n = 1): ``run_mbpo`` is the loop that does.

    Writes ``episodes.csv`` (and ``sac.zip``) to ``out_dir`` after every episode.
    """
    from stable_baselines3 import SAC

    from .sb3_baselines import evaluation_episode, sb3_logger
    from .world_model_env import SB3WorldModelVecEnv, StateBank, adapter_world_model_env

    check_config(config)
    adapter = adapter or make_adapter(env)
    torch.manual_seed(config.seed)
    buffer = TransitionBuffer(adapter.state_dim, adapter.action_dim, adapter.angle_dims)
    bank = StateBank(adapter.state_dim, device=model.device, dtype=model.dtype)
    imagined = adapter_world_model_env(model, adapter, env, num_envs=config.imagined_envs, initial_state_fn=bank,
                                       max_episode_steps=config.imagined_horizon)
    sac = SAC("MlpPolicy", SB3WorldModelVecEnv(imagined), seed=config.seed, device=device, batch_size=config.sac_batch_size,
              gradient_steps=config.sac_gradient_steps, learning_starts=config.imagined_envs * 2, verbose=0)
    def features(state):  # what the imagined env shows SAC (adapter.features), for a real state
        return adapter.features(torch.as_tensor(state, dtype=torch.float32)[None])[0].numpy()

    tensorboard = TensorBoardLog(tensorboard_dir, method) if tensorboard_dir else None
    sac.set_logger(sb3_logger(out_dir, tensorboard_dir=tensorboard_dir))
    eval_env = gym.make(env.spec) if env.spec is not None else None
    rows: list[dict[str, Any]] = []
    real_steps, fit_loss, t0 = 0, None, time.perf_counter()
    total = config.random_episodes + config.episodes
    for episode in tqdm(range(total), desc=f"{method} episodes", disable=not progress):
        ep_seed = config.seed * 10_000 + episode
        evaluation = None
        if episode < config.random_episodes:
            ep = collect_episode(env, None, steps=config.random_episode_steps or config.episode_steps, seed=ep_seed, adapter=adapter)
        else:
            sac.learn(total_timesteps=config.imagined_steps * config.imagined_envs, reset_num_timesteps=False)
            if eval_env is not None:
                evaluation = evaluation_episode(eval_env, lambda s, o: sac.predict(features(s), deterministic=True)[0],
                                                seed=config.seed, adapter=adapter)
            ep = collect_episode(env, lambda s, o: sac.predict(features(s), deterministic=False)[0], steps=config.episode_steps,
                                 seed=ep_seed, adapter=adapter)
        buffer.add_trajectory(ep["states"], ep["actions"], ep["rewards"], ep["terminated"])
        bank.add(buffer.states[-len(ep["actions"]):])
        real_steps += len(ep["actions"])
        fit_loss = _fit(model, buffer, config, progress)
        row = _row(method, config, episode, real_steps, ep, adapter, fit_loss, t0,
                   "random" if episode < config.random_episodes else "sac")
        if evaluation is not None:
            row.update({f"eval_{k}": v for k, v in evaluation.items()})
        rows.append(row)
        if out_dir:
            write_csv(os.path.join(out_dir, "episodes.csv"), rows)
            _atomic(os.path.join(out_dir, "model_weights.pt"), lambda f: torch.save(model.state_dict(), f))
            buffer.save(os.path.join(out_dir, "buffer.npz"))
            sac.save(os.path.join(out_dir, "sac.zip"))
        if tensorboard is not None:
            tensorboard(row)
        if on_episode is not None:
            on_episode(row)
    if tensorboard is not None:
        tensorboard.close()
    return rows
