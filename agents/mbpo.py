"""MBPO: model-based policy optimisation (Janner et al. 2019, Algorithm 2), on any env with an adapter.

The algorithm box, with Stable-Baselines3's SAC as the policy optimiser::

    D_env <- episodes of uniform random actions;  fit the world model on D_env
    for each real step (counted across episodes):
        every F steps: fit the model on D_env; then branch F * M rollouts of k steps
            from states drawn from D_env, acting with the current policy on the model,
            and put them into D_model (a FIFO that keeps the latest rollout batches)
        act in the real env with the policy;  D_env <- D_env + the transition
        G SAC updates, each on a batch of which a fraction ``real_ratio`` comes from
            D_env and the rest from D_model

While D_env is small the model is refitted (and D_model refilled) sooner: as soon as D_env
has doubled since the last fit, if that comes before F steps. Early episodes of the MuJoCo
inverted pendulums end after 5-50 steps, so a first fit on a handful of random transitions
would otherwise drive the policy for F steps.

The rollout length ``k`` grows linearly from ``min`` to ``max`` between two episodes
(``rollout_schedule``); an ensemble in TS1 mode draws a fresh member for every model
transition (MBPO's "random model per step"). Model rollouts stop at a predicted
termination (``EnvAdapter.termination``) and their rewards are the adapter's. The policy
sees ``EnvAdapter.features`` of the model state (angles as sin, cos), in the real env and
in the model alike, so what it learns on the model applies to the env.

One CSV row per real episode (as PETS), plus ``eval_*``: the greedy policy on a separate
copy of the env from a fixed start. With ``eval_every`` the greedy policy is also evaluated
every that many real steps within episodes (a policy that balances for 1000 steps would
otherwise be scored only when its 1000-step training episode ends); every evaluation goes
to ``on_eval`` and ``evaluations.csv``. The run folder commits the model, the data, SAC (with
its optimisers), both replays, every random-number state and the rows after every episode,
so ``resume=True`` goes on as if the run had never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from lyagym.learned_models import overflowing_rows_returned

from .adapters import EnvAdapter, make_adapter
from .data import TransitionBuffer, collect_episode
from .mbrl_config import MBRLConfig
from .pets import _commit, _restore, _row, check_config, check_model_fits
from .run_log import RunFolder, TensorBoardLog
from .world_models import fit_model, is_ensemble

__all__ = ["run_mbpo", "check_mbpo_config", "TensorReplay", "MixedReplay", "rollout_length"]


def rollout_length(episode: int, schedule: tuple[int, int, int, int]) -> int:
    """MBPO's linear schedule ``(first, last, min, max)``: ``min`` up to episode ``first``,
    ``max`` from ``last``, linear in between."""
    first, last, low, high = (int(v) for v in schedule)
    if low < 1 or high < low:
        raise ValueError(f"rollout_schedule lengths must satisfy 1 <= min <= max, got {schedule!r}")
    if episode <= first or last <= first:
        return low if episode <= first else high
    frac = min(1.0, (episode - first) / (last - first))
    return int(round(low + frac * (high - low)))


#: the committed file of MBPO's own state: both replays, their generators and the refit clock
#: (the evaluations so far are the committed ``evaluations.csv``)
MBPO_STATE = "mbpo_state.pt"
#: the key of ``progress.csv``'s rows (SAC's training statistics) that counts real steps
REAL_STEPS_KEY = "time/real_steps"


def _load_sac(sac, path: str) -> None:
    """SAC's networks, optimisers and entropy coefficient from ``path`` (``sac.save``) into ``sac``."""
    from stable_baselines3.common.save_util import load_from_zip_file, recursive_setattr

    data, params, variables = load_from_zip_file(path, device=sac.device)
    sac.set_parameters(params, exact_match=True, device=sac.device)
    for name, value in (variables or {}).items():  # log_ent_coef, as SB3's own load restores it
        recursive_setattr(sac, f"{name}.data", value.data)
    sac._n_updates = int(data.get("_n_updates", 0))


def check_mbpo_config(config: MBRLConfig) -> None:
    """Refuse MBPO settings (``check_config`` checks the ones every loop shares) before any work."""
    if len(config.rollout_schedule) != 4:
        raise ValueError(f"config.rollout_schedule must be (first episode, last episode, min length, max length), got {config.rollout_schedule!r}")
    rollout_length(0, config.rollout_schedule)
    for name in ("model_train_every", "model_rollouts", "sac_updates_per_step", "sac_batch_size", "model_retain_epochs"):
        value = getattr(config, name)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"config.{name} must be an int >= 1, got {value!r}")
    if not (isinstance(config.real_ratio, (int, float)) and 0.0 <= config.real_ratio <= 1.0):
        raise ValueError(f"config.real_ratio must be a fraction in [0, 1], got {config.real_ratio!r}")
    if config.eval_every is not None and config.eval_every < 1:
        raise ValueError(f"config.eval_every must be None or >= 1 real steps, got {config.eval_every!r}")
    if config.sac_target_entropy is not None and not math.isfinite(config.sac_target_entropy):
        raise ValueError(f"config.sac_target_entropy must be None or a finite number, got {config.sac_target_entropy!r}")


class TensorReplay:
    """A FIFO of transitions as torch tensors on one device (observations are policy features).

    Args:
        capacity: transitions kept (the oldest are overwritten).
        obs_dim, action_dim: feature and action sizes.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        f32 = dict(device=device, dtype=torch.float32)
        self.obs = torch.zeros(self.capacity, obs_dim, **f32)
        self.actions = torch.zeros(self.capacity, action_dim, **f32)
        self.next_obs = torch.zeros(self.capacity, obs_dim, **f32)
        self.rewards = torch.zeros(self.capacity, 1, **f32)
        self.dones = torch.zeros(self.capacity, 1, **f32)
        self.position, self.size = 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, next_obs, rewards, dones) -> None:
        """Append a batch ``(N, obs_dim), (N, m), (N, obs_dim), (N,), (N,)``."""
        n = obs.shape[0]
        if n == 0:
            return
        if n > self.capacity:  # only the newest fit
            obs, actions, next_obs, rewards, dones = (t[-self.capacity:] for t in (obs, actions, next_obs, rewards, dones))
            n = self.capacity
        idx = (self.position + torch.arange(n, device=self.obs.device)) % self.capacity
        for store, value in ((self.obs, obs), (self.actions, actions), (self.next_obs, next_obs),
                             (self.rewards, rewards.reshape(-1, 1)), (self.dones, dones.reshape(-1, 1))):
            store[idx] = value.to(store.device, store.dtype)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    _FIELDS = ("obs", "actions", "next_obs", "rewards", "dones")

    def state_dict(self) -> dict[str, Any]:
        """The stored transitions in their slots, with the write position (``load_state_dict``)."""
        return {"capacity": self.capacity, "position": self.position, "size": self.size,
                **{name: getattr(self, name)[: self.size].cpu() for name in self._FIELDS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``. At the same capacity the slots are restored as they were (so
        sampling with the same generator draws the same rows); at another one, e.g. a resumed
        run with more episodes, the newest transitions are added oldest first (the same slots
        while the saved FIFO had not wrapped, as D_env never does)."""
        size, position, capacity = int(state["size"]), int(state["position"]), int(state["capacity"])
        values = [state[name] for name in self._FIELDS]
        if capacity == self.capacity:
            for name, value in zip(self._FIELDS, values):
                getattr(self, name)[:size] = value.to(self.obs.device)
            self.position, self.size = position, size
            return
        if size == capacity:  # full: the oldest sit at the write position
            values = [torch.roll(v, -position, 0) for v in values]
        self.position, self.size = 0, 0
        self.add(*values)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, self.size, (n,), generator=generator, device=generator.device).to(self.obs.device)
        return self.obs[idx], self.actions[idx], self.next_obs[idx], self.dones[idx], self.rewards[idx]


class MixedReplay:
    """SB3's replay-buffer face for SAC's ``train``: every batch mixes real and model transitions.

    ``sample(batch_size)`` returns ``ReplayBufferSamples`` of which ``round(real_ratio *
    batch_size)`` rows come from ``real`` and the rest from ``model`` (all from ``real``
    while ``model`` is empty).
    """

    def __init__(self, real: TensorReplay, model: TensorReplay, real_ratio: float, *, seed: int = 0) -> None:
        if not 0.0 <= real_ratio <= 1.0:
            raise ValueError(f"real_ratio must be in [0, 1], got {real_ratio!r}")
        self.real, self.model, self.real_ratio = real, model, float(real_ratio)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))

    def size(self) -> int:
        return len(self.real) + len(self.model)

    def sample(self, batch_size: int, env=None):
        from stable_baselines3.common.type_aliases import ReplayBufferSamples

        n_real = batch_size if len(self.model) == 0 else int(round(self.real_ratio * batch_size))
        parts = []
        if n_real:
            parts.append(self.real.sample(n_real, self.generator))
        if batch_size - n_real:
            parts.append(self.model.sample(batch_size - n_real, self.generator))
        obs, actions, next_obs, dones, rewards = (torch.cat(t) for t in zip(*parts))
        values = {"observations": obs, "actions": actions, "next_observations": next_obs, "dones": dones, "rewards": rewards,
                  "discounts": None}
        return ReplayBufferSamples(**{k: values[k] for k in ReplayBufferSamples._fields})


class _SpacesEnv(gym.Env):
    """An env that only declares spaces: SAC is built on it and never steps it (MBPO feeds SAC's buffers itself)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        raise RuntimeError("MBPO's SAC never steps this env")


class _Agent:
    """SAC on the adapter's features: acting (numpy) and acting on the model (torch, batched)."""

    def __init__(self, adapter: EnvAdapter, config: MBRLConfig, device: str, seed: int) -> None:
        from stable_baselines3 import SAC

        self.adapter = adapter
        features = gym.spaces.Box(-np.inf, np.inf, (adapter.feature_dim,), np.float32)
        actions = gym.spaces.Box(adapter.action_low.astype(np.float32), adapter.action_high.astype(np.float32), dtype=np.float32)
        self.sac = SAC("MlpPolicy", _SpacesEnv(features, actions), seed=seed, device=device, batch_size=config.sac_batch_size,
                       learning_starts=0, buffer_size=1, verbose=0,
                       target_entropy="auto" if config.sac_target_entropy is None else float(config.sac_target_entropy))
        self.low = torch.as_tensor(adapter.action_low, dtype=torch.float32, device=self.sac.device)
        self.high = torch.as_tensor(adapter.action_high, dtype=torch.float32, device=self.sac.device)

    def features(self, x) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
        return self.adapter.features(x.reshape(-1, self.adapter.state_dim).to(self.sac.device))

    def act(self, state: np.ndarray, deterministic: bool) -> np.ndarray:
        obs = self.features(state)[0].cpu().numpy()
        return self.sac.predict(obs, deterministic=deterministic)[0]

    def scaled(self, u: torch.Tensor) -> torch.Tensor:
        """Env actions -> SAC's squashed ``[-1, 1]`` actions (what its buffers hold)."""
        return 2.0 * (u - self.low) / (self.high - self.low) - 1.0

    @torch.no_grad()
    def sample_scaled(self, features: torch.Tensor) -> torch.Tensor:
        return self.sac.actor(features, deterministic=False)

    def unscaled(self, a: torch.Tensor) -> torch.Tensor:
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low)


@torch.no_grad()
def _branch_rollouts(model, agent: _Agent, adapter: EnvAdapter, buffer: TransitionBuffer, store: TensorReplay, count: int,
                     length: int, generator: np.random.Generator) -> int:
    """``count`` model rollouts of ``length`` steps from states of ``buffer``, into ``store``; returns transitions added."""
    idx = generator.integers(0, len(buffer), size=count)
    x = torch.as_tensor(buffer.states[idx], device=model.device, dtype=model.dtype)
    alive = torch.ones(count, dtype=torch.bool, device=model.device)
    added = 0
    for _ in range(length):
        feats = agent.features(x)
        a = agent.sample_scaled(feats)
        u = agent.unscaled(a).to(model.device, model.dtype)
        with overflowing_rows_returned(model):  # returned, not raised: ended below
            x_next = adapter.wrap(model.step(x, u))
        finite = torch.isfinite(x_next).all(-1)
        x_next = torch.where(finite.unsqueeze(-1), x_next, x)  # a diverged prediction ends its rollout, never feeds NaN
        reward = adapter.reward(x, u, x_next)
        done = adapter.termination(x_next) | ~finite
        keep = alive
        store.add(feats[keep], a[keep], agent.features(x_next)[keep], reward[keep].float(), done[keep].float())
        added += int(keep.sum())
        alive = alive & ~done
        x = x_next
        if not bool(alive.any()):
            break
    return added


def _evaluation_copy(env: gym.Env) -> gym.Env | None:
    """A separate copy of ``env`` for greedy evaluations (its steps are not learned from)."""
    import copy

    if env.spec is not None:
        try:
            return gym.make(env.spec)
        except gym.error.Error:
            pass
    try:
        return copy.deepcopy(env)
    except Exception:  # an env that cannot be copied is simply not evaluated
        return None


def run_mbpo(env: gym.Env, model, config: MBRLConfig = MBRLConfig(), *, adapter: EnvAdapter | None = None,
             out_dir: str | None = None, method: str = "mbpo", resume: bool = False, overwrite: bool = False,
             progress: bool = True, device: str = "cpu", on_episode: Callable[[dict], None] | None = None,
             tensorboard_dir: str | None = None, on_eval: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """MBPO (module docstring) with SB3 SAC on the real ``env`` and ``model``.

    Args:
        env, model, config, adapter, out_dir, method, progress, on_episode, tensorboard_dir: as ``run_pets``.
        resume: continue from ``out_dir``'s committed state: SAC with its optimisers, both
            replays (D_env and D_model) and every random-number state are committed with the
            model after each episode, so a resumed run takes the steps an uninterrupted one
            would have taken (``episodes`` and ``max_real_steps`` may grow).
        device: SAC's device.
        on_eval: called with every evaluation ``{method, seed, real_steps, return, steps,
            <adapter metrics>}`` (``real_steps``: the real steps learned from).

    Returns:
        the per-episode rows (also in ``out_dir/episodes.csv``); SAC is saved as
        ``sac.zip`` in the committed state.
    """
    from .run_log import read_csv, write_csv
    from .sb3_baselines import evaluation_episode, sb3_logger

    check_config(config)
    adapter = adapter or make_adapter(env)
    check_model_fits(model, adapter)
    check_mbpo_config(config)
    run = RunFolder(out_dir, algo="mbpo", settings={"method": method, **dataclasses.asdict(config)}) if out_dir else None
    manifest = run.prepare(resume, overwrite) if run is not None else None
    if manifest is not None and not os.path.exists(run.file(manifest, MBPO_STATE)):
        run.release()
        raise ValueError(f"{out_dir!r} was committed without MBPO's replays ({MBPO_STATE}) and cannot be resumed; start a new run folder")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    agent = _Agent(adapter, config, device, config.seed)
    buffer = TransitionBuffer(adapter.state_dim, adapter.action_dim, adapter.angle_dims)
    total = config.random_episodes + config.episodes
    capacity_real = total * config.episode_steps
    if config.max_real_steps is not None:  # the last episode may start just below the budget
        capacity_real = min(capacity_real, config.max_real_steps + config.episode_steps)
    real = TensorReplay(max(1, capacity_real), adapter.feature_dim, adapter.action_dim, agent.sac.device)
    max_len = max(config.rollout_schedule[2], config.rollout_schedule[3])
    model_store = TensorReplay(config.model_rollouts * config.model_train_every * max_len * config.model_retain_epochs,
                               adapter.feature_dim, adapter.action_dim, agent.sac.device)
    agent.sac.replay_buffer = MixedReplay(real, model_store, config.real_ratio, seed=config.seed)
    users_propagation = model.propagation if is_ensemble(model) else None  # given back at the end
    if is_ensemble(model):
        model.propagation = "ts1"
        if hasattr(model, "reset_generator"):
            model.reset_generator(config.seed)
    eval_env = _evaluation_copy(env)
    tensorboard = TensorBoardLog(tensorboard_dir, method) if tensorboard_dir else None
    rows: list[dict[str, Any]] = []
    fit_loss = None
    # the model's refit clock runs across episodes: real steps since the last fit, D_env's
    # size at that fit, and whether D_model still has to be refilled from the new fit
    clock = {"since_fit": 0, "fitted_on": 0, "fresh": False}
    evaluations: list[dict[str, Any]] = []
    if manifest is not None:  # after everything that draws random numbers at the start, whose states it restores
        _load_sac(agent.sac, run.file(manifest, "sac.zip"))
        rows, buffer, fit_loss = _restore(run, manifest, model)
        saved = torch.load(run.file(manifest, MBPO_STATE), weights_only=True)
        real.load_state_dict(saved["real"])
        model_store.load_state_dict(saved["model"])
        agent.sac.replay_buffer.generator.set_state(saved["replay_generator"])
        rng.bit_generator.state = saved["branch_rng"]
        clock.update(saved["clock"])
        scored = run.file(manifest, "evaluations.csv")  # written only once there is an evaluation
        evaluations = read_csv(scored) if os.path.exists(scored) else []
    real_steps = int(rows[-1]["real_steps"]) if rows else 0
    t0 = time.perf_counter() - (float(rows[-1]["wall_s"]) if rows else 0.0)
    # SAC's training statistics, one row per episode (the rows after the committed episode
    # of an interrupted run are dropped); not SB3's default logger, which leaves an empty
    # folder in the temp dir
    agent.sac.set_logger(sb3_logger(out_dir, tensorboard_dir=tensorboard_dir, continue_until=(REAL_STEPS_KEY, real_steps)
                                    if manifest is not None else None))

    def evaluate(learned_from: int) -> dict[str, Any] | None:
        """The greedy policy on a separate copy of the env (its steps are not learned from)."""
        if eval_env is None:
            return None
        result = evaluation_episode(eval_env, lambda s, o: agent.act(s, deterministic=True), seed=config.seed, adapter=adapter)
        evaluations.append({"method": method, "seed": config.seed, "real_steps": learned_from, **result})
        if on_eval is not None:
            on_eval(evaluations[-1])
        return result

    def add_real(ep: dict, only_last: bool = False) -> None:
        x = torch.as_tensor(ep["states"], dtype=torch.float32)
        u = torch.as_tensor(ep["actions"], dtype=torch.float32, device=agent.sac.device)
        done = torch.zeros(len(u))
        if ep["terminated"]:
            done[-1] = 1.0
        r = torch.as_tensor(ep["rewards"], dtype=torch.float32)
        first = max(0, len(u) - 1) if only_last else 0
        real.add(agent.features(x[first:-1]), agent.scaled(u[first:]), agent.features(x[first + 1:]), r[first:], done[first:])

    def add_real_transition(x: np.ndarray, u: np.ndarray, x_next: np.ndarray) -> None:
        xt, xnt = (torch.as_tensor(v, dtype=torch.float64)[None] for v in (x, x_next))
        ut = torch.as_tensor(u, dtype=torch.float64)[None]
        reward = adapter.reward(xt, ut, xnt).float()
        real.add(agent.features(xt), agent.scaled(ut.float().to(agent.sac.device)), agent.features(xnt), reward, torch.zeros(1))

    def with_current(state: dict) -> TransitionBuffer:
        """D_env with the running episode's transitions so far."""
        if len(state["actions"]) < 1:
            return buffer
        both = TransitionBuffer(adapter.state_dim, adapter.action_dim, adapter.angle_dims)
        both.states, both.actions, both.next_states = buffer.states, buffer.actions, buffer.next_states
        both.rewards, both.terminated = buffer.rewards, buffer.terminated
        steps = len(state["actions"])  # the states hold one more: the one being acted in
        both.add_trajectory(np.asarray(state["states"][: steps + 1]), np.asarray(state["actions"]))
        return both

    for episode in tqdm(range(len(rows), total), desc=f"{method} episodes", disable=not progress, initial=len(rows), total=total):
        if config.max_real_steps is not None and real_steps >= config.max_real_steps:
            break
        ep_seed = config.seed * 10_000 + episode
        evaluation = None
        if episode < config.random_episodes:
            ep = collect_episode(env, None, steps=config.random_episode_steps or config.episode_steps, seed=ep_seed, adapter=adapter)
            policy = "random"
        else:
            length = rollout_length(episode - config.random_episodes, config.rollout_schedule)
            state: dict[str, Any] = {"states": [], "actions": []}

            def act(s: np.ndarray, o: np.ndarray) -> np.ndarray:
                # The real transition that led to s joins D_env now (it was not terminal, or
                # the episode would have ended): its reward is the adapter's, which equals the env's.
                nonlocal fit_loss
                if state["states"]:
                    x_prev, u_prev = state["states"][-1], state["actions"][-1]
                    x_now = x_prev + adapter.delta(x_prev, s)
                    add_real_transition(x_prev, u_prev, x_now)
                state["states"].append(np.asarray(s, np.float64))
                data = None
                if clock["since_fit"] >= min(config.model_train_every, max(1, clock["fitted_on"])):
                    data = with_current(state)
                    if len(data) >= 2:
                        fit_loss = fit_model(model, data, config, False)
                        clock.update(since_fit=0, fitted_on=len(data), fresh=True)
                if clock["fresh"]:  # D_model is refilled after every fit, with the policy of that moment
                    _branch_rollouts(model, agent, adapter, data if data is not None else with_current(state), model_store,
                                     config.model_rollouts * config.model_train_every, length, rng)
                    clock["fresh"] = False
                clock["since_fit"] += 1
                taken = real_steps + len(state["actions"])
                if taken + 1 > config.sac_learning_starts:
                    agent.sac.train(gradient_steps=config.sac_updates_per_step, batch_size=config.sac_batch_size)
                if config.eval_every and state["actions"] and taken % config.eval_every == 0:
                    evaluate(taken)
                action = agent.act(s, deterministic=False)
                state["actions"].append(np.clip(np.asarray(action, np.float64), adapter.action_low, adapter.action_high))
                return action

            ep = collect_episode(env, act, steps=config.episode_steps, seed=ep_seed, adapter=adapter)
            policy = "sac"
        buffer.add_trajectory(ep["states"], ep["actions"], ep["rewards"], ep["terminated"])
        add_real(ep, only_last=policy == "sac")  # a SAC episode's earlier transitions joined step by step
        real_steps += len(ep["actions"])
        if policy == "sac":
            evaluation = evaluate(real_steps)
        if policy == "random":
            clock["since_fit"] += len(ep["actions"])
            if episode == config.random_episodes - 1 and episode < total - 1:
                fit_loss = fit_model(model, buffer, config, progress)
                clock.update(since_fit=0, fitted_on=len(buffer), fresh=True)
        row = _row(method, config, episode, real_steps, ep, adapter, fit_loss, t0, policy)
        if evaluation is not None:
            row.update({f"eval_{k}": v for k, v in evaluation.items()})
        rows.append(row)
        agent.sac.logger.record(REAL_STEPS_KEY, real_steps)
        agent.sac.logger.dump(real_steps)
        mbpo_state = {"real": real.state_dict(), "model": model_store.state_dict(), "clock": dict(clock),
                      "replay_generator": agent.sac.replay_buffer.generator.get_state(), "branch_rng": rng.bit_generator.state}
        _commit(run, model, buffer, rows, fit_loss, {"sac.zip": lambda p: agent.sac.save(p),
                                                     "evaluations.csv": lambda p: write_csv(p, evaluations),
                                                     MBPO_STATE: lambda p: torch.save(mbpo_state, p)}, env_id=adapter.env_id)
        if tensorboard is not None:
            tensorboard(row)
        if on_episode is not None:
            on_episode(row)
    if tensorboard is not None:
        tensorboard.close()
    if run is not None:
        run.release()
    if users_propagation is not None:
        model.propagation = users_propagation
    return rows
