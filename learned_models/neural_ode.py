"""Data-controlled neural ODE (LyaNet paper, eq. 1-3) with early-terminated inference.

::

    eta(0)   = phi(x)                  (input layer, eq. 1; zero by default as in the paper)
    deta/dt  = f_theta(eta, x, t)      (continuum of hidden layers, eq. 2)
    y_hat(t) = psi(eta(t))             (output layer, eq. 3)

Inference integrates eq. 2 with torchdiffeq's ``odeint`` from ``t = 0`` to any
``t in (0, 1]``: stopping before ``t = 1`` is *early termination*; LyaNet-trained models
(``lyagym.learned_models.lyanet``) are built so that the prediction is already good there.

Solvers are picked by name from torchdiffeq's registry: fixed-step (``"euler"``,
``"midpoint"``, ``"rk4"``, ... with ``step_size``) or adaptive (``"dopri5"``, ``"bosh3"``, ...
with ``rtol``/``atol``). With a fixed step the cost of inference is proportional to ``t``.

``fast_fixed_step=True`` swaps torchdiffeq for a plain loop over the same schemes on the same
grid (``"euler"``, ``"midpoint"``, ``"rk4"`` only; results equal to rounding). It exists for
small-batch inference, where torchdiffeq's per-step bookkeeping costs more than the network;
torchdiffeq stays the default so every solver and the adjoint behave as documented there.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS

__all__ = ["NeuralODE", "DataControlledMLP", "FIXED_STEP_METHODS", "ADAPTIVE_METHODS"]

#: torchdiffeq's fixed-grid solvers (take ``step_size``) and adaptive ones (take ``rtol``/``atol``).
FIXED_STEP_METHODS = ("euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
}


class DataControlledMLP(nn.Module):
    """``f_theta(eta, x, t) = MLP([eta, x, t])``, the dynamics of eq. 2.

    Args:
        hidden_dim: ``k``, the dimension of ``eta``.
        input_dim: ``n``, the dimension of the input ``x``.
        width: hidden layer width.
        depth: number of hidden layers (>= 1).
        activation: ``"silu"`` (default), ``"tanh"``, ``"softplus"`` or ``"relu"``; all
            1-Lipschitz, so the MLP is globally Lipschitz as the paper assumes.
        time_dependent: feed ``t`` to the network (eq. 2); ``False`` gives autonomous dynamics.
        zero_init: zero the last layer so the initial dynamics are the constant zero
            function, as appendix B does.
        max_speed: if given, ``f = max_speed * tanh(MLP / max_speed)``, so
            ``|f_i| < max_speed`` and every path from ``eta(0) = 0`` stays in the cube
            ``[-max_speed, max_speed]^k`` for ``t in [0, 1]``. With the cube as the Monte
            Carlo state box (appendix B), training then covers every state inference
            can visit; unbounded dynamics learn to leave the box, where they are untrained.
    """

    def __init__(
        self,
        hidden_dim: int,
        input_dim: int,
        width: int = 64,
        depth: int = 2,
        *,
        activation: str = "silu",
        time_dependent: bool = True,
        zero_init: bool = True,
        max_speed: float | None = None,
    ) -> None:
        super().__init__()
        if max_speed is not None and not (isinstance(max_speed, (int, float)) and math.isfinite(max_speed) and max_speed > 0):
            raise ValueError(f"max_speed must be a finite number > 0 or None, got {max_speed!r}")
        self.max_speed = None if max_speed is None else float(max_speed)
        for name, value in (("hidden_dim", hidden_dim), ("input_dim", input_dim), ("width", width), ("depth", depth)):
            if not isinstance(value, int) or value < (0 if name == "input_dim" else 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.hidden_dim, self.input_dim, self.time_dependent = hidden_dim, input_dim, time_dependent
        layers: list[nn.Module] = []
        d = hidden_dim + input_dim + int(time_dependent)
        for _ in range(depth):
            layers += [nn.Linear(d, width), _ACTIVATIONS[activation]()]
            d = width
        last = nn.Linear(d, hidden_dim)
        if zero_init:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, eta: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """``eta: (batch, k)``, ``x: (batch, n)``, ``t``: scalar or ``(batch,)`` -> ``(batch, k)``."""
        parts = [eta, x]
        if self.time_dependent:
            t = torch.as_tensor(t, dtype=eta.dtype, device=eta.device)
            parts.append(t.expand(eta.shape[0]).unsqueeze(-1) if t.ndim == 0 else t.reshape(-1, 1))
        out = self.net(torch.cat(parts, dim=-1))
        return out if self.max_speed is None else self.max_speed * torch.tanh(out / self.max_speed)


def _steps_between(a: float, b: float, step_size: float) -> int:
    """Number of equal steps of at most ``step_size`` (up to float32 rounding of the times:
    ``t = [0, 0.1]`` in float32 is ``0.10000000149``, still one step of 0.1) from ``a`` to ``b``."""
    return max(1, math.ceil((b - a) / step_size - 1e-5))


def _grid_through(step_size: float) -> Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor]:
    """torchdiffeq ``grid_constructor``: steps of at most ``step_size`` hitting every time in ``t``."""

    def construct(func: object, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        knots = t.tolist()  # a handful of output times, once per solve
        pieces = [t[:1]]
        for a, b in zip(knots[:-1], knots[1:]):
            n = _steps_between(a, b, step_size)
            pieces.append(torch.linspace(a, b, n + 1, dtype=t.dtype, device=t.device)[1:])
        return torch.cat(pieces)

    return construct


def _rk4_38_step(func, t0: float, h: float, y0: torch.Tensor) -> torch.Tensor:
    """One step of the 3/8-rule RK4, the scheme torchdiffeq's ``"rk4"`` takes."""
    k1 = func(t0, y0)
    k2 = func(t0 + h / 3.0, y0 + h * k1 / 3.0)
    k3 = func(t0 + 2.0 * h / 3.0, y0 + h * (k2 - k1 / 3.0))
    k4 = func(t0 + h, y0 + h * (k1 - k2 + k3))
    return y0 + (k1 + 3.0 * (k2 + k3) + k4) * (h * 0.125)


#: Fixed-step schemes integrated by ``NeuralODE`` itself (same schemes and grid as
#: torchdiffeq's, without its per-step bookkeeping, which dominates small-batch inference).
_OWN_STEPPERS = {
    "euler": lambda func, t0, h, y0: y0 + h * func(t0, y0),
    "midpoint": lambda func, t0, h, y0: y0 + h * func(t0 + 0.5 * h, y0 + 0.5 * h * func(t0, y0)),
    "rk4": _rk4_38_step,
}


def _fixed_grid_solve(func, y0: torch.Tensor, times: torch.Tensor, step_size: float, method: str) -> torch.Tensor:
    """States at ``times`` (``(len(times), *y0.shape)``) on the grid of ``_grid_through``:
    each interval between requested times cut into equal steps of at most ``step_size``."""
    grid = _grid_through(step_size)(None, y0, times)
    knots = times.tolist()  # one host read per solve
    step = _OWN_STEPPERS[method]
    out, y, i = [y0], y0, 0
    for a, b in zip(knots[:-1], knots[1:]):
        n = _steps_between(a, b, step_size)
        for t0, t1 in zip(grid[i : i + n].tolist(), grid[i + 1 : i + n + 1].tolist()):
            y = step(func, t0, t1 - t0, y)
        i += n
        out.append(y)
    return torch.stack(out)


class _BoundDynamics(nn.Module):
    """``eta -> f(eta, x, t)`` with ``x`` fixed: the right-hand side torchdiffeq integrates."""

    def __init__(self, dynamics: nn.Module, x: torch.Tensor) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.x = x
        self.nfe = 0

    def forward(self, t: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.dynamics(eta, self.x, t)


class NeuralODE(nn.Module):
    """The data-controlled neural ODE of eq. 1-3.

    Args:
        dynamics: ``f_theta(eta, x, t) -> (batch, k)``, e.g. ``DataControlledMLP``.
        hidden_dim: ``k``.
        readout: ``psi``, ``(batch, k) -> (batch, m)``; identity by default (then ``eta`` is
            the prediction itself, e.g. class logits with ``k = m`` as in the paper).
        initial: ``phi``, ``(batch, n) -> (batch, k)``; ``None`` starts every solve at
            ``eta(0) = 0`` (the paper's restriction for Monte Carlo training).
        method: default torchdiffeq solver name (see ``FIXED_STEP_METHODS``,
            ``ADAPTIVE_METHODS``).
        step_size: default step for fixed-step solvers.
        rtol, atol: default tolerances for adaptive solvers.
        fast_fixed_step: integrate ``"euler"``/``"midpoint"``/``"rk4"`` with a plain loop
            instead of torchdiffeq (same scheme and grid; faster on small batches).
    """

    def __init__(
        self,
        dynamics: nn.Module,
        hidden_dim: int,
        *,
        readout: nn.Module | None = None,
        initial: nn.Module | None = None,
        method: str = "rk4",
        step_size: float = 0.1,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        fast_fixed_step: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive int, got {hidden_dim!r}")
        self.dynamics = dynamics
        self.hidden_dim = hidden_dim
        self.readout = readout if readout is not None else nn.Identity()
        self.initial = initial
        self._check_solver(method, step_size)
        self.method, self.step_size, self.rtol, self.atol = method, float(step_size), float(rtol), float(atol)
        self.fast_fixed_step = bool(fast_fixed_step)
        self.last_nfe = 0  # function evaluations of the last solve (cost of inference)

    @staticmethod
    def _check_solver(method: str, step_size: float | None) -> None:
        if method not in _TORCHDIFFEQ_SOLVERS:
            raise ValueError(f"method must be a torchdiffeq solver {sorted(_TORCHDIFFEQ_SOLVERS)}, got {method!r}")
        if step_size is not None and not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def f(self, eta: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The dynamics ``f_theta(eta, x, t)`` (eq. 2); ``eta: (batch, k)``, ``x: (batch, n)``."""
        return self.dynamics(eta, x, t)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """``eta(0) = phi(x)`` (eq. 1), ``(batch, k)``; zeros when ``initial`` is ``None``."""
        if self.initial is None:
            return x.new_zeros(x.shape[0], self.hidden_dim)
        return self.initial(x)

    def _check_x(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f"x must be a tensor of shape (batch, input_dim), got {getattr(x, 'shape', type(x))}")
        expected = getattr(self.dynamics, "input_dim", None)
        if expected is not None and x.shape[1] != expected:
            raise ValueError(f"x must have shape (batch, {expected}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or inf")

    def trajectory(
        self,
        x: torch.Tensor,
        times: torch.Tensor | list[float] | float = 1.0,
        *,
        method: str | None = None,
        step_size: float | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        adjoint: bool = False,
        eta0: torch.Tensor | None = None,
        fast_fixed_step: bool | None = None,
    ) -> torch.Tensor:
        """Hidden states ``eta(t)`` at each requested time.

        Args:
            x: ``(batch, n)`` inputs.
            times: increasing times in ``[0, 1]``; a float ``t`` means ``[0, t]``.
            method, step_size, rtol, atol: override the model's solver defaults.
            adjoint: differentiate by the adjoint method (``odeint_adjoint``) instead of
                backpropagating through the solver's operations.
            eta0: ``(batch, k)`` start states replacing ``phi(x)`` (eq. 1), e.g. to follow
                paths from perturbed starts; ``None`` uses ``initial_state(x)``.
            fast_fixed_step: override the model's choice of the plain-loop integrator for
                ``"euler"``/``"midpoint"``/``"rk4"`` (``None`` keeps it).

        Returns:
            ``(len(times), batch, k)`` states (for a float ``t``: ``(2, batch, k)``).
        """
        self._check_x(x)
        if isinstance(times, (int, float)):
            if not (0.0 < float(times) <= 1.0):
                raise ValueError(f"t must be in (0, 1], got {times!r}")
            times = [0.0, float(times)]
        times = torch.as_tensor(times, dtype=x.dtype, device=x.device)
        if times.ndim != 1 or times.numel() < 2 or not bool((times[1:] > times[:-1]).all()):
            raise ValueError(f"times must be a strictly increasing 1-D sequence of >= 2 times, got {times.tolist()}")
        if float(times[0]) < 0.0 or float(times[-1]) > 1.0 + 1e-12:
            raise ValueError(f"times must lie in [0, 1], got {times.tolist()}")
        method = method or self.method
        step_size = self.step_size if step_size is None else step_size
        self._check_solver(method, step_size)
        # A fixed grid that contains every requested time makes the returned states solver
        # states rather than torchdiffeq's linear interpolation between grid points, so
        # ``trajectory(x, 0.37)`` is the ODE solution at exactly t = 0.37.
        options = {"grid_constructor": _grid_through(step_size)} if method in FIXED_STEP_METHODS else None
        func = _BoundDynamics(self.dynamics, x)
        if eta0 is None:
            eta0 = self.initial_state(x)
        elif eta0.shape != (x.shape[0], self.hidden_dim):
            raise ValueError(f"eta0 must have shape (batch, hidden_dim) = {(x.shape[0], self.hidden_dim)}, got {tuple(eta0.shape)}")
        kwargs = dict(method=method, options=options, rtol=self.rtol if rtol is None else rtol, atol=self.atol if atol is None else atol)
        if adjoint:
            # x joins the adjoint parameters so input gradients (attacks) still flow.
            params = tuple(p for p in func.parameters() if p.requires_grad)
            if x.requires_grad:
                params = params + (x,)
            path = odeint_adjoint(func, eta0, times, adjoint_params=params, **kwargs)
        elif method in _OWN_STEPPERS and (self.fast_fixed_step if fast_fixed_step is None else fast_fixed_step):
            path = _fixed_grid_solve(func, eta0, times, step_size, method)
        else:
            path = odeint(func, eta0, times, **kwargs)
        self.last_nfe = func.nfe
        return path

    def forward(self, x: torch.Tensor, t: float = 1.0, **solver: object) -> torch.Tensor:
        """Prediction ``y_hat(t) = psi(eta(t))`` for ``t in (0, 1]`` (eq. 3), ``(batch, m)``.

        ``t < 1`` is early termination. ``solver`` takes the keyword arguments of
        ``trajectory`` (``method``, ``step_size``, ``rtol``, ``atol``, ``adjoint``).
        """
        return self.readout(self.trajectory(x, t, **solver)[-1])

    predict = forward

    @classmethod
    def mlp(
        cls,
        input_dim: int,
        output_dim: int,
        *,
        width: int = 64,
        depth: int = 2,
        activation: str = "silu",
        zero_init: bool = True,
        time_dependent: bool = True,
        max_speed: float | None = None,
        **solver: object,
    ) -> "NeuralODE":
        """The paper's setting: ``k = m`` hidden dimensions, identity readout, ``eta(0) = 0``,
        and ``f_theta = DataControlledMLP``. ``solver`` sets ``method``, ``step_size``, ``rtol``, ``atol``."""
        dynamics = DataControlledMLP(
            output_dim, input_dim, width, depth, activation=activation, zero_init=zero_init, time_dependent=time_dependent,
            max_speed=max_speed,
        )
        return cls(dynamics, output_dim, **solver)
