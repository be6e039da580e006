"""A lyagym world model as a TorchRL environment (optional: ``pip install "lyagym[torchrl]"``).

``WorldModelTorchRLEnv(model, reward_fn)`` exposes any ``WorldModel`` (``step(x, u)``,
``state_dim``, ``action_dim``) plus a reward function as a *stateless*, *batch-unlocked*
TorchRL ``EnvBase``: the state travels in the tensordict (``"observation"``), so the env
steps a tensordict of any batch size, which is what ``torchrl.modules.MPPIPlanner`` and
``CEMPlanner`` need to plan on lyagym models without glue::

    from torchrl.modules import CEMPlanner
    from lyagym.agents.torchrl_env import WorldModelTorchRLEnv
    from lyagym.agents.world_model_env import pendulum_reward_fn

    env = WorldModelTorchRLEnv(model, pendulum_reward_fn("swingup"), action_low=-5.0, action_high=5.0)
    planner = CEMPlanner(env, planning_horizon=20, optim_steps=3, num_candidates=200, top_k=20)
    td = env.reset(env.make_state(x0))          # x0: (batch, state_dim) or (state_dim,)
    action = planner(td)["action"]

torchrl is imported only when this module is (``lyagym.agents`` does not import it).
"""

from __future__ import annotations

from typing import Callable

import torch

try:
    from tensordict import TensorDict, TensorDictBase
    from torchrl.data import Bounded, Composite, Unbounded
    from torchrl.envs import EnvBase
except ImportError as e:  # pragma: no cover - exercised only without torchrl
    raise ImportError(f"lyagym.agents.torchrl_env needs torchrl: pip install \"lyagym[torchrl]\" ({e})") from e

__all__ = ["WorldModelTorchRLEnv"]

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class WorldModelTorchRLEnv(EnvBase):
    """``model`` and ``reward_fn`` as a stateless, batch-unlocked TorchRL env.

    Args:
        model: a ``WorldModel``: ``step(x, u) -> x_next`` on ``(batch, state_dim)`` states and
            ``(batch, action_dim)`` actions (``action_dim >= 1``).
        reward_fn: ``reward_fn(x, u, x_next) -> (batch,)`` (lyagym's ``RewardFn``, e.g.
            ``pendulum_reward_fn("swingup")``).
        action_low, action_high: action bounds (floats or ``(action_dim,)``); both or neither.
            Planners' samples are projected into them (``action_spec.project``).
        initial_state: ``(batch_shape, generator) -> (*batch_shape, state_dim)`` for a
            ``reset()`` without a state; default zeros.
        device: torch device of the tensors (default: the model's parameters' device).

    Keys: ``"observation"`` (the state, ``(*batch, state_dim)``), ``"action"``, and after a
    step ``("next", "observation")``, ``("next", "reward")`` (``(*batch, 1)``),
    ``("next", "done")`` / ``("next", "terminated")`` (always false: a world model never ends
    an episode by itself). Gradients are not tracked (planning by sampling).
    """

    def __init__(self, model, reward_fn: RewardFn, *, action_low=None, action_high=None,
                 initial_state: Callable | None = None, device: str | torch.device | None = None) -> None:
        for name in ("step", "state_dim", "action_dim"):
            if not hasattr(model, name):
                raise TypeError(f"model must be a WorldModel with {name!r} (step(x, u), state_dim, action_dim)")
        if int(model.action_dim) < 1:
            raise ValueError(f"model.action_dim must be >= 1 for a controlled env, got {model.action_dim}")
        if not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable (x, u, x_next) -> (batch,), got {type(reward_fn).__name__}")
        if (action_low is None) != (action_high is None):
            raise ValueError("action_low and action_high must be given together (or neither)")
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        if device is None:
            device = params[0].device if params else torch.device("cpu")
        dtype = params[0].dtype if params else torch.get_default_dtype()
        super().__init__(device=device, batch_size=torch.Size([]))
        self._batch_locked = False
        self.model, self.reward_fn, self.initial_state = model, reward_fn, initial_state
        self.state_dim, self.action_dim, self.dtype_ = int(model.state_dim), int(model.action_dim), dtype
        self.observation_spec = Composite(observation=Unbounded(shape=(self.state_dim,), device=device, dtype=dtype), shape=())
        if action_low is None:
            self.action_spec = Unbounded(shape=(self.action_dim,), device=device, dtype=dtype)
        else:
            low = torch.as_tensor(action_low, dtype=dtype, device=device).expand(self.action_dim).clone()
            high = torch.as_tensor(action_high, dtype=dtype, device=device).expand(self.action_dim).clone()
            if not bool((low < high).all()):
                raise ValueError(f"action_low must be < action_high elementwise, got {low.tolist()} and {high.tolist()}")
            self.action_spec = Bounded(low=low, high=high, shape=(self.action_dim,), device=device, dtype=dtype)
        self.reward_spec = Unbounded(shape=(1,), device=device, dtype=dtype)
        self._generator = torch.Generator(device=device)

    def make_state(self, x) -> TensorDict:
        """A tensordict holding states ``x`` (``(state_dim,)`` or ``(*batch, state_dim)``), for ``reset``."""
        x = torch.as_tensor(x, device=self.device, dtype=self.dtype_)
        if x.shape[-1:] != (self.state_dim,):
            raise ValueError(f"states must end in state_dim={self.state_dim}, got shape {tuple(x.shape)}")
        return TensorDict({"observation": x}, batch_size=x.shape[:-1], device=self.device)

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        batch = self.batch_size if tensordict is None else tensordict.batch_size
        if tensordict is not None and "observation" in tensordict.keys():
            x = tensordict.get("observation")  # stateless: reset to the given state
        elif self.initial_state is not None:
            x = torch.as_tensor(self.initial_state(tuple(batch), self._generator), device=self.device, dtype=self.dtype_)
        else:
            x = torch.zeros(*batch, self.state_dim, device=self.device, dtype=self.dtype_)
        done = torch.zeros(*batch, 1, dtype=torch.bool, device=self.device)
        return TensorDict({"observation": x, "done": done, "terminated": done.clone()}, batch_size=batch, device=self.device)

    @torch.no_grad()
    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        x, u = tensordict.get("observation"), tensordict.get("action")
        batch = x.shape[:-1]
        x2, u2 = x.reshape(-1, self.state_dim), u.reshape(-1, self.action_dim).to(x.dtype)
        nxt = self.model.step(x2, u2)
        reward = torch.as_tensor(self.reward_fn(x2, u2, nxt), device=self.device).reshape(*batch, 1).to(self.dtype_)
        done = torch.zeros(*batch, 1, dtype=torch.bool, device=self.device)
        return TensorDict({"observation": nxt.reshape(*batch, self.state_dim), "reward": reward, "done": done,
                           "terminated": done.clone()}, batch_size=tensordict.batch_size, device=self.device)

    def _set_seed(self, seed: int | None):
        if seed is not None:
            self._generator.manual_seed(int(seed))
            torch.manual_seed(int(seed))  # the planners sample with the global generator
        return seed
