"""LyaNet training of neural ODEs (Rodriguez et al., ICML 2022) and its baselines.

The model is the data-controlled neural ODE of ``neural_ode.py`` (eq. 1-3). Training picks
one of four methods by name (``TRAINERS``):

- ``"monte_carlo"`` (Alg. 1): sample hidden states ``eta`` on a state box ``H`` and times
  ``t ~ U(0, 1)`` independently of the ODE, and minimise the point-wise Lyapunov loss
  ``max(0, dV_y/deta . f(eta, x, t) + kappa V_y(eta))`` (eq. 12) at the samples. No ODE is
  solved during training, so every sample is processed in parallel.
- ``"path_integral"`` (Alg. 2): roll the ODE out on a fixed grid ``0 = t_0 < ... < t_G = 1``
  *without* gradients, then penalise the discrete decrease condition along the path in its
  exact exponential form ``V(eta_{j}) <= exp(-kappa (t_j - t_{j-1})) V(eta_{j-1})`` (the
  printed eq. 16 is garbled). Gradients reach ``f`` through one solver step re-taken from
  each (detached) path state, so the G segments are again processed in parallel.
- ``"backprop"`` / ``"adjoint"``: the standard neural ODE baseline, the supervised loss at
  ``t = 1`` differentiated through the solver's operations or by the adjoint method
  (torchdiffeq's ``odeint_adjoint``).

Potentials ``V_y(eta) = L(psi(eta), y)`` (eq. 11) come from ``lyapunov_loss.POTENTIALS``:
``"cross_entropy"`` for classification, ``"squared_error"`` for regression.

Our extensions, all off by default (the paper's algorithms are the defaults of ``fit``):
``sampler="targets"`` and ``weighting="sqrt"``/``"relative"`` make Monte Carlo training pin
the regression fixed point (the prediction) precisely; ``kappa_max`` bounds the decay rate
from above (a non-stiff inference ODE); ``random_starts=True`` adds path-integral paths from
random starts in the state box; ``feasible_speed`` is the least speed bound at which eq. 10
can hold from ``eta(0) = 0`` for the cross-entropy potential, and ``decrease_along_paths``
measures where eq. 10 -- the premise of Theorem 3 -- holds on actual inference paths.

Theorem 3 (eq. 15): a model with delta-stable inference dynamics classifies ``x + e``
correctly for ``||e|| <= eps`` whenever ``delta <= log 2 - L eps (1 - exp(-kappa)) / kappa``,
i.e. ``eps* = (log 2 - delta) kappa / (L (1 - exp(-kappa)))``. ``L`` bounds how much an input
perturbation can change ``dV_y/dt = dV_y/deta . f(eta, x, t)`` (proof of Thm. 3, eq. 33-34):
``|dV/deta . (f(eta, x + e, t) - f(eta, x, t))| <= L ||e||``. ``lipschitz_estimate`` returns it
two ways: a certified but loose spectral-norm product bound, and a sampled local estimate
(a lower bound of the supremum: an empirical figure, not a proof).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .lyapunov_loss import POTENTIALS, _check_kappa, lyapunov_derivative, pointwise_lyapunov_loss
from .neural_ode import _OWN_STEPPERS, DataControlledMLP, NeuralODE

__all__ = [
    "SAMPLERS",
    "TRAINERS",
    "sample_hypercube",
    "sample_hypersphere",
    "sample_around_targets",
    "WEIGHTINGS",
    "classification_box",
    "feasible_speed",
    "regression_box",
    "monte_carlo_loss",
    "path_integral_loss",
    "supervised_loss",
    "fit",
    "evaluate",
    "lipschitz_estimate",
    "robustness_radius",
    "theorem3_radii",
    "decrease_along_paths",
    "convergence_rates",
    "FitHistory",
]


# ---------------------------------------------------------------------------------------
# State-space measures mu_H (Alg. 1 line 8, appendix B)
# ---------------------------------------------------------------------------------------


def sample_hypercube(
    n: int, dim: int, half_width: float, *, generator: torch.Generator | None = None, device=None, dtype=None
) -> torch.Tensor:
    """``n`` points uniform on the cube ``[-s, s]^dim``, ``(n, dim)`` (appendix B)."""
    u = torch.rand(n, dim, generator=generator, device=device, dtype=dtype)
    return (2.0 * u - 1.0) * half_width


def sample_hypersphere(
    n: int, dim: int, half_width: float, *, generator: torch.Generator | None = None, device=None, dtype=None
) -> torch.Tensor:
    """``n`` points in the ball that contains the cube ``[-s, s]^dim``, biased to the origin.

    Appendix B: ``r_max = s sqrt(dim)`` (the ball through the cube's corners), radius
    ``r ~ U(0, r_max)`` and a uniform direction (a normalised Gaussian, Muller 1959). The
    density at radius ``r`` falls like ``r^(1 - dim)``: most samples sit near the origin,
    where every inference path starts. ``(n, dim)``.
    """
    direction = torch.randn(n, dim, generator=generator, device=device, dtype=dtype)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    radius = torch.rand(n, 1, generator=generator, device=device, dtype=dtype) * (half_width * math.sqrt(dim))
    return radius * direction


def sample_around_targets(
    targets: torch.Tensor,
    half_width: float,
    *,
    min_radius: float = 1e-4,
    box_fraction: float = 0.25,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Points ``eta`` near each target at every scale, mixed with the cube (our extension).

    For regression with identity readout the potential ``V_y = ||eta - y||^2`` vanishes at
    ``y``, and the decrease condition of eq. 10 must hold at *every* distance from it; the
    cube of appendix B puts almost no mass within ``1e-2`` of ``y`` in 4-D, so the point
    where the learned ``f`` vanishes -- the prediction -- is barely trained. Here a share
    ``1 - box_fraction`` of the rows is ``y + r u`` with ``u`` a uniform direction and
    ``log r`` uniform on ``[log(min_radius * s), log s]`` (every scale equally often), the
    rest uniform on the cube ``[-s, s]^k`` (so the support still covers ``H``).

    Args:
        targets: ``(n, k)`` targets ``y`` (one sample per row).
        half_width: ``s``, the cube's half-width and the largest radius.
        min_radius: smallest radius as a fraction of ``s``, in ``(0, 1)``.
        box_fraction: share of rows drawn on the cube instead, in ``[0, 1]``.

    Returns:
        ``(n, k)``.
    """
    if not (0.0 < min_radius < 1.0):
        raise ValueError(f"min_radius must be in (0, 1), got {min_radius!r}")
    if not (0.0 <= box_fraction <= 1.0):
        raise ValueError(f"box_fraction must be in [0, 1], got {box_fraction!r}")
    n, k = targets.shape
    opts = dict(generator=generator, device=targets.device, dtype=targets.dtype)
    direction = torch.randn(n, k, **opts)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    log_r = math.log(min_radius) * torch.rand(n, 1, **opts)  # log(r / s) uniform on [log min_radius, 0]
    near = targets + half_width * log_r.exp() * direction
    cube = sample_hypercube(n, k, half_width, **opts)
    use_cube = torch.rand(n, 1, **opts) < box_fraction
    return torch.where(use_cube, cube, near)


#: Measures on the hidden state space, by name. ``"targets"`` (``sample_around_targets``)
#: depends on the regression targets, so it needs identity readout and squared error.
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "hypercube": sample_hypercube,
    "hypersphere": sample_hypersphere,
    "targets": sample_around_targets,
}

#: How the point-wise loss of eq. 12 is weighted (the zero set, the decrease condition, is
#: the same for all): ``"absolute"`` is the paper's ``max(0, Vdot + kappa V)``;
#: ``"relative"`` divides it by ``V`` (``max(0, d log V / dt + kappa)``: a violation costs as
#: much next to the prediction as far from it, but for ``V = ||eta - y||^2`` its gradient
#: in ``f`` grows like ``1 / ||eta - y||``, so the smallest scales dominate training);
#: ``"sqrt"`` divides by ``sqrt(V)``: for the squared-error potential the gradient in ``f``
#: then has the same size at every distance (our extensions).
WEIGHTINGS = ("absolute", "relative", "sqrt")


def _weigh(point: torch.Tensor, v: torch.Tensor, weighting: str) -> torch.Tensor:
    """The point-wise loss divided by ``V`` or ``sqrt(V)`` (treated as constants) or not at all."""
    if weighting == "relative":
        return point / v.detach().clamp_min(1e-12)
    if weighting == "sqrt":
        return point / v.detach().clamp_min(1e-12).sqrt()
    return point


def classification_box(n_classes: int, kappa: float) -> float:
    """Half-width ``s`` of the hypercube ``H`` for cross-entropy potentials (appendix B, eq. 49).

    ``s`` solves ``V_y(eta*) = exp(-kappa)`` at the corner ``eta*_i = s`` for the correct class
    and ``-s`` otherwise, with identity readout:
    ``CE(eta*) = log(1 + (m - 1) exp(-2 s)) = exp(-kappa)``.
    """
    kappa = _check_kappa(kappa)
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    return 0.5 * math.log((n_classes - 1) / math.expm1(math.exp(-kappa)))


def feasible_speed(n_classes: int, kappa: float) -> float:
    """Smallest speed bound ``v`` (``|f_i| <= v``) that lets eq. 10 hold from ``eta(0) = 0``.

    For the cross-entropy potential with identity readout, ``dV_y/deta = p - e_y`` (``p`` the
    softmax), so with ``|f_i| <= v`` the fastest decrease is ``-dV/dt = v ||p - e_y||_1 =
    2 v (1 - p_y)``; eq. 10 needs it ``>= kappa V = -kappa log p_y``. ``-log p / (1 - p)`` falls
    as ``p_y`` rises, so the start ``p_y = 1/m`` is the hardest point:
    ``v* = kappa log m / (2 (1 - 1/m))``. Appendix B's box ``classification_box`` used as the
    speed bound is below ``v*`` for ``kappa >~ 1.4`` (m = 10): the decrease condition is then
    infeasible at the start of every inference path, which Theorem 3 assumes it is not.
    """
    kappa = _check_kappa(kappa)
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    return kappa * math.log(n_classes) / (2.0 * (1.0 - 1.0 / n_classes))


def regression_box(targets: torch.Tensor, margin: float = 0.5) -> float:
    """Half-width of a cube that holds every target with ``margin`` to spare: for identity
    readout and squared error the inference path runs from ``0`` to ``y``, so it stays in
    ``[-max|y|, max|y|]^k``; the margin lets the dynamics learn to come back from overshoot."""
    if targets.numel() == 0:
        raise ValueError("targets is empty")
    return float(targets.abs().max()) + float(margin)


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------


def _potential(model: NeuralODE, name: str, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``V_y(eta) = L(psi(eta), y)`` (eq. 11) for a batch of targets ``y``."""
    loss = POTENTIALS[name]
    return lambda eta: loss(model.readout(eta), y)


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.repeat_interleave(n, dim=0)


def monte_carlo_loss(
    model: NeuralODE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kappa: float,
    half_width: float,
    potential: str = "cross_entropy",
    n_samples: int = 16,
    sampler: str = "hypercube",
    weighting: str = "absolute",
    kappa_max: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte Carlo Lyapunov loss (Alg. 1 lines 8-9; eq. 45 of appendix B), a scalar.

    For each of the ``batch`` examples, ``n_samples`` pairs ``(eta, t) ~ mu_H x U(0, 1)``;
    the mean point-wise loss (eq. 12) over all ``batch * n_samples`` pairs.

    Args:
        model: the neural ODE; ``model.f(eta, x, t)`` and ``model.readout`` are used.
        x: ``(batch, n)`` inputs; y: ``(batch,)`` labels or ``(batch, m)`` targets.
        kappa: decay rate ``> 0``; half_width: ``s`` of the state box ``H``.
        potential: key of ``POTENTIALS``; sampler: key of ``SAMPLERS`` (``"targets"`` only
            for ``"squared_error"`` with identity readout, where ``eta = y`` is the minimum).
        weighting: ``"absolute"`` (eq. 12), ``"relative"`` or ``"sqrt"`` (eq. 12 divided by
            ``V`` or ``sqrt(V)``; see ``WEIGHTINGS``).
        kappa_max: if given (our extension), also penalise contraction faster than
            ``kappa_max``, ``max(0, -Vdot - kappa_max V)`` (same weighting): the learned
            inference ODE then decays at a rate in ``[kappa, kappa_max]``, so it stays
            non-stiff and a fixed-step solver of step ``h`` stays stable
            (RK4: ``h kappa_max / 2 < 2.78`` for a contraction).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    xs, ys = _repeat(x, n_samples), _repeat(y, n_samples)
    if sampler == "targets":
        if potential != "squared_error" or not isinstance(model.readout, nn.Identity):
            raise ValueError("sampler='targets' needs the squared-error potential and identity readout (eta = y is the minimum)")
        eta = sample_around_targets(ys, half_width, generator=generator)
    else:
        eta = SAMPLERS[sampler](xs.shape[0], model.hidden_dim, half_width, generator=generator, device=x.device, dtype=x.dtype)
    t = torch.rand(xs.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    f = model.f(eta, xs, t)
    v, vdot = lyapunov_derivative(_potential(model, potential, ys), f, eta)
    point = pointwise_lyapunov_loss(v, vdot, kappa)
    if kappa_max is not None:
        if not kappa_max > kappa:
            raise ValueError(f"kappa_max must exceed kappa = {kappa}, got {kappa_max!r}")
        point = point + torch.relu(-vdot - kappa_max * v)
    return _weigh(point, v, weighting).mean()


#: One solver step ``(f(eta, t), eta, t, h) -> eta'`` of the schemes the rolled-out path uses:
#: the same schemes as torchdiffeq's (its ``"rk4"`` is the 3/8 rule), so a step re-taken
#: from a path state lands on the next path state to rounding.
_ONE_STEP = {
    name: (lambda step: lambda f, eta, t, h: step(lambda tt, e: f(e, tt), t, h, eta))(step)
    for name, step in _OWN_STEPPERS.items()
}


def path_integral_loss(
    model: NeuralODE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kappa: float,
    potential: str = "cross_entropy",
    n_steps: int = 10,
    method: str = "rk4",
    weighting: str = "absolute",
    random_starts: bool = False,
    half_width: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Path-integral Lyapunov loss (Alg. 2, eq. 17 with the exponential form of eq. 16).

    Rolls the ODE out on ``n_steps`` equal segments of ``[0, 1]`` without gradients (Alg. 2
    line 8), then re-takes each segment's solver step from its detached start state with
    gradients, and penalises ``max(0, V(eta_j) - exp(-kappa dt) V(eta_{j-1}))`` summed over
    the path, averaged over the batch. The re-taken step reproduces the rolled-out state
    exactly, so the loss value is that of the path; its gradient treats each segment's
    start as given (no backpropagation through the whole solve). ``weighting="relative"``
    (``"sqrt"``) divides each segment's violation by ``V(eta_{j-1})`` (its square root; see
    ``WEIGHTINGS``), so the end of the path, where ``V`` is small, counts more.

    ``random_starts=True`` (our extension) follows a second path per example from a start
    uniform on the cube ``[-half_width, half_width]^k``: eq. 10 is then trained off the
    nominal path too, where a perturbed input sends inference (the premise of Theorem 3);
    the plain Alg. 2 only ever sees the one path from ``eta(0)``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if method not in _ONE_STEP:
        raise ValueError(f"method must be one of {sorted(_ONE_STEP)}, got {method!r}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    eta0 = None
    if random_starts:
        if half_width is None or not half_width > 0:
            raise ValueError(f"random_starts needs half_width > 0 (the cube of start states), got {half_width!r}")
        nominal = model.initial_state(x)
        scattered = sample_hypercube(x.shape[0], model.hidden_dim, half_width, generator=generator, device=x.device, dtype=x.dtype)
        eta0 = torch.cat([nominal, scattered])
        x, y = torch.cat([x, x]), torch.cat([y, y])
    b, h = x.shape[0], 1.0 / n_steps
    times = torch.linspace(0.0, 1.0, n_steps + 1, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        path = model.trajectory(x, times, method=method, step_size=h, eta0=eta0)  # (G + 1, b, k)
    starts = path[:-1].reshape(n_steps * b, -1)
    xs = x.repeat(n_steps, 1)
    ts = times[:-1].repeat_interleave(b)
    ends = _ONE_STEP[method](lambda e, t: model.f(e, xs, t), starts, ts, h)
    ys = y.repeat(n_steps) if y.ndim == 1 else y.repeat(n_steps, 1)
    v = _potential(model, potential, ys)
    decay = math.exp(-_check_kappa(kappa) * h)
    # Segment j runs from path[j] to path[j + 1] (== ends[j] numerically): eq. 16 per segment.
    v_start = v(starts)
    violation = torch.relu(v(ends) - decay * v_start)
    return _weigh(violation, v_start, weighting).reshape(n_steps, b).sum(0).mean()


def supervised_loss(
    model: NeuralODE, x: torch.Tensor, y: torch.Tensor, *, potential: str = "cross_entropy", adjoint: bool = False
) -> torch.Tensor:
    """The baseline objective ``L(psi(eta(1)), y)`` (eq. 5), differentiated through the
    solver (``adjoint=False``) or by the adjoint method."""
    return POTENTIALS[potential](model(x, 1.0, adjoint=adjoint), y).mean()


def _mc(model, x, y, cfg, gen):
    return monte_carlo_loss(model, x, y, kappa=cfg["kappa"], half_width=cfg["half_width"], potential=cfg["potential"],
                            n_samples=cfg["n_samples"], sampler=cfg["sampler"], weighting=cfg["weighting"],
                            kappa_max=cfg["kappa_max"], generator=gen)


def _pi(model, x, y, cfg, gen):
    return path_integral_loss(model, x, y, kappa=cfg["kappa"], potential=cfg["potential"], n_steps=cfg["n_steps"],
                              weighting=cfg["weighting"], random_starts=cfg["random_starts"], half_width=cfg["half_width"],
                              generator=gen)


#: Training objectives by name: ``(model, x, y, config, generator) -> scalar``.
TRAINERS: dict[str, Callable[..., torch.Tensor]] = {
    "monte_carlo": _mc,
    "path_integral": _pi,
    "backprop": lambda m, x, y, cfg, gen: supervised_loss(m, x, y, potential=cfg["potential"]),
    "adjoint": lambda m, x, y, cfg, gen: supervised_loss(m, x, y, potential=cfg["potential"], adjoint=True),
}


# ---------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------


def _adam(params, *, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam as one fused kernel where torch has one for these parameters (CUDA; CPU since
    torch 2.4), else the default. A Monte Carlo step on a small model is about a millisecond
    on a CPU thread, and the default per-tensor update took a quarter of it."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this torch, device or dtype
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@dataclass
class FitHistory:
    """Per-epoch records of ``fit``: training objective, wall-clock seconds of the epoch
    (training only), and validation error / loss when validation data was given."""

    method: str
    kappa: float | None
    half_width: float | None
    train_loss: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    val_error: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


def _check_data(x: torch.Tensor, y: torch.Tensor, potential: str, name: str = "") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"x{name} must be a tensor of shape (n, input_dim), got {getattr(x, 'shape', type(x))}")
    if x.shape[0] == 0:
        raise ValueError(f"x{name} is empty: need at least one training example")
    if not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]:
        raise ValueError(f"y{name} must be a tensor with {x.shape[0]} rows (one per x), got {getattr(y, 'shape', type(y))}")
    if potential == "cross_entropy" and (y.ndim != 1 or y.is_floating_point()):
        raise ValueError(f"y{name} must be integer class labels of shape (n,) for the cross-entropy potential, got {y.dtype} {tuple(y.shape)}")
    if potential == "squared_error" and (y.ndim != 2 or not y.is_floating_point()):
        raise ValueError(f"y{name} must be float targets of shape (n, output_dim) for the squared-error potential, got {y.dtype} {tuple(y.shape)}")
    if not bool(torch.isfinite(x).all()) or (y.is_floating_point() and not bool(torch.isfinite(y).all())):
        raise ValueError(f"x{name}/y{name} contain NaN or inf")


def fit(
    model: NeuralODE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str = "monte_carlo",
    potential: str = "cross_entropy",
    kappa: float | None = None,
    half_width: float | None = None,
    sampler: str = "hypercube",
    weighting: str = "absolute",
    random_starts: bool = False,
    kappa_max: float | None = None,
    n_samples: int = 8,
    n_steps: int = 10,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    progress: bool = True,
    stop_at_error: float | None = None,
    desc: str | None = None,
) -> FitHistory:
    """Train ``model`` in place by ``method`` (a key of ``TRAINERS``) with Adam.

    Args:
        model: a ``NeuralODE`` (e.g. ``NeuralODE.mlp(input_dim, n_classes)``).
        x: ``(n, input_dim)`` inputs. y: ``(n,)`` int labels (cross entropy) or
            ``(n, output_dim)`` float targets (squared error).
        method: ``"monte_carlo"`` (Alg. 1), ``"path_integral"`` (Alg. 2), ``"backprop"`` or
            ``"adjoint"`` (baselines).
        potential: ``"cross_entropy"`` or ``"squared_error"`` (eq. 11).
        kappa: convergence rate of the Lyapunov methods; default 2.0. Must be ``> 0``.
        half_width: ``s`` of the state box ``H`` (Monte Carlo). Default: appendix B's
            ``classification_box(m, kappa)`` for cross entropy, ``regression_box(y)``
            for squared error.
        sampler: ``"hypercube"``, ``"hypersphere"`` (origin-biased, appendix B) or
            ``"targets"`` (regression: every scale around the target, ``sample_around_targets``).
        weighting: ``"absolute"`` (eq. 12, the paper's), ``"relative"`` (divided by ``V``) or
            ``"sqrt"`` (by ``sqrt(V)``), for both Lyapunov methods (``WEIGHTINGS``).
        random_starts: path integral only: a second path per example from a random start
            in the state box (``path_integral_loss``).
        kappa_max: Monte Carlo only: upper end of the trained decay-rate band
            (``monte_carlo_loss``); ``None`` (the paper's) leaves it open.
        n_samples: ``Gamma``, Monte Carlo ``(eta, t)`` pairs per example.
        n_steps: path-integral segments of ``[0, 1]``.
        epochs, batch_size, lr, weight_decay, seed: optimisation; ``seed`` fixes the
            minibatch order and the Monte Carlo samples.
        x_val, y_val: evaluated (error at ``t = 1``) after every epoch when given.
        progress: show a tqdm bar over epochs.
        stop_at_error: stop once the validation error is at or below this fraction.
        desc: the bar's label (default ``"fit[METHOD]"``).

    Returns:
        ``FitHistory``.
    """
    if method not in TRAINERS:
        raise ValueError(f"method must be one of {sorted(TRAINERS)}, got {method!r}")
    if potential not in POTENTIALS:
        raise ValueError(f"potential must be one of {sorted(POTENTIALS)}, got {potential!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    _check_data(x, y, potential)
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val, or neither")
    if x_val is not None:
        _check_data(x_val, y_val, potential, "_val")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("n_samples", n_samples), ("n_steps", n_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    lyapunov = method in ("monte_carlo", "path_integral")
    kappa = _check_kappa(2.0 if kappa is None else kappa)
    if lyapunov and half_width is None:
        half_width = classification_box(model.hidden_dim, kappa) if potential == "cross_entropy" else regression_box(y)
    if half_width is not None and not (math.isfinite(half_width) and half_width > 0):
        raise ValueError(f"half_width must be a finite number > 0, got {half_width!r}")
    cfg = dict(kappa=kappa, half_width=half_width, potential=potential, n_samples=n_samples, sampler=sampler, n_steps=n_steps,
               weighting=weighting, random_starts=random_starts, kappa_max=kappa_max)

    torch.manual_seed(seed)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    opt = _adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = FitHistory(method, kappa if lyapunov else None, half_width if lyapunov else None)
    objective = TRAINERS[method]
    n = x.shape[0]
    bar = tqdm(range(epochs), desc=desc or f"fit[{method}]", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        model.train()
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen, device=x.device)
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = objective(model, x[idx], y[idx], cfg, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total = total + loss.detach() * idx.numel()
        history.train_loss.append(float(total) / n)  # one host sync per epoch
        history.epoch_time.append(time.perf_counter() - start)
        postfix = {"loss": f"{history.train_loss[-1]:.4g}"}
        if x_val is not None:
            err, vloss = evaluate(model, x_val, y_val, potential=potential)
            history.val_error.append(err)
            history.val_loss.append(vloss)
            postfix["val_err"] = f"{err:.4f}"
        bar.set_postfix(postfix)
        if stop_at_error is not None and history.val_error and history.val_error[-1] <= stop_at_error:
            break
    model.eval()
    return history


@torch.no_grad()
def evaluate(
    model: NeuralODE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    potential: str = "cross_entropy",
    t: float = 1.0,
    batch_size: int = 4096,
    **solver: object,
) -> tuple[float, float]:
    """``(error, loss)`` of the prediction at time ``t`` (early termination if ``t < 1``).

    ``error`` is the misclassification rate for cross entropy and the mean squared error
    for regression; ``loss`` the mean potential ``L(psi(eta(t)), y)``.
    """
    outs = torch.cat([model(x[i : i + batch_size], t, **solver) for i in range(0, x.shape[0], batch_size)])
    loss = POTENTIALS[potential](outs, y)
    if potential == "cross_entropy":
        err = (outs.argmax(-1) != y).to(outs.dtype).mean()
    else:
        err = loss.mean() / y.shape[1]
    return float(err), float(loss.mean())


# ---------------------------------------------------------------------------------------
# Theorem 3: Lipschitz estimate and certified radius
# ---------------------------------------------------------------------------------------


def _linears(dynamics: nn.Module) -> list[nn.Linear]:
    return [m for m in dynamics.modules() if isinstance(m, nn.Linear)]


def lipschitz_estimate(
    model: NeuralODE,
    *,
    norm: str = "linf",
    method: str = "sampled",
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    half_width: float | None = None,
    potential: str = "cross_entropy",
    n_samples: int = 4096,
    seed: int = 0,
) -> float:
    """``L`` with ``|dV_y/deta . (f(eta, x + e, t) - f(eta, x, t))| <= L ||e||`` (Thm. 3, eq. 34).

    Methods:
        ``"spectral"``: a certified upper bound for a ``DataControlledMLP`` with 1-Lipschitz
            activations, identity readout and the cross-entropy potential:
            ``L <= sqrt(2) * ||W_1[:, x]||_2 * prod_{i > 1} ||W_i||_2`` (``sqrt(2)`` bounds
            ``||softmax - onehot||_2 = ||dV/deta||_2``), times ``sqrt(n)`` for ``norm="linf"``
            (``||e||_2 <= sqrt(n) ||e||_inf``). Loose: products of spectral norms usually
            overestimate by orders of magnitude.
        ``"sampled"``: ``max ||d/dx [dV_y/deta(eta) . f(eta, x, t)]||_*`` over inputs ``x``
            (with labels ``y``), ``eta`` uniform on the cube of ``half_width`` and
            ``t ~ U(0, 1)``, with ``||.||_*`` the dual norm (l1 for ``linf``, l2 for ``l2``).
            By the mean value theorem this is the local Lipschitz constant of ``dV/dt`` in
            ``x`` at the samples: an empirical estimate (a lower bound of the supremum).

    Args:
        norm: ``"linf"`` or ``"l2"``, the norm of the input perturbation ``e``.
        x, y: ``(n, input_dim)`` inputs and their labels/targets (sampled method).
        half_width: cube for ``eta``; default the appendix-B box for ``kappa = 2``.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if method == "spectral":
        dyn = model.dynamics
        if not isinstance(dyn, DataControlledMLP) or not isinstance(model.readout, nn.Identity) or potential != "cross_entropy":
            raise ValueError("the spectral bound needs a DataControlledMLP, identity readout and the cross-entropy potential")
        layers = _linears(dyn)
        first = layers[0].weight[:, dyn.hidden_dim : dyn.hidden_dim + dyn.input_dim]
        bound = torch.linalg.matrix_norm(first.detach(), ord=2)
        for layer in layers[1:]:
            bound = bound * torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
        scale = math.sqrt(dyn.input_dim) if norm == "linf" else 1.0
        return float(bound) * math.sqrt(2.0) * scale
    if method != "sampled":
        raise ValueError(f"method must be 'spectral' or 'sampled', got {method!r}")
    if x is None or y is None:
        raise ValueError("the sampled estimate needs inputs x and labels y")
    _check_data(x, y, potential)
    if half_width is None:
        half_width = classification_box(model.hidden_dim, 2.0) if potential == "cross_entropy" else regression_box(y)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    idx = torch.randint(0, x.shape[0], (n_samples,), generator=gen, device=x.device)
    xs = x[idx].detach().clone().requires_grad_(True)
    ys = y[idx]
    eta = sample_hypercube(n_samples, model.hidden_dim, half_width, generator=gen, device=x.device, dtype=x.dtype)
    t = torch.rand(n_samples, generator=gen, device=x.device, dtype=x.dtype)
    eta.requires_grad_(True)
    v = POTENTIALS[potential](model.readout(eta), ys)
    (grad_v,) = torch.autograd.grad(v.sum(), eta)
    vdot = (grad_v.detach() * model.f(eta.detach(), xs, t)).sum()
    (g,) = torch.autograd.grad(vdot, xs)
    dual = g.abs().sum(-1) if norm == "linf" else g.norm(dim=-1)
    return float(dual.max())


def robustness_radius(kappa: float, delta: float | torch.Tensor, lipschitz: float, threshold: float = math.log(2.0)):
    """Certified input radius of Theorem 3 (eq. 15): ``(threshold - delta) kappa / (L (1 - exp(-kappa)))``.

    ``threshold = log 2`` is the cross-entropy level below which the class is correct;
    for other potentials it is the largest acceptable final loss. Zero where
    ``delta >= threshold``. Works elementwise on a tensor ``delta``.
    """
    kappa = _check_kappa(kappa)
    if not (isinstance(lipschitz, (int, float)) and lipschitz > 0 and math.isfinite(lipschitz)):
        raise ValueError(f"lipschitz must be a finite number > 0, got {lipschitz!r}")
    scale = kappa / (lipschitz * -math.expm1(-kappa))
    if isinstance(delta, torch.Tensor):
        return torch.clamp(threshold - delta, min=0.0) * scale
    return max(0.0, threshold - float(delta)) * scale


@torch.no_grad()
def decrease_along_paths(
    model: NeuralODE, x: torch.Tensor, y: torch.Tensor, *, kappa: float, potential: str = "cross_entropy", n_steps: int = 20,
    rtol: float = 1e-3,
) -> dict[str, torch.Tensor]:
    """Where the decrease condition (eq. 10) holds on the inference paths of ``x``.

    Integrates each path on ``n_steps`` fixed steps of ``[0, 1]`` and evaluates
    ``Vdot + kappa V`` at every path point (``t_0 = 0, ..., t_G = 1``). A point counts as
    satisfying eq. 10 when ``Vdot <= -(1 - rtol) kappa V`` (relative, so it means the same
    whether ``V`` is large at the start or tiny at the end of a converged path).

    Returns ``path`` ``(G + 1, batch, k)``, ``values`` ``V`` ``(G + 1, batch)`` and
    ``holds`` ``(G + 1, batch)`` bool.
    """
    kappa = _check_kappa(kappa)
    times = torch.linspace(0.0, 1.0, n_steps + 1, dtype=x.dtype, device=x.device)
    path = model.trajectory(x, times, step_size=1.0 / n_steps)  # (G + 1, b, k)
    flat = path.reshape(-1, path.shape[-1])
    xs = x.repeat(n_steps + 1, 1)
    ys = y.repeat(n_steps + 1) if y.ndim == 1 else y.repeat(n_steps + 1, 1)
    ts = times.repeat_interleave(x.shape[0])
    with torch.enable_grad():
        v, vdot = lyapunov_derivative(_potential(model, potential, ys), model.f(flat, xs, ts), flat)
    holds = (vdot + kappa * v) <= rtol * kappa * v
    shape = (n_steps + 1, x.shape[0])
    return {"path": path, "values": v.reshape(shape), "holds": holds.reshape(shape)}


@torch.no_grad()
def theorem3_radii(
    model: NeuralODE, x: torch.Tensor, y: torch.Tensor, *, kappa: float, lipschitz: float, n_steps: int = 20
) -> dict[str, torch.Tensor]:
    """Per-example certified radii of Theorem 3 for a classifier, with the evidence behind them.

    ``delta = max(V(eta(1)), exp(-kappa) V(eta(0)))`` (Definition 5, condition 3). Returns
    ``radius`` (zero where misclassified or ``delta >= log 2``), ``delta``, ``correct`` and
    ``stable``: whether the decrease condition of eq. 10 held at every point of the
    ``n_steps``-step inference path (``decrease_along_paths``; the radius assumes it: where
    it fails, the radius is indicative only -- it is measured, not proven), and
    ``stable_fraction``: the share of path points where it held. The radius is a bound only
    with an upper bound ``lipschitz`` (``lipschitz_estimate(method="spectral")``); the
    sampled estimate is a lower bound of ``L``, so its radius is indicative even where
    ``stable`` holds.
    """
    _check_data(x, y, "cross_entropy")
    check = decrease_along_paths(model, x, y, kappa=kappa, potential="cross_entropy", n_steps=n_steps)
    v, holds = check["values"], check["holds"]
    delta = torch.maximum(v[-1], math.exp(-kappa) * v[0])
    correct = model.readout(check["path"][-1]).argmax(-1) == y
    radius = robustness_radius(kappa, delta, lipschitz) * correct.to(x.dtype)
    return {"radius": radius, "delta": delta, "correct": correct, "stable": holds.all(0),
            "stable_fraction": holds.to(x.dtype).mean(0)}


@torch.no_grad()
def convergence_rates(
    model: NeuralODE, x: torch.Tensor, y: torch.Tensor, *, potential: str = "cross_entropy", n_steps: int = 20, floor: float = 1e-12
) -> torch.Tensor:
    """Measured exponential rate of inference per example, ``(batch,)``.

    The largest ``k`` with ``V(eta(t_j)) <= V(eta(0)) exp(-k t_j)`` at every grid time
    (eq. 8/14): ``min_j -log(V_j / V_0) / t_j``. Values below ``floor`` count as converged.
    """
    times = torch.linspace(0.0, 1.0, n_steps + 1, dtype=x.dtype, device=x.device)
    path = model.trajectory(x, times, step_size=1.0 / n_steps)
    v = torch.stack([POTENTIALS[potential](model.readout(p), y) for p in path]).clamp_min(floor)
    rates = -(v[1:] / v[:1]).log() / times[1:, None]
    return rates.min(0).values
