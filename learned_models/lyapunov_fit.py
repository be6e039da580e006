"""Staged training of a stable model: fit the nominal field, then a Lyapunov function the data obeys.

Eq. 10 projects the nominal ``fhat`` onto ``{f : grad V . f <= -alpha V}``. Projection onto
a convex set moves a point no further from any point of the set, so wherever the true
field ``f*(x)`` satisfies the decrease condition of the learned ``V`` (``V`` is a Lyapunov
function of the true system there),

    ||f(x) - f*(x)|| <= ||fhat_c(x) - f*(x)||,

and the stable model is at least as accurate as its own nominal field, with an exact
equilibrium and no blow-up on top. Where ``V`` is *not* compatible with the data (the
paper's ``V = eps ||x||^2`` region around ``x_eq``, for a lightly damped system) the
projection fights the data instead. Joint training from scratch does not find a
compatible ``V`` reliably; these stages do, from data alone (no access to the true model):

1. ``fit(NominalView(model), data)``: the centered nominal field ``fhat_c`` alone,
   unprojected, on the ``(x, xdot)`` pairs (as one would train an unconstrained MLP).
2. ``quadratic_lyapunov(x, xdot)``: least-squares linear fit ``xdot ~ A (x - x_eq)`` and
   the continuous Lyapunov equation ``A^T P + P A = -Q``; ``init_quadratic(V, P)`` puts
   ``P`` into ``V``'s learned quadratic term (``lyap_quadratic=True``).
3. ``fit_lyapunov(V, (x, xdot), alpha)``: minimise the rate violation
   ``mean relu(grad V(x) . xdot / V(x) + alpha + margin)`` over the observed pairs
   (``V`` only; the loss is invariant to the scale of ``V``, as eq. 10 is).

The model is then the projection of the stage-1 field under the stage-3 ``V``; a joint
fine-tune with ``fit(model, data)`` may follow.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from .lyapunov import LyapunovFunction

__all__ = ["NominalView", "quadratic_lyapunov", "init_quadratic", "lyapunov_rate_violation", "fit_lyapunov"]


class NominalView(nn.Module):
    """The centered nominal field ``fhat_c(x) = fhat(x) - fhat(x_eq)`` of a stable model, unprojected.

    A view for ``fit``: it shares the stable model's parameters, so ``fit(NominalView(m),
    (x, xdot))`` trains ``m.fhat`` on the plain regression loss ``||fhat_c(x) - xdot||^2``
    (``V`` receives no gradient). ``x: (batch, state_dim)`` -> ``(batch, state_dim)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "_fhat_centered") or not hasattr(model, "lyapunov"):
            raise TypeError(f"model must be a StableDynamics (with fhat and lyapunov), got {type(model).__name__}")
        self.model = model
        self.state_dim = model.state_dim
        self.action_dim = model.action_dim
        self.dt = model.dt
        self.integrator = model.integrator

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def _derivative(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return self.model._fhat_centered(x, u)

    def forward(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        return self._derivative(x, u)

    def _step(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        from .integrators import integrate

        return integrate(lambda y: self._derivative(y, u), x, self.dt, self.integrator)


def _as_2d(t: Any, name: str, dim: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.ndim != 2 or (dim is not None and t.shape[1] != dim):
        raise ValueError(f"{name} must have shape (N, {dim if dim is not None else 'state_dim'}), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def quadratic_lyapunov(
    x: torch.Tensor, xdot: torch.Tensor, x_eq: torch.Tensor | None = None, *, Q: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A quadratic Lyapunov function of the data's linear fit: ``(A, P)``, both ``(n, n)`` float64.

    ``A`` is the least-squares fit ``xdot ~ A (x - x_eq)`` over all pairs ``x, xdot: (N, n)``;
    ``P`` solves ``A^T P + P A = -Q`` (``Q`` default ``I``; scipy's
    ``solve_continuous_lyapunov``), so ``V(x) = dx^T P dx`` decreases along the linear fit at
    rate ``lambda_min(Q) / lambda_max(P)``. Raises ``ValueError`` when ``A`` is not Hurwitz
    (the data do not look stable near ``x_eq``), since then no such ``P`` exists.
    """
    import numpy as np
    from scipy.linalg import solve_continuous_lyapunov

    x = _as_2d(x, "x")
    n = x.shape[1]
    xdot = _as_2d(xdot, "xdot", n)
    if xdot.shape[0] != x.shape[0]:
        raise ValueError(f"x and xdot must have the same number of rows, got {x.shape[0]} and {xdot.shape[0]}")
    if x.shape[0] < n:
        raise ValueError(f"need at least state_dim={n} pairs for the linear fit, got {x.shape[0]}")
    eq = torch.zeros(n, dtype=torch.float64) if x_eq is None else torch.as_tensor(x_eq, dtype=torch.float64).reshape(-1)
    dx = x.detach().cpu().double().numpy() - eq.numpy()
    A = np.linalg.lstsq(dx, xdot.detach().cpu().double().numpy(), rcond=None)[0].T
    worst = float(np.linalg.eigvals(A).real.max())
    if not worst < 0:
        raise ValueError(f"the least-squares linear fit of the data is not Hurwitz (largest real part of its eigenvalues {worst:.3g}); no quadratic Lyapunov function exists")
    Qm = np.eye(n) if Q is None else torch.as_tensor(Q, dtype=torch.float64).cpu().numpy()
    P = solve_continuous_lyapunov(A.T, -Qm)
    P = 0.5 * (P + P.T)
    if not float(np.linalg.eigvalsh(P).min()) > 0:
        raise ValueError("the Lyapunov equation gave a P that is not positive definite (is Q positive definite?)")
    return torch.as_tensor(A), torch.as_tensor(P)


def init_quadratic(lyapunov: LyapunovFunction, P: torch.Tensor, *, scale: float = 1.0) -> None:
    """Set ``V``'s learned quadratic so that ``eps I + L^T L = scale * P / lambda_min(P)``.

    ``V`` must have been built with ``quadratic=True``. ``P: (n, n)`` symmetric positive
    definite; it is normalised to smallest eigenvalue ``scale`` (eq. 10 does not depend on the
    scale of ``V``; this only sets the quadratic's weight against the ICNN term), which must
    exceed ``eps`` so that ``P - eps I`` stays positive definite.
    """
    if lyapunov.L is None:
        raise ValueError("V has no quadratic term: build it with quadratic=True (StableDynamics(..., lyap_quadratic=True))")
    P = torch.as_tensor(P, dtype=torch.float64)
    n = lyapunov.state_dim
    if P.shape != (n, n):
        raise ValueError(f"P must have shape ({n}, {n}), got {tuple(P.shape)}")
    if not scale > lyapunov.eps:
        raise ValueError(f"scale must be > eps={lyapunov.eps}, got {scale!r}")
    P = 0.5 * (P + P.T)
    lam = torch.linalg.eigvalsh(P)
    if not bool(lam[0] > 0):
        raise ValueError("P must be positive definite")
    target = P * (scale / lam[0]) - lyapunov.eps * torch.eye(n, dtype=torch.float64)
    chol = torch.linalg.cholesky(target)  # target = C C^T, so L = C^T gives L^T L = target
    with torch.no_grad():
        lyapunov.L.copy_(chol.T.to(lyapunov.L.dtype))


def lyapunov_rate_violation(
    lyapunov: LyapunovFunction, x: torch.Tensor, xdot: torch.Tensor, alpha: float, margin: float = 0.0
) -> torch.Tensor:
    """``relu(grad V(x) . xdot / V(x) + alpha + margin)``: ``(N,)``, 0 where the pair decreases ``V`` fast enough.

    Rows at ``x_eq`` (``V = 0``) count as 0. Scale-invariant in ``V``.
    """
    V, dV = lyapunov.forward_and_grad(x)
    at_eq = V <= 0
    rate = (dV * xdot).sum(-1) / torch.where(at_eq, torch.ones_like(V), V)
    return torch.relu(rate + alpha + margin).masked_fill(at_eq, 0.0)


def fit_lyapunov(
    lyapunov: LyapunovFunction,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    alpha: float,
    margin: float = 0.0,
    steps: int = 500,
    lr: float = 1e-3,
    batch_size: int = 4096,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit ``V`` so that the observed pairs decrease it at rate ``alpha`` (+ ``margin``).

    Minimises ``mean lyapunov_rate_violation(V, x, xdot, alpha, margin)`` over ``data = (x,
    xdot)``, ``(N, n)`` each, with Adam on ``V``'s parameters only. Returns ``{"loss": [...],
    "violating_before", "violating_after", "seconds"}`` (the fractions of pairs with a
    positive violation at ``margin = 0``; the best weights by full-data loss are kept).
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (alpha >= 0 and math.isfinite(alpha)) or not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"alpha and margin must be finite numbers >= 0, got {alpha!r}, {margin!r}")
    n = lyapunov.state_dim
    param = next(lyapunov.parameters())
    x = _as_2d(data[0], "x", n).to(param.device, param.dtype)
    xdot = _as_2d(data[1], "xdot", n).to(param.device, param.dtype)
    if xdot.shape[0] != x.shape[0]:
        raise ValueError(f"x and xdot must have the same number of rows, got {x.shape[0]} and {xdot.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    bs = x.shape[0] if batch_size <= 0 else min(batch_size, x.shape[0])

    def full_loss() -> tuple[float, float]:
        with torch.no_grad():
            viol = lyapunov_rate_violation(lyapunov, x, xdot, alpha, margin)
            strict = lyapunov_rate_violation(lyapunov, x, xdot, alpha, 0.0)
        return float(viol.mean()), float((strict > 0).double().mean())

    start = time.perf_counter()
    loss0, before = full_loss()
    best = (loss0, {k: v.detach().clone() for k, v in lyapunov.state_dict().items()})
    opt = torch.optim.Adam(lyapunov.parameters(), lr=lr)
    history: dict[str, Any] = {"loss": [loss0]}
    bar = range(steps)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="fit_lyapunov", unit="step", leave=False)
    check_every = max(1, steps // 20)
    for k in bar:
        idx = torch.randint(0, x.shape[0], (bs,), generator=gen).to(x.device)
        loss = lyapunov_rate_violation(lyapunov, x[idx], xdot[idx], alpha, margin).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (k + 1) % check_every == 0 or k + 1 == steps:
            full, _ = full_loss()
            history["loss"].append(full)
            if full < best[0]:
                best = (full, {k2: v.detach().clone() for k2, v in lyapunov.state_dict().items()})
            if progress:
                bar.set_postfix(loss=f"{full:.3g}")
    if progress:
        bar.close()
    lyapunov.load_state_dict(best[1])
    _, after = full_loss()
    history.update(violating_before=before, violating_after=after, seconds=time.perf_counter() - start)
    return history
