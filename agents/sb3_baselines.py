"""Model-free baselines: Stable-Baselines3 SAC and PPO on any real env with an adapter, logged like
the model-based loops (one CSV row per real episode, with the real steps used so far) so
learning curves line up on the same "real environment steps" axis."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from .adapters import EnvAdapter, make_adapter
from .mbrl import TensorBoardLog, require_tensorboard, write_csv

__all__ = ["BASELINES", "train_baseline", "evaluation_episode", "sb3_logger"]

#: name -> (SB3 class name, default keyword arguments)
BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "sac": ("SAC", {"learning_starts": 200}),
    "ppo": ("PPO", {"n_steps": 1024, "batch_size": 64, "gae_lambda": 0.95, "gamma": 0.99, "n_epochs": 10, "ent_coef": 0.0}),
}


def train_baseline(algo: str, env: gym.Env, total_steps: int, *, seed: int = 0, out_dir: str | None = None,
                   device: str = "cpu", progress: bool = True, method: str | None = None,
                   on_episode: Callable[[dict], None] | None = None, eval_every: int | None = None,
                   on_eval: Callable[[dict], None] | None = None, tensorboard_dir: str | None = None,
                   adapter: EnvAdapter | None = None, **algo_kwargs: Any) -> list[dict[str, Any]]:
    """Train SB3 ``algo`` (``"sac"`` or ``"ppo"``) on the real ``env`` for ``total_steps``.

    Every finished training episode becomes a row ``{method, seed, episode, real_steps,
    return, wall_s}`` plus the adapter's task metrics (``EnvAdapter.metrics``, e.g. the
    pendulum's ``final_angle_error``, ``hold_angle_error``); rows go to
    ``out_dir/episodes.csv`` (rewritten atomically after each episode) and the trained
    agent to ``out_dir/model.zip``.

    With ``eval_every`` the *deterministic* policy is also evaluated after every
    ``eval_every`` training steps (and before the first) on one episode of a separate copy
    of ``env`` from a fixed start (``evaluation_episode``); those steps are not training
    steps. Each evaluation is a row ``{method, seed, real_steps, return, final_angle_error,
    hold_angle_error}`` (``real_steps``: training steps so far) passed to ``on_eval`` and
    written to ``out_dir/evaluations.csv``.

    With ``tensorboard_dir``, SB3's training statistics, the episode rows (``<method>/...``)
    and the evaluations (``<method>-eval/...``) also go there as TensorBoard scalars.
    """
    import stable_baselines3
    from stable_baselines3.common.callbacks import BaseCallback

    if algo not in BASELINES:
        raise ValueError(f"unknown baseline {algo!r}; choose one of {sorted(BASELINES)}")
    cls_name, defaults = BASELINES[algo]
    adapter = adapter or make_adapter(env)
    if not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if eval_every is not None and (not isinstance(eval_every, (int, np.integer)) or eval_every < 1):
        raise ValueError(f"eval_every must be None or an int >= 1, got {eval_every!r}")
    rows: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    label = method or algo
    tb_episodes = TensorBoardLog(tensorboard_dir, label) if tensorboard_dir else None
    tb_evals = TensorBoardLog(os.path.join(tensorboard_dir, "eval"), f"{label}-eval") if tensorboard_dir and eval_every else None
    eval_env = gym.make(env.spec) if eval_every and env.spec is not None else env

    def evaluate(agent, steps_so_far: int) -> None:
        row = evaluation_episode(eval_env, lambda s, o: agent.predict(o, deterministic=True)[0], seed=seed, adapter=adapter)
        row = {"method": label, "seed": seed, "real_steps": int(steps_so_far), **row}
        evaluations.append(row)
        if out_dir:
            write_csv(os.path.join(out_dir, "evaluations.csv"), evaluations)
        if tb_evals is not None:
            tb_evals(row)
        if on_eval is not None:
            on_eval(row)

    class EpisodeLogger(BaseCallback):
        def __init__(self):
            super().__init__()
            self.ret, self.states = 0.0, None

        def _on_training_start(self) -> None:
            self.states = [adapter.state(self.model._last_obs[0])]
            if eval_every:
                evaluate(self.model, 0)

        def _on_step(self) -> bool:
            if eval_every and self.num_timesteps % eval_every == 0:
                evaluate(self.model, self.num_timesteps)
            self.ret += float(self.locals["rewards"][0])
            done = bool(self.locals["dones"][0])
            infos = self.locals["infos"][0]
            # SB3 auto-resets on done: the final observation is kept in the info dict.
            obs = infos.get("terminal_observation") if done else None
            self.states.append(adapter.state(self.locals["new_obs"][0] if obs is None else obs))
            if done:
                row = {"method": label, "seed": seed, "episode": len(rows), "real_steps": self.num_timesteps, "return": self.ret}
                row.update(adapter.metrics(np.asarray(self.states)))
                row["wall_s"] = round(time.perf_counter() - t0, 2)
                rows.append(row)
                if out_dir:
                    write_csv(os.path.join(out_dir, "episodes.csv"), rows)
                if tb_episodes is not None:
                    tb_episodes(row)
                if on_episode is not None:
                    on_episode(row)
                self.ret, self.states = 0.0, [adapter.state(self.locals["new_obs"][0])]
            return True

    kwargs = {**defaults, **algo_kwargs}
    if "n_steps" in kwargs and "n_steps" not in algo_kwargs and total_steps < kwargs["n_steps"]:
        # An on-policy learner collects whole rollouts of n_steps: with fewer steps asked for it
        # would take n_steps (PPO: 1024 real steps for --steps 300). One rollout of exactly the
        # steps asked for instead, in minibatches of a size that divides it.
        kwargs["n_steps"] = max(2, int(total_steps))
        if "batch_size" not in algo_kwargs:
            kwargs["batch_size"] = _dividing_batch(kwargs["n_steps"], kwargs["batch_size"])
    model = getattr(stable_baselines3, cls_name)("MlpPolicy", env, seed=seed, device=device, verbose=0, **kwargs)
    model.set_logger(sb3_logger(out_dir, tensorboard_dir=tensorboard_dir))
    model.learn(total_timesteps=int(total_steps), callback=EpisodeLogger(), progress_bar=progress and _has_rich())
    for log in (tb_episodes, tb_evals):
        if log is not None:
            log.close()
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        model.save(os.path.join(out_dir, "model.zip"))
    return rows


def _dividing_batch(rows: int, largest: int) -> int:
    """The largest minibatch size <= ``largest`` (and >= 2) that divides ``rows`` (SB3 warns of a
    truncated last minibatch otherwise), or ``rows`` itself where none does."""
    return next((b for b in range(min(largest, rows), 1, -1) if rows % b == 0), rows)


def sb3_logger(out_dir: str | None = None, *, tensorboard_dir: str | None = None, continue_until: tuple[str, float] | None = None):
    """An SB3 logger for our runs: SB3's training statistics (losses, entropy coefficient, ...)
    as ``out_dir/progress.csv`` and, with ``tensorboard_dir``, as TensorBoard scalars there
    (needs the tensorboard package); no output at all without either.

    ``continue_until=(key, value)`` continues an existing ``progress.csv`` (a resumed run):
    its rows with ``key <= value`` are kept (rewritten atomically), later ones, logged after
    the state the run resumes from, are dropped, and new rows are appended.

    Passed to ``agent.set_logger`` before ``learn``: SB3's own default (``verbose=0``, no
    ``tensorboard_log``) would create an empty ``SB3-<date>`` folder in the system temp dir
    on every ``learn`` call.
    """
    from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat

    formats = []
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "progress.csv")
        if continue_until is not None and os.path.exists(path):
            formats.append(_continued_csv(path, *continue_until))
        else:
            formats.append(CSVOutputFormat(path))
    if tensorboard_dir:
        require_tensorboard()  # SB3 itself only asserts
        formats.append(TensorBoardOutputFormat(tensorboard_dir))
    return Logger(folder=out_dir or None, output_formats=formats)


def _continued_csv(path: str, key: str, last: float):
    """SB3's CSV output continuing ``path``: the rows up to ``key == last`` kept, new ones appended."""
    import csv

    from stable_baselines3.common.logger import CSVOutputFormat

    from .data import atomic_save

    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    header = lines[0] if lines else []
    column = header.index(key) if key in header else None
    kept = [row for row in lines[1:] if column is not None and row[column] != "" and float(row[column]) <= last]
    atomic_save(path, lambda f: csv.writer(f, lineterminator="\n").writerows([header, *kept] if header else []), mode="w")

    class Continued(CSVOutputFormat):
        def __init__(self) -> None:  # SB3's opens the file with "w+", which would empty it
            self.file = open(path, "r+")
            self.file.seek(0, os.SEEK_END)
            self.keys, self.separator, self.quotechar = list(header), ",", '"'

    return Continued()


def evaluation_episode(env: gym.Env, act: Callable[[np.ndarray, np.ndarray], np.ndarray], *, seed: int = 0,
                       steps: int | None = None, adapter: EnvAdapter | None = None) -> dict[str, Any]:
    """One evaluation episode of ``act(state, obs) -> action`` on ``env`` from the start
    state that ``env.reset(seed=1_000_003 + seed)`` draws (the same start at every
    evaluation of a run, so a learning curve is not noisy from its starts).

    Returns ``{return, steps, <adapter metrics>}`` (the pendulum's: angle errors at the
    last state and the max over the last 20 % of the episode).
    """
    from .data import collect_episode

    adapter = adapter or make_adapter(env)
    limit = steps or (env.spec.max_episode_steps if env.spec is not None and env.spec.max_episode_steps else 200)
    ep = collect_episode(env, act, steps=int(limit), seed=1_000_003 + int(seed), adapter=adapter)
    return {"return": ep["return"], "steps": len(ep["actions"]), **adapter.metrics(ep["states"])}


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401  (SB3's progress bar needs rich and tqdm)
        return True
    except ImportError:
        return False
