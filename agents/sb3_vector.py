"""Stable-Baselines3 on a batched Gymnasium vector env: many envs stepped in torch at once.

``SB3VectorEnv`` presents one Gymnasium ``VectorEnv`` (the torch-batched pendulum from
``gym.make_vec("lyagym/NLinkPendulum-v0", num_envs=N, vectorization_mode="vector_entry_point")``,
a ``WorldModelVectorEnv``, ...) as an SB3 ``VecEnv``, so PPO/A2C/SAC collect experience from
thousands of envs with one batched step instead of ``DummyVecEnv``'s Python loop::

    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor
    from lyagym.agents.sb3_vector import make_sb3_vec_env

    # VecMonitor: episode returns in SB3's log (ep_rew_mean), as Monitor does for DummyVecEnv
    venv = VecMonitor(make_sb3_vec_env("lyagym/NLinkPendulum-v0", num_envs=1024, n_links=1))
    PPO("MlpPolicy", venv, n_steps=64, batch_size=4096).learn(100_000)

It follows the ``DummyVecEnv`` conventions (see ``tests/test_sb3_vector.py``):

- ``reset()`` returns ``(num_envs, obs_dim)`` observations; ``step`` returns observations,
  ``float32`` rewards, ``bool`` dones and one info dict per env;
- auto-reset in the same step: a finished env's info holds ``terminal_observation`` (its
  last observation) and the returned observation is its new first one; every info holds
  ``TimeLimit.truncated`` (true when the episode ended by the time limit only), so
  SAC/PPO bootstrap through truncations;
- per-env info entries of the batched env (a key ``k`` with its mask ``_k``, Gymnasium's
  vector convention) are split into the per-env dicts;
- ``seed(s)`` then ``reset()``: the batch is seeded once with ``s``, so env 0 starts where
  ``DummyVecEnv``'s env 0 (seed ``s``) starts and the same seed gives the same batch; the
  other envs get other draws from that one generator (``DummyVecEnv`` seeds env ``i`` with
  ``s + i``, so they differ from it), and auto-reset starts come from the batch's torch
  generator (reproducible, but not the single env's sequence);
- ``set_options``: options equal for all envs are passed through; per-env
  ``{"state": x}`` options are stacked into one ``(num_envs, state_dim)`` batch;
- the sub-envs are rows of one batched env: ``get_attr`` reads the batched env's attribute
  (one value repeated per index), ``set_attr`` sets it for all envs (a subset of indices
  raises ``ValueError``), ``env_method`` calls the batched method once and splits a result
  with one entry per env.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv

__all__ = ["SB3VectorEnv", "make_sb3_vec_env"]


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (return_torch=True envs)
        x = x.detach().cpu().numpy()
    return np.array(x, copy=True)


class SB3VectorEnv(VecEnv):
    """A Gymnasium ``VectorEnv`` with same-step autoreset as a Stable-Baselines3 ``VecEnv``.

    Args:
        vector_env: a Gymnasium vector env whose ``metadata["autoreset_mode"]`` can be set to
            ``AutoresetMode.SAME_STEP`` and which then reports ``final_obs`` / ``_final_obs``
            in the step info (``NLinkPendulumVectorEnv``, ``WorldModelVectorEnv``,
            ``SyncVectorEnv(..., autoreset_mode=SAME_STEP)``). Its autoreset mode is switched
            to same-step and, where it has ``return_torch``, its output to numpy.
    """

    def __init__(self, vector_env: gym.vector.VectorEnv) -> None:
        if not isinstance(vector_env, gym.vector.VectorEnv):
            raise TypeError(f"vector_env must be a gymnasium.vector.VectorEnv, got {type(vector_env).__name__}")
        base = vector_env.unwrapped
        if hasattr(base, "autoreset_mode"):
            base.autoreset_mode = AutoresetMode.SAME_STEP
        base.metadata = {**base.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        if vector_env is not base:
            vector_env.metadata = {**vector_env.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        if hasattr(base, "return_torch"):
            base.return_torch = False
        self.venv = vector_env
        super().__init__(vector_env.num_envs, vector_env.single_observation_space, vector_env.single_action_space)
        self.render_mode = getattr(vector_env, "render_mode", None)
        self._actions: np.ndarray | None = None
        self._seed: int | None = None

    # ------------------------------------------------------------------ reset / step
    def seed(self, seed: int | None = None):
        """Seed the next ``reset`` (the whole batch from one seed; see the module docstring)."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self._seed = None if seed is None else int(seed)
        return [self._seed] * self.num_envs

    def reset(self):
        obs, info = self.venv.reset(seed=self._seed, options=self._batched_options())
        self._seed = None
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = self._split_info(info)
        return _numpy(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async(actions)")
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        terminated, truncated = _numpy(terminated).astype(bool), _numpy(truncated).astype(bool)
        dones = terminated | truncated
        infos = self._split_info(info)
        for i in range(self.num_envs):
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        if dones.any():
            if "final_obs" not in info:
                raise RuntimeError(
                    f"{type(self.venv).__name__} ended episodes without info['final_obs']; SB3VectorEnv needs an "
                    "env that honours metadata['autoreset_mode'] = AutoresetMode.SAME_STEP"
                )
            final = info["final_obs"]
            for i in np.flatnonzero(dones):
                infos[i]["terminal_observation"] = _numpy(final[i])
        return _numpy(obs), _numpy(reward).astype(np.float32), dones, infos

    def _split_info(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """Gymnasium's batched info (``k`` with mask ``_k``) as one dict per env."""
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, value in info.items():
            if key.startswith("_") or key in ("final_obs", "final_info") or f"_{key}" not in info:
                continue
            mask = _numpy(info[f"_{key}"]).astype(bool)
            for i in np.flatnonzero(mask):
                infos[i][key] = value[i]
        return infos

    def _batched_options(self) -> dict[str, Any] | None:
        per_env = list(self._options)
        if not any(per_env):
            return None
        first = per_env[0]
        if all(_same(first, o) for o in per_env[1:]):
            return dict(first)
        if all(set(o) == {"state"} for o in per_env):
            return {"state": np.stack([np.asarray(o["state"], dtype=np.float64) for o in per_env])}
        raise ValueError(
            "set_options: one batched env takes one options dict for all envs; per-env options must be equal "
            f"or each hold only 'state', got {per_env!r}"
        )

    def close(self) -> None:
        self.venv.close()

    def get_images(self):
        frames = self.venv.render()
        if frames is None:
            return [None] * self.num_envs
        return list(frames)

    # ------------------------------------------------------------------ per-env API
    def _indices(self, indices) -> list[int]:
        out = []
        for i in self._get_indices(indices):
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or not -self.num_envs <= i < self.num_envs:
                raise IndexError(f"indices must be env indices in [0, {self.num_envs}), got {i!r}")
            out.append(int(i) % self.num_envs)
        return out

    def get_attr(self, attr_name: str, indices=None):
        idx = self._indices(indices)
        value = getattr(self.venv, attr_name)  # AttributeError, as DummyVecEnv raises
        return [value] * len(idx)

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        idx = self._indices(indices)
        if sorted(set(idx)) != list(range(self.num_envs)):
            raise ValueError(
                f"set_attr({attr_name!r}, indices={indices!r}): the {self.num_envs} envs are rows of one batched env, "
                "so an attribute can only be set for all of them (indices=None)"
            )
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs):
        idx = self._indices(indices)
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        split = hasattr(result, "__len__") and not isinstance(result, (str, bytes, dict)) and len(result) == self.num_envs
        return [result[i] if split else result for i in idx]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [isinstance(self.venv, wrapper_class)] * len(self._indices(indices))


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        try:
            if not np.array_equal(np.asarray(a[k]), np.asarray(b[k])):
                return False
        except Exception:
            if a[k] != b[k]:
                return False
    return True


def make_sb3_vec_env(env_id: str = "lyagym/NLinkPendulum-v0", num_envs: int = 16, **kwargs: Any) -> SB3VectorEnv:
    """``SB3VectorEnv(gym.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point", **kwargs))``.

    ``kwargs`` go to the env (``n_links``, ``device``, ``max_episode_steps``, ...)."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    if env_id.startswith("lyagym/"):
        import lyagym.envs  # noqa: F401  (registers the ids)
    return SB3VectorEnv(gym.make_vec(env_id, num_envs=int(num_envs), vectorization_mode="vector_entry_point", **kwargs))
