"""Model-free baselines: Stable-Baselines3 SAC and PPO on the real pendulum env, logged like
the model-based loops (one CSV row per real episode, with the real steps used so far) so
learning curves line up on the same "real environment steps" axis."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from .mbrl import _task_target, angle_error, write_csv

__all__ = ["BASELINES", "train_baseline"]

#: name -> (SB3 class name, default keyword arguments)
BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "sac": ("SAC", {"learning_starts": 200}),
    "ppo": ("PPO", {"n_steps": 1024, "batch_size": 64, "gae_lambda": 0.95, "gamma": 0.99, "n_epochs": 10, "ent_coef": 0.0}),
}


def train_baseline(algo: str, env: gym.Env, total_steps: int, *, seed: int = 0, out_dir: str | None = None,
                   device: str = "cpu", progress: bool = True, method: str | None = None,
                   on_episode: Callable[[dict], None] | None = None, **algo_kwargs: Any) -> list[dict[str, Any]]:
    """Train SB3 ``algo`` (``"sac"`` or ``"ppo"``) on the real ``env`` for ``total_steps``.

    Every finished training episode becomes a row ``{method, seed, episode, real_steps,
    return, final_angle_error, hold_angle_error, wall_s}``; rows go to
    ``out_dir/episodes.csv`` (rewritten atomically after each episode) and the trained
    agent to ``out_dir/model.zip``.
    """
    import stable_baselines3
    from stable_baselines3.common.callbacks import BaseCallback

    if algo not in BASELINES:
        raise ValueError(f"unknown baseline {algo!r}; choose one of {sorted(BASELINES)}")
    cls_name, defaults = BASELINES[algo]
    base = env.unwrapped
    n, target = int(base.n_links), _task_target(base)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    label = method or algo

    class EpisodeLogger(BaseCallback):
        def __init__(self):
            super().__init__()
            self.ret, self.states = 0.0, []

        def _on_step(self) -> bool:
            self.ret += float(self.locals["rewards"][0])
            done = bool(self.locals["dones"][0])
            infos = self.locals["infos"][0]
            # SB3 auto-resets on done: the final physical state is gone, but its observation is kept.
            if not done:
                self.states.append(base.state)
            if done:
                row = {"method": label, "seed": seed, "episode": len(rows), "real_steps": self.num_timesteps, "return": self.ret}
                if target is not None and self.states:
                    states = np.asarray(self.states)
                    final = _final_state(infos.get("terminal_observation"), base, states[-1])
                    row["final_angle_error"] = float(angle_error(final, n, target))
                    row["hold_angle_error"] = float(angle_error(states[-max(1, len(states) // 5):], n, target).max())
                row["wall_s"] = round(time.perf_counter() - t0, 2)
                rows.append(row)
                if out_dir:
                    write_csv(os.path.join(out_dir, "episodes.csv"), rows)
                if on_episode is not None:
                    on_episode(row)
                self.ret, self.states = 0.0, []
            return True

    kwargs = {**defaults, **algo_kwargs}
    model = getattr(stable_baselines3, cls_name)("MlpPolicy", env, seed=seed, device=device, verbose=0, **kwargs)
    model.learn(total_timesteps=int(total_steps), callback=EpisodeLogger(), progress_bar=progress and _has_rich())
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        model.save(os.path.join(out_dir, "model.zip"))
    return rows


def _final_state(terminal_obs, base, fallback: np.ndarray) -> np.ndarray:
    """Recover ``(q, qdot)`` from a ``trig`` terminal observation (angles from atan2)."""
    if terminal_obs is None or getattr(base, "observation_mode", "") != "trig":
        return fallback
    n = int(base.n_links)
    o = np.asarray(terminal_obs, dtype=np.float64)
    return np.concatenate([np.arctan2(o[n:2 * n], o[:n]), o[2 * n:]])


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401  (SB3's progress bar needs rich and tqdm)
        return True
    except ImportError:
        return False
