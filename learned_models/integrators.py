"""From a continuous-time model ``xdot = f(x, u)`` to a discrete world model ``x_{k+1} = step(x_k, u_k)``.

- ``INTEGRATORS``: fixed-step methods by name (``"euler"``, ``"rk4"``), each a pure function
  ``method(f, x, h) -> x_next`` on ``(batch, state_dim)`` tensors. Any other name that
  torchdiffeq knows (``"midpoint"``, ``"dopri5"``, ...) is handed to ``torchdiffeq.odeint``.
- ``odeint(model, x0, t, u)``: continuous-time rollouts with torchdiffeq (adaptive or fixed).
- ``lyapunov_rescale``: the step that keeps a Lyapunov guarantee. Integrating a stable ODE
  with Euler or RK4 does *not* keep ``V(x_{k+1}) <= exp(-alpha h) V(x_k)``: the integrator's
  local error can push ``V`` up (measured on random stable models: RK4 at h = 0.2 breaks it
  on about 2% of states, Euler at h = 0.01 on most). The rescale pulls the integrator's
  result back toward the equilibrium just enough to restore it.
- ``functorch_safe()``: a context in which the models avoid what ``torch.func.vmap`` cannot
  batch (custom autograd Functions, ``out=`` products, data-dependent branches and host
  syncs) and use plain differentiable tensor ops instead; the ``Ensemble`` evaluates its
  members inside it. Outside it nothing changes.
- ``ODEWorldModel``: the ``nn.Module`` base of ``SimpleDynamics``, ``StableDynamics`` and
  ``StableControlledDynamics``: input validation, ``derivative``, ``step``, ``rollout``,
  ``save``/``load``, ``device``/``dtype``. A rollout that needs no gradient runs the field a
  subclass lowers in ``_inference_field`` (``SimpleDynamics``: ``mlp_rollout.MLPField``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torchdiffeq
from torch import nn
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS

if TYPE_CHECKING:
    from .mlp_rollout import MLPField

__all__ = ["INTEGRATORS", "TORCHDIFFEQ_METHODS", "euler", "rk4", "integrate", "odeint", "lyapunov_rescale", "ODEWorldModel", "functorch_safe"]

Field = Callable[[torch.Tensor], torch.Tensor]


class _FunctorchState:
    """Depth of nested ``functorch_safe()`` blocks (a plain class attribute: reading it in the
    hot path costs one attribute lookup)."""

    depth = 0


@contextlib.contextmanager
def functorch_safe():
    """Within the block, the models' passes run under ``torch.func`` transforms (``vmap``).

    The fast single-model path relies on custom ``autograd.Function``s (old style, which
    ``vmap`` cannot run), ``out=`` matrix products (no batching rule) and a host sync in
    ``lyapunov_rescale(verify=True)`` and in input validation; inside this block they are
    replaced by plain tensor ops that ordinary autograd differentiates (same numbers up to
    rounding, slower for one model, batched over members by ``vmap``). Re-entrant.
    """
    _FunctorchState.depth += 1
    try:
        yield
    finally:
        _FunctorchState.depth -= 1


def in_functorch_safe() -> bool:
    """True inside a ``functorch_safe()`` block."""
    return _FunctorchState.depth > 0


def euler(f: Field, x: torch.Tensor, h: float) -> torch.Tensor:
    """Explicit Euler: ``x + h f(x)``."""
    return torch.add(x, f(x), alpha=h)


def rk4(f: Field, x: torch.Tensor, h: float) -> torch.Tensor:
    """Classical 4th-order Runge-Kutta step."""
    k1 = f(x)
    k2 = f(torch.add(x, k1, alpha=0.5 * h))
    k3 = f(torch.add(x, k2, alpha=0.5 * h))
    k4 = f(torch.add(x, k3, alpha=h))
    incr = torch.add(k1, k2, alpha=2.0).add_(k3, alpha=2.0).add_(k4)
    return torch.add(x, incr, alpha=h / 6.0)


#: Fixed-step integrators by name; each is ``method(f, x, h) -> x_next``.
INTEGRATORS: dict[str, Callable[[Field, torch.Tensor, float], torch.Tensor]] = {"euler": euler, "rk4": rk4}
#: Methods handed to ``torchdiffeq.odeint`` (adaptive ones use its default tolerances).
TORCHDIFFEQ_METHODS = tuple(sorted(set(_TORCHDIFFEQ_SOLVERS) - set(INTEGRATORS)))


def check_integrator(name: str) -> str:
    if name not in INTEGRATORS and name not in TORCHDIFFEQ_METHODS:
        raise ValueError(f"integrator must be one of {sorted(INTEGRATORS)} or a torchdiffeq method {list(TORCHDIFFEQ_METHODS)}, got {name!r}")
    return name


def integrate(f: Field, x: torch.Tensor, h: float, method: str = "rk4") -> torch.Tensor:
    """One step of length ``h`` of ``xdot = f(x)`` from ``x: (batch, state_dim)`` with ``method``."""
    if method in INTEGRATORS:
        return INTEGRATORS[method](f, x, h)
    t = torch.tensor([0.0, h], dtype=x.dtype, device=x.device)
    return torchdiffeq.odeint(lambda _t, y: f(y), x, t, method=check_integrator(method))[-1]


def odeint(
    model: "ODEWorldModel",
    x0: torch.Tensor,
    t: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Continuous-time rollout of ``model.derivative`` with torchdiffeq.

    Args:
        model: an ``ODEWorldModel``.
        x0: ``(batch, state_dim)`` initial states.
        t: ``(T,)`` increasing times, ``t[0]`` the time of ``x0``.
        u: ``(batch, action_dim)`` input held constant over ``t``, or ``None``.
        method, rtol, atol, options: passed to ``torchdiffeq.odeint``.

    Returns:
        ``(T, batch, state_dim)`` states at times ``t`` (torchdiffeq's layout).
    """
    model._check_x(x0, "x0")
    u = model._check_u(u, x0.shape[0])
    t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
    if t.ndim != 1 or t.numel() < 1:
        raise ValueError(f"t must be a 1-D tensor of times, got shape {tuple(t.shape)}")
    return torchdiffeq.odeint(lambda _t, y: model._derivative(y, u), x0, t, method=method, rtol=rtol, atol=atol, options=options)


def lyapunov_rescale(
    x: torch.Tensor,
    y: torch.Tensor,
    V: Callable[[torch.Tensor], torch.Tensor],
    alpha: float | torch.Tensor,
    h: float,
    x_eq: torch.Tensor,
    *,
    slack: torch.Tensor | None = None,
    verify: bool = False,
    max_halvings: int = 24,
    Vx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pull ``y`` (an integrator's step from ``x``) toward ``x_eq`` so ``V`` decreases as certified.

    The target is ``V(y') <= b = exp(-alpha h) V(x)`` (plus ``(1 - exp(-alpha h)) / alpha *
    slack`` with an input, the ISS analogue of ``dV/dt <= -alpha V + sigma``). We take

        y' = x_eq + s (y - x_eq),   s = min(1, b / V(y)).

    If ``V`` is convex with ``V(x_eq) = 0`` (the ICNN ``LyapunovFunction`` without a warp),
    ``V(x_eq + s (y - x_eq)) <= s V(y) + (1 - s) V(x_eq) = s V(y) <= b``: the bound holds by
    construction (up to floating point rounding). With ``verify=True`` (non-convex ``V``, e.g.
    with a warp) ``V`` is evaluated at the rescaled state and, where that misses the bound,
    at ``s/2, s/4, ...``; the largest scale that meets it is kept (``x_eq`` itself if none of
    ``max_halvings`` does), then bisected towards the scale that missed it (12 steps), so the
    state stops near ``V = b`` as in the convex case: a guarantee by evaluation.

    Cost in accuracy: where the integrator already meets the bound (most states), ``y`` is
    returned unchanged. Elsewhere the exact flow meets it (it satisfies ``dV/dt <= -alpha V``),
    so ``V(y) - b`` is at most the integrator's local error in ``V`` and the correction moves
    ``y`` by the same order, ``O(h^{p+1})`` for a method of order ``p`` (``h^5`` for RK4, ``h^2``
    for Euler): the rescaled step keeps the integrator's order of accuracy.

    Args:
        x, y: ``(batch, state_dim)`` the state and the integrator's next state.
        V: callable ``(batch, state_dim) -> (batch,)`` with ``V(x_eq) = 0``, ``V > 0`` elsewhere.
        alpha: decay rate (``>= 0``; a number, or a positive 0-dim tensor for a learned rate); ``h``: step size.
        x_eq: ``(state_dim,)`` equilibrium.
        slack: ``(batch,)`` the input's allowed energy injection ``sigma(x, u) >= 0`` or ``None``.
        Vx: ``V(x)`` if the caller already has it (saves one evaluation).

    Returns:
        ``(batch, state_dim)`` the rescaled next state.
    """
    if Vx is None:
        Vxy = V(torch.cat([x, y], dim=0))
        Vx, Vy = Vxy[: x.shape[0]], Vxy[x.shape[0] :]
    else:
        Vy = V(y)
    if isinstance(alpha, torch.Tensor):  # a learned rate (0-dim, > 0): differentiable, no host sync
        bound = torch.exp(alpha * -h) * Vx
        if slack is not None:
            bound = bound + torch.expm1(alpha * -h).neg() / alpha * slack
    else:
        bound = math.exp(-alpha * h) * Vx
        if slack is not None:
            # Exact integral of dV/dt = -alpha V + sigma over [0, h] with sigma held constant.
            bound = bound + (-math.expm1(-alpha * h) / alpha if alpha > 0 else h) * slack
    # s = min(1, bound / V(y)). V(y) is floored at the smallest normal number, which only
    # makes s smaller (so the bound still holds); V(y) = 0 only at y = x_eq, where any s will do.
    s = bound / Vy.clamp_min(torch.finfo(Vy.dtype).tiny)
    s = s.clamp(max=1.0) if _FunctorchState.depth else s.clamp_(max=1.0)  # vmap has no batching rule for clamp_
    dy = y - x_eq
    y_new = torch.addcmul(x_eq, s.unsqueeze(-1), dy)
    if not verify:
        return y_new
    if _FunctorchState.depth:
        return _verified_halvings(y_new, s, dy, V, bound, x_eq, max_halvings)
    # Non-convex V: check the rescaled state, and only the (few) rows that miss the bound take
    # the batched search of _verified_halvings. The `all` is one host sync per step, paid only with a warp.
    ok = V(y_new) <= bound
    if bool(ok.all()):
        return y_new
    bad = (~ok).nonzero().squeeze(-1)
    return y_new.index_put((bad,), _verified_halvings(y_new[bad], s[bad], dy[bad], V, bound[bad], x_eq, max_halvings))


def _bisect_scale(ok: torch.Tensor, fails: torch.Tensor, dy: torch.Tensor, V, bound: torch.Tensor, x_eq: torch.Tensor,
                  steps: int = 12) -> torch.Tensor:
    """The largest scale found between ``ok`` (meets ``V(x_eq + s dy) <= bound``) and ``fails``
    (misses it), by bisection, ``(batch,)``: a halving alone would stop up to 2x short of the
    bound and pull the state further towards ``x_eq`` than the certificate needs. ``ok`` always
    meets the bound, so the guarantee stays one by evaluation."""
    for _ in range(steps):
        mid = 0.5 * (ok + fails)
        meets = V(x_eq + mid.unsqueeze(-1) * dy) <= bound
        ok, fails = torch.where(meets, mid, ok), torch.where(meets, fails, mid)
    return ok


def _verified_halvings(y_new, s, dy, V, bound, x_eq, max_halvings):
    """``lyapunov_rescale(verify=True)`` without the data-dependent branch (for ``vmap``; the
    eager path runs it on the rows that missed the bound): every row tries ``s, s/2, ...,
    s/2^K``, takes the first that meets the bound (``x_eq``, scale 0, if none does) and bisects
    towards the one before it. ``K + 1`` evaluations of ``V`` per state, then 12 more."""
    k = torch.arange(0, max_halvings + 1, dtype=y_new.dtype, device=y_new.device)
    scales = s.unsqueeze(0) * torch.pow(0.5, k).unsqueeze(1)  # (K + 1, batch), s itself first
    cand = x_eq + scales.unsqueeze(-1) * dy.unsqueeze(0)  # (K + 1, batch, n)
    cand_ok = V(cand.reshape(-1, dy.shape[-1])).reshape(max_halvings + 1, -1) <= bound.unsqueeze(0)
    cand_ok = torch.cat([cand_ok, torch.ones_like(cand_ok[:1])], dim=0)
    first = cand_ok.to(torch.int8).argmax(dim=0)
    scales = torch.cat([scales, torch.zeros_like(scales[:1])], dim=0)
    chosen = scales.gather(0, first.unsqueeze(0)).squeeze(0)
    # between the first scale that meets the bound and the one before it (a row whose s meets
    # it bisects between s and s, and keeps s)
    above = scales.gather(0, (first - 1).clamp(min=0).unsqueeze(0)).squeeze(0)
    return x_eq + _bisect_scale(chosen, above, dy, V, bound, x_eq).unsqueeze(-1) * dy


def _all_finite(t: torch.Tensor) -> bool:
    """``torch.isfinite(t).all()``, in one pass over ``t`` in the usual case: a sum is finite
    only if every term is (an inf or NaN term makes it inf or NaN), so only a non-finite sum
    (a non-finite entry, or finite entries whose sum overflows) needs the elementwise check.
    On 62k float32 entries (a 1000 x 31 x 2 rollout) 10 us instead of 130 us."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _overflow_error(what: str, y: torch.Tensor, x: torch.Tensor, u: torch.Tensor | None) -> ValueError:
    """The error for a non-finite result ``y`` of ``what`` from the finite inputs ``x``, ``u``."""
    largest_u = "" if u is None or u.numel() == 0 else f", largest |u| {float(u.abs().amax()):.3g}"
    return ValueError(f"x: {what} overflowed {str(y.dtype).replace('torch.', '')} from finite inputs "
                      f"(largest |x| {float(x.abs().amax()):.3g}{largest_u}); use smaller inputs or float64")


def _equal_tensors(saved: list[torch.Tensor], current: list[torch.Tensor]) -> bool:
    """Whether ``current`` holds the same shapes, dtypes, devices and values as ``saved``."""
    return len(saved) == len(current) and all(
        a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b) for a, b in zip(saved, current))


def _wrap_rows_(x: torch.Tensor, entries: list[int], dim: int) -> None:
    """Wrap the state entries ``entries`` (indices along ``dim``) of ``x`` to ``[-pi, pi)`` in place."""
    idx = torch.tensor(entries, device=x.device)
    x.index_copy_(dim, idx, torch.remainder(x.index_select(dim, idx) + math.pi, 2.0 * math.pi) - math.pi)


class _LoweredField:
    """``ODEWorldModel._lowered_field``'s cache: the field and the weights it was lowered from
    (a plain object; copies and pickles start empty, the packed oneDNN weights do not pickle)."""

    __slots__ = ("source", "field", "settings")

    def __init__(self) -> None:
        self.source: list[torch.Tensor] = []
        self.field: "MLPField | None" = None
        self.settings: Any = None

    def __deepcopy__(self, memo) -> "_LoweredField":
        return _LoweredField()

    def __reduce__(self):
        return (_LoweredField, ())


#: rows per block of a CPU rollout (``ODEWorldModel.rollout``): small enough that a block's
#: activations stay in cache over the horizon, large enough that each matrix product is efficient
ROLLOUT_BLOCK_ROWS = 4096


class ODEWorldModel(nn.Module):
    """Base of the learned continuous-time models: validation, ``step``, ``rollout``, checkpoints.

    Subclasses implement ``_derivative(x, u)`` (no validation; ``u`` is ``None`` for
    autonomous models, else ``(batch, action_dim)``) and ``config()``; they may override
    ``_step`` (the stable models add the Lyapunov rescale).

    Attributes:
        state_dim, action_dim (0 = autonomous), dt, integrator.
        validate_finite: check inputs for NaN/inf in ``derivative``/``step``/``rollout``, and
            results for an overflow from finite inputs (one host synchronisation per call;
            planners in tight GPU loops may turn it off).
        raise_on_overflow: with ``validate_finite``, raise on a non-finite result (default);
            ``False`` returns it, for a caller that ends such rows itself
            (``world_model.overflowing_rows_returned``).
    """

    validate_finite: bool = True
    raise_on_overflow: bool = True

    def __init__(self, state_dim: int, action_dim: int, dt: float, integrator: str) -> None:
        super().__init__()
        if not isinstance(state_dim, int) or state_dim < 1:
            raise ValueError(f"state_dim must be an int >= 1, got {state_dim!r}")
        if not isinstance(action_dim, int) or action_dim < 0:
            raise ValueError(f"action_dim must be an int >= 0, got {action_dim!r}")
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.dt = float(dt)
        self.integrator = check_integrator(integrator)

    # -- WorldModel attributes ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # -- validation at the boundary ------------------------------------------------------
    def _check_x(self, x: torch.Tensor, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {self.state_dim}), got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.state_dim:
            raise ValueError(f"{name} must have shape (batch, state_dim={self.state_dim}), got {tuple(x.shape)}")
        if x.dtype != self.dtype or x.device != self.device:
            raise ValueError(
                f"{name} is {x.dtype} on {x.device} but the model is {self.dtype} on {self.device}; "
                f"convert with {name}.to(model.device, model.dtype) or call model.to(...)"
            )
        # Under vmap (functorch_safe) the check would be a data-dependent host sync; the
        # caller (the Ensemble) has validated its own inputs at its boundary.
        if self.validate_finite and not _FunctorchState.depth and not _all_finite(x):
            raise ValueError(f"{name} contains NaN or inf")

    def _check_u(self, u: torch.Tensor | None, batch: int, name: str = "u") -> torch.Tensor | None:
        if self.action_dim == 0:
            if u is not None and (u.ndim != 2 or u.shape[1] != 0):
                raise ValueError(f"this model is autonomous (action_dim=0): {name} must be None or (batch, 0), got {tuple(u.shape)}")
            return None
        if u is None:
            return torch.zeros(batch, self.action_dim, device=self.device, dtype=self.dtype)
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape ({batch}, {self.action_dim}), got {type(u).__name__}")
        if u.ndim != 2 or u.shape != (batch, self.action_dim):
            raise ValueError(f"{name} must have shape (batch={batch}, action_dim={self.action_dim}), got {tuple(u.shape)}")
        if u.dtype != self.dtype or u.device != self.device:
            raise ValueError(f"{name} is {u.dtype} on {u.device} but the model is {self.dtype} on {self.device}")
        if self.validate_finite and not _FunctorchState.depth and not _all_finite(u):
            raise ValueError(f"{name} contains NaN or inf")
        return u

    # -- dynamics ----------------------------------------------------------------------
    def _derivative(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return integrate(lambda y: self._derivative(y, u), x, self.dt, self.integrator)

    def derivative(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """``xdot = f(x, u)``: ``x: (batch, state_dim)``, ``u: (batch, action_dim)`` or ``None`` -> ``(batch, state_dim)``."""
        self._check_x(x)
        return self._derivative(x, self._check_u(u, x.shape[0]))

    def forward(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """Same as ``derivative`` (so the model drops into code expecting ``model(x)``)."""
        return self.derivative(x, u)

    def _check_result(self, y: torch.Tensor, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """With ``validate_finite``: a non-finite result from the finite inputs just checked is
        an overflow inside the model (e.g. RK4 stages of huge float32 states); say so instead
        of returning NaN. One reduction per call, as the input check."""
        if self.validate_finite and self.raise_on_overflow and not _FunctorchState.depth and not _all_finite(y):
            raise _overflow_error("the model's step", y, x, u)
        return y

    def step(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """The state ``dt`` later with ``self.integrator``: ``(batch, state_dim)``."""
        self._check_x(x)
        u = self._check_u(u, x.shape[0])
        return self._check_result(self._step(x, u), x, u)

    #: ``rollout`` takes ``wrap_angles`` (``AngleWrappedModel`` passes its angles to it)
    rollout_wraps_angles = True

    def rollout(self, x0: torch.Tensor, actions: torch.Tensor | int, *, wrap_angles: Sequence[int] = ()) -> torch.Tensor:
        """``x0: (batch, state_dim)``, ``actions: (batch, horizon, action_dim)`` or int horizon -> ``(batch, horizon + 1, state_dim)``.

        ``wrap_angles``: state entries wrapped to ``[-pi, pi)`` after every step (``x0`` as
        given), as a planner over angle states wants (``AngleWrappedModel``), inside the
        lowered rollout where it runs."""
        self._check_x(x0, "x0")
        if isinstance(actions, int):
            if actions < 0:
                raise ValueError(f"horizon must be >= 0, got {actions}")
            if self.action_dim:
                raise ValueError(f"an int horizon is only valid for autonomous models; pass actions of shape (batch, horizon, {self.action_dim})")
            horizon = actions
        else:
            if not isinstance(actions, torch.Tensor) or actions.ndim != 3 or actions.shape[0] != x0.shape[0] or actions.shape[2] != self.action_dim:
                shape = tuple(actions.shape) if isinstance(actions, torch.Tensor) else type(actions).__name__
                raise ValueError(f"actions must have shape (batch={x0.shape[0]}, horizon, action_dim={self.action_dim}), got {shape}")
            if self.action_dim:
                self._check_u(actions.reshape(-1, self.action_dim), actions.shape[0] * actions.shape[1], "actions")
            horizon = actions.shape[1]
        controls = actions if self.action_dim else None
        wrap = sorted({int(i) % self.state_dim for i in wrap_angles})
        # Without autograd an MLP field runs as a few matrix products per stage (``mlp_rollout``):
        # the planners' rollouts, 1.25-1.4x faster for a (100, 100) MLP (1000 rows x 30 RK4 steps).
        fast = self._inference_rollout(x0, controls, horizon, wrap) if self._without_autograd(x0, actions) else None
        if fast is not None:
            return self._check_result(fast, x0, controls)
        inputs = controls.unbind(1) if controls is not None else [None] * horizon
        rows = x0.shape[0]
        if x0.device.type == "cpu" and rows > 2 * ROLLOUT_BLOCK_ROWS:
            # Rows are independent. On a CPU a block of rows keeps its activations in cache
            # through the whole horizon, where all rows at once stream every stage through
            # memory: 64k rows x 30 steps of a (100, 100) MLP ran 4x faster in 4k-row blocks.
            blocks = [self._rollout_rows(x0[i:i + ROLLOUT_BLOCK_ROWS], [u if u is None else u[i:i + ROLLOUT_BLOCK_ROWS] for u in inputs], wrap)
                      for i in range(0, rows, ROLLOUT_BLOCK_ROWS)]
            states = torch.cat(blocks, dim=0)
        else:
            states = self._rollout_rows(x0, inputs, wrap)
        return self._check_result(states, x0, controls)

    def _inference_rollout(self, x0: torch.Tensor, controls: torch.Tensor | None, horizon: int, wrap: list[int]) -> torch.Tensor | None:
        """``rollout``'s states without autograd (validated arguments; ``wrap`` the angle
        entries to wrap after each step) through a lowered form of the model, or ``None`` to
        step through ``_step``. Default: the lowered field (``_lowered_field``), where the
        subclass has one."""
        field = self._lowered_field()
        if field is None:
            return None
        after_step = None
        if wrap:
            def after_step(t: int, rows: slice, x: torch.Tensor, u: torch.Tensor | None, x_next: torch.Tensor) -> None:
                _wrap_rows_(x_next, wrap, dim=0)  # feature-major: (n, rows)
        return field.rollout(x0, controls, horizon, self.dt, self.integrator, after_step)

    def _inference_field(self) -> "MLPField | None":
        """The field lowered for rollouts without autograd (``mlp_rollout.MLPField``), or
        ``None`` (default) to roll out through ``_step``. Called by ``_lowered_field``."""
        return None

    def _lowered_field(self) -> "MLPField | None":
        """``_inference_field()``, kept between rollouts on a CPU while every parameter and buffer
        is equal to the copy it was lowered from (compared exactly at each call, so an optimiser
        step, ``load_state_dict`` or a write through ``.data`` all lower again) and no module
        has a forward hook: comparing takes ~10 us, where lowering a (100, 100) MLP again (its
        matrices, folds and packed oneDNN weights) cost 0.3-0.4 ms a rollout, e.g. every CEM
        iteration."""
        return self._cached_lowering("_field_cache", self._inference_field)

    def _cached_lowering(self, key: str, lower: Callable[[], Any], settings: Any = None) -> Any:
        """``lower()``, kept in ``self.__dict__[key]`` as ``_lowered_field`` keeps its field;
        ``settings``: what else the lowering bakes in (compared with ``==``, lowered again when
        it changed)."""
        tensors = [*self.parameters(), *self.buffers()]
        cache = self.__dict__.get(key)
        if cache is None:
            cache = self.__dict__[key] = _LoweredField()
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in self.modules())
        if cache.field is not None and not hooked and cache.settings == settings and _equal_tensors(cache.source, tensors):
            return cache.field
        field = lower()
        keep = field is not None and not hooked and all(t.device.type == "cpu" for t in tensors)  # no device syncs to compare
        cache.source, cache.field = ([t.detach().clone() for t in tensors], field) if keep else ([], None)
        cache.settings = settings
        return field

    def _without_autograd(self, x0: torch.Tensor, actions: torch.Tensor | int) -> bool:
        """True when a rollout may skip autograd and ``torch.func``-incompatible ops: nothing
        asks for a gradient, no ``vmap``/``grad`` transform is active, and the integrator is
        one ``MLPField`` implements."""
        if self.integrator not in INTEGRATORS or _FunctorchState.depth or torch._C._are_functorch_transforms_active():
            return False
        if not torch.is_grad_enabled():
            return True
        return not (x0.requires_grad or (isinstance(actions, torch.Tensor) and actions.requires_grad)
                    or any(p.requires_grad for p in self.parameters()))

    def _rollout_rows(self, x0: torch.Tensor, inputs: list, wrap: list[int] = ()) -> torch.Tensor:
        states = [x0]
        x = x0
        for u in inputs:
            x = self._step(x, u)
            if wrap:
                x = x.clone()
                _wrap_rows_(x, wrap, dim=1)
            states.append(x)
        return torch.stack(states, dim=1)

    # -- checkpoints ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-safe) that rebuild this architecture."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Write config, weights and ``metadata`` to one file, atomically (see ``checkpoint.save_model``)."""
        from .checkpoint import save_model

        save_model(self, path, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> "ODEWorldModel":
        """Rebuild a model saved with ``save``; ``ValueError`` if the file holds another class or is corrupt."""
        from .checkpoint import load_model

        return load_model(path, map_location=map_location, expected_class=cls)
