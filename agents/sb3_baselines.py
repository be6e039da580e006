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
from .run_log import RunFolder

__all__ = ["BASELINES", "train_baseline", "baseline_cell", "evaluation_episode", "sb3_logger"]

#: name -> (SB3 class name, default keyword arguments)
BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "sac": ("SAC", {"learning_starts": 200}),
    "ppo": ("PPO", {"n_steps": 1024, "batch_size": 64, "gae_lambda": 0.95, "gamma": 0.99, "n_epochs": 10, "ent_coef": 0.0}),
}


def baseline_cell(algo: str, env: gym.Env, total_steps: int, run_dir: str, **kwargs: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A study's baseline cell: ``train_baseline`` into ``run_dir`` with evaluations, going on
    from the last commit where a killed SAC run left one there (``RunFolder``'s manifest).
    Returns ``(evaluations, episodes)``: on a resume all the run's evaluations, those before
    the commit (from ``run_dir/evaluations.csv``) and after it. ``kwargs`` go to ``train_baseline``."""
    evaluations: list[dict[str, Any]] = []
    resume = algo == "sac" and os.path.exists(os.path.join(run_dir, "manifest.json"))
    episodes = train_baseline(algo, env, total_steps, out_dir=run_dir, on_eval=evaluations.append, resume=resume, overwrite=not resume,
                              **kwargs)
    if resume:
        from .run_log import read_csv

        evaluations = read_csv(os.path.join(run_dir, "evaluations.csv"))
    return evaluations, episodes


def train_baseline(algo: str, env: gym.Env, total_steps: int, *, seed: int = 0, out_dir: str | None = None,
                   device: str = "cpu", progress: bool = True, method: str | None = None,
                   on_episode: Callable[[dict], None] | None = None, eval_every: int | None = None,
                   on_eval: Callable[[dict], None] | None = None, tensorboard_dir: str | None = None,
                   adapter: EnvAdapter | None = None, resume: bool = False, overwrite: bool = False,
                   **algo_kwargs: Any) -> list[dict[str, Any]]:
    """Train SB3 ``algo`` (``"sac"`` or ``"ppo"``) on the real ``env`` for ``total_steps``.

    Every finished training episode becomes a row ``{method, seed, episode, real_steps,
    return, wall_s}`` plus the adapter's task metrics (``EnvAdapter.metrics``, e.g. the
    pendulum's ``final_angle_error``, ``hold_angle_error``); rows go to
    ``out_dir/episodes.csv`` (rewritten atomically after each episode) and the trained
    agent to ``out_dir/model.zip``.

    SAC with ``out_dir`` commits its whole state after every finished episode (``RunFolder``:
    the agent with its optimisers, the filled part of its replay buffer, SB3's counters and
    episode statistics, every random-number state, the env's generator as it was before the
    reset that began the next episode); ``resume=True`` goes on from the last commit exactly
    as the run would have gone on (same rows, evaluations and weights), ``total_steps`` the
    whole budget (a larger one extends the run). ``overwrite`` starts over in a folder that
    holds a run. PPO collects whole rollouts and is not committed (``resume`` refused).

    With ``eval_every`` the *deterministic* policy is also evaluated after every
    ``eval_every`` training steps (and before the first) on one episode of a separate copy
    of ``env`` from a fixed start (``evaluation_episode``); those steps are not training
    steps. Each evaluation is a row ``{method, seed, real_steps, return, final_angle_error,
    hold_angle_error}`` (``real_steps``: training steps so far) passed to ``on_eval`` and
    written to ``out_dir/evaluations.csv``.

    With ``tensorboard_dir``, SB3's training statistics, the episode rows (``<method>/...``)
    and the evaluations (``<method>-eval/...``) also go there as TensorBoard scalars.
    """
    if algo not in BASELINES:
        raise ValueError(f"unknown baseline {algo!r}; choose one of {sorted(BASELINES)}")
    adapter = adapter or make_adapter(env)
    if not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if eval_every is not None and (not isinstance(eval_every, (int, np.integer)) or eval_every < 1):
        raise ValueError(f"eval_every must be None or an int >= 1, got {eval_every!r}")
    if resume and (algo != "sac" or not out_dir):
        raise ValueError("resume: only a SAC run with an out_dir can be resumed (PPO collects whole rollouts, which are not committed)")
    label = method or algo
    run = None
    manifest = None
    if out_dir and algo == "sac":
        settings = {"method": label, "seed": seed, "eval_every": eval_every, "max_real_steps": int(total_steps),
                    **{k: repr(v) for k, v in sorted(algo_kwargs.items())}}
        run = RunFolder(out_dir, algo="sac-baseline", settings=settings)
        manifest = run.prepare(resume, overwrite)
    try:
        return _train(algo, env, int(total_steps), seed=seed, out_dir=out_dir, device=device, progress=progress, label=label,
                      on_episode=on_episode, eval_every=eval_every, on_eval=on_eval, tensorboard_dir=tensorboard_dir,
                      adapter=adapter, run=run, manifest=manifest, algo_kwargs=algo_kwargs)
    finally:
        if run is not None:
            run.release()


def _train(algo: str, env: gym.Env, total_steps: int, *, seed: int, out_dir: str | None, device: str, progress: bool,
           label: str, on_episode, eval_every, on_eval, tensorboard_dir, adapter: EnvAdapter, run: RunFolder | None,
           manifest: dict[str, Any] | None, algo_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    import stable_baselines3
    from stable_baselines3.common.callbacks import BaseCallback

    cls_name, defaults = BASELINES[algo]
    rows: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    t0 = time.perf_counter()
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
            self.ret, self.states, self.commit_pending = 0.0, None, False

        def _on_training_start(self) -> None:
            self.states = [adapter.state(self.model._last_obs[0])]
            if eval_every and not resumed:
                evaluate(self.model, 0)

        def _on_rollout_start(self) -> None:
            # The step that ended an episode is stored and trained on by now, and the env has
            # begun the next episode: the state a resume needs.
            if self.commit_pending:
                self.commit_pending = False
                _commit_sac(run, self.model, agent_env, rows, evaluations)

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
                self.commit_pending = run is not None
            return True

    # A committed SAC run records the env's generator before each of SB3's resets (_commit_sac).
    agent_env = _ResetRecorder(env) if run is not None else env
    kwargs = {**defaults, **algo_kwargs}
    if "n_steps" in kwargs and "n_steps" not in algo_kwargs and total_steps < kwargs["n_steps"]:
        # An on-policy learner collects whole rollouts of n_steps: with fewer steps asked for it
        # would take n_steps (PPO: 1024 real steps for --steps 300). One rollout of exactly the
        # steps asked for instead, in minibatches of a size that divides it.
        kwargs["n_steps"] = max(2, int(total_steps))
        if "batch_size" not in algo_kwargs:
            kwargs["batch_size"] = _dividing_batch(kwargs["n_steps"], kwargs["batch_size"])
    cls = getattr(stable_baselines3, cls_name)
    resumed = manifest is not None
    if resumed:
        model = _restore_sac(cls, run, manifest, agent_env, device, rows, evaluations)
        model.set_logger(sb3_logger(out_dir, tensorboard_dir=tensorboard_dir, continue_until=("time/total_timesteps", model.num_timesteps)))
        remaining = total_steps - model.num_timesteps
    else:
        model = cls("MlpPolicy", agent_env, seed=seed, device=device, verbose=0, **kwargs)
        model.set_logger(sb3_logger(out_dir, tensorboard_dir=tensorboard_dir))
        remaining = total_steps
    if remaining > 0:
        logger = EpisodeLogger()
        model.learn(total_timesteps=remaining, callback=logger, progress_bar=progress and _has_rich(),
                    reset_num_timesteps=not resumed)
        if logger.commit_pending:  # the budget ended with an episode: commit it (a resume then has nothing to redo)
            _commit_sac(run, model, agent_env, rows, evaluations)
    for log in (tb_episodes, tb_evals):
        if log is not None:
            log.close()
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        model.save(os.path.join(out_dir, "model.zip"))
    return rows


class _ResetRecorder(gym.Wrapper):
    """The env unchanged, but remembering its generator's state before each reset: SB3 resets
    the env itself when an episode ends, so that state is what a resume needs to begin the same
    next episode."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.before_reset: dict[str, Any] | None = None

    def reset(self, *, seed=None, options=None):
        self.before_reset = None if seed is not None else _generator_state(self.env.unwrapped)
        return self.env.reset(seed=seed, options=options)


def _generator_state(env: gym.Env) -> dict[str, Any] | None:
    generator = getattr(env, "_np_random", None)  # None until the env was first seeded
    return None if generator is None else generator.bit_generator.state


_SAC_STATE = "sac_state.pt"
_REPLAY_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _commit_sac(run: RunFolder, model, recorder: _ResetRecorder, rows: list[dict], evaluations: list[dict]) -> None:
    """Commit a SAC baseline between two episodes (see ``train_baseline``)."""
    import random

    import torch

    buffer = model.replay_buffer
    filled = buffer.buffer_size if buffer.full else buffer.pos
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    # Tensors, strings and numbers only, so that a resume reads it with torch.load(weights_only=True).
    state = {
        "replay": {name: torch.from_numpy(np.array(getattr(buffer, name)[:filled])) for name in _REPLAY_FIELDS
                   if getattr(buffer, name, None) is not None},
        "replay_pos": int(buffer.pos), "replay_full": bool(buffer.full),
        "episode_info": [{k: float(v) for k, v in info.items()} for info in model.ep_info_buffer or []],
        "episode_success": [float(v) for v in model.ep_success_buffer or []],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)),
        "python_rng": random.getstate(),
        "action_space_rng": model.action_space.np_random.bit_generator.state,
        "env_rng_before_reset": recorder.before_reset,
    }
    if model.device.type == "cuda":  # the policy samples its actions on the GPU's generator
        state["cuda_rng"] = torch.cuda.get_rng_state(model.device)
    run.commit(rows, {"sac.zip": lambda p: model.save(p), _SAC_STATE: lambda p: torch.save(state, p),
                      "evaluations.csv": lambda p: write_csv(p, evaluations)},
               extra={"num_timesteps": int(model.num_timesteps)})


def _restore_sac(cls, run: RunFolder, manifest: dict[str, Any], recorder: _ResetRecorder, device: str,
                 rows: list[dict], evaluations: list[dict]):
    """The committed SAC, its replay, counters and random-number states, and the env at the
    start of the episode that followed the commit."""
    import random
    from collections import deque

    import torch

    from .run_log import read_csv

    state = torch.load(run.file(manifest, _SAC_STATE), weights_only=True)
    model = cls.load(run.file(manifest, "sac.zip"), env=recorder, device=device, force_reset=True)  # reseeds: undone below
    buffer = model.replay_buffer
    for name, values in state["replay"].items():
        getattr(buffer, name)[:len(values)] = values.numpy()
    buffer.pos, buffer.full = state["replay_pos"], state["replay_full"]
    model.ep_info_buffer = deque([{k: (int(v) if k == "l" else v) for k, v in info.items()} for info in state["episode_info"]],
                                 maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(state["episode_success"], maxlen=model._stats_window_size)
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and model.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], model.device)
    kind, keys, position, has_gauss, gauss = state["numpy_rng"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, python_gauss = state["python_rng"]
    random.setstate((version, tuple(internal), python_gauss))
    model.action_space.np_random.bit_generator.state = state["action_space_rng"]
    # The episode after the commit began with a reset the env drew from its generator: draw it again.
    if hasattr(model.env, "_reset_seeds"):  # load's reseeding left a seed pending for the next reset
        model.env._reset_seeds()
    else:
        model.env._seeds = [None] * model.env.num_envs
    unwrapped = recorder.env.unwrapped
    if state["env_rng_before_reset"] is not None:
        unwrapped.np_random.bit_generator.state = state["env_rng_before_reset"]
    model._last_obs = model.env.reset()
    model._last_episode_starts = np.ones((model.env.num_envs,), dtype=bool)
    rows.extend(read_csv(run.file(manifest, "episodes.csv")))
    scored = run.file(manifest, "evaluations.csv")
    evaluations.extend(read_csv(scored) if os.path.exists(scored) else [])  # none without eval_every
    return model


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
