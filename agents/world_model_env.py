"""Environments that run inside a world model: "training in imagination".

``WorldModelVectorEnv`` is a batched ``gymnasium.vector.VectorEnv`` whose ``step`` is one
``model.step(x, u)`` over all ``num_envs`` states at once, on the model's device (no Python
loop over envs, no host copy unless numpy output is asked for). ``WorldModelEnv`` is its
single-env ``gymnasium.Env`` face (it passes Gymnasium's and Stable-Baselines3's
``check_env``), and ``SB3WorldModelVecEnv`` hands the batched env to SB3 algorithms as an
SB3 ``VecEnv``, so e.g. SAC trains on thousands of imagined transitions per step.

What the env needs besides the model is what the real env would tell an agent:

- ``reward_fn(x, u, x_next) -> (B,)``: torch, batched (e.g. ``pendulum_reward_fn``),
- ``initial_state_fn(batch, generator) -> (B, state_dim)``: where episodes start (a box,
  or states drawn from real data for Dyna/MBPO branching, see ``StateBank``),
- ``observation_fn(x) -> (B, obs_dim)`` and its space, so the agent sees the same
  observations as in the real env (identity by default),
- action bounds (actions are clipped, as Gymnasium's classic-control envs do), an episode
  length, and optionally ``terminated_fn(x_next) -> (B,) bool``.

A learned model can leave the region it was trained on and run away; a state whose norm
exceeds ``state_bound`` (or that is not finite) ends the episode (``terminated``) and is
clamped, so imagination never feeds NaN to an agent.

``adapter_world_model_env(model, adapter, real_env)`` copies everything above from any
real env through its adapter (reward, termination, action bounds, episode length; the
policy sees ``adapter.features`` of the state); ``pendulum_world_model_env(model,
real_env)`` mirrors a real ``NLinkPendulumEnv`` with its own observations.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from lyagym.envs.vector_utils import autoreset_mode as _autoreset_mode
from lyagym.envs.vector_utils import reject_scalar_actions, reset_mask
from lyagym.learned_models import WorldModel, overflowing_rows_returned

__all__ = [
    "WorldModelVectorEnv",
    "WorldModelEnv",
    "SB3WorldModelVecEnv",
    "StateBank",
    "box_initial_states",
    "pendulum_reward_fn",
    "pendulum_observation_fn",
    "pendulum_world_model_env",
    "adapter_world_model_env",
]

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
InitialStateFn = Callable[[int, torch.Generator], torch.Tensor]


def box_initial_states(low, high) -> InitialStateFn:
    """Initial states uniform in the box ``[low, high]`` (arrays of shape ``(state_dim,)``); picklable."""
    return _BoxInitialStates(low, high)


class _BoxInitialStates:
    """``box_initial_states``' sampler: an object rather than a closure, so envs pickle."""

    def __init__(self, low, high) -> None:
        low_t = torch.as_tensor(np.asarray(low, dtype=np.float64))
        high_t = torch.as_tensor(np.asarray(high, dtype=np.float64))
        if low_t.shape != high_t.shape or low_t.ndim != 1:
            raise ValueError(f"low and high must both have shape (state_dim,), got {tuple(low_t.shape)} and {tuple(high_t.shape)}")
        self.low, self.high = low_t, high_t
        self.state_dim = int(low_t.shape[0])

    def __call__(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        lo = self.low.to(generator.device)
        hi = self.high.to(generator.device)
        r = torch.rand((batch, lo.shape[0]), generator=generator, device=generator.device, dtype=torch.float64)
        return lo + (hi - lo) * r


class StateBank:
    """Initial states drawn uniformly from a growing set of real states (Dyna/MBPO branching).

    ``bank.add(states)`` appends ``(N, state_dim)`` states; calling the bank as an
    ``initial_state_fn`` returns ``batch`` of them chosen with the env's generator.
    """

    def __init__(self, state_dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.state_dim = int(state_dim)
        self.states = torch.empty(0, self.state_dim, device=device, dtype=dtype)

    def add(self, states) -> None:
        s = torch.as_tensor(np.asarray(states) if not isinstance(states, torch.Tensor) else states)
        s = s.to(self.states.device, self.states.dtype).reshape(-1, self.state_dim)
        if not torch.isfinite(s).all():
            raise ValueError("StateBank.add: states contain NaN or inf")
        self.states = torch.cat([self.states, s])

    def __len__(self) -> int:
        return self.states.shape[0]

    def __call__(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        if len(self) == 0:
            raise RuntimeError("StateBank is empty: add real states before resetting the world-model env")
        idx = torch.randint(len(self), (batch,), generator=generator, device=generator.device)
        return self.states[idx.to(self.states.device)]


class WorldModelVectorEnv(VectorEnv):
    """``num_envs`` copies of an env whose dynamics are ``model.step``, batched on the model's device.

    Args:
        model: any ``WorldModel`` with ``action_dim >= 1``.
        reward_fn: ``(x (B, n), u (B, m), x_next (B, n)) -> (B,)`` torch.
        initial_state_fn: ``(batch, generator) -> (batch, n)``; see ``box_initial_states``
            and ``StateBank``.
        num_envs: batch size ``B``.
        action_low, action_high: scalars or ``(m,)``; actions are clipped into them.
        max_episode_steps: truncation length.
        observation_fn: ``(B, n) -> (B, obs_dim)`` torch; identity by default.
        observation_space: the single-env observation ``Box`` (required with
            ``observation_fn``; by default an unbounded box of ``state_dim``).
        terminated_fn: optional ``x_next (B, n) -> (B,)`` bool.
        state_bound: states with ``max |x_i|`` above this end the episode (runaway model).
        autoreset_mode: a ``gymnasium.vector.AutoresetMode`` or its value: ``"NextStep"``
            (Gymnasium's default), ``"SameStep"`` or ``"Disabled"`` (``"next_step"``,
            ``"same_step"``, ``"disabled"`` also work); see below.
        return_torch: return observations, rewards and flags as torch tensors on the model's
            device instead of numpy arrays (no host copy).

    Autoreset follows ``SyncVectorEnv``: NEXT_STEP restarts an ended env on the following
    step (its action ignored, reward 0); SAME_STEP restarts it at once and the info holds
    ``final_obs`` (one ``(num_envs, obs_dim)`` array, valid where ``_final_obs``),
    ``final_info`` (``{}``) and ``_final_info`` -- with numpy output only on steps where some
    env ended, as ``SyncVectorEnv`` does; with ``return_torch`` on every step (the masks say
    which rows are valid; asking "did any end?" would cost a device sync). DISABLED never
    restarts: ``reset(options={"reset_mask": mask})`` restarts only the masked envs, and a
    ``step`` while an ended env was not reset raises ``gymnasium.error.ResetNeeded`` (a
    device sync per step with ``return_torch``).

    Pickles (e.g. for ``AsyncVectorEnv`` or ``copy.deepcopy``) when ``model``, ``reward_fn``,
    ``initial_state_fn``, ``observation_fn`` and ``terminated_fn`` do.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        model: WorldModel,
        reward_fn: RewardFn,
        initial_state_fn: InitialStateFn,
        num_envs: int = 1,
        *,
        action_low: float | np.ndarray = -1.0,
        action_high: float | np.ndarray = 1.0,
        max_episode_steps: int = 200,
        observation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        observation_space: gym.spaces.Box | None = None,
        terminated_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        state_bound: float = 1e3,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        return_torch: bool = False,
    ) -> None:
        if not isinstance(model, WorldModel):
            raise TypeError(f"model must be a WorldModel, got {type(model).__name__}")
        if int(model.action_dim) < 1:
            raise ValueError(f"model has action_dim={model.action_dim}; a world-model env needs a controlled model")
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be an int >= 1, got {max_episode_steps!r}")
        if observation_fn is not None and observation_space is None:
            raise ValueError("observation_space is required when observation_fn is given")
        autoreset_mode = _autoreset_mode(autoreset_mode)
        self.model = model
        self.reward_fn = reward_fn
        self.initial_state_fn = initial_state_fn
        self.observation_fn = observation_fn
        self.terminated_fn = terminated_fn
        self.num_envs = int(num_envs)
        self.max_episode_steps = int(max_episode_steps)
        self.state_bound = float(state_bound)
        self.autoreset_mode = autoreset_mode
        self.return_torch = bool(return_torch)
        self.metadata = {**type(self).metadata, "autoreset_mode": autoreset_mode}
        self.device = torch.device(model.device)
        self.dtype = model.dtype
        n, m = int(model.state_dim), int(model.action_dim)
        self.state_dim, self.action_dim = n, m

        low = np.broadcast_to(np.asarray(action_low, dtype=np.float32), (m,)).copy()
        high = np.broadcast_to(np.asarray(action_high, dtype=np.float32), (m,)).copy()
        if not (low < high).all():
            raise ValueError(f"action_low must be < action_high, got {low} and {high}")
        self.single_action_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.single_observation_space = observation_space or gym.spaces.Box(-np.inf, np.inf, (n,), dtype=np.float32)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self._low = torch.as_tensor(low, device=self.device, dtype=self.dtype)
        self._high = torch.as_tensor(high, device=self.device, dtype=self.dtype)

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(np.random.SeedSequence().generate_state(1)[0]))
        self.state: torch.Tensor | None = None  # (B, n) current model states
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._needs_reset = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        # DISABLED mode: refuse to step ended envs that were not reset (WorldModelEnv, a
        # single env, keeps the plain-env behaviour of stepping on).
        self._strict_disabled = True

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        gen = state.pop("generator")
        state["_generator_state"] = (str(gen.device), gen.get_state())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        device, gen_state = state.pop("_generator_state")
        self.__dict__.update(state)
        self.generator = torch.Generator(device=device)
        self.generator.set_state(gen_state)

    # ------------------------------------------------------------------ helpers
    def _initial_states(self, batch: int) -> torch.Tensor:
        x0 = self.initial_state_fn(batch, self.generator)
        x0 = torch.as_tensor(x0).to(self.device, self.dtype)
        if x0.shape != (batch, self.state_dim):
            raise ValueError(f"initial_state_fn returned shape {tuple(x0.shape)}, expected ({batch}, {self.state_dim})")
        return x0

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """Observation ``(B, obs_dim)`` of model states ``(B, n)``, on the model's device."""
        return x if self.observation_fn is None else self.observation_fn(x)

    def _out(self, t: torch.Tensor, dtype=np.float32):
        return t if self.return_torch else t.detach().to("cpu").numpy().astype(dtype, copy=False)

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start every env (or those of ``options["reset_mask"]``, a ``(num_envs,)`` bool
        array or tensor); ``options={"state": (B, n) or (n,)}`` sets the initial states."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        super().reset(seed=seed)  # np_random / np_random_seed, as every VectorEnv
        if seed is not None:
            self.generator.manual_seed(int(seed))
            self.action_space.seed(seed)
        options = dict(options or {})
        unknown = set(options) - {"state", "reset_mask"}
        if unknown:
            raise ValueError(f"options accepts only 'state' and 'reset_mask', got unknown keys {sorted(unknown)}")
        mask = None if options.get("reset_mask") is None else reset_mask(options["reset_mask"], self.num_envs, self.device)
        if mask is not None and self.state is None:
            raise gym.error.ResetNeeded("reset_mask needs a full reset() first")
        if options.get("state") is not None:
            x0 = torch.as_tensor(np.asarray(options["state"]) if not isinstance(options["state"], torch.Tensor) else options["state"])
            x0 = x0.to(self.device, self.dtype)
            if x0.ndim == 1:
                x0 = x0.expand(self.num_envs, -1)
            if x0.shape != (self.num_envs, self.state_dim):
                raise ValueError(f"options['state'] must have shape ({self.state_dim},) or ({self.num_envs}, {self.state_dim}), got {tuple(x0.shape)}")
            if not torch.isfinite(x0).all():
                raise ValueError("options['state'] contains NaN or inf")
            x0 = x0.clone()
        else:
            x0 = self._initial_states(self.num_envs)
        if mask is None:
            self.state = x0
            self.elapsed.zero_()
            self._needs_reset.zero_()
        else:
            self.state = torch.where(mask[:, None], x0, self.state)
            self.elapsed.masked_fill_(mask, 0)
            self._needs_reset &= ~mask
        return self._out(self.observe(self.state)), {}

    def step(self, actions):
        """One model step for all envs: ``actions (B, m)`` -> ``(obs, reward, terminated, truncated, info)``."""
        if self.state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self.autoreset_mode == AutoresetMode.DISABLED and self._strict_disabled and bool(self._needs_reset.any()):
            ended = torch.nonzero(self._needs_reset).flatten().tolist()
            raise gym.error.ResetNeeded(
                f"sub-envs {ended} ended and autoreset_mode is DISABLED: call "
                "reset(options={'reset_mask': terminated | truncated}) before step()"
            )
        shape = (self.num_envs, self.action_dim)
        reject_scalar_actions(actions, shape)
        if isinstance(actions, torch.Tensor):
            u = actions
        else:
            try:
                u = torch.as_tensor(np.asarray(actions, dtype=np.float64))
            except (TypeError, ValueError):
                raise TypeError(f"actions must be a numeric array of shape {shape}, got {actions!r}") from None
        if tuple(u.shape) != shape:
            raise ValueError(f"actions must have shape {shape}, got {tuple(u.shape)}")
        u = u.to(self.device, self.dtype)
        # NaN actions are an agent bug: refuse instead of propagating (clipping would hide it).
        if not isinstance(actions, torch.Tensor) and not np.isfinite(np.asarray(actions)).all():
            raise ValueError("actions contain NaN or inf")
        u = torch.maximum(torch.minimum(u, self._high), self._low)
        x = self.state
        with torch.no_grad(), overflowing_rows_returned(self.model):  # a diverged row ends its episode (below)
            x_next = self.model.step(x, u)
            bad = ~torch.isfinite(x_next).all(-1) | (x_next.abs().amax(-1) > self.state_bound)
            x_next = torch.nan_to_num(x_next, nan=0.0).clamp(-self.state_bound, self.state_bound)
            reward = self.reward_fn(x, u, x_next)
        terminated = bad if self.terminated_fn is None else (bad | self.terminated_fn(x_next).to(torch.bool))
        self.elapsed += 1
        truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        info: dict[str, Any] = {}

        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            # Envs that finished on the previous step restart now; their action is ignored.
            restart = self._needs_reset
            # Always draw fresh states and select with torch.where: no host sync to ask "any?".
            fresh = self._initial_states(self.num_envs)
            x_next = torch.where(restart[:, None], fresh, x_next)
            reward = torch.where(restart, torch.zeros_like(reward), reward)
            terminated = terminated & ~restart
            truncated = truncated & ~restart
            self.elapsed = torch.where(restart, torch.zeros_like(self.elapsed), self.elapsed)
            self.state = x_next
            self._needs_reset = terminated | truncated
            obs = self.observe(x_next)
        elif self.autoreset_mode == AutoresetMode.SAME_STEP:
            done = terminated | truncated
            final_obs = self.observe(x_next)
            fresh = self._initial_states(self.num_envs)
            x_next = torch.where(done[:, None], fresh, x_next)
            self.elapsed = torch.where(done, torch.zeros_like(self.elapsed), self.elapsed)
            if self.return_torch:  # no host sync: the keys are always there
                ended = True
            else:
                done_np = self._out(done, bool)
                ended = bool(done_np.any())
            if ended:
                info["final_obs"] = self._out(final_obs)
                info["_final_obs"] = self._out(done.clone(), bool)
                info["final_info"] = {}
                info["_final_info"] = self._out(done.clone(), bool)
            self.state = x_next
            obs = self.observe(x_next)
        else:
            self.state = x_next
            self._needs_reset = terminated | truncated
            obs = self.observe(x_next)
        return self._out(obs), self._out(reward), self._out(terminated, bool), self._out(truncated, bool), info

    def close_extras(self, **kwargs: Any) -> None:
        self.state = None


class WorldModelEnv(gym.Env):
    """A single ``gymnasium.Env`` whose dynamics are a ``WorldModel``. Same arguments as
    ``WorldModelVectorEnv`` (without ``num_envs``/``autoreset_mode``/``return_torch``).

    Observations are ``float32`` numpy arrays; ``reset(seed=..., options={"state": x0})``.
    """

    metadata = {"render_modes": []}

    def __init__(self, model: WorldModel, reward_fn: RewardFn, initial_state_fn: InitialStateFn, **kwargs: Any) -> None:
        for bad in ("num_envs", "autoreset_mode", "return_torch"):
            if bad in kwargs:
                raise TypeError(f"WorldModelEnv does not take {bad!r}; use WorldModelVectorEnv for batches")
        self.vector_env = WorldModelVectorEnv(model, reward_fn, initial_state_fn, 1, autoreset_mode=AutoresetMode.DISABLED, **kwargs)
        self.vector_env._strict_disabled = False  # a plain env steps on after an episode end
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space
        self.max_episode_steps = self.vector_env.max_episode_steps
        self._reset_done = False

    @property
    def model(self) -> WorldModel:
        return self.vector_env.model

    @property
    def state(self) -> np.ndarray | None:
        s = self.vector_env.state
        return None if s is None else s[0].detach().cpu().numpy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None and not self._reset_done:
            seed = int(self.np_random.integers(2**31 - 1))  # first reset without a seed: random but seeded by gymnasium
        obs, info = self.vector_env.reset(seed=seed, options=options)
        self._reset_done = True
        return obs[0], info

    def step(self, action):
        if not self._reset_done:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"action contains NaN or inf: {a}")
        obs, reward, terminated, truncated, info = self.vector_env.step(a[None])
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), info


# ---------------------------------------------------------------------- SB3 adapter
def _sb3_vec_env_base():
    from stable_baselines3.common.vec_env import VecEnv

    return VecEnv


class SB3WorldModelVecEnv(_sb3_vec_env_base()):
    """A ``WorldModelVectorEnv`` as a Stable-Baselines3 ``VecEnv`` (auto-reset in the same
    step, final observation in ``info["terminal_observation"]``, time limits flagged with
    ``info["TimeLimit.truncated"]`` so SAC bootstraps through truncation).

    Args:
        vector_env: a ``WorldModelVectorEnv`` (its autoreset mode is switched to same-step
            and its output to numpy).

    The sub-envs are rows of one batched env, so the per-env calls of SB3's ``VecEnv`` API
    work as follows (compare ``DummyVecEnv``):

    - ``set_attr(name, value, indices)``: for all envs (``indices=None`` or every index) the
      attribute is set on the batched env, where it takes effect; for some envs the value is
      stored for those indices only (``get_attr`` returns it), since one batched env cannot
      hold a different ``max_episode_steps`` per row.
    - ``get_attr(name, indices)``: per index, the value set for it, else the batched env's.
    - ``env_method(name, *args, indices, **kwargs)``: a callable set with ``set_attr`` for an
      index is called for it; otherwise the batched env's method is called once (it acts on
      every row) and a result with one entry per env is split per index.
    - ``seed(s)`` and ``set_options(options)`` are used by the next ``reset`` only, as in
      SB3: options equal for every env are passed as they are; per-env ``{"state": x}``
      options are stacked into one ``(num_envs, state_dim)`` batch.
    """

    def __init__(self, vector_env: WorldModelVectorEnv) -> None:
        vector_env.autoreset_mode = AutoresetMode.SAME_STEP
        vector_env.metadata = {**vector_env.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        vector_env.return_torch = False
        self.venv = vector_env
        self._env_attrs: list[dict[str, Any]] = [{} for _ in range(vector_env.num_envs)]
        super().__init__(vector_env.num_envs, vector_env.single_observation_space, vector_env.single_action_space)
        self._actions: np.ndarray | None = None
        self._seed: int | None = None

    def reset(self):
        options = self._batched_options()
        obs, _ = self.venv.reset(seed=self._seed, options=options)
        self._seed = None
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def _batched_options(self) -> dict[str, Any] | None:
        """SB3's per-env options (``set_options``) as the batched env's one options dict."""
        per_env = list(self._options)
        if not any(per_env):
            return None
        first = per_env[0]
        if all(_same_options(first, o) for o in per_env[1:]):
            return dict(first)
        if all(set(o) == {"state"} for o in per_env):
            return {"state": np.stack([np.asarray(o["state"], dtype=np.float64) for o in per_env])}
        raise ValueError(
            "set_options: the batched world-model env takes one options dict for all envs; per-env "
            f"options must be equal or each hold only 'state', got {per_env!r}"
        )

    def seed(self, seed: int | None = None):
        self._seed = seed
        return [seed] * self.num_envs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            final = info["final_obs"]
            for i in np.flatnonzero(dones):  # only finished envs need their own info dict
                infos[i] = {"terminal_observation": final[i], "TimeLimit.truncated": bool(truncated[i] and not terminated[i])}
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def _indices(self, indices) -> list[int]:
        out = []
        for i in self._get_indices(indices):
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or not -self.num_envs <= i < self.num_envs:
                raise IndexError(f"indices must be env indices in [0, {self.num_envs}), got {i!r}")
            out.append(int(i) % self.num_envs)
        return out

    def get_attr(self, attr_name: str, indices=None):
        idx = self._indices(indices)
        if any(attr_name not in self._env_attrs[i] for i in idx):
            shared = getattr(self.venv, attr_name)  # AttributeError, as DummyVecEnv raises
        return [self._env_attrs[i][attr_name] if attr_name in self._env_attrs[i] else shared for i in idx]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        idx = self._indices(indices)
        if sorted(set(idx)) == list(range(self.num_envs)):
            setattr(self.venv, attr_name, value)
            for attrs in self._env_attrs:
                attrs.pop(attr_name, None)
        else:
            for i in idx:
                self._env_attrs[i][attr_name] = value

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs):
        idx = self._indices(indices)
        results: dict[int, Any] = {}
        for i in idx:
            if method_name in self._env_attrs[i]:
                results[i] = self._env_attrs[i][method_name](*method_args, **method_kwargs)
        rest = [i for i in idx if i not in results]
        if rest:
            batched = getattr(self.venv, method_name)(*method_args, **method_kwargs)
            split = isinstance(batched, (list, tuple, np.ndarray, torch.Tensor)) and len(batched) == self.num_envs
            for i in rest:
                results[i] = batched[i] if split else batched
        return [results[i] for i in idx]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._indices(indices))


def _same_options(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if x is y:
            continue
        try:
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                return False
        except Exception:  # not array-like: plain equality
            if x != y:
                return False
    return True


# ---------------------------------------------------------------------- pendulum
def pendulum_reward_fn(task: str = "swingup", **weights: float) -> RewardFn:
    """The ``NLinkPendulumEnv`` reward as a world-model ``reward_fn``: ``-cost(x, u)`` of the
    state *before* the step and the clipped torque (the env's convention); picklable."""
    from .adapters.n_link_pendulum import NLinkPendulumReward

    return NLinkPendulumReward(task, weights)


class PendulumObservation:
    """The ``NLinkPendulumEnv`` observation of a batch of states, in torch: ``(B, 2n) -> (B, obs_dim)``
    (picklable). ``"trig"``: ``(cos q, sin q, clip(qdot))``; ``"raw"``: ``(wrap(q), clip(qdot))`` --
    the env's ``_observe``, batched."""

    def __init__(self, n_links: int, max_velocity: float, mode: str = "trig") -> None:
        self.n, self.v, self.mode = int(n_links), float(max_velocity), mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from lyagym.envs.rewards import wrap_angle

        q, qdot = x[:, : self.n], x[:, self.n:].clamp(-self.v, self.v)
        if self.mode == "trig":
            return torch.cat([torch.cos(q), torch.sin(q), qdot], -1)
        return torch.cat([wrap_angle(q), qdot], -1)


def pendulum_observation_fn(real_env: gym.Env) -> Callable[[torch.Tensor], torch.Tensor]:
    """The real ``NLinkPendulumEnv``'s observation as a world-model ``observation_fn`` (``PendulumObservation``)."""
    env = real_env.unwrapped
    return PendulumObservation(int(env.n_links), float(env.max_velocity), getattr(env, "observation_mode", "trig"))


def pendulum_world_model_env(model: WorldModel, real_env: gym.Env, *, num_envs: int | None = None,
                             initial_state_fn: InitialStateFn | None = None, **kwargs: Any):
    """An imagined copy of a real ``NLinkPendulumEnv``: same task reward, observations,
    torque limits and episode length, dynamics from ``model``.

    Args:
        model: a controlled ``WorldModel`` over the pendulum state ``(q, qdot)`` whose
            ``dt`` is the env's step.
        real_env: the ``NLinkPendulumEnv`` (or ``gym.make`` of it) to mirror.
        num_envs: ``None`` for a single ``WorldModelEnv``, else a ``WorldModelVectorEnv``.
        initial_state_fn: default: the real env's own starting-state box.
        kwargs: override any ``WorldModelVectorEnv`` argument.
    """
    env = real_env.unwrapped
    if int(model.state_dim) != int(env.state_dim) or int(model.action_dim) != int(env.action_dim):
        raise ValueError(
            f"model (state_dim={model.state_dim}, action_dim={model.action_dim}) does not match the env "
            f"(state_dim={env.state_dim}, action_dim={env.action_dim})"
        )
    if abs(float(model.dt) - float(env.dt)) > 1e-12:
        raise ValueError(f"model.dt={model.dt} differs from the env's step dt={env.dt}")
    spec_steps = getattr(getattr(real_env, "spec", None), "max_episode_steps", None)
    options: dict[str, Any] = dict(
        action_low=env.action_space.low,
        action_high=env.action_space.high,
        max_episode_steps=int(spec_steps or env.max_episode_steps or 200),
        observation_fn=pendulum_observation_fn(real_env),
        observation_space=env.observation_space,
        state_bound=10.0 * float(env.max_velocity),
    )
    if initial_state_fn is None:
        initial_state_fn = box_initial_states(env.init_low, env.init_high)
    options.update(kwargs)
    reward_fn = pendulum_reward_fn(env.task, **env.weights)
    if num_envs is None:
        return WorldModelEnv(model, reward_fn, initial_state_fn, **options)
    return WorldModelVectorEnv(model, reward_fn, initial_state_fn, num_envs, **options)


class _Features:
    """``adapter.features`` as a picklable observation function."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter.features(x)


def adapter_world_model_env(model: WorldModel, adapter, real_env: gym.Env | None = None, *, num_envs: int | None = None,
                            initial_state_fn: InitialStateFn | None = None, **kwargs: Any):
    """An imagined copy of a real env through its adapter (``lyagym.agents.adapters``): the
    adapter's reward and termination, action bounds, the real env's episode length,
    dynamics from ``model``; observations are ``adapter.features(x)`` (angles as sin, cos).

    Args:
        model: a controlled ``WorldModel`` over the adapter's state with the env's ``dt``.
        adapter: the env's ``EnvAdapter``.
        real_env: read for its episode length (default 200 steps without it).
        num_envs: ``None`` for a single ``WorldModelEnv``, else a ``WorldModelVectorEnv``.
        initial_state_fn: where imagined episodes start; default: a box of +-1 around the
            adapter's rest state.
        kwargs: override any ``WorldModelVectorEnv`` argument.
    """
    if int(model.state_dim) != adapter.state_dim or int(model.action_dim) != adapter.action_dim:
        raise ValueError(f"model (state_dim={model.state_dim}, action_dim={model.action_dim}) does not match the adapter "
                         f"(state_dim={adapter.state_dim}, action_dim={adapter.action_dim})")
    if abs(float(model.dt) - adapter.dt) > 1e-12:
        raise ValueError(f"model.dt={model.dt} differs from the env's step dt={adapter.dt}")
    spec_steps = getattr(getattr(real_env, "spec", None), "max_episode_steps", None) if real_env is not None else None
    options: dict[str, Any] = dict(
        action_low=adapter.action_low,
        action_high=adapter.action_high,
        max_episode_steps=int(spec_steps or 200),
        observation_fn=_Features(adapter),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (adapter.feature_dim,), np.float32),
        terminated_fn=adapter.termination,
    )
    if initial_state_fn is None:
        rest = np.zeros(adapter.state_dim) if adapter.rest_state is None else adapter.rest_state
        initial_state_fn = box_initial_states(rest - 1.0, rest + 1.0)
    options.update(kwargs)
    if num_envs is None:
        return WorldModelEnv(model, adapter.reward, initial_state_fn, **options)
    return WorldModelVectorEnv(model, adapter.reward, initial_state_fn, num_envs, **options)
