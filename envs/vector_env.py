"""``NLinkPendulumVectorEnv``: many n-link pendulums stepped as one torch batch.

The ``vector_entry_point`` of ``lyagym/NLinkPendulum-v0``::

    envs = gym.make_vec("lyagym/NLinkPendulum-v0", num_envs=4096,
                        vectorization_mode="vector_entry_point", device="cuda")

Every sub-environment is the same :class:`~lyagym.envs.NLinkPendulumEnv` (same arguments,
same reward, same starting-state box); the whole batch is one ``(num_envs, 2 * n_links)``
tensor advanced by ``PendulumDynamics``' torch path, with no Python loop over envs.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from . import rewards
from .dynamics import PendulumDynamics
from .n_link_pendulum import NLinkPendulumEnv, check_start_state
from .vector_utils import autoreset_mode as _autoreset_mode
from .vector_utils import reject_scalar_actions, reset_mask

__all__ = ["NLinkPendulumVectorEnv"]


_THREADS_WARNED = False


def _warn_if_threads_oversubscribe() -> None:
    """Warn once per process when torch runs several CPU threads on a machine already busy."""
    global _THREADS_WARNED
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    if _THREADS_WARNED or threads <= 1 or not hasattr(os, "getloadavg"):
        return
    load = os.getloadavg()[0]
    if load >= cores:
        _THREADS_WARNED = True
        warnings.warn(
            f"NLinkPendulumVectorEnv: torch uses {threads} CPU threads on a busy machine (load {load:.1f} on {cores} "
            "cores); batched steps can run 10-100x slower while threads wait on each other. Call "
            "torch.set_num_threads(1) (lyagym's CLI default) unless the machine is idle.",
            RuntimeWarning,
            stacklevel=3,
        )


def _batch_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x: (B, 2n)`` as a view of a ``(2n, B)`` buffer, the layout ``PendulumDynamics.step``
    returns: every step then sees the same strides, so a ``compile=True`` transition is
    compiled once (a row-major state from ``reset`` or a masked ``torch.where`` would trigger
    a second compilation) and the eager path makes no layout copy."""
    return x if x.stride(0) == 1 or x.shape[0] == 1 else x.t().contiguous().t()


class NLinkPendulumVectorEnv(VectorEnv):
    """``num_envs`` independent n-link pendulums in one torch batch, on any device.

    ## Description

    The batched twin of :class:`lyagym.envs.NLinkPendulumEnv`: the same physics, spaces,
    reward, action clipping and starting states, for ``num_envs`` environments at once.
    The state is one ``(num_envs, 2 * n_links)`` tensor on ``device`` in ``dtype``, and a
    step is a handful of batched tensor operations under ``torch.no_grad()``.

    ## Spaces

    ``single_action_space`` / ``single_observation_space`` are the single env's;
    ``action_space`` / ``observation_space`` are those batched to ``(num_envs, ...)``.

    ## Returns

    ``step`` and ``reset`` return numpy arrays by default (zero-copy views on CPU; one
    device-to-host copy per step on CUDA), or torch tensors on ``device`` with
    ``return_torch=True`` (no host copy at all). Actions may be numpy arrays or tensors of
    shape ``(num_envs, action_dim)``; out-of-range actions are clipped to the torque
    limits, NaN/inf actions raise ``ValueError`` (when ``validate_actions``; on CUDA that
    check costs one device sync per step, so hot GPU loops may turn it off).

    ## Episode End and autoreset

    Sub-environments never terminate; each is truncated after ``max_episode_steps`` of its
    own steps (500 by default under ``gym.make_vec``; ``None`` never truncates).
    ``metadata["autoreset_mode"]`` is ``AutoresetMode.NEXT_STEP`` by default, as in
    Gymnasium's own vector envs: the step *after* a truncation resets that sub-env, ignores
    its action and returns its new first observation with reward 0. With
    ``AutoresetMode.SAME_STEP`` (or ``"SameStep"``) the truncating step already returns the
    new first observation; as in ``SyncVectorEnv``, that step's info holds ``final_obs``
    (here one ``(num_envs, obs_dim)`` array rather than an object array, valid where the
    mask ``_final_obs`` is true), ``final_info`` (the ended envs' step infos: ``{}``) and
    ``_final_info``. With ``AutoresetMode.DISABLED`` nothing resets by itself: reset the
    ended envs with ``reset(options={"reset_mask": terminated | truncated})`` before the next
    ``step``, which otherwise raises ``gymnasium.error.ResetNeeded``.
    Autoreset starting states are drawn on ``device`` from a torch generator seeded by
    ``reset(seed=...)``.

    ## Performance

    On CPU the physics of a step is one call of the compiled O(n) sweep over the whole batch
    (:mod:`lyagym.envs.native`, single-threaded; vectorised torch where that is faster, and
    wherever no C compiler is found), plus a few dozen batched kernels for actions, reward
    and observation; throughput grows with the batch until memory bandwidth rules
    (``examples/benchmarks/bench_envs.py``, ``bench_mujoco.py``). ``compile=True`` traces the
    transition once: up to ``EXPANDED_MAX_LINKS`` links the physics is traced and fused with
    the rest; beyond, the compiled sweep runs between two small fused graphs, so the cold
    compile does not grow with n (n = 8: 17 CPU-s with the compiler's workers, imports
    included). Threads: a CPU env made while torch runs several threads on a busy
    machine (1-minute load average at or above the core count) warns once: there OpenMP
    threads wait on each other and batched steps lost 10-100x; ``torch.set_num_threads(1)``
    (the ``lyagym`` CLI's default) avoids it.

    ## Seeding

    ``reset(seed=s)`` draws the first states with ``numpy.random.default_rng``-style
    ``self.np_random`` exactly as the single env does, so sub-env 0 starts where
    ``NLinkPendulumEnv.reset(seed=s)`` starts; the same seed gives the same batch of episodes.
    ``reset(options={"state": x0})`` takes a ``(2 * n_links,)`` state for every env or a
    ``(num_envs, 2 * n_links)`` batch (real, every ``|x_i| <= STATE_LIMIT``, as the single
    env); ``options={"reset_mask": mask}`` (``(num_envs,)`` bool numpy array or tensor)
    resets only some envs (an all-false mask is a no-op).

    ## Arguments

    ``num_envs`` plus every argument of :class:`NLinkPendulumEnv`, and:

    - ``device`` (``"cpu"``): torch device of the state and of returned tensors.
    - ``dtype`` (``torch.float32``): dtype of the state; use ``torch.float64`` to match the
      single env to round-off.
    - ``return_torch`` (``False``): return torch tensors instead of numpy arrays.
    - ``autoreset_mode`` (``AutoresetMode.NEXT_STEP``): an ``AutoresetMode`` member or its
      value (``"NextStep"``, ``"SameStep"``, ``"Disabled"``); ``"next_step"`` etc. also work.
    - ``validate_actions`` (``True``): reject NaN/inf actions.
    - ``compile`` (``False``): ``torch.compile`` the batched transition (physics + reward)
      for throughput; the first step pays a one-time compilation (seconds to tens of
      seconds on CPU, which needs a C++ compiler), once per shape. Results match the eager
      path to round-off.
    - ``render_mode`` (``None`` or ``"rgb_array"``): ``render()`` returns a tuple of
      ``num_envs`` frames, one per sub-env, as ``SyncVectorEnv`` and ``CartPoleVectorEnv`` do
      (drawn on the CPU one by one: meant for a few envs, e.g. under
      ``gymnasium.wrappers.vector.RecordVideo``).

    ## Pickling

    The env pickles (for ``AsyncVectorEnv`` under ``spawn``, ``copy.deepcopy``, ...): state,
    step counters and the autoreset generator travel; the physics is rebuilt on load from
    the derivation cache and a ``compile=True`` transition is compiled again.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 100, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        max_episode_steps: int | None = 500,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        return_torch: bool = False,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        validate_actions: bool = True,
        compile: bool = False,
        render_mode: str | None = None,
        **env_kwargs: Any,
    ):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        mode = _autoreset_mode(autoreset_mode)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array' for the vector env, got {render_mode!r}")
        # The single env validates every physics/task argument once and gives us the spaces,
        # the starting-state box and the reward weights; it also renders sub-env 0.
        self._template = NLinkPendulumEnv(
            max_episode_steps=max_episode_steps,
            render_mode=None if render_mode is None else "rgb_array",
            **env_kwargs,
        )
        t = self._template
        self.num_envs = int(num_envs)
        self.max_episode_steps = t.max_episode_steps
        self.n_links, self.state_dim, self.action_dim = t.n_links, t.state_dim, t.action_dim
        self.dt, self.substeps, self.integrator = t.dt, t.substeps, t.integrator
        self.task, self.observation_mode, self.max_velocity = t.task, t.observation_mode, t.max_velocity
        self.render_mode = render_mode
        self.return_torch = bool(return_torch)
        self.validate_actions = bool(validate_actions)
        self.device = torch.device("cpu" if device is None else device)
        self.dtype = dtype
        self.metadata = {
            **self.metadata,
            "autoreset_mode": mode,
            "render_fps": t.metadata["render_fps"],
        }

        self.single_action_space = t.action_space
        self.single_observation_space = t.observation_space
        self.action_space = batch_space(t.action_space, self.num_envs)
        self.observation_space = batch_space(t.observation_space, self.num_envs)

        # Its own physics object: `.to()` sets the default device/dtype of the torch path.
        self.dynamics = PendulumDynamics(**t.dynamics.config()).to(self.device, self.dtype)

        as_tensor = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        self._u_high = as_tensor(t.max_torque)
        self._u_low = -self._u_high
        self._init_low = as_tensor(t.init_low)
        self._init_span = as_tensor(t.init_high - t.init_low)
        self._weights = t.weights
        self._generator = torch.Generator(device=self.device)
        if self.device.type == "cpu":
            _warn_if_threads_oversubscribe()
        self._compile = bool(compile)
        if compile:
            self._compile_transition()

        b = self.num_envs
        self._x: torch.Tensor | None = None
        self._elapsed = torch.zeros(b, dtype=torch.int64, device=self.device)
        self._needs_reset = torch.zeros(b, dtype=torch.bool, device=self.device)
        # Host-side bookkeeping that keeps the hot loop free of device syncs: an upper bound
        # on every env's step count (so truncation is only checked when it can happen) and
        # whether some env waits for a next-step autoreset.
        self._max_elapsed = 0
        self._reset_pending = False
        # For render(): the last actions and which envs have none since their reset.
        self._last_u: torch.Tensor | None = None
        self._no_u = torch.ones(b, dtype=torch.bool, device=self.device)
        self._fresh_pending = False

    def _compile_transition(self) -> None:
        # Fuses the physics (or, past EXPANDED_MAX_LINKS, the work around the compiled sweep),
        # reward and clamps into a few kernels; a one-time compilation (C++ compiler on CPU).
        self._transition = torch.compile(self._transition, dynamic=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_transition", None)  # a compiled bound method does not pickle
        gen = state.pop("_generator")
        state["_generator_state"] = (str(gen.device), gen.get_state())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        device, gen_state = state.pop("_generator_state")
        self.__dict__.update(state)
        self._generator = torch.Generator(device=device)
        self._generator.set_state(gen_state)
        if self._compile:
            self._compile_transition()

    # ----------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset all (or ``options["reset_mask"]``) sub-envs; returns ``(obs, info)``."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        first = self._x is None
        super().reset(seed=seed)
        options = {} if options is None else dict(options)
        unknown = set(options) - {"state", "reset_mask"}
        if unknown:
            raise ValueError(f"options accepts only 'state' and 'reset_mask', got unknown keys {sorted(unknown)}")
        mask = None if options.get("reset_mask") is None else reset_mask(options["reset_mask"], self.num_envs, self.device)
        if mask is not None and first:
            raise gym.error.ResetNeeded("reset_mask needs a full reset() first")

        b, d = self.num_envs, self.state_dim
        if options.get("state") is not None:
            # the single env's rule (real, finite, |x_i| <= STATE_LIMIT), checked on the host once per reset
            state = check_start_state(options["state"], ((d,), (b, d)))
            x0 = torch.as_tensor(state).to(device=self.device, dtype=self.dtype).expand(b, d).clone()
        else:
            # One numpy draw of shape (num_envs, state_dim): row 0 is the single env's draw
            # for the same seed.
            x0 = torch.as_tensor(
                self.np_random.uniform(self._template.init_low, self._template.init_high, size=(b, d))
            ).to(device=self.device, dtype=self.dtype)

        if seed is not None or first:
            # Drawn after the first states so that sub-env 0 matches the single env's draw.
            self._generator.manual_seed(int(self.np_random.integers(2**62)))
        if mask is None:
            self._x = x0
            self._elapsed.zero_()
            self._needs_reset.zero_()
            self._max_elapsed = 0
            self._reset_pending = False
            self._no_u.fill_(True)
        else:
            self._x = torch.where(mask[:, None], x0, self._x)
            self._elapsed.masked_fill_(mask, 0)
            self._needs_reset &= ~mask
            self._no_u |= mask
        self._fresh_pending = True
        return self._out(self._observe(self._x)), {}

    @torch.no_grad()
    def step(self, actions):
        """Step every sub-env; returns batched ``(obs, reward, terminated, truncated, info)``."""
        if self._x is None:
            raise gym.error.ResetNeeded("NLinkPendulumVectorEnv: call reset() before step()")
        mode = self.metadata["autoreset_mode"]
        if self._reset_pending and mode is AutoresetMode.DISABLED:
            if bool(self._needs_reset.any()):  # a sync only after an episode end
                ended = torch.nonzero(self._needs_reset).flatten().tolist()
                raise gym.error.ResetNeeded(
                    f"sub-envs {ended} ended and autoreset_mode is DISABLED: call "
                    "reset(options={'reset_mask': terminated | truncated}) before step()"
                )
            self._reset_pending = False
        u = self._validated_actions(actions)
        x, reward, obs = self._transition(_batch_contiguous(self._x), u)
        # The physics raises on an overflowing CPU step; a state that diverged just short of
        # float64's range still squares to inf in the reward. Free on the host, skipped on
        # accelerators (a device sync per step), as the physics' own check.
        if self.device.type == "cpu" and not bool(torch.isfinite(reward).all()):
            raise ValueError(
                "NLinkPendulumVectorEnv.step: the reward overflowed (the motion diverged); a smaller dt or more "
                "substeps keeps the integrator stable for these parameters"
            )
        self._elapsed += 1
        self._max_elapsed += 1
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        info: dict[str, Any] = {}
        self._last_u = u
        if self._fresh_pending:  # every env has an action now, until the next reset
            self._no_u.fill_(False)
            self._fresh_pending = False

        if self._reset_pending:  # next-step autoreset of the envs that ended last step
            mask = self._needs_reset
            x = torch.where(mask[:, None], self._fresh_states(), x)
            obs = None  # recomputed below for the restarted envs
            self._elapsed.masked_fill_(mask, 0)
            reward = reward.masked_fill(mask, 0.0)
            self._no_u |= mask
            self._fresh_pending = True
            self._needs_reset = torch.zeros_like(mask)
            self._reset_pending = False

        if self.max_episode_steps is not None and self._max_elapsed >= self.max_episode_steps:
            truncated = self._elapsed >= self.max_episode_steps
            # Host syncs once per episode end (never per step): whether any env ended (the
            # bound may be loose after masked resets) and the tightened bound.
            if bool(truncated.any()):
                if mode is AutoresetMode.SAME_STEP:
                    final_obs = self._observe(x) if obs is None else obs
                    info = {
                        "final_obs": self._out(final_obs),
                        "_final_obs": self._out(truncated.clone()),
                        "final_info": {},
                        "_final_info": self._out(truncated.clone()),
                    }
                    x = torch.where(truncated[:, None], self._fresh_states(), x)
                    obs = None
                    self._elapsed.masked_fill_(truncated, 0)
                    self._no_u |= truncated
                    self._fresh_pending = True
                else:  # NEXT_STEP resets them on the next step; DISABLED wants a reset first
                    self._needs_reset = truncated.clone()
                    self._reset_pending = True
            self._max_elapsed = int(self._elapsed.masked_fill(truncated, 0).max())
        else:
            truncated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

        self._x = x
        if obs is None:
            obs = self._observe(x)
        return (
            self._out(obs),
            self._out(reward),
            self._out(terminated),
            self._out(truncated),
            info,
        )

    def render(self):
        """A tuple of ``num_envs`` frames, sub-env ``i``'s as an ``(H, W, 3)`` uint8 image
        (``render_mode="rgb_array"``), each what the single env shows in that state."""
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode='rgb_array'")
            return None
        if self._x is None:
            raise gym.error.ResetNeeded("NLinkPendulumVectorEnv: call reset() before render()")
        t = self._template
        states = self._x.detach().cpu().double().numpy()
        if self._last_u is None:
            torques = [None] * self.num_envs
        else:
            clipped = torch.maximum(torch.minimum(self._last_u, self._u_high), self._u_low)
            no_u = self._no_u.cpu().tolist()
            torques = [None if no else row for no, row in zip(no_u, clipped.detach().cpu().double().numpy().tolist())]
        frames = []
        for state, torque in zip(states, torques):
            t._state, t._last_u = state, torque
            frames.append(t.render())
        t._state = t._last_u = None
        return tuple(frames)

    # ----------------------------------------------------------------- helpers
    @property
    def state(self) -> torch.Tensor | None:
        """The physical states ``(num_envs, 2 * n_links)`` on ``device``, a copy."""
        return None if self._x is None else self._x.clone()

    def _out(self, t: torch.Tensor):
        return t if self.return_torch else t.cpu().numpy()

    def _validated_actions(self, actions) -> torch.Tensor:
        """Actions as a ``(num_envs, action_dim)`` tensor on ``device``; clipping is in ``_transition``."""
        shape = (self.num_envs, self.action_dim)
        reject_scalar_actions(actions, shape)
        if actions.is_complex() if isinstance(actions, torch.Tensor) else np.iscomplexobj(actions):
            raise TypeError(f"actions must be real, got a complex {type(actions).__name__}")
        if isinstance(actions, torch.Tensor):
            u = actions.detach().to(device=self.device, dtype=self.dtype)
            if tuple(u.shape) != shape:
                raise ValueError(f"actions must have shape {shape}, got {tuple(u.shape)}")
            if self.validate_actions and not bool(torch.isfinite(u).all()):
                raise ValueError("actions must be finite (got NaN or inf)")
        else:
            try:
                a = np.asarray(actions, dtype=np.float32 if self.dtype == torch.float32 else np.float64)
            except (TypeError, ValueError):
                raise TypeError(f"actions must be a numeric array of shape {shape}") from None
            if a.shape != shape:
                raise ValueError(f"actions must have shape {shape}, got {a.shape}")
            if self.validate_actions and not np.isfinite(a).all():
                raise ValueError("actions must be finite (got NaN or inf)")
            u = torch.as_tensor(a, device=self.device)
        return u

    def _transition(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of every env, pure tensor code without host syncs (what ``compile`` fuses).

        ``x: (B, 2n)``, ``u: (B, action_dim)`` unclipped -> next ``x``, reward ``(B,)`` of
        ``(x, clipped u)``, observation ``(B, obs_dim)`` of the next ``x``.
        """
        u = torch.maximum(torch.minimum(u, self._u_high), self._u_low)
        if self.task == "free":
            reward = x.new_zeros(x.shape[0])
        else:
            reward = rewards.pendulum_reward(x, u, self.task, **self._weights)
        x = self.dynamics.step(x, u, method=self.integrator, substeps=self.substeps)
        return x, reward, self._observe(x)

    def _fresh_states(self) -> torch.Tensor:
        r = torch.rand(
            (self.num_envs, self.state_dim), generator=self._generator, device=self.device, dtype=self.dtype
        )
        return r.mul_(self._init_span).add_(self._init_low)

    def _observe(self, x: torch.Tensor) -> torch.Tensor:
        n = self.n_links
        q, qdot = x[:, :n], x[:, n:].clamp(-self.max_velocity, self.max_velocity)
        if self.observation_mode == "trig":
            obs = torch.cat([torch.cos(q), torch.sin(q), qdot], dim=1)
        else:
            obs = torch.cat([rewards.wrap_angle(q), qdot], dim=1)
        return obs.to(torch.float32)
