"""Stable deep dynamics (Manek & Kolter 2019): a nominal model projected onto a Lyapunov decrease.

``StableDynamics`` (eq. 10)::

    fhat_c(x) = fhat(x) - fhat(x_eq)
    f(x)      = fhat_c(x) - grad V(x) * relu(grad V(x) . fhat_c(x) + alpha V(x)) / ||grad V(x)||^2

with ``V`` a ``LyapunovFunction`` (eq. 12/14). Then ``dV/dt = grad V . f <= -alpha V`` at every
state, so ``xdot = f(x)`` is globally exponentially stable to ``x_eq`` (Theorem 1):
``||x(t) - x_eq|| <= sqrt(c2/c1) ||x(0) - x_eq|| exp(-alpha t / 2)`` with ``c1 = eps`` (plus ``sigma_min(L)^2`` with a learned quadratic). Centering
``fhat`` makes ``x_eq`` an exact equilibrium, and ``f`` continuous there (eq. 10 alone leaves
``f(x_eq) = fhat(x_eq)``, which the projection cannot remove because ``grad V(x_eq) = 0``).

``StableControlledDynamics`` extends the projection to inputs, see its docstring.

The rate ``alpha`` is learned by default, ``alpha = lo + (hi - lo) sigmoid(alpha_raw)`` with
``alpha_raw`` a parameter and ``(lo, hi) = alpha_bounds``: eq. 10 holds for whatever value the
weights give it, so training may move it, and the certificate states the rate of the stored
weights. A fixed tiny rate certifies convergence that takes thousands of seconds; a learned one
settles where the data put it (``fit``'s ``rate_weight``, ``calibrate_rate``). Where a user needs
a time, ``settling_time(eps, box)`` says when the certificate puts every start of a box within
``eps`` of ``x_eq``, and ``settle_within(eps, box, seconds)`` (``training.fit_settling``: with a
refit) raises the rate to what that time takes.

Both models' ``step`` keeps the guarantee in discrete time by default (``keep_guarantee=True``):
the integrator's result is rescaled toward ``x_eq`` (``integrators.lyapunov_rescale``) so that
``V(x_{k+1}) <= exp(-alpha h) V(x_k)`` holds for the step map itself.

Cost: ``grad V`` is the ICNN's analytic pass (no ``autograd.grad``), and for training the
ICNN pass, eq. 12 and eq. 10 are each one autograd node with a hand-written backward
(gradchecked in the tests). ``fhat(x_eq)`` and ``g(F(x_eq))`` ride along as one extra row of
every batch, so they are recomputed with the current weights on every call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .certificate import DTYPES, Certificate, model_hash
from .checkpoint import register_model
from .integrators import ODEWorldModel, _FunctorchState, integrate, lyapunov_rescale
from .lyapunov import LyapunovFunction, _outer, _outer_backward
from .dynamics_net import network_options, nominal_network
from .simple import mlp

__all__ = ["StableDynamics", "StableControlledDynamics", "project_onto_decrease"]


_hardtanh_backward = torch.ops.aten.hardtanh_backward  # (grad, x, lo, hi) -> grad where lo < x < hi, else 0


Rate = float | torch.Tensor  # a fixed decay rate, or a learned one as a 0-dim tensor (differentiable)


def _rounding_guard(terms: torch.Tensor, V: torch.Tensor, alpha: Rate, slack: torch.Tensor | None) -> torch.Tensor:
    """``(4 n + 8) u (sum_i |grad_i V fhat_i| + alpha V + slack)``: a bound on the rounding of the
    projection's arithmetic and of a recomputed ``grad V . f`` (dot products of ``n`` terms, ``u``
    the unit roundoff), so the decrease holds for ``f`` as computed. ``terms: (batch, n)``."""
    n = terms.shape[-1]
    scale = terms.abs().sum(-1) + alpha * V
    if slack is not None:
        scale = scale + slack
    return scale * ((4 * n + 8) * torch.finfo(terms.dtype).eps / 2)


def _project(
    fhat: torch.Tensor, V: torch.Tensor, grad_V: torch.Tensor, alpha: Rate, slack: torch.Tensor | None, keep: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 10 without autograd: ``(f, coef, max(||grad V||^2, tiny))``; ``keep: (batch,)`` multiplies ``f``.

    ``coef = relu(excess) / ||grad V||^2`` with the denominator floored at the smallest normal
    number: ``grad V = 0`` only at a stationary point of ``V`` (``x_eq`` for a convex ``V``,
    where ``excess = 0`` too), so the floor never divides 0 by 0 and leaves ``f = fhat`` there.
    The cap on ``coef`` only matters at a (non-convex, warped) ``V``'s stationary point, where
    ``coef`` would overflow: ``grad V * coef`` stays finite for ``|grad V| <= sqrt(max)``.

    The excess carries a rounding guard, ``_rounding_guard``: the projection removes that much
    more, so that ``grad V . f <= -alpha V + slack`` holds for ``f`` *as computed* (and as
    anyone recomputes ``grad V . f``), not only in exact arithmetic. Without it, close to
    ``x_eq`` the rounding of ``grad V . fhat`` (``u |grad V| |fhat|``, with ``fhat`` dominated
    by the rounding of ``fhat(x) - fhat(x_eq)`` there) exceeds ``alpha V`` itself.
    """
    info = torch.finfo(grad_V.dtype)
    terms = grad_V * fhat
    if isinstance(alpha, torch.Tensor):
        excess = torch.addcmul(terms.sum(-1), V, alpha.detach())
    else:
        excess = torch.add(terms.sum(-1), V, alpha=alpha)
    if slack is not None:
        excess = excess.sub_(slack)
    excess = excess.add_(_rounding_guard(terms, V, alpha, slack))
    sq_norm = (grad_V * grad_V).sum(-1).clamp_min_(info.tiny)
    coef = excess.relu_().div_(sq_norm).clamp_(max=math.sqrt(info.max))
    f = torch.addcmul(fhat, grad_V, coef.unsqueeze(-1), value=-1.0)
    if keep is not None:
        f = f.mul_(keep.unsqueeze(-1))
    return f, coef, sq_norm


def _project_plain(
    fhat: torch.Tensor, V: torch.Tensor, grad_V: torch.Tensor, alpha: Rate, slack: torch.Tensor | None, keep: torch.Tensor | None
) -> torch.Tensor:
    """Eq. 10 as ``_project``, out of place, for ordinary autograd under ``vmap`` (``functorch_safe``)."""
    info = torch.finfo(grad_V.dtype)
    terms = grad_V * fhat
    excess = terms.sum(-1) + alpha * V
    if slack is not None:
        excess = excess - slack
    excess = excess + _rounding_guard(terms, V, alpha, slack)
    sq_norm = (grad_V * grad_V).sum(-1).clamp_min(info.tiny)
    coef = (torch.relu(excess) / sq_norm).clamp(max=math.sqrt(info.max))
    f = fhat - grad_V * coef.unsqueeze(-1)
    return f if keep is None else f * keep.unsqueeze(-1)


class _ProjectOntoDecrease(torch.autograd.Function):
    """Eq. 10 as one autograd node with a hand-written backward (about a dozen recorded ops fewer).

    With ``e = grad V . fhat + alpha V - slack``, ``q = max(||grad V||^2, tiny)``,
    ``c = min(relu(e) / q, cap)`` and ``f = keep (fhat - c grad V)``; adjoint ``fbar``:
    ``cbar = -keep fbar . grad V``, ``ebar = cbar / q`` where ``0 < c < cap`` (else 0),
    ``qbar = -c ebar`` where ``||grad V||^2 > tiny`` (else 0); then
    ``fhatbar = keep fbar + ebar grad V``, ``grad_Vbar = -c keep fbar + ebar fhat + 2 qbar grad V``,
    ``Vbar = alpha ebar``, ``slackbar = -ebar`` and, for a learned rate, ``alphabar = sum ebar V``.
    """

    @staticmethod
    def forward(ctx, fhat, V, grad_V, slack, keep, alpha, center):
        # center: the first input is fhat on [x; x_eq], (batch + 1, n); use fhat(x) - fhat(x_eq).
        if center:
            fhat = fhat[:-1] - fhat[-1:]
        f, coef, sq_norm = _project(fhat, V, grad_V, alpha, slack, keep)
        learned = isinstance(alpha, torch.Tensor)
        ctx.alpha, ctx.center, ctx.learned = alpha.detach() if learned else float(alpha), bool(center), learned
        ctx.save_for_backward(fhat, grad_V, coef, sq_norm, keep, V if learned else None)
        return f

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, fbar):
        saved = ctx.saved_tensors
        fhat_bar, ebar, grad_V_bar = _project_backward(saved[:5], fbar, ctx.center)
        V_bar = ebar * ctx.alpha if ctx.needs_input_grad[1] else None
        slack_bar = -ebar if ctx.needs_input_grad[3] else None
        alpha_bar = (ebar * saved[5]).sum() if ctx.learned and ctx.needs_input_grad[5] else None
        return fhat_bar, V_bar, grad_V_bar, slack_bar, None, alpha_bar, None


def _project_backward(saved, fbar, center):
    """Adjoints of eq. 10 (see ``_ProjectOntoDecrease``): ``(fhat_bar, ebar, grad_V_bar)`` with
    ``V_bar = alpha ebar``, ``slack_bar = -ebar``; ``saved = (fhat, grad_V, coef, q, keep)``."""
    fhat, grad_V, coef, sq_norm, keep = saved
    info = torch.finfo(coef.dtype)
    if keep is not None:
        fbar = fbar * keep.unsqueeze(-1)
    minus_cbar = (fbar * grad_V).sum(-1)
    ebar = _hardtanh_backward(minus_cbar.div_(sq_norm).neg_(), coef, 0.0, math.sqrt(info.max))
    qbar2 = _hardtanh_backward(coef * ebar * -2.0, sq_norm, info.tiny, math.inf)  # 2 qbar
    ebar_ = ebar.unsqueeze(-1)
    fhat_bar = torch.addcmul(fbar, grad_V, ebar_)
    if center:
        fhat_bar = torch.cat([fhat_bar, fhat_bar.sum(0, keepdim=True).neg_()])
    grad_V_bar = torch.addcmul(torch.addcmul(fhat * ebar_, grad_V, qbar2.unsqueeze(-1)), fbar, coef.unsqueeze(-1), value=-1.0)
    return fhat_bar, ebar, grad_V_bar


class _ConvexField(torch.autograd.Function):
    """Eq. 12 (``V``, ``grad V`` from the ICNN's ``g, dg/dx`` on ``[x; x_eq]``) followed by eq. 10,
    as ONE autograd node: the default model's whole post-network arithmetic. Its backward chains
    the two hand-written adjoints (``lyapunov._outer_backward``, ``_project_backward``); each
    custom node costs tens of microseconds of fixed overhead per call, which is what the
    training step of a small model is made of. Outputs ``(f, V)``.
    """

    @staticmethod
    def forward(ctx, fhat_out, gx, dg, dx, dx_sq, slack, keep, alpha, eps, d, tangent):
        V, grad_V, s, m, dshift = _outer(gx, dg, dx, dx_sq, eps, d, tangent)
        fhat = fhat_out[:-1] - fhat_out[-1:]
        f, coef, sq_norm = _project(fhat, V, grad_V, alpha, slack, keep)
        learned = isinstance(alpha, torch.Tensor)
        ctx.alpha, ctx.learned = alpha.detach() if learned else alpha, learned
        ctx.eps, ctx.d, ctx.tangent = eps, d, tangent
        ctx.save_for_backward(fhat, grad_V, coef, sq_norm, keep, dg, dx, dx_sq, s, m, dshift, V if learned else None)
        return f, V

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, fbar, Vbar):
        saved = ctx.saved_tensors
        fhat_bar, ebar, grad_V_bar = _project_backward(saved[:5], fbar, True)
        V_bar = torch.addcmul(Vbar, ebar, ctx.alpha) if ctx.learned else torch.add(Vbar, ebar, alpha=ctx.alpha)
        gx_bar, dg_bar, dx_bar = _outer_backward(saved[5:11], ctx.eps, ctx.d, ctx.tangent, V_bar, grad_V_bar, ctx.needs_input_grad[1:4])
        slack_bar = -ebar if ctx.needs_input_grad[5] else None
        alpha_bar = (ebar * saved[11]).sum() if ctx.learned and ctx.needs_input_grad[7] else None
        return fhat_bar, gx_bar, dg_bar, dx_bar, None, slack_bar, None, alpha_bar, None, None, None


def _project_onto_decrease(
    fhat: torch.Tensor,
    V: torch.Tensor,
    grad_V: torch.Tensor,
    alpha: Rate,
    slack: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    center: bool = False,
) -> torch.Tensor:
    """``project_onto_decrease``, then times ``keep: (batch,)``; with ``center``, ``fhat`` is
    ``(batch + 1, n)`` with ``fhat(x_eq)`` last and ``fhat(x) - fhat(x_eq)`` is projected."""
    if _FunctorchState.depth:
        return _project_plain(fhat[:-1] - fhat[-1:] if center else fhat, V, grad_V, alpha, slack, keep)
    if torch.is_grad_enabled() and (fhat.requires_grad or V.requires_grad or grad_V.requires_grad or (slack is not None and slack.requires_grad)
                                    or (isinstance(alpha, torch.Tensor) and alpha.requires_grad)):
        return _ProjectOntoDecrease.apply(fhat, V, grad_V, slack, keep, alpha, center)
    if center:
        fhat = fhat[:-1] - fhat[-1:]
    return _project(fhat, V, grad_V, alpha, slack, keep)[0]


def project_onto_decrease(
    fhat: torch.Tensor, V: torch.Tensor, grad_V: torch.Tensor, alpha: Rate, slack: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 10: project ``fhat: (batch, n)`` onto ``{f : grad V . f <= -alpha V + slack}``.

    ``V: (batch,)``, ``grad_V: (batch, n)``, ``slack: (batch,)`` or ``None`` (zero); ``alpha``
    a number or a 0-dim tensor (a learned rate, which then receives a gradient).
    Where ``grad V = 0`` (only at ``x_eq`` for a convex ``V``, where ``V = 0`` too) the
    constraint reads ``0 <= -alpha V + slack``, which no ``f`` can change, so ``fhat`` is
    returned: the denominator is floored at the smallest normal number instead of dividing
    0 by 0. Differentiable (one autograd node with a hand-written backward).
    """
    return _project_onto_decrease(fhat, V, grad_V, alpha, slack)


def _as_x_eq(x_eq, state_dim: int) -> torch.Tensor | None:
    if x_eq is None:
        return None
    x_eq = torch.as_tensor(x_eq, dtype=torch.get_default_dtype()).detach().reshape(-1)
    if x_eq.numel() != state_dim:
        raise ValueError(f"x_eq must have {state_dim} entries (state_dim), got {x_eq.numel()}")
    return x_eq


def max_offset(dtype: torch.dtype) -> float:
    """Largest ``|x_i - x_eq_i|`` (and ``|u_i|``) the stable models accept in ``dtype``:
    ``1e-3 sqrt(finfo.max)``, about 1.8e16 in float32 and 1.3e151 in float64. ``V`` grows like
    ``||x - x_eq||^2`` and eq. 10 divides by ``||grad V||^2``, so both overflow (and the step
    returns NaN) from about ``sqrt(finfo.max)``; the factor 1e-3 leaves room for ``eps``, a learned
    quadratic, the input gain and the dimension."""
    return 1e-3 * math.sqrt(torch.finfo(dtype).max)


def _check_range(offset: torch.Tensor, name: str, what: str) -> None:
    """One reduction (a host sync, as the finiteness check): ``max |offset| <= max_offset``."""
    limit = max_offset(offset.dtype)
    largest = offset.abs().amax()
    if not bool(largest <= limit):
        dtype = str(offset.dtype).replace("torch.", "")
        raise ValueError(f"{name}: every |{what}| must be <= {limit:.2g} in {dtype} (V and eq. 10 square it), got {float(largest):.3g}")


#: Normalised excess the certificates state per dtype. Measured worst over norms 1e-12..1e8 with
#: x_eq = 0 (examples/benchmarks/probe_certificate.py, 1e5 states per band and model kind):
#: about 2e-15 in float64 and 2e-6 in float32, from the rounding of V (centered ICNN pass).
STATED_TOLERANCE = {"float64": 1e-9, "float32": 1e-3}
#: States near a nonzero x_eq are stored to u |x_eq| per entry (u: the unit roundoff), which
#: moves V by up to about u |x_eq| / r relative at distance r (measured: 0.05 to 0.5 times
#: that); the excluded radius is where this factor times it reaches the stated tolerance.
_ROUNDING_FACTOR = 16.0


def _numerics(x_eq: list[float], c1: float) -> dict[str, dict[str, float]]:
    """Per dtype, the certificate's ``{"tolerance", "radius"}`` (see ``Certificate.numerics``)."""
    out = {}
    scale = max((abs(v) for v in x_eq), default=0.0)
    for name, dtype in DTYPES.items():
        info = torch.finfo(dtype)
        u = info.eps / 2
        tol = STATED_TOLERANCE[name]
        radius = _ROUNDING_FACTOR * u * scale / tol
        # Closer than sqrt(tiny / (u c1)), V ~ c1 r^2 is subnormal and keeps no relative precision.
        radius = max(radius, math.sqrt(info.tiny / (u * c1)))
        out[name] = {"tolerance": tol, "radius": float(f"{radius:.3g}") if radius > 0 else 0.0}
    return out


def _check_rate(name: str, value: float, positive: bool = False) -> float:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


#: Bounds of a learned decay rate when none are given (1/s of the model's time): from a
#: distance half-life of about 2 min (alpha 0.01) to one of 0.14 s (alpha 10).
ALPHA_BOUNDS = (0.01, 10.0)
#: Where a learned rate starts when no ``alpha`` is given: distance half-life 1.4 s.
ALPHA_INIT = 1.0
#: A learned rate's sigmoid starts at least this far inside (0, 1), so its gradient is not nil.
_RATE_MARGIN = 1e-4


def _check_bounds(bounds: Any) -> tuple[float, float]:
    ok = isinstance(bounds, (tuple, list)) and len(bounds) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
    if not ok or not 0 < bounds[0] < bounds[1]:
        raise ValueError(f"alpha_bounds must be (lo, hi) with 0 < lo < hi, finite numbers, got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def _rate_logit(alpha: float, lo: float, hi: float) -> float:
    """``raw`` with ``lo + (hi - lo) sigmoid(raw) = alpha`` (``alpha`` clipped just inside the bounds)."""
    p = min(max((alpha - lo) / (hi - lo), _RATE_MARGIN), 1.0 - _RATE_MARGIN)
    return math.log(p / (1.0 - p))


@register_model
class StableDynamics(ODEWorldModel):
    """Globally exponentially stable learned dynamics ``xdot = f(x)`` (Manek & Kolter eq. 10).

    Args:
        state_dim: ``n`` in ``x: (batch, n)``.
        hidden: widths of the nominal MLP ``fhat`` (paper: ``(100, 100)``).
        lyap_hidden: widths of ``V``'s ICNN (paper: ``(60, 60)``).
        alpha: certified decay rate, ``dV/dt <= -alpha V``. A number without ``alpha_bounds``:
            that fixed rate (the paper's released code: 0.01). With ``alpha_bounds``: where
            the learned rate starts. ``None`` (default): learned, starting at ``ALPHA_INIT`` = 1.
        alpha_bounds: ``(lo, hi)``, ``0 < lo < hi``: the rate is learned,
            ``alpha = lo + (hi - lo) sigmoid(alpha_raw)`` with ``alpha_raw`` a parameter (so
            ``fit`` trains it with the weights, see ``fit``'s ``rate_weight``, and
            ``calibrate_rate`` sets it from data). Default ``ALPHA_BOUNDS`` = (0.01, 10) when
            ``alpha`` is ``None``. The certificate states the rate of the stored weights.
        eps: ``V(x) >= eps ||x - x_eq||^2`` (0.01).
        d: smoothed-ReLU width in ``V`` (eq. 13).
        warp: ``None`` or ``"coupling"``: an invertible input warp of ``V`` (eq. 14); then
            ``V`` is not convex and the stability claim rests on falsification, not on
            construction (see ``lyapunov.py``).
        x_eq: the equilibrium ``(n,)``; default the origin.
        dt: step of ``step``.
        integrator: ``"euler"``, ``"rk4"`` (default) or a torchdiffeq method name.
        keep_guarantee: ``step`` rescales the integrator's result so that
            ``V(x_{k+1}) <= exp(-alpha dt) V(x_k)`` (see ``step``). Default ``True``.
        lyap_shift: ``"value"`` (the paper's eq. 12) or ``"tangent"`` (Bregman shift, no
            flat region of ``V`` around ``x_eq``; trains more reliably, see ``LyapunovFunction``).
        lyap_quadratic: add a learned quadratic ``||L (x - x_eq)||^2`` to ``V`` so its shape
            near ``x_eq`` is learned rather than ``eps ||dx||^2`` (see ``LyapunovFunction``).

    Attributes:
        lyapunov: the ``LyapunovFunction`` ``V``, callable on ``(batch, n)`` -> ``(batch,)``.
        alpha: the current decay rate (a float), alpha_bounds (``None`` for a fixed rate),
        x_eq, state_dim, action_dim (0), dt, integrator, device, dtype.

    Example::

        model = StableDynamics(2)                                  # rate learned in (0.01, 10)
        model = StableDynamics(2, alpha=0.3, alpha_bounds=(0.1, 3))  # learned, starting at 0.3
        model = StableDynamics(2, alpha=0.3)                       # fixed at 0.3
        fit(model, (x, xdot))
        cert = model.certificate()       # cert.alpha == model.alpha
        cert.time_to(1e-3, region=1.0)   # when every start within 1 of x_eq is within 1e-3
    """

    def __init__(
        self,
        state_dim: int,
        *,
        hidden: Sequence[int] = (100, 100),
        lyap_hidden: Sequence[int] = (60, 60),
        alpha: float | None = None,
        alpha_bounds: tuple[float, float] | None = None,
        eps: float = 0.01,
        d: float = 0.1,
        warp: str | None = None,
        x_eq: torch.Tensor | Sequence[float] | None = None,
        dt: float = 0.01,
        integrator: str = "rk4",
        keep_guarantee: bool = True,
        lyap_shift: str = "value",
        lyap_quadratic: bool = False,
    ) -> None:
        self._init_stable(state_dim, 0, hidden, lyap_hidden, alpha, alpha_bounds, eps, d, warp, x_eq, dt, integrator, keep_guarantee,
                          lyap_shift, lyap_quadratic)

    def _init_stable(self, state_dim, action_dim, hidden, lyap_hidden, alpha, alpha_bounds, eps, d, warp, x_eq, dt, integrator, keep_guarantee,
                     lyap_shift, lyap_quadratic, **network: Any) -> None:
        super().__init__(state_dim, action_dim, dt, integrator)
        self._init_rate(alpha, alpha_bounds)
        self.hidden = tuple(int(h) for h in hidden)
        self.keep_guarantee = bool(keep_guarantee)
        self.fhat = nominal_network(state_dim, action_dim, self.hidden, **network)
        self.lyapunov = LyapunovFunction(
            state_dim, tuple(lyap_hidden), eps=eps, d=d, warp=warp, x_eq=_as_x_eq(x_eq, state_dim), shift=lyap_shift, quadratic=lyap_quadratic
        )

    @property
    def x_eq(self) -> torch.Tensor:
        """The equilibrium, ``(state_dim,)`` (a buffer of ``lyapunov``)."""
        return self.lyapunov.x_eq

    # -- the decay rate ------------------------------------------------------------------
    def _init_rate(self, alpha: float | None, alpha_bounds: Any) -> None:
        if alpha_bounds is None and alpha is not None:
            self._alpha_init = _check_rate("alpha", alpha)
            self.alpha_bounds = None
            self.register_parameter("alpha_raw", None)
            return
        lo, hi = _check_bounds(ALPHA_BOUNDS if alpha_bounds is None else alpha_bounds)
        start = ALPHA_INIT if alpha is None else _check_rate("alpha", alpha)
        if not lo <= start <= hi:
            raise ValueError(f"alpha (the learned rate's start) must lie in alpha_bounds [{lo:g}, {hi:g}], got {alpha!r}")
        self._alpha_init = start
        self.alpha_bounds = (lo, hi)
        self.alpha_raw = nn.Parameter(torch.tensor(_rate_logit(start, lo, hi), dtype=torch.get_default_dtype()))

    @property
    def learned_rate(self) -> bool:
        """Whether ``alpha`` is a trained parameter (``alpha_bounds`` given) rather than fixed."""
        return self.alpha_bounds is not None

    def _rate(self) -> Rate:
        """The rate eq. 10 and the rescale use: the fixed float, or ``lo + (hi - lo) sigmoid(alpha_raw)``
        as a 0-dim tensor in the weights' dtype (differentiable; under ``vmap`` each member's own)."""
        if self.alpha_bounds is None:
            return self._alpha_init
        lo, hi = self.alpha_bounds
        return torch.sigmoid(self.alpha_raw).mul(hi - lo).add(lo)

    @property
    def alpha(self) -> float:
        """The certified decay rate of the current weights (``dV/dt <= -alpha V``), a float.

        A learned rate is evaluated in float64 from the stored ``alpha_raw`` (so the same on
        every device and for a float32 model and its float64 copy; the float32 model's own
        rate differs by an ulp, inside the projection's rounding guard)."""
        if self.alpha_bounds is None:
            return self._alpha_init
        lo, hi = self.alpha_bounds
        return lo + (hi - lo) * float(torch.sigmoid(self.alpha_raw.detach().to("cpu", torch.float64)))

    @alpha.setter
    def alpha(self, value: float) -> None:
        """Set the rate: a fixed one is replaced; a learned one moves to ``value`` (inside its bounds)."""
        value = _check_rate("alpha", value)
        if self.alpha_bounds is None:
            self._alpha_init = value
            return
        lo, hi = self.alpha_bounds
        if not lo <= value <= hi:
            raise ValueError(f"alpha must lie in alpha_bounds [{lo:g}, {hi:g}], got {value!r}")
        with torch.no_grad():
            self.alpha_raw.fill_(_rate_logit(value, lo, hi))

    def data_rates(self, x: torch.Tensor, xdot: torch.Tensor) -> torch.Tensor:
        """``-grad V(x) . xdot / V(x)``: ``(N,)``, the rate at which each observed pair decreases ``V``.

        ``x, xdot: (N, state_dim)`` (states and their time derivatives, without input). A pair
        with rate ``>= alpha`` obeys eq. 10's constraint, so the projection leaves it in place;
        pairs at ``x_eq`` (``V = 0``) give ``+inf``.
        """
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        xdot = torch.as_tensor(xdot, dtype=self.dtype, device=self.device)
        if x.ndim != 2 or x.shape[1] != self.state_dim or xdot.shape != x.shape:
            raise ValueError(f"x and xdot must both have shape (N, state_dim={self.state_dim}), got {tuple(x.shape)} and {tuple(xdot.shape)}")
        with torch.no_grad():
            V, grad_V = self.lyapunov.forward_and_grad(x)
            rate = -(grad_V * xdot).sum(-1) / V.clamp_min(torch.finfo(V.dtype).tiny)
        return torch.where(V > 0, rate, torch.full_like(rate, math.inf))

    def calibrate_rate(self, data: Any, *, quantile: float = 0.0) -> float:
        """Set a learned rate from data: the largest rate that all but ``quantile`` of the pairs obey.

        ``data``: ``(x, xdot)`` tensors ``(N, state_dim)`` (no inputs). The rate becomes the
        ``quantile`` of ``data_rates(x, xdot)`` (0: their minimum), clipped to ``alpha_bounds``;
        with the current ``V`` the projection then leaves those pairs' true derivatives
        feasible (eq. 10 moves ``f`` no farther from them). Returns the new ``alpha``.
        """
        if not self.learned_rate:
            raise ValueError("calibrate_rate needs a learned rate: build the model with alpha_bounds=(lo, hi)")
        if not (isinstance(quantile, (int, float)) and 0.0 <= quantile < 1.0):
            raise ValueError(f"quantile must be a number in [0, 1), got {quantile!r}")
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError(f"data must be (x, xdot), got {type(data).__name__}")
        rates = self.data_rates(*data).double()
        finite = rates[torch.isfinite(rates)]
        if finite.numel() == 0:
            raise ValueError("data: every pair sits at x_eq, they say nothing about the rate")
        lo, hi = self.alpha_bounds
        self.alpha = min(max(float(torch.quantile(finite, quantile)), lo), hi)
        return self.alpha

    # -- settling: when the certificate puts a box within eps of x_eq ----------------------
    def lyapunov_max(self, box: Any) -> float:
        """``max V`` over ``box`` (``state_dim`` pairs ``[lo, hi]``, state coordinates), exactly:
        ``V`` is convex, so the maximum is at one of the ``2^n`` corners (evaluated in float64)."""
        import copy

        from .verification import parse_box

        bounds = parse_box(box, self.state_dim, flat=True)
        if self.state_dim > 20:
            raise ValueError(f"box: V's maximum is taken over the 2^state_dim corners; state_dim {self.state_dim} > 20 is too many")
        if not self.lyapunov.convex:
            raise ValueError("the maximum of V over a box needs a convex V (no warp): only then is it at a corner")
        corners = torch.cartesian_prod(*[row for row in bounds]).reshape(-1, self.state_dim)
        with torch.no_grad():
            return float(copy.deepcopy(self.lyapunov).to("cpu", torch.float64)(corners).max())

    def _settling_log_ratio(self, eps: float, box: Any) -> float:
        """``ln(max_box V / (c1 eps^2))`` for ``settling_time`` and ``settle_within``."""
        eps = _check_rate("eps", eps, positive=True)
        v_max = self.lyapunov_max(box)
        return math.log(v_max / (self.lyapunov.lower_constant() * eps**2)) if v_max > 0 else -math.inf

    def settling_time(self, eps: float, box: Any) -> float:
        """When this model's certificate puts every state of ``box`` within ``eps`` of ``x_eq``.

        From ``V``'s levels: ``V(x(t)) <= exp(-alpha t) V(x(0))`` and ``V >= c1 ||x - x_eq||^2``,
        so every start of the box is within ``eps`` after ``t = ln(max_box V / (c1 eps^2)) /
        alpha`` (0 when that is negative). ``V`` is convex, so its maximum over the box is at one
        of the ``2^n`` corners (evaluated in float64): no sampling. Tighter than
        ``Certificate.time_to``'s overshoot form, which bounds ``V(x(0))`` by ``c2 R^2``. With
        ``keep_guarantee`` the claim is the step map's, so the time is rounded up to whole steps;
        for a controlled model it is the unforced (``u = 0``) motion.

        Args:
            eps: the distance to ``x_eq``.
            box: ``state_dim`` pairs ``[lo, hi]`` in state coordinates.
        """
        log_ratio = self._settling_log_ratio(eps, box)
        if log_ratio <= 0:
            return 0.0
        t = log_ratio / self.alpha
        if self.keep_guarantee:
            t = math.ceil(t / self.dt * (1 - 1e-12)) * self.dt
        return t

    def settle_within(self, eps: float, box: Any, seconds: float) -> float:
        """Raise the certified rate, never lower it, to the least at which ``settling_time(eps,
        box) <= seconds``; returns the new ``alpha``.

        Eq. 10 holds at any rate, so this keeps the certificate and makes it say more: every
        start of ``box`` within ``eps`` of ``x_eq`` by ``seconds``. The field changes where the
        data decreased ``V`` slower than the new rate (the projection now acts there);
        ``fit_settling`` refits the networks under it. A learned rate's lower bound moves up to
        the new rate, so later training cannot undo it. Raises ``ValueError`` when it would
        need more than the rate's upper bound (or, with ``keep_guarantee``, ``seconds`` is
        shorter than one step).
        """
        seconds = _check_rate("seconds", seconds, positive=True)
        log_ratio = self._settling_log_ratio(eps, box)
        target = float(seconds)
        if self.keep_guarantee:  # the claim holds at whole steps: the last one by `seconds`
            target = math.floor(seconds / self.dt * (1 + 1e-12)) * self.dt
            if target <= 0:
                raise ValueError(f"seconds={seconds!r} is shorter than one step (dt={self.dt}): the step map's claim holds at whole steps")
        needed = max(log_ratio, 0.0) / target * (1 + 1e-9)  # the margin keeps the rounded time at or below `target`
        rate = max(self.alpha, needed)
        if not self.learned_rate:
            self._alpha_init = rate
            return rate
        lo, hi = self.alpha_bounds
        lo = max(lo, needed)
        if rate >= hi or lo >= hi:
            raise ValueError(f"settling {eps:g} from the box within {seconds:g} needs alpha {rate:.4g}, at or above the rate's upper bound {hi:g}")
        self.alpha_bounds = (lo, hi)
        self._alpha_init = min(max(self._alpha_init, lo), hi)  # the config's start must lie in the bounds
        with torch.no_grad():  # at the floor itself the logit is clipped just inside: alpha stays above `needed`
            self.alpha_raw.fill_(_rate_logit(rate, lo, hi))
        return self.alpha

    # -- eq. 10 ------------------------------------------------------------------------
    def _fhat_with_eq(self, x: torch.Tensor, u: torch.Tensor | None, x_with_eq: torch.Tensor | None = None) -> torch.Tensor:
        # fhat(x_eq, 0) rides along as one extra row of the same batch, recomputed with the
        # current weights each call (it changes during training): (batch + 1, n).
        if u is None:
            return self.fhat(torch.cat([x, self.x_eq.unsqueeze(0)], dim=0) if x_with_eq is None else x_with_eq)
        xu = torch.cat([x, u], dim=-1)
        eq_row = torch.cat([self.x_eq.unsqueeze(0), u.new_zeros(1, u.shape[-1])], dim=-1)  # also for an empty batch
        return self.fhat(torch.cat([xu, eq_row], dim=0))

    def _fhat_centered(self, x: torch.Tensor, u: torch.Tensor | None, x_with_eq: torch.Tensor | None = None) -> torch.Tensor:
        """``fhat_c(x, u) = fhat(x, u) - fhat(x_eq, 0)``: ``(batch, n)``."""
        out = self._fhat_with_eq(x, u, x_with_eq)
        return out[:-1] - out[-1:]

    def _slack(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor | None:
        return None

    def _field_and_V(self, x: torch.Tensor, u: torch.Tensor | None, precise: bool = True, alpha: Rate | None = None,
                     slack: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 10 at ``x``, and ``V(x)`` (which the guarantee-keeping step reuses); ``alpha``: ``_rate()`` if known;
        ``slack``: ``sigma(x, u)`` if known (the step's first stage shares it with the rescale).

        ``precise``: ``g(x) - g(x_eq)`` by the ICNN's centered pass (relative precision down to
        ``x_eq``); ``False`` subtracts two evaluations, which is cheaper and good to ~``u |g|``
        absolute: for the integrator's inner stages, which shape the step but carry no claim.
        """
        lyapunov = self.lyapunov
        if alpha is None:
            alpha = self._rate()
        x_eq = lyapunov.x_eq
        x_with_eq = torch.cat([x, x_eq.unsqueeze(0)], dim=0)  # shared by fhat and V
        dx = x - x_eq
        dx_sq = (dx * dx).sum(-1)
        fhat_out = self._fhat_with_eq(x, u, x_with_eq)  # centered inside the projection
        # f is exactly zero at the equilibrium whatever the rounding of fhat_c: it is multiplied
        # by sign(||x - x_eq||^2 (+ ||u||^2)), 0 there and 1 elsewhere (cheaper than a mask).
        keep = torch.sign(dx_sq if u is None else dx_sq + (u * u).sum(-1))
        if slack is None:
            slack = self._slack(x, u)
        if lyapunov.warp is None and lyapunov.L is None:
            # The default V (convex, eq. 12): eq. 12 and eq. 10 in one node, see _ConvexField.
            gx, dg = lyapunov.g.forward_and_grad(x_with_eq, centered=precise)
            if not precise:
                gx = torch.cat([gx[:-1] - gx[-1:], gx[-1:]])  # the centered form _outer takes
            tangent = lyapunov.shift == "tangent"
            if _FunctorchState.depth:  # under vmap: plain ops, ordinary autograd
                V, grad_V = _outer(gx, dg, dx, dx_sq, lyapunov.eps, lyapunov.d, tangent)[:2]
                return _project_plain(fhat_out[:-1] - fhat_out[-1:], V, grad_V, alpha, slack, keep), V
            if torch.is_grad_enabled() and (fhat_out.requires_grad or gx.requires_grad or dx.requires_grad or (slack is not None and slack.requires_grad)
                                            or (isinstance(alpha, torch.Tensor) and alpha.requires_grad)):
                return _ConvexField.apply(fhat_out, gx, dg, dx, dx_sq, slack, keep, alpha, lyapunov.eps, lyapunov.d, tangent)
            V, grad_V = _outer(gx, dg, dx, dx_sq, lyapunov.eps, lyapunov.d, tangent)[:2]
        elif lyapunov.warp is None:  # convex V with a learned quadratic: share [x; x_eq], dx and ||dx||^2
            V, grad_V = lyapunov.forward_and_grad(x, x_with_eq=x_with_eq, dx=dx, dx_sq=dx_sq, precise=precise)
        else:
            V, grad_V = lyapunov.forward_and_grad(x)
        f = _project_onto_decrease(fhat_out, V, grad_V, alpha, slack, keep, center=True)
        return f, V

    def _derivative(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        # Fitting the weights on data (grad mode, x without grad) needs no precision near x_eq;
        # evaluating the field (no grad mode, or a gradient in x: the falsifier, a planner) does.
        return self._field_and_V(x, u, precise=not torch.is_grad_enabled() or x.requires_grad)[0]

    # -- accepted range ------------------------------------------------------------------
    def _check_x(self, x: torch.Tensor, name: str = "x") -> None:
        super()._check_x(x, name)
        if self.validate_finite and not _FunctorchState.depth and x.numel():
            _check_range(x - self.x_eq, name, f"{name} - x_eq")

    def _check_u(self, u: torch.Tensor | None, batch: int, name: str = "u") -> torch.Tensor | None:
        u = super()._check_u(u, batch, name)
        if u is not None and self.validate_finite and not _FunctorchState.depth and u.numel():
            _check_range(u, name, name)
        return u

    def step(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """The state ``dt`` later: ``x: (batch, n)`` -> ``(batch, n)``.

        With ``keep_guarantee`` (default) the integrator's result ``y`` is pulled toward
        ``x_eq`` by ``s = min(1, exp(-alpha dt) V(x) / V(y))``, so that
        ``V(x_{k+1}) <= exp(-alpha dt) V(x_k)`` holds for the step map (by convexity of
        ``V``; checked by evaluation with a warp). Without it, RK4 at dt = 0.2 breaks the
        decrease on about 2% of random states and Euler at dt = 0.01 on most.
        Accuracy cost: ``y`` is unchanged wherever the integrator already meets the bound;
        elsewhere the move is of the order of the integrator's local error (``O(dt^5)`` for
        RK4), so the step keeps the integrator's order. Differentiable in ``x`` (and ``u``).
        Precision: the bound holds for ``V`` as evaluated, and ``V`` keeps its relative
        precision down to ``x_eq`` (the ICNN's centered pass computes ``g(x) - g(x_eq)``
        without cancellation); near a nonzero ``x_eq`` the states themselves are rounded to
        ~``u |x_eq|``, hence the certificate's per-dtype excluded ball (``cert.numerics``).
        Accepted range: every ``|x_i - x_eq_i|`` and ``|u_i|`` at most :func:`max_offset`
        (1.8e16 in float32, 1.3e151 in float64; ``ValueError`` beyond, where ``V`` would
        overflow into NaN). An empty batch gives an empty result.
        """
        return super().step(x, u)

    def _step(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        Vx: list[torch.Tensor] = []
        alpha = self._rate()  # once per step, shared by the stages and the rescale
        slack_x = self._slack(x, u)  # sigma(x, u): the first stage's and the rescale's

        def field(z: torch.Tensor) -> torch.Tensor:
            # V(x) (the first stage) and V(y) (the rescale) decide the certified bound and are
            # computed precisely; the inner stages only shape y (a third cheaper each).
            f, V = self._field_and_V(z, u, precise=z is x, alpha=alpha, slack=slack_x if z is x else None)
            if z is x and not Vx:  # Euler's and RK4's first stage: keep V(x) for the rescale
                Vx.append(V)
            return f

        # The weights are fixed during the step: the ICNN's stacked input weights and
        # softplus(U) are built once for the four stages and the rescale (g(F(x_eq)) and
        # fhat(x_eq) are still evaluated with them in every stage).
        lyapunov = self.lyapunov
        with lyapunov.g.reuse_weights():
            y = integrate(field, x, self.dt, self.integrator)
            if not self.keep_guarantee:
                return y
            return lyapunov_rescale(
                x, y, lyapunov, alpha, self.dt, lyapunov.x_eq,
                slack=slack_x, verify=lyapunov.warp is not None, Vx=Vx[0] if Vx else None,
            )

    def _inference_rollout(self, x0: torch.Tensor, controls: torch.Tensor | None, horizon: int, wrap: list[int]) -> torch.Tensor | None:
        """Without autograd, on a CPU in float32: the compiled rollout of
        ``rollout_native`` (every step's eq. 10, ``V``, its gradient and the rescale for a tile of
        rows through the whole horizon), checked against ``_step`` once per lowering; else
        ``None`` (the steps)."""
        from .rollout_native import compiled_rollout

        if type(self) not in (StableDynamics, StableControlledDynamics):
            return None
        lyapunov = self.lyapunov
        # what the kernel bakes in besides the tensors (a fixed rate set through ``alpha`` is a float)
        settings = (self.integrator, self.keep_guarantee, float(self.dt), self._alpha_init, self.alpha_bounds, lyapunov.shift,
                    lyapunov.eps, lyapunov.d, lyapunov.g.d, getattr(self, "input_gain", None))
        return compiled_rollout(self, x0, controls, horizon, wrap, settings)

    # -- certificate -------------------------------------------------------------------
    def _claim(self, domain: str) -> str:
        return "exponential_stability" if domain == "continuous" else "discrete_exponential_stability"

    def certificate(self, domain: str | None = None, *, eps: float | None = None, region: Any = None) -> Certificate:
        """What this model guarantees, for its current weights (and its current rate ``alpha``).

        Args:
            domain: ``"continuous"`` (the ODE ``xdot = f(x)``) or ``"discrete"`` (the map
                ``step``; needs ``keep_guarantee``). Default: ``"discrete"`` when
                ``keep_guarantee`` else ``"continuous"``.
            eps, region: with both, ``details["settling"]`` (and the summary) states when every
                start in ``region`` (a radius around ``x_eq``, or ``state_dim`` pairs
                ``[lo, hi]``) is certified within ``eps`` of ``x_eq``: ``cert.time_to(eps, region)``;
                for a box and a convex ``V`` also ``time_from_levels`` (``settling_time``, tighter).

        Evidence is ``["by_construction"]`` for a convex ``V`` (no warp); with a warp it is
        empty until ``cert.check(model)`` passes (then add ``"falsification"``).
        """
        if (eps is None) != (region is None):
            raise ValueError(f"eps and region go together (the settling time from region to eps), got eps={eps!r}, region={region!r}")
        if domain is None:
            domain = "discrete" if self.keep_guarantee else "continuous"
        if domain not in ("continuous", "discrete"):
            raise ValueError(f"domain must be 'continuous' or 'discrete', got {domain!r}")
        if domain == "discrete" and not self.keep_guarantee:
            raise ValueError("the plain integrator step carries no discrete guarantee; build the model with keep_guarantee=True")
        V = self.lyapunov
        details: dict[str, Any] = {
            "d": V.d,
            "warp": V.warp_name,
            "lyap_shift": V.shift,
            "lyap_quadratic": V.L is not None,
            "state_dim": self.state_dim,
            "dtype": str(next(self.parameters()).dtype).replace("torch.", ""),
            "precision": "exact-arithmetic claim; evaluated in float64 or float32 it holds to the tolerance of "
            "`numerics` outside its ball around x_eq (only the rounding of states near a nonzero x_eq)",
        }
        if V.convex:
            details["lipschitz_bound_g"] = V.g.lipschitz_bound()
        cert = Certificate(
            claim=self._claim(domain),
            alpha=self.alpha,
            c1=V.lower_constant(),
            c2=V.upper_constant(),
            equilibrium=[float(v) for v in self.x_eq.detach().cpu().tolist()],
            time_domain=domain,
            integrator=f"{self.integrator}+lyapunov_rescale" if domain == "discrete" else None,
            h=self.dt if domain == "discrete" else None,
            iss_gain=self._iss_gain(domain),
            evidence=["by_construction"] if V.convex else [],
            weights_hash=model_hash(self),
            model_class=type(self).__name__,
            details=details,
            numerics=_numerics([float(v) for v in self.x_eq.detach().cpu().tolist()], V.eps),
        )
        if self.learned_rate:
            cert.details["alpha_bounds"] = list(self.alpha_bounds)
        if eps is None:
            return cert
        cert = cert.with_settling(eps, region)
        if V.convex and not isinstance(region, (int, float)):  # a box: V's exact maximum over it gives the tighter time
            cert.details["settling"] = {**cert.details["settling"], "time_from_levels": self.settling_time(eps, region),
                                        "max_V_region": self.lyapunov_max(region)}
        return cert

    def _iss_gain(self, domain: str) -> Any:
        return None

    def config(self) -> dict[str, Any]:
        V = self.lyapunov
        return {
            "state_dim": self.state_dim,
            "hidden": list(self.hidden),
            "lyap_hidden": list(V.g.hidden),
            # A learned rate's start (its current value is the weight alpha_raw): members of
            # one ensemble share a config while their rates differ.
            "alpha": self._alpha_init,
            **({"alpha_bounds": list(self.alpha_bounds)} if self.learned_rate else {}),
            "eps": V.eps,
            "d": V.d,
            "warp": V.warp_name,
            "x_eq": [float(v) for v in self.x_eq.detach().cpu().tolist()],
            "dt": self.dt,
            "integrator": self.integrator,
            "keep_guarantee": self.keep_guarantee,
            "lyap_shift": V.shift,
            "lyap_quadratic": V.L is not None,
            **network_options(self.fhat),
        }

    def extra_repr(self) -> str:
        rate = f"alpha={self.alpha:.4g} (learned in [{self.alpha_bounds[0]:g}, {self.alpha_bounds[1]:g}])" if self.learned_rate else f"alpha={self.alpha}"
        return f"state_dim={self.state_dim}, action_dim={self.action_dim}, {rate}, dt={self.dt}, integrator={self.integrator!r}, keep_guarantee={self.keep_guarantee}"


@register_model
class StableControlledDynamics(StableDynamics):
    """Learned dynamics with inputs, exponentially stable without input and input-to-state stable with it.

    ``fhat(x, u)`` (an MLP on ``[x, u]``, centered at ``(x_eq, 0)``) is projected onto

        { f : grad V(x) . f <= -alpha V(x) + sigma(x, u) },
        sigma(x, u) = gamma * sigmoid(s(x, u)) * ||u||^2,

    with ``s`` a learned MLP and ``gamma = input_gain``. So ``0 <= sigma(x, u) <= gamma ||u||^2``
    and ``sigma(x, 0) = 0``.

    Claims (for any weights; ``V`` convex, i.e. no warp, and ``u`` measurable and bounded):

    - ``u = 0``: ``dV/dt <= -alpha V``: globally exponentially stable to ``x_eq`` as
      ``StableDynamics`` (``f(x_eq, 0) = 0``).
    - any input: ``dV/dt <= -alpha V + gamma ||u||^2``, hence
      ``V(x(t)) <= exp(-alpha t) V(x(0)) + gamma sup ||u||^2 / alpha`` and with
      ``c1 ||x - x_eq||^2 <= V <= c2 ||x - x_eq||^2``:
      ``||x(t) - x_eq||^2 <= (c2/c1) exp(-alpha t) ||x(0) - x_eq||^2 + gamma sup||u||^2 / (alpha c1)``:
      input-to-state stable, bounded torques give bounded states.
    - Inside that bound the input may still raise ``V`` (inject energy, as a swing-up
      needs) at rate up to ``sigma(x, u)``, which training learns.
    - The discrete ``step`` keeps ``V(x_{k+1}) <= exp(-alpha h) V(x_k) + (1 - exp(-alpha h)) sigma(x_k, u_k) / alpha``
      (the exact integral of the continuous bound with ``sigma`` held over the step), by
      the same rescale toward ``x_eq`` as ``StableDynamics.step``.

    Assumption: the equilibrium input is ``u = 0`` (shift your actions otherwise).

    Args:
        state_dim, action_dim: ``x: (batch, state_dim)``, ``u: (batch, action_dim)``, ``action_dim >= 1``.
        input_gain: ``gamma``, the certified ISS gain (default 10).
        sigma_hidden: widths of the MLP ``s`` (default ``(32,)``).
        angle_dims, control_affine, activation: priors of the nominal ``fhat`` (a
            ``DynamicsNet``, as in ``SimpleDynamics``); the projection and ``V`` are unchanged,
            so the claims hold for any ``fhat``. ``V`` sees the raw state, so ``f`` itself is
            periodic in the angles only where the projection is inactive.
        Other arguments as ``StableDynamics``.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        *,
        hidden: Sequence[int] = (100, 100),
        lyap_hidden: Sequence[int] = (60, 60),
        sigma_hidden: Sequence[int] = (32,),
        input_gain: float = 10.0,
        alpha: float | None = None,
        alpha_bounds: tuple[float, float] | None = None,
        eps: float = 0.01,
        d: float = 0.1,
        warp: str | None = None,
        x_eq: torch.Tensor | Sequence[float] | None = None,
        dt: float = 0.01,
        integrator: str = "rk4",
        keep_guarantee: bool = True,
        lyap_shift: str = "value",
        lyap_quadratic: bool = False,
        angle_dims: int = 0,
        control_affine: bool = False,
        activation: str = "relu",
    ) -> None:
        if not isinstance(action_dim, int) or action_dim < 1:
            raise ValueError(f"action_dim must be an int >= 1 for a controlled model (use StableDynamics for 0), got {action_dim!r}")
        self._init_stable(
            state_dim, action_dim, hidden, lyap_hidden, alpha, alpha_bounds, eps, d, warp, x_eq, dt, integrator, keep_guarantee, lyap_shift, lyap_quadratic,
            angle_dims=angle_dims, control_affine=control_affine, activation=activation,
        )
        self.input_gain = _check_rate("input_gain", input_gain)
        self.sigma_hidden = tuple(int(h) for h in sigma_hidden)
        self.sigma_net = mlp(state_dim + action_dim, self.sigma_hidden, 1)

    def sigma(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``sigma(x, u) = gamma * sigmoid(s(x, u)) * ||u||^2``: ``(batch,)``, in ``[0, gamma ||u||^2]``."""
        gate = torch.sigmoid(self.sigma_net(torch.cat([x, u], dim=-1))).squeeze(-1)
        return self.input_gain * gate * (u * u).sum(-1)

    def _slack(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor | None:
        return None if u is None else self.sigma(x, u)

    def _claim(self, domain: str) -> str:
        return "input_to_state_stability"

    def _iss_gain(self, domain: str) -> Any:
        # The dissipation inequality in the certificate's own time domain (see time_domain).
        if domain == "discrete":
            return {
                "gamma": self.input_gain,
                "dissipation": "V(x_{k+1}) <= exp(-alpha h) V(x_k) + (1 - exp(-alpha h)) sigma(x_k, u_k) / alpha, "
                "sigma(x, u) <= gamma ||u||^2",
                "state_bound": "||x_k-x_eq||^2 <= (c2/c1) exp(-alpha h k) ||x_0-x_eq||^2 + gamma sup||u||^2 / (alpha c1)",
            }
        return {
            "gamma": self.input_gain,
            "dissipation": "dV/dt <= -alpha V + sigma(x, u), sigma(x, u) <= gamma ||u||^2",
            "state_bound": "||x(t)-x_eq||^2 <= (c2/c1) exp(-alpha t) ||x(0)-x_eq||^2 + gamma sup||u||^2 / (alpha c1)",
        }

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["action_dim"] = self.action_dim
        cfg["sigma_hidden"] = list(self.sigma_hidden)
        cfg["input_gain"] = self.input_gain
        return cfg
