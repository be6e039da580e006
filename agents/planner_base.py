"""What every MPC planner shares: validation, batched rollout costs, warm start, seeding.

A planner optimises an action sequence ``a_{0:H}`` for each of ``B`` states at once,

    minimise_a  J(x_0, a) = cost(x_{0:H}, a_{0:H-1}) + terminal_cost(x_H),
    x_{k+1} = model.step(x_k, a_k),  action_low <= a_k <= action_high,

and returns the first action (receding horizon). ``K`` candidate sequences per state are
rolled out together as one ``(B * K, state_dim)`` batch through ``model.rollout``, so the
only Python loop is the model's loop over the horizon.

Sampling uses *common random numbers*: the ``(K, H, action_dim)`` noise of one iteration is
shared by all ``B`` states (each state adds it to its own mean). Each state's optimisation
is therefore exactly the one a single-state planner with the same seed would run, and
planning ``B`` states in one call gives the same actions as ``B`` separate calls.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from lyagym.learned_models import WorldModel

__all__ = ["Planner", "CostFn", "TerminalCostFn"]

#: ``cost(states: (N, H + 1, state_dim), actions: (N, H, action_dim)) -> (N,)``
CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``terminal_cost(final_states: (N, state_dim)) -> (N,)``
TerminalCostFn = Callable[[torch.Tensor], torch.Tensor]


def _as_bound(value, action_dim: int, name: str, device, dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu", dtype)
    else:
        t = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype)
    if t.ndim == 0:
        t = t.expand(action_dim)
    if t.shape != (action_dim,):
        raise ValueError(f"{name} must be a scalar or have shape (action_dim={action_dim},), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t.to(device).clone()


def _version(t: torch.Tensor) -> int | None:
    """``t``'s in-place version counter (``None`` for an inference tensor, which has none)."""
    try:
        return t._version
    except RuntimeError:
        return None


class Planner:
    """Base class of the sampling and gradient planners. Subclasses implement ``_optimise``.

    Args:
        model: a ``WorldModel`` with ``action_dim >= 1`` (true physics or a learned model).
        cost: batched running cost ``(states (N, H+1, n), actions (N, H, m)) -> (N,)``,
            on the model's device and dtype (see ``lyagym.agents.costs``).
        horizon: ``H``, number of planned steps.
        num_samples: ``K``, candidate sequences per state and iteration.
        iterations: optimisation iterations per ``plan`` call.
        action_low, action_high: scalar or ``(action_dim,)`` bounds; every planned action
            lies inside them.
        noise_std: initial sampling standard deviation (scalar or ``(action_dim,)``);
            default a quarter of the action range.
        terminal_cost: optional ``(N, n) -> (N,)`` cost of the last state, e.g.
            ``LyapunovTerminalCost(model)`` (a certified ``V``).
        num_particles: ``P``, rollouts of every candidate (PETS' trajectory sampling): the
            ``P`` particles of a (state, candidate) pair are consecutive rows of the batch, so
            an ensemble in TS-infinity mode (row ``i`` on member ``i % E``) gives a candidate's
            particles to ``P`` different members when ``P`` is a multiple of ``E``; the
            planner minimises the particles' mean cost. 1 (default) for a deterministic model.
        seed: seeds the planner's own ``torch.Generator`` on the model's device.
    """

    name = "base"

    def __init__(
        self,
        model: WorldModel,
        cost: CostFn,
        *,
        horizon: int = 30,
        num_samples: int = 1000,
        iterations: int = 1,
        action_low: float | Sequence[float] = -1.0,
        action_high: float | Sequence[float] = 1.0,
        noise_std: float | Sequence[float] | None = None,
        terminal_cost: TerminalCostFn | None = None,
        num_particles: int = 1,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, WorldModel):
            raise TypeError(
                f"model must be a WorldModel (state_dim, action_dim, dt, device, dtype, step, rollout); got {type(model).__name__}"
            )
        if int(model.action_dim) < 1:
            raise ValueError(f"model has action_dim={model.action_dim}: there is nothing to plan for an autonomous model")
        for name, value, lo in (("horizon", horizon, 1), ("num_samples", num_samples, 1), ("iterations", iterations, 1),
                                ("num_particles", num_particles, 1)):
            if not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
        if not callable(cost):
            raise TypeError(f"cost must be callable (states, actions) -> (N,), got {type(cost).__name__}")
        self.model = model
        self.cost = cost
        self.terminal_cost = terminal_cost
        self.horizon = int(horizon)
        self.num_samples = int(num_samples)
        self.iterations = int(iterations)
        self.num_particles = int(num_particles)
        self.state_dim = int(model.state_dim)
        self.action_dim = int(model.action_dim)
        self.device = torch.device(model.device)
        self.dtype = model.dtype
        self.action_low = _as_bound(action_low, self.action_dim, "action_low", self.device, self.dtype)
        self.action_high = _as_bound(action_high, self.action_dim, "action_high", self.device, self.dtype)
        if not (self.action_low < self.action_high).all():
            raise ValueError(f"action_low must be < action_high elementwise, got {self.action_low.tolist()} and {self.action_high.tolist()}")
        default_std = (self.action_high - self.action_low) / 4
        self.noise_std = default_std if noise_std is None else _as_bound(noise_std, self.action_dim, "noise_std", self.device, self.dtype)
        if not (self.noise_std > 0).all():
            raise ValueError(f"noise_std must be > 0, got {self.noise_std.tolist()}")
        self._init_action = (self.action_low + self.action_high) / 2
        self._check_cost_functions()
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self._mean: torch.Tensor | None = None  # (B, H, m) warm start
        self.solution: torch.Tensor | None = None  # (B, H, m) last optimised sequence
        self._solution_cost: torch.Tensor | None = None
        self._solution_x0: torch.Tensor | None = None

    # ------------------------------------------------------------------ validation
    def _check_cost_functions(self) -> None:
        """Call the costs once on a tiny batch on the model's device: catch shape/device mismatches early."""
        n, m, h = self.state_dim, self.action_dim, self.horizon
        for attr, expected in (("state_dim", n), ("action_dim", m)):
            for which, fn in (("cost", self.cost), ("terminal_cost", self.terminal_cost)):
                declared = getattr(fn, attr, None)
                if declared is not None and int(declared) != expected:
                    raise ValueError(f"{which} is for {attr}={declared} but the model has {attr}={expected}")
        states = torch.zeros(2, h + 1, n, device=self.device, dtype=self.dtype)
        actions = torch.zeros(2, h, m, device=self.device, dtype=self.dtype)
        with torch.no_grad():
            for which, fn, args in (("cost", self.cost, (states, actions)), ("terminal_cost", self.terminal_cost, (states[:, -1],))):
                if fn is None:
                    continue
                try:
                    out = fn(*args)
                except RuntimeError as e:  # typically tensors on different devices or shape errors
                    raise ValueError(
                        f"{which} failed on a batch of shape {tuple(args[0].shape)} on the model's device "
                        f"{self.device} / {self.dtype}: {e}"
                    ) from e
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
                    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(f"{which} must return a tensor of shape (N,) = (2,) for N=2 inputs, got {shape}")
                if out.device != self.device:
                    raise ValueError(f"{which} returned a tensor on device {out.device}, but the model is on device {self.device}")

    def _as_states(self, state) -> tuple[torch.Tensor, bool]:
        """Accept ``(n,)`` or ``(B, n)`` arrays/tensors; return ``(B, n)`` on the model's device."""
        on_host = not (isinstance(state, torch.Tensor) and state.device.type != "cpu")
        if state.is_complex() if isinstance(state, torch.Tensor) else np.iscomplexobj(state):
            raise TypeError("state must be real, got a complex value")  # .to(dtype) would drop the imaginary part
        x = torch.as_tensor(state)
        single = x.ndim == 1
        if single:
            x = x.unsqueeze(0)
        if x.ndim != 2 or x.shape[1] != self.state_dim:
            raise ValueError(f"state must have shape (state_dim={self.state_dim},) or (batch, {self.state_dim}), got {tuple(x.shape)}")
        if on_host and not torch.isfinite(x).all():  # free on the host; skipped for GPU tensors (no sync)
            raise ValueError("state contains NaN or inf")
        return x.to(device=self.device, dtype=self.dtype), single

    # ------------------------------------------------------------------ core
    def reset(self, mask: torch.Tensor | np.ndarray | None = None, *, seed: int | None = None) -> None:
        """Forget the warm start (all states, or those where ``mask`` is true, e.g. envs that reset)."""
        if seed is not None:
            self.seed = int(seed)
            self.generator.manual_seed(self.seed)
        if mask is None or self._mean is None:
            self._mean = None
            return
        mask = torch.as_tensor(mask, device=self.device, dtype=torch.bool)
        self._mean = torch.where(mask[:, None, None], self._init_action, self._mean)

    def initial_mean(self, batch: int) -> torch.Tensor:
        """The warm start ``(batch, H, m)``: the previous solution shifted by one step."""
        if self._mean is None or self._mean.shape[0] != batch:
            return self._init_action.expand(batch, self.horizon, self.action_dim).clone()
        return self._mean

    def shift(self, sequence: torch.Tensor) -> torch.Tensor:
        """Drop the first action and append the initial action: ``(B, H, m) -> (B, H, m)``."""
        tail = self._init_action.expand(sequence.shape[0], 1, self.action_dim)
        return torch.cat([sequence[:, 1:], tail], dim=1)

    def sample_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal noise from the planner's generator, on the model's device."""
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def clamp(self, actions: torch.Tensor) -> torch.Tensor:
        bounds = None if actions.requires_grad else self._uniform_bounds
        if bounds is not None:  # one bound for every entry: a scalar clamp, 20x faster than broadcasting (m,) bounds
            return actions.clamp(*bounds)
        return torch.maximum(torch.minimum(actions, self.action_high), self.action_low)

    @property
    def _uniform_bounds(self) -> tuple[float, float] | None:
        """``(low, high)`` as floats where every action entry has the same bounds, else ``None``
        (read from the bound tensors, so a planner whose bounds are changed stays right)."""
        low, high = self.action_low, self.action_high
        key = (low.data_ptr(), high.data_ptr(), _version(low), _version(high))
        if getattr(self, "_bounds_key", None) != key:
            uniform = low.numel() > 0 and bool((low == low.flatten()[0]).all()) and bool((high == high.flatten()[0]).all())
            self._bounds_key = key
            self._bounds = (float(low.flatten()[0]), float(high.flatten()[0])) if uniform else None
        return self._bounds

    def sequence_cost(self, x0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Cost of ``K`` sequences for each of ``B`` states.

        Args:
            x0: ``(B, n)`` initial states.
            actions: ``(B, K, H, m)`` action sequences.

        Returns:
            ``(B, K)`` total cost (running + terminal).
        """
        b, k, h, m = actions.shape
        p = self.num_particles
        x = x0.unsqueeze(1).expand(b, k * p, self.state_dim).reshape(b * k * p, self.state_dim)
        flat = actions.unsqueeze(2).expand(b, k, p, h, m).reshape(b * k * p, h, m)
        states = self.model.rollout(x, flat)
        total = self.cost(states, flat)
        if self.terminal_cost is not None:
            total = total + self.terminal_cost(states[:, -1])
        return total.view(b, k, p).mean(-1) if p > 1 else total.view(b, k)

    def _optimise(self, x0: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(sequence (B, H, m), cost (B,) or None)`` from the warm start ``mean (B, H, m)``
        (``None``: the cost was not computed on the way; ``solution_cost`` computes it if asked)."""
        raise NotImplementedError

    def _check_finite_plan(self, x0: torch.Tensor, sequence: torch.Tensor, cost: torch.Tensor | None) -> None:
        """Refuse a plan with NaN actions or a non-finite cost: from finite states that means the
        model's rollout or the cost overflowed. One check per plan, on host models only (an
        accelerator would pay a device sync), as the state check."""
        if self.device.type != "cpu":
            return
        bad = ~torch.isfinite(sequence.detach()).flatten(1).all(1)
        if cost is not None:
            bad |= ~torch.isfinite(cost.detach())
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten().tolist()
            largest = float(x0[bad].abs().max()) if x0.numel() else 0.0
            raise ValueError(
                f"state: planning from state(s) {rows} (largest |x| = {largest:.3g}) gave non-finite actions or costs: "
                f"the model's predictions or the cost overflowed {str(self.dtype).replace('torch.', '')}; plan from "
                "states inside the range the model was built or trained for"
            )

    @property
    def solution_cost(self) -> torch.Tensor | None:
        """``(B,)`` predicted cost of the last ``solution`` (one extra rollout the first time it is read)."""
        if self._solution_cost is None and self.solution is not None:
            with torch.no_grad():
                self._solution_cost = self.sequence_cost(self._solution_x0, self.solution.unsqueeze(1))[:, 0]
        return self._solution_cost

    def plan_sequence(self, state) -> torch.Tensor:
        """Optimise and return the whole ``(B, H, m)`` sequence (``(H, m)`` for a single state)."""
        x0, single = self._as_states(state)
        mean = self.initial_mean(x0.shape[0])
        sequence, cost = self._optimise(x0, mean)
        self._check_finite_plan(x0, sequence, cost)
        sequence = self.clamp(sequence.detach())
        self.solution, self._solution_x0 = sequence, x0
        self._solution_cost = None if cost is None else cost.detach()
        self._mean = self.shift(sequence)
        return sequence[0] if single else sequence

    def plan(self, state) -> torch.Tensor:
        """The first planned action: ``(B, n) -> (B, m)`` or ``(n,) -> (m,)``, on the model's device."""
        sequence = self.plan_sequence(state)
        return sequence[..., 0, :]

    __call__ = plan

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        """Stable-Baselines3-style ``predict``: numpy in, ``(numpy action, None)`` out."""
        if episode_start is not None and np.any(episode_start):
            self.reset(np.asarray(episode_start, dtype=bool) if np.ndim(observation) == 2 else None)
        return self.plan(observation).detach().cpu().numpy(), None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, horizon={self.horizon}, "
            f"num_samples={self.num_samples}, iterations={self.iterations}, seed={self.seed})"
        )
