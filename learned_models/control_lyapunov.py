"""A learned control Lyapunov function: a certificate of *stabilisability* for plants that are
not open-loop stable.

A stable or ISS model (Manek & Kolter's projection) cannot represent an inverted pendulum: its
upright is unstable under zero input. What such a plant admits instead is a control Lyapunov
function (CLF; the neural-Lyapunov literature, paper 003, and LyaNet's Lyapunov conditions,
paper 001): a positive-definite ``V`` such that on a region, for every state, *some*
admissible input makes ``V`` decrease at rate ``alpha``. For a control-affine model

    xdot = a(x) + B(x) u,        u in the box U = [lo, hi]^m,

the minimum over ``u`` of the decrease is closed form (a box is a product of intervals):

    min_{u in U} grad V . (a + B u) + alpha V = grad V . a + sum_j min(lo_j s_j, hi_j s_j) + alpha V,
    s = B^T grad V.

``ControlLyapunov`` is ``V(x) = e^T P e + ||h(e) - h(0)||^2`` with ``e = x - x_eq`` (angle
entries wrapped, so ``V`` is periodic in them) and ``h`` a small smooth MLP (the learned
correction, zero at initialisation). ``P`` comes from LQR on the model's linearisation at its
equilibrium ``(x_eq, u_eq)``: continuous-time (``scipy.linalg.solve_continuous_are``) for a
continuous claim, discrete-time on the step map (``solve_discrete_are``) for a discrete one,
with Bryson's rule for the weights: ``Q = diag(1 / d_i^2)``, ``d_i`` the box's half-width about
``x_eq``, ``R = diag(1 / r_j^2)``, ``r_j`` the input's room about ``u_eq``.

The certificate is about the input actually applied, the **fallback input**

    u_fb(x) = clip(u_eq - K (x - x_eq), lo, hi)

with ``K`` the LQR gain (continuous: ``R^-1 B^T P``; discrete: ``(R dt + B_d^T P B_d)^-1
B_d^T P A_d`` of the step map's linearisation ``A_d, B_d``), saturated into ``U``. A gain of
the gradient form ``W B(x)^T grad V / 2`` was tried first and dropped: on
``InvertedPendulum-v5``'s learned model the continuous gain's closed-loop pole at -22 /s is
too fast for the 0.04 s step (``V`` failed the one-step decrease on 12-35% of the states of
every level), and its first-order discrete version was not even stabilising once the data's
box was tight (1,049 transitions of balancing: ``|theta| <= 0.07``). A saturated linear
feedback is Lipschitz, so the input held over a step does not chatter
as the bang-bang minimiser would. The **region** is the
largest sublevel set ``{V <= rho}`` inside the state box on which ``u_fb`` gives the decrease
on every sampled state (``certify_region``): each round samples the set and climbs the
violation by gradient ascent from the worst samples (``ascend``: a violating set can be far
too thin for uniform samples), and ``rho`` drops 10% below the smallest ``V`` of any violating
state until a round finds none. Because
``V >= e^T P e``, ``rho <= min_i d_i^2 / (P^-1)_ii`` keeps the set inside the box, and a step
that does not increase ``V`` cannot leave it. States with ``V < inner * rho`` are not claimed:
rounding rules there, and for an ensemble the members' disagreement (each member has its own
equilibrium, so no common input drives ``V`` to 0 on all of them; ``certify_region`` raises the
inner level, up to a quarter of ``rho``, above the violations it finds only there).

The claim (``Certificate`` claim ``"stabilisability"``): for every ``x`` in ``{V <= rho}`` with
``V(x) >= inner * rho``, ``u_fb(x)`` gives ``dV/dt <= -alpha V`` on the model (discrete, the
default: ``V(step(x, u_fb(x))) <= exp(-alpha dt) V(x)`` with the model's own integrator and
``dt``, which is what a planner uses); hence the model's closed loop under ``u_fb`` stays in
the region and converges to ``x_eq`` (into ``{V <= inner * rho}``) with the settling time
``Certificate.time_to``. For an ensemble (``ensemble="every"``, the default) one ``V`` and one
common input must give the decrease on every member's mean map; with ``ensemble="mean"`` the
claim is about the members' mean map (the ensemble's expectation) only. On
``InvertedPendulum-v5`` after 1,049 real transitions (PETS, seed 0) the every-member claim
certified nothing (in every level set 5-18% of the sampled states violate it on some member;
near ``x_eq`` all do, where the members' equilibria differ), the mean map's whole ellipsoid
in the data's box had no violation. Evidence:
``"falsification"`` (sampled states, gradient ascent from the worst of them, closed-loop rollouts); ``Certificate.verify(model,
lyapunov=V)`` adds ``"formal"`` when sound bounds prove the whole claimed set
(``clf_verification.py``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .certificate import Certificate, model_hash
from .dynamics_net import mlp

__all__ = ["ControlLyapunov", "MeanMap", "drift_and_gain", "model_equilibrium", "check_stabilisability",
           "control_lyapunov_payload", "control_lyapunov_from_payload"]

_TWO_PI = 2.0 * math.pi


def _members(model, ensemble: str = "every") -> list:
    """The models a claim must hold for: an ensemble's members (each its own mean map), or with
    ``ensemble="mean"`` their mean map as one model; else the model itself."""
    size = getattr(model, "size", None)
    if callable(getattr(model, "member", None)) and isinstance(size, int):
        members = [model.member(i) for i in range(size)]
        return [MeanMap(members)] if ensemble == "mean" else members
    return [model]


def _frozen_copy(model, dtype: torch.dtype | None = None):
    """A copy of ``model`` (in ``dtype``) whose weights take no gradient: a search through its
    inputs then builds no graph of them. Models without weights (the true physics) are copied as they are."""
    copied = copy.deepcopy(model)
    if dtype is not None:
        copied = copied.to(dtype=dtype)
    return copied.requires_grad_(False) if isinstance(copied, nn.Module) else copied


class MeanMap(nn.Module):
    """The mean of models' fields and steps: ``f(x, u) = mean_k f_k(x, u)``, ``step`` likewise
    (an ensemble's prediction under ``"expectation"`` propagation)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.state_dim, self.action_dim, self.dt = models[0].state_dim, models[0].action_dim, models[0].dt
        self.integrator = getattr(models[0], "integrator", None)

    def derivative(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([m.derivative(x, u) for m in self.models]).mean(0)

    def step(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([m.step(x, u) for m in self.models]).mean(0)


def drift_and_gain(models: Sequence, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a(x)`` and ``B(x)`` of control-affine models ``xdot = a(x) + B(x) u``.

    Args:
        models: models with ``derivative(x, u)``, ``state_dim``, ``action_dim``.
        x: ``(batch, n)``.

    Returns:
        ``a: (k, batch, n)`` and ``B: (k, batch, n, m)`` for the ``k`` models, from ``m + 1``
        evaluations each (``u = 0`` and the unit inputs), batched.
    """
    batch, m = x.shape[0], int(models[0].action_dim)
    units = torch.cat([torch.zeros(1, m, dtype=x.dtype, device=x.device), torch.eye(m, dtype=x.dtype, device=x.device)])
    X = x.repeat(m + 1, 1)
    U = units.repeat_interleave(batch, 0)
    drifts, gains = [], []
    for model in models:  # an ensemble's few members; each evaluates the whole batch at once
        F = model.derivative(X, U).reshape(m + 1, batch, -1)
        drifts.append(F[0])
        gains.append((F[1:] - F[:1]).permute(1, 2, 0))
    return torch.stack(drifts), torch.stack(gains)


def _check_affine(models: Sequence, x: torch.Tensor, u: torch.Tensor) -> None:
    a, B = drift_and_gain(models, x)
    for k, model in enumerate(models):
        f = model.derivative(x, u)
        pred = a[k] + (B[k] @ u.unsqueeze(-1)).squeeze(-1)
        err = float((f - pred).abs().max() / f.abs().max().clamp_min(1e-12))
        if err > 1e-4:
            raise ValueError(f"model is not control-affine (f(x, u) differs from a(x) + B(x) u by {err:.2g} relative): "
                             "build it with control_affine=True")


def model_equilibrium(models: Sequence, x_guess: torch.Tensor, u_guess: torch.Tensor, *, iterations: int = 30,
                      damping: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, float]:
    """An equilibrium ``(x_eq, u_eq)`` of the models' mean field near a guess.

    A learned model has no exact equilibrium where the plant has one; Levenberg-Marquardt on
    ``||f(x, u)||^2 + damping ||(x, u) - guess||^2`` (the damping picks the solution nearest the
    guess where there is a family, e.g. every cart position of a cart-pole). ``x_guess: (n,)``,
    ``u_guess: (m,)``; returns ``x_eq: (n,)``, ``u_eq: (m,)`` and the residual ``||f(x_eq, u_eq)||``.
    """
    n = x_guess.shape[0]
    z0 = torch.cat([x_guess, u_guess])
    z = z0.clone()

    def field(zz: torch.Tensor) -> torch.Tensor:
        xx, uu = zz[:n].unsqueeze(0), zz[n:].unsqueeze(0)
        return torch.stack([m.derivative(xx, uu)[0] for m in models]).mean(0)

    lam = 1e-3
    for _ in range(iterations):
        r = field(z)
        J = torch.autograd.functional.jacobian(field, z)
        cost = float((r @ r + damping * (z - z0) @ (z - z0)).detach())
        H = J.T @ J + damping * torch.eye(len(z), dtype=z.dtype)
        g = J.T @ r + damping * (z - z0)
        step = torch.linalg.solve(H + lam * torch.eye(len(z), dtype=z.dtype), -g)
        cand = z + step
        rc = field(cand)
        if float((rc @ rc + damping * (cand - z0) @ (cand - z0)).detach()) < cost:
            z, lam = cand, lam * 0.3
        else:
            lam *= 10.0
        if lam > 1e8:
            break
    with torch.no_grad():
        residual = float(field(z).norm())
    return z[:n].detach(), z[n:].detach(), residual


def _wrap(e: torch.Tensor, angle_dims: Sequence[int]) -> torch.Tensor:
    if not angle_dims:
        return e
    idx = list(angle_dims)
    out = e.clone()
    out[..., idx] = torch.remainder(e[..., idx] + math.pi, _TWO_PI) - math.pi
    return out


class ControlLyapunov(nn.Module):
    """``V(x) = e^T P e + ||h(e) - h(0)||^2``, ``e = x - x_eq`` (angles wrapped): a control
    Lyapunov function of a control-affine model with inputs in a box (module docstring).

    Build it with ``initialise(model)`` (equilibrium, LQR ``P``, rate), optionally ``fit`` the
    correction ``h``, then ``certify_region(model)`` and ``certificate(model)``.

    Args:
        state_dim, action_dim: ``x: (batch, n)``, ``u: (batch, m)``.
        box: the state box, ``n`` pairs ``[lo, hi]`` (absolute; must contain ``x_eq``).
        u_low, u_high: the input box ``(m,)`` (the adapter's action bounds).
        x_eq: the rest state to look for the model's equilibrium near (default the box's centre).
        angle_dims: state entries that are angles (``e`` wraps them to ``[-pi, pi)``).
        hidden: widths of the correction ``h`` (``()``: ``V`` stays the LQR quadratic).
        inner: states with ``V < inner * rho`` are not claimed (``certify_region`` may raise it).
        time_domain: the claim's: ``"discrete"`` (default; the model's step map, what a planner
            uses: ``P`` from discrete-time LQR on the step's linearisation) or ``"continuous"``
            (the ODE; ``P`` from continuous-time LQR).
        ensemble: for an ensemble model, ``"every"`` (default: the decrease on every member's
            mean map with the one input) or ``"mean"`` (on the members' mean map, the
            ensemble's expectation, as one model: the members' disagreement is then not covered).
    """

    def __init__(self, state_dim: int, action_dim: int, *, box: Any, u_low: Any, u_high: Any, x_eq: Any = None,
                 angle_dims: Sequence[int] = (), hidden: Sequence[int] = (32, 32), inner: float = 1e-6,
                 time_domain: str = "discrete", ensemble: str = "every") -> None:
        super().__init__()
        if not isinstance(state_dim, int) or state_dim < 1 or not isinstance(action_dim, int) or action_dim < 1:
            raise ValueError(f"state_dim and action_dim must be ints >= 1, got {state_dim!r} and {action_dim!r}")
        n, m = state_dim, action_dim
        box_t = torch.as_tensor(np.asarray(box, dtype=np.float64))
        if box_t.shape != (n, 2) or not torch.isfinite(box_t).all() or not (box_t[:, 0] < box_t[:, 1]).all():
            raise ValueError(f"box must be {n} pairs [lo, hi] of finite numbers with lo < hi, got {box!r}")
        lo = torch.as_tensor(np.asarray(u_low, dtype=np.float64)).reshape(-1)
        hi = torch.as_tensor(np.asarray(u_high, dtype=np.float64)).reshape(-1)
        if lo.shape != (m,) or hi.shape != (m,) or not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or not (lo < hi).all():
            raise ValueError(f"u_low and u_high must be ({m},) finite bounds with u_low < u_high, got {u_low!r}, {u_high!r}")
        guess = box_t.mean(1) if x_eq is None else torch.as_tensor(np.asarray(x_eq, dtype=np.float64)).reshape(-1)
        if guess.shape != (n,) or not ((box_t[:, 0] < guess) & (guess < box_t[:, 1])).all():
            raise ValueError(f"x_eq must be ({n},) strictly inside the box, got {x_eq!r}")
        if time_domain not in ("continuous", "discrete"):
            raise ValueError(f"time_domain must be 'continuous' or 'discrete', got {time_domain!r}")
        self.time_domain = time_domain
        if ensemble not in ("every", "mean"):
            raise ValueError(f"ensemble must be 'every' (the claim holds for every member) or 'mean' (for the members' mean map), got {ensemble!r}")
        self.ensemble = ensemble
        if not (isinstance(inner, (int, float)) and 0 < inner < 1):
            raise ValueError(f"inner must be a number in (0, 1) (the unclaimed level, relative to rho), got {inner!r}")
        self.state_dim, self.action_dim = n, m
        self.angle_dims = tuple(int(i) for i in angle_dims)
        if any(not 0 <= i < n for i in self.angle_dims):
            raise ValueError(f"angle_dims must be indices in [0, {n}), got {tuple(angle_dims)}")
        self.hidden = tuple(int(h) for h in hidden)
        self.correction = mlp(n, self.hidden, n, activation="tanh") if self.hidden else None
        if self.correction is not None:
            with torch.no_grad():  # V starts as the LQR quadratic
                self.correction[-1].weight.zero_()
                self.correction[-1].bias.zero_()
        f32 = torch.get_default_dtype()
        self.register_buffer("box", box_t.to(f32))
        self.register_buffer("u_low", lo.to(f32))
        self.register_buffer("u_high", hi.to(f32))
        self.register_buffer("x_eq", guess.to(f32))
        self.register_buffer("u_eq", torch.zeros(m, dtype=torch.float64).clamp(min=lo, max=hi).to(f32))
        self.register_buffer("P", torch.eye(n, dtype=f32))
        self.register_buffer("gain", torch.zeros(m, n, dtype=f32))
        self.register_buffer("alpha", torch.zeros((), dtype=f32))
        self.register_buffer("rho", torch.zeros((), dtype=f32))
        self.register_buffer("inner", torch.tensor(float(inner), dtype=f32))

    # -- V ---------------------------------------------------------------------------------
    def error(self, x: torch.Tensor) -> torch.Tensor:
        """``e = x - x_eq`` with angles wrapped: ``(batch, n)``."""
        return _wrap(x - self.x_eq, self.angle_dims)

    def quadratic(self, x: torch.Tensor) -> torch.Tensor:
        """The LQR part ``e^T P e``: ``(batch,)``; ``V >= quadratic``."""
        e = self.error(x)
        return torch.einsum("bi,ij,bj->b", e, self.P, e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``V(x)``: ``(batch, n) -> (batch,)``."""
        e = self.error(x)
        v = torch.einsum("bi,ij,bj->b", e, self.P, e)
        if self.correction is not None:
            d = self.correction(e) - self.correction(torch.zeros_like(e[:1]))
            v = v + (d * d).sum(-1)
        return v

    def value_and_grad(self, x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``V(x): (batch,)`` and ``grad V(x): (batch, n)``."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = self(xg)
            (g,) = torch.autograd.grad(v.sum(), xg, create_graph=create_graph)
        return (v, g) if create_graph else (v.detach(), g.detach())

    # -- the input and the decrease -----------------------------------------------------------
    def fallback(self, model=None, x: torch.Tensor | None = None, *, members: Sequence | None = None) -> torch.Tensor:
        """``u_fb(x) = clip(u_eq - K (x - x_eq), lo, hi)``: ``(batch, n) -> (batch, m)``, with ``K``
        the LQR gain of ``initialise`` (``model`` and ``members`` are not needed; accepted so
        that every method of this class takes the model first)."""
        return self._saturated(x)

    def _saturated(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.u_eq - self.error(x) @ self.gain.T, min=self.u_low, max=self.u_high)

    def violation(self, model, x: torch.Tensor, u: torch.Tensor | None = None, *, time_domain: str | None = None,
                  members: Sequence | None = None, create_graph: bool = False) -> torch.Tensor:
        """The normalised violation of the decrease under input ``u`` (default ``u_fb(x)``),
        the worst over an ensemble's members: ``(batch,)``, ``<= 0`` where it holds.

        continuous: ``(grad V . (a + B u) + alpha V) / V``;
        discrete:   ``(V(step(x, u)) - exp(-alpha dt) V(x)) / V(x)``.
        """
        members = members if members is not None else _members(model, self.ensemble)
        time_domain = time_domain or self.time_domain
        v, g = self.value_and_grad(x, create_graph=create_graph)
        with contextlib.nullcontext() if create_graph else torch.no_grad():  # the model's weights are not trained here
            return self._violation(members, x, u, v, g, time_domain)

    def _violation(self, members, x, u, v, g, time_domain: str) -> torch.Tensor:
        if u is None:
            u = self._saturated(x)
        if time_domain == "continuous":
            a, B = drift_and_gain(members, x)
            f = a + (B @ u.unsqueeze(-1)).squeeze(-1)  # (k, batch, n)
            r = ((f * g).sum(-1) + self.alpha * v) / v
        elif time_domain == "discrete":
            decay = torch.exp(-self.alpha * float(members[0].dt))
            r = torch.stack([self(mm.step(x, u)) for mm in members])
            r = (r - decay * v) / v
        else:
            raise ValueError(f"time_domain must be 'continuous' or 'discrete', got {time_domain!r}")
        return r.amax(0)

    def ascend(self, members: Sequence, starts: torch.Tensor, rho: float, *, time_domain: str | None = None,
               steps: int = 50, lr: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient ascent of the fallback's violation from ``starts`` inside ``{e^T P e <= rho}``.

        A violation can live on a thin set that uniform samples miss while the violation
        itself rises smoothly towards it; climbing it from the worst samples finds such sets.
        Each state is ``x_eq + L^-T z`` with ``P = L L^T`` and ``z = sqrt(rho) sigmoid(q) w / |w|``,
        so every iterate stays in the ellipsoid that holds ``{V <= rho}``; Adam on ``(q, w)``.

        Args:
            members: the models the claim is about (``_members``), in ``starts``' dtype.
            starts: ``(k, n)`` states to climb from (e.g. the worst of a sample).
            rho: the level whose set is searched.

        Returns:
            every visited state ``(k * steps, n)`` and its violation ``(k * steps,)``
            (``violation``'s normalised form; states outside ``{inner * rho <= V <= rho}``
            included: the caller filters by ``V``).
        """
        time_domain = time_domain or self.time_domain
        if steps <= 0 or starts.shape[0] == 0 or rho <= 0:
            return starts[:0], starts.new_zeros(0)
        L = torch.linalg.cholesky(self.P.to(starts.dtype))
        with torch.no_grad():
            z0 = self.error(starts) @ L  # z^T z = e^T P e
            t0 = (z0.norm(dim=-1, keepdim=True) / math.sqrt(rho)).clamp(1e-6, 1 - 1e-6)
        q = torch.logit(t0).requires_grad_(True)
        w = (z0 / z0.norm(dim=-1, keepdim=True).clamp_min(1e-300)).requires_grad_(True)
        opt = torch.optim.Adam([q, w], lr=lr)
        visited, violations = [], []
        for _ in range(steps):
            with torch.enable_grad():
                z = math.sqrt(rho) * torch.sigmoid(q) * w / w.norm(dim=-1, keepdim=True).clamp_min(1e-300)
                x = self.x_eq.to(starts.dtype) + torch.linalg.solve_triangular(L.T, z.T, upper=True).T
                if time_domain == "continuous":
                    v, g = self.value_and_grad(x, create_graph=True)
                else:
                    v, g = self(x), None
                r = self._violation(members, x, None, v, g, time_domain)
                opt.zero_grad()
                (-torch.nan_to_num(r, nan=0.0).clamp(max=1e6).sum()).backward()
            visited.append(x.detach())
            violations.append(r.detach())
            for p in (q, w):  # no direction from a NaN gradient (e.g. V = 0 exactly)
                p.grad = torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
            opt.step()
        return torch.cat(visited), torch.cat(violations)

    def decrease_bound(self, model, x: torch.Tensor, *, members: Sequence | None = None) -> torch.Tensor:
        """``min_{u in U} grad V . (a + B u) + alpha V`` (closed form over the box), the best
        any admissible input achieves, per member: ``(k, batch)`` (``<= 0``: some input decreases V)."""
        members = members if members is not None else _members(model, self.ensemble)
        v, g = self.value_and_grad(x)
        with torch.no_grad():
            a, B = drift_and_gain(members, x)
        s = (B.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1)
        return (a * g).sum(-1) + torch.minimum(self.u_low * s, self.u_high * s).sum(-1) + self.alpha * v

    # -- construction ------------------------------------------------------------------------
    def max_level(self) -> float:
        """The largest ``rho`` with ``{e^T P e <= rho}`` (hence ``{V <= rho}``) inside the box:
        ``min_i d_i^2 / (P^-1)_ii``, ``d_i`` the distance of ``x_eq`` to the nearer face ``i``."""
        d = torch.minimum(self.box[:, 1] - self.x_eq, self.x_eq - self.box[:, 0]).double()
        p_inv = torch.linalg.inv(self.P.double()).diagonal()
        return float((d ** 2 / p_inv).min())

    @torch.no_grad()
    def initialise(self, model, *, alpha: float | None = None, find_equilibrium: bool = True) -> dict[str, Any]:
        """Equilibrium, LQR ``P`` and the rate, from ``model`` (a control-affine model or ensemble).

        ``alpha``: the certified rate; default a quarter of the LQR closed loop's rate of ``e^T P e``
        on the linearisation. Returns ``{"residual", "alpha_linear", "stabilisable"}``;
        ``stabilisable`` is false when the linearisation admits no LQR solution (``P`` then
        stays the Bryson ``Q`` and ``rho`` 0: nothing is certified).
        """
        from scipy.linalg import solve_continuous_are, solve_discrete_are

        if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0 or None (automatic), got {alpha!r}")
        members = [copy.deepcopy(m).to(dtype=torch.float64) for m in _members(model, self.ensemble)]
        dtype = torch.float64
        x0, u0 = self.x_eq.to(dtype), torch.zeros(self.action_dim, dtype=dtype)
        u0 = torch.clamp(u0, self.u_low.to(dtype), self.u_high.to(dtype))
        gen = torch.Generator().manual_seed(0)
        _check_affine(members, x0 + 0.1 * torch.randn(8, self.state_dim, generator=gen, dtype=dtype),
                      torch.randn(8, self.action_dim, generator=gen, dtype=dtype))
        residual = float("nan")
        if find_equilibrium:
            with torch.enable_grad():
                x_eq, u_eq, residual = model_equilibrium(members, x0, u0)
            inside = bool(((self.box[:, 0].double() < x_eq) & (x_eq < self.box[:, 1].double())).all())
            room = bool(((self.u_low.double() < u_eq) & (u_eq < self.u_high.double())).all())
            if inside and room:
                x0, u0 = x_eq, u_eq
        self.x_eq.copy_(x0)
        self.u_eq.copy_(u0)
        dt = float(members[0].dt)
        discrete = self.time_domain == "discrete"

        def mean_map(xx: torch.Tensor, uu: torch.Tensor) -> torch.Tensor:
            go = (lambda m: m.step) if discrete else (lambda m: m.derivative)
            return torch.stack([go(m)(xx.unsqueeze(0), uu.unsqueeze(0))[0] for m in members]).mean(0)

        with torch.enable_grad():
            A, Bl = torch.autograd.functional.jacobian(mean_map, (x0, u0))
        _, Bk = drift_and_gain(members, x0.unsqueeze(0))
        B = Bk.mean(0)[0]  # the continuous B(x_eq), which u_fb multiplies grad V by
        d = torch.minimum(self.box[:, 1].double() - x0, x0 - self.box[:, 0].double())
        r = torch.minimum(self.u_high.double() - u0, u0 - self.u_low.double())
        Q, R = torch.diag(1.0 / d ** 2), torch.diag(1.0 / r ** 2)
        stabilisable, alpha_lin = True, 0.0
        try:
            if discrete:  # the step map's LQR, weights per unit time
                P = torch.as_tensor(solve_discrete_are(A.numpy(), Bl.numpy(), dt * Q.numpy(), dt * R.numpy()))
            else:
                P = torch.as_tensor(solve_continuous_are(A.numpy(), Bl.numpy(), Q.numpy(), R.numpy()))
            P = 0.5 * (P + P.T)
            stabilisable = bool(torch.isfinite(P).all()) and float(torch.linalg.eigvalsh(P).min()) > 0
        except (np.linalg.LinAlgError, ValueError):
            stabilisable = False
        if stabilisable:
            Lc = torch.linalg.cholesky(torch.linalg.inv(P))  # P^-1 = Lc Lc^T: e = Lc z has e^T P e = |z|^2
            if discrete:  # the discrete LQR gain (R dt + B_d^T P B_d)^-1 B_d^T P A_d
                K = torch.linalg.solve(dt * R + Bl.T @ P @ Bl, Bl.T @ P @ A)
                Acl = A - Bl @ K
                contraction = float(torch.linalg.eigvalsh(Lc.T @ Acl.T @ P @ Acl @ Lc).max())
                alpha_lin = -math.log(contraction) / dt if 0 < contraction < 1 else 0.0
            else:
                K = torch.linalg.solve(R, B.T @ P)
                M = -(Lc.T @ ((A - B @ K).T @ P + P @ (A - B @ K)) @ Lc)
                alpha_lin = max(0.0, float(torch.linalg.eigvalsh(M).min()))
            stabilisable = alpha_lin > 0
        if stabilisable:
            self.P.copy_(P)
            self.gain.copy_(K)
        else:
            self.P.copy_(Q)
            self.gain.zero_()
        self.alpha.fill_(alpha if alpha is not None else 0.25 * alpha_lin)
        self.rho.fill_(0.0)
        return {"residual": residual, "alpha_linear": alpha_lin, "stabilisable": stabilisable}

    def sample(self, n: int, rho: float, generator: torch.Generator, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """States of ``{V <= rho}`` with ``V >= inner * rho``: ``(k, n_state)``, ``k <= n``.

        Drawn in the ellipsoid ``{e^T P e <= rho}`` (which holds ``{V <= rho}``): half uniform in
        it, a quarter on its surface, a quarter at log-uniform levels down to the inner one;
        then kept where ``V`` is in range.
        """
        dim = self.state_dim
        w = torch.randn(n, dim, generator=generator, dtype=torch.float64)
        w = w / w.norm(dim=-1, keepdim=True)
        k1, k2 = n // 2, n // 4
        radius = torch.empty(n, dtype=torch.float64)
        radius[:k1] = torch.rand(k1, generator=generator, dtype=torch.float64) ** (1.0 / dim)
        radius[k1:k1 + k2] = 1.0
        lo = 0.5 * math.log(float(self.inner))
        radius[k1 + k2:] = torch.exp(lo * torch.rand(n - k1 - k2, generator=generator, dtype=torch.float64))
        L = torch.linalg.cholesky(self.P.double())  # P = L L^T; e = L^-T z has e^T P e = |z|^2
        z = w * radius.unsqueeze(-1) * math.sqrt(max(rho, 0.0))
        e = torch.linalg.solve_triangular(L.T, z.T, upper=True).T
        x = (self.x_eq.double() + e).to(dtype=dtype, device=self.x_eq.device)
        with torch.no_grad():
            v = self(x.to(self.P.dtype)).to(dtype)
        keep = (v <= rho) & (v >= float(self.inner) * rho)
        return x[keep]

    def certify_region(self, model, *, time_domain: str | None = None, samples: int = 20_000, rounds: int = 8,
                       seed: int = 0, tol: float = 1e-6, max_inner: float = 0.25, margin: float = 0.1,
                       ascent_starts: int = 256, ascent_steps: int = 50, shrink: float = 0.1) -> float:
        """Set ``rho`` (and the inner level): the largest level whose set ``{V <= rho}`` (inside
        the box) shows no violation of the decrease under ``u_fb`` on any sampled state above
        the inner level ``inner * rho``; returns ``rho`` (0: nothing is certified).

        Evaluated in float64. Each round samples the set afresh. Violations above
        ``max_inner * rho`` lower ``rho`` below the smallest ``V`` among them; violations only
        below it raise the inner level above them instead: near ``x_eq`` an ensemble's members
        disagree (each has its own equilibrium, so no common input makes ``V`` decay to 0 on
        all of them), and the claim becomes convergence to ``{V <= inner * rho}``. It stops at
        the first round without a violation. The samples must show the decrease at the rate
        ``(1 + margin) alpha``, so that a fresh sample (``check``) of the claimed rate is not
        caught by states the rounds happened to miss; and each round also climbs the violation
        from its ``ascent_starts`` worst samples for ``ascent_steps`` Adam steps (``ascend``),
        which finds the thin violating sets that uniform samples miss (on a learned
        ``InvertedDoublePendulum-v5`` ensemble, ~1 violating state in 20,000 samples).
        """
        for name, v in (("samples", samples), ("rounds", rounds), ("ascent_starts", ascent_starts), ("ascent_steps", ascent_steps)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if not (isinstance(shrink, (int, float)) and 0 < shrink < 1):
            raise ValueError(f"shrink must be a number in (0, 1) (how far below a violating level rho steps), got {shrink!r}")
        if float(self.alpha) <= 0:
            self.rho.fill_(0.0)
            return 0.0
        V = copy.deepcopy(self).double()
        V.alpha.mul_(1 + margin)
        members = [_frozen_copy(m, torch.float64) for m in _members(model, self.ensemble)]
        gen = torch.Generator().manual_seed(seed)
        rho, inner = self.max_level(), float(self.inner)
        for _ in range(rounds):
            V.inner.fill_(inner)
            x = V.sample(samples, rho, gen)
            if x.shape[0] == 0:
                break
            with torch.no_grad():
                r = V.violation(None, x, time_domain=time_domain, members=members)
            worst = x[r.topk(min(ascent_starts, r.numel())).indices]
            xa, ra = V.ascend(members, worst, rho, time_domain=time_domain, steps=ascent_steps)
            with torch.no_grad():
                va = V(xa)
            claimed = (va <= rho) & (va >= inner * rho)
            x, r = torch.cat([x, xa[claimed]]), torch.cat([r, ra[claimed]])
            bad = r > tol
            if not bool(bad.any()):
                break
            with torch.no_grad():
                levels = np.sort(V(x[bad]).numpy())
            # the largest level with no violation between max_inner * rho and rho (sorted, so counts are searches);
            # 10% below a violating level, because the ascent finds violations on the set's boundary:
            # stepping just below the last one would take a round per sliver of a violating band
            candidates = np.concatenate([[rho], levels[levels < rho][::-1] * (1 - shrink)])
            inside = np.searchsorted(levels, candidates, "right") - np.searchsorted(levels, max_inner * candidates, "left")
            feasible = np.flatnonzero(inside == 0)
            if not len(feasible):
                rho = 0.0
                break
            rho = float(candidates[feasible[0]])
            below = levels[levels < max_inner * rho]
            inner = max(inner, float(below[-1]) / rho * (1 + 1e-3)) if len(below) else inner
        else:
            rho = 0.0  # still violating after every round: claim nothing
        if rho < 1e-6 * self.max_level():  # violations at every scale: a vanishing set is no claim either
            rho, inner = 0.0, float(self.inner)
        self.rho.fill_(rho)
        self.inner.fill_(inner)
        return rho

    def fit(self, model, *, steps: int = 300, batch: int = 512, lr: float = 3e-3, margin: float = 0.05,
            time_domain: str | None = None, seed: int = 0) -> dict[str, Any]:
        """Train the correction ``h`` to enlarge the certified region; ``P``, ``alpha`` fixed.

        Minimises ``mean relu(r(x) + margin)`` (``violation``) over states drawn in the largest
        ellipsoid inside the box, then re-certifies; the fitted weights are kept only if the
        certified set's share of the box grew (else the previous ``V`` is restored). Returns
        ``{"box_fraction_before", "box_fraction_after", "kept"}``.
        """
        if self.correction is None:
            self.certify_region(model, time_domain=time_domain, seed=seed)
            share = self.box_fraction()
            return {"box_fraction_before": share, "box_fraction_after": share, "kept": False}
        before = self.certify_region(model, time_domain=time_domain, seed=seed)
        share_before, inner_before = self.box_fraction(), float(self.inner)
        if before >= self.max_level() * (1 - 1e-6):  # V >= e^T P e: no correction makes the set larger than the box allows
            return {"box_fraction_before": share_before, "box_fraction_after": share_before, "kept": False}
        saved = copy.deepcopy(self.correction.state_dict())
        members = [_frozen_copy(mm) for mm in _members(model, self.ensemble)]  # the user's model keeps training
        gen = torch.Generator().manual_seed(seed)
        level = self.max_level()
        opt = torch.optim.Adam(self.correction.parameters(), lr=lr)
        for _ in range(steps):
            x = self.sample(batch, level, gen, dtype=self.P.dtype)
            if x.shape[0] == 0:
                break
            r = self.violation(None, x, time_domain=time_domain, members=members, create_graph=True)
            loss = torch.relu(r + margin).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.certify_region(model, time_domain=time_domain, seed=seed + 1)
        share_after = self.box_fraction()
        kept = share_after > share_before  # levels of two different V do not compare; the sets' sizes do
        if not kept:
            self.correction.load_state_dict(saved)
            self.rho.fill_(before)
            self.inner.fill_(inner_before)
        return {"box_fraction_before": share_before, "box_fraction_after": max(share_before, share_after), "kept": kept}

    # -- the certificate ---------------------------------------------------------------------
    def box_fraction(self, samples: int = 20_000, seed: int = 0) -> float:
        """Monte Carlo share of the state box inside the certified set ``{V <= rho}``."""
        gen = torch.Generator().manual_seed(seed)
        lo, hi = self.box[:, 0].double(), self.box[:, 1].double()
        x = lo + (hi - lo) * torch.rand(samples, self.state_dim, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            v = copy.deepcopy(self).double()(x)
        return float((v <= float(self.rho)).double().mean())

    def certificate(self, model) -> Certificate:
        """The ``"stabilisability"`` claim of ``model`` with this ``V`` on ``{V <= rho}`` (module
        docstring), for ``model``'s and ``V``'s current weights; evidence ``"falsification"`` once
        ``certify_region`` found a nonzero ``rho`` (``check`` samples it again)."""
        rho = float(self.rho)
        members = _members(model, self.ensemble)
        time_domain = self.time_domain
        c1 = float(torch.linalg.eigvalsh(self.P.double()).min())
        c2 = c1
        if rho > 0:
            V = copy.deepcopy(self).double()
            x = V.sample(4000, rho, torch.Generator().manual_seed(7))
            if x.shape[0]:
                with torch.no_grad():
                    e = V.error(x)
                    c2 = max(c1, float((V(x) / (e * e).sum(-1)).max()))
        member = members[0]
        integrator = getattr(member, "integrator", None) or "own"  # e.g. the true physics: its own step
        box = [[float(a), float(b)] for a, b in self.box.tolist()]
        details = {
            "lyapunov_hash": model_hash(self),
            "rho": rho,
            "inner_level": float(self.inner) * rho,
            "box": box,
            "input_box": [[float(a), float(b)] for a, b in zip(self.u_low.tolist(), self.u_high.tolist())],
            "u_eq": [float(v) for v in self.u_eq.tolist()],
            "fallback": "u_fb(x) = clip(u_eq - K (x - x_eq), lo, hi), K the LQR gain of the linearisation" + (
                " (of the members' mean)" if len(members) > 1 or isinstance(members[0], MeanMap) else ""),
            "members": (f"the mean map of {len(members[0].models)} members" if isinstance(members[0], MeanMap)
                        else f"every one of {len(members)}" if len(members) > 1 else "the model"),
            "region": (f"{{V <= {rho:.4g}}} inside the box, states with V >= {float(self.inner) * rho:.3g}" if rho > 0
                       else "empty (no level of V showed the decrease under u_fb)"),
            "c2_region": f"{{V <= {rho:.4g}}}",
            "gain_K": [[float(v) for v in row] for row in self.gain.tolist()],
            "dtype": str(self.P.dtype).removeprefix("torch."),
        }
        return Certificate(
            claim="stabilisability", alpha=float(self.alpha), c1=c1, c2=c2, equilibrium=[float(v) for v in self.x_eq.tolist()],
            time_domain=time_domain, integrator=integrator if time_domain == "discrete" else None,
            h=float(member.dt) if time_domain == "discrete" else None,
            evidence=["falsification"] if rho > 0 else [], model_class=type(model).__name__,
            weights_hash=model_hash(model) if isinstance(model, nn.Module) else "",  # e.g. the true physics: no weights
            details=details,
        )

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim, "angle_dims": list(self.angle_dims),
                "hidden": list(self.hidden), "time_domain": self.time_domain, "ensemble": self.ensemble}

    def extra_repr(self) -> str:
        return f"state_dim={self.state_dim}, action_dim={self.action_dim}, angle_dims={self.angle_dims}, hidden={self.hidden}"


def control_lyapunov_payload(lyapunov: ControlLyapunov) -> dict[str, Any]:
    """``V`` as plain data (config, boxes and weights) for a checkpoint's metadata:
    ``save_model(model, path, metadata={"control_lyapunov": control_lyapunov_payload(V)})``
    keeps the model and the ``V`` certified on it together, so that ``lyagym verify PATH`` can
    prove the stabilisability claim."""
    if not isinstance(lyapunov, ControlLyapunov):
        raise TypeError(f"lyapunov must be a ControlLyapunov, got {type(lyapunov).__name__}")
    config = {**lyapunov.config(), "box": lyapunov.box.tolist(), "u_low": lyapunov.u_low.tolist(),
              "u_high": lyapunov.u_high.tolist(), "x_eq": lyapunov.x_eq.tolist()}
    return {"config": config, "state_dict": {k: v.detach().cpu() for k, v in lyapunov.state_dict().items()}}


def control_lyapunov_from_payload(payload: dict[str, Any]) -> ControlLyapunov:
    """The ``ControlLyapunov`` stored by ``control_lyapunov_payload`` (``ValueError`` if malformed)."""
    try:
        config = dict(payload["config"])
        V = ControlLyapunov(config.pop("state_dim"), config.pop("action_dim"), **config)
        V = V.to(payload["state_dict"]["P"].dtype)
        V.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise ValueError(f"the checkpoint's 'control_lyapunov' metadata does not build a ControlLyapunov: {e}") from None
    return V


def check_stabilisability(cert: Certificate, model, *, lyapunov: ControlLyapunov | None = None, n_samples: int = 20_000,
                          ascent_starts: int = 256, ascent_steps: int = 100, rollouts: int = 64, rollout_steps: int = 200,
                          seed: int = 0, tol: float | None = None):
    """Search for counterexamples to a ``"stabilisability"`` certificate (``Certificate.check``).

    Phases (float64 copies): ``region``: ``n_samples`` states of ``{V <= rho}`` (above the inner
    level; uniform, on the boundary and near ``x_eq``), the decrease under ``u_fb`` in the
    certificate's time domain, every member; ``gradient``: the violation climbed from the
    ``ascent_starts`` worst of those for ``ascent_steps`` steps (``ControlLyapunov.ascend``;
    the visited states of the claimed set); ``rollouts``: the model's closed loop under
    ``u_fb`` (``step`` with its integrator and ``dt``; for an ensemble every member's mean map)
    from ``rollouts`` sampled states, every visited state checked until it drops below the
    inner level, and each one must stay in ``{V <= rho}``. Returns a ``FalsificationReport``.
    """
    from .falsification import FalsificationReport

    start = time.perf_counter()
    if cert.claim != "stabilisability":
        raise ValueError(f"check_stabilisability checks a 'stabilisability' certificate, got claim {cert.claim!r}")
    if not isinstance(lyapunov, ControlLyapunov):
        raise TypeError(f"lyapunov must be the ControlLyapunov the certificate was issued with, got {type(lyapunov).__name__}")
    for name, v in (("n_samples", n_samples), ("ascent_starts", ascent_starts), ("ascent_steps", ascent_steps),
                    ("rollouts", rollouts), ("rollout_steps", rollout_steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    applies = ((not cert.weights_hash) or not isinstance(model, nn.Module) or cert.applies_to(model)) and \
        cert.details.get("lyapunov_hash") == model_hash(lyapunov)
    tol = cert.tolerance(torch.float64) if tol is None else float(tol)
    n = lyapunov.state_dim
    rho, inner = float(cert.details.get("rho", 0.0)), float(cert.details.get("inner_level", 0.0))
    if rho <= 0:
        return FalsificationReport(claim=cert.claim, passed=applies, n_checked=0, n_violations=0, worst_violation=-math.inf,
                                   counterexamples=torch.empty(0, n), counterexample_inputs=None, applies=applies,
                                   tolerance=tol, seconds=time.perf_counter() - start, note="the certified region is empty")
    V = copy.deepcopy(lyapunov).double()
    V.alpha.fill_(cert.alpha)  # the claim as stated
    members = [_frozen_copy(m, torch.float64) for m in _members(model, lyapunov.ensemble)]
    gen = torch.Generator().manual_seed(seed)
    per_test: dict[str, dict[str, float]] = {}
    worst, found = -math.inf, []

    def record(name: str, x: torch.Tensor, r: torch.Tensor) -> None:
        nonlocal worst
        bad = r > tol
        w = float(r.max()) if r.numel() else -math.inf
        per_test[name] = {"checked": int(r.numel()), "violations": int(bad.sum()), "worst": w}
        worst = max(worst, w)
        if bool(bad.any()):
            found.append(x[bad])

    with torch.no_grad():
        x = V.sample(n_samples, rho, gen)
        r = V.violation(None, x, time_domain=cert.time_domain, members=members)
        record("region", x, r)
        if ascent_starts and ascent_steps and x.shape[0]:
            xa, ra = V.ascend(members, x[r.topk(min(ascent_starts, r.numel())).indices], rho,
                              time_domain=cert.time_domain, steps=ascent_steps)
            va = V(xa)
            claimed = (va <= rho) & (va >= inner)
            record("gradient", xa[claimed], ra[claimed])
        starts = V.sample(rollouts, rho, gen)
        xs, rs = [], []
        states = [starts.clone() for _ in members]
        for _ in range(rollout_steps):
            nxt = []
            for k, mm in enumerate(members):
                xk = states[k]
                if xk.shape[0] == 0:
                    nxt.append(xk)
                    continue
                vk = V(xk)
                u = V.fallback(None, xk, members=members)  # the common input of every member
                r = V.violation(None, xk, u, time_domain=cert.time_domain, members=[mm])
                xs.append(xk)
                rs.append(torch.maximum(r, (vk - rho) / vk))  # leaving the region is a violation too
                y = mm.step(xk, u)
                nxt.append(y[V(y) >= inner])
            states = nxt
        if xs:
            record("rollouts", torch.cat(xs), torch.cat(rs))
    n_checked = int(sum(t["checked"] for t in per_test.values()))
    n_bad = int(sum(t["violations"] for t in per_test.values()))
    cex = torch.cat(found)[:64].float() if found else torch.empty(0, n)
    return FalsificationReport(claim=cert.claim, passed=applies and n_bad == 0, n_checked=n_checked, n_violations=n_bad,
                               worst_violation=worst, counterexamples=cex, counterexample_inputs=None, per_test=per_test,
                               applies=applies, complete=True, tolerance=tol, seconds=time.perf_counter() - start)
