"""Formal verification of a Lyapunov decrease condition over a box of states.

``verify_decrease(model, V, box, alpha=...)`` proves ``h(x) = grad V(x) . f(x) + alpha V(x) < 0``
(so ``dV/dt <= -alpha V``) on every state of ``box`` outside the local certificate's ellipsoid
``E`` around the model's own equilibrium (``local_certificate.py``), by branch and bound
(``branch_and_bound.py``) on the sound bounds of ``bounds.py``; or finds a state where it
fails (re-checked by plain float64 evaluation); or reports the proven share of the box when
the time budget runs out. With ``rho`` the claim is restricted to the sublevel set
``{V <= rho}``: boxes whose certified lower bound of ``V`` exceeds ``rho`` need no proof.

``region_of_attraction`` bisects on ``rho`` (geometrically, as ``rho`` spans decades) below a
certified lower bound of ``V`` on the box's boundary, so that ``{V <= rho}`` lies inside the
box. Then, for every ``x0`` in ``S = {V <= rho}``: outside ``E``, ``V`` decreases at rate
``alpha`` so the trajectory stays in ``S`` and reaches ``E`` in finite time; ``E`` is invariant
and the quadratic ``V_loc`` decays inside it: ``S`` is a certified region of attraction.

Models: ``SimpleDynamics`` (or any network ``bounds.network_bounds`` covers) with a
``LyapunovFunction`` without warp; with ``u_box`` the condition is proven for every input in
that box too (the local certificate is then not used: it needs an autonomous field).
``time_domain="discrete"`` proves the step map's ``V(step(x)) <= exp(-alpha h) V(x)`` instead
(``step_bounds.py``; ``E`` from ``local_step_certificate``); ``V`` is convex without a warp, so
``{V <= rho}`` is connected and a step that keeps ``V <= rho`` stays inside the box.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .bounds import MARGIN, LinearBounds, decrease_bounds, lyapunov_bounds
from .branch_and_bound import branch_and_bound
from .local_certificate import LocalCertificate, local_certificate, local_step_certificate
from .step_bounds import STEP_METHODS, discrete_decrease_bounds

__all__ = ["VerificationResult", "verify_decrease", "region_of_attraction", "parse_box"]

TOOL = "lyagym forward linear bounds (CROWN-style) + branch and bound"


@dataclass
class VerificationResult:
    """Outcome of ``verify_decrease`` / ``region_of_attraction``.

    ``status``: ``"verified"``, ``"counterexample"`` or ``"unknown"``; ``fraction``: share of
    the box volume proven or covered (by ``E``, or outside ``{V <= rho}``), ``covered_fraction``
    the covered part alone; ``counterexample``:
    ``(n,)`` state (``(n + m,)`` state and input with ``u_box``) with ``h > 0``;
    ``rho``: the sublevel set the claim is restricted to (``None``: the whole box).
    """

    status: str
    fraction: float
    boxes: int
    seconds: float
    alpha: float
    box: list[list[float]]
    rho: float | None = None
    covered_fraction: float = 0.0
    counterexample: list[float] | None = None
    counterexample_value: float | None = None
    local: LocalCertificate | None = None
    worst_upper: float | None = None
    time_domain: str = "continuous"
    step: dict[str, Any] | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    condition: str | None = None

    def details(self) -> dict[str, Any]:
        """Plain data for a certificate's ``details["formal"]`` and the CLI's JSON."""
        return {
            "tool": TOOL,
            "status": self.status,
            "condition": self.condition or ("grad V . f + alpha V < 0" if self.time_domain == "continuous"
                                            else "V(step(x)) - exp(-alpha h) V(x) < 0"),
            "time_domain": self.time_domain,
            "step": self.step,
            "box": self.box,
            "alpha": self.alpha,
            "rho": self.rho,
            "fraction": self.fraction,
            "covered_fraction": self.covered_fraction,
            "boxes": self.boxes,
            "seconds": self.seconds,
            "margin": f"every offset widened by {MARGIN:g} x the magnitude of its terms (float64 rounding of a "
                      "k-term sum is below k 2^-53, 1e-13 at k = 1000)",
            "counterexample": self.counterexample,
            "counterexample_h": self.counterexample_value,
            "worst_open_upper_bound": self.worst_upper,
            "local": None if self.local is None else self.local.to_dict(),
            "trials": self.trials,
        }


def parse_box(box: Any, n: int, name: str = "box", *, flat: bool = False) -> torch.Tensor:
    """``box`` as a ``(n, 2)`` float64 tensor of ``[lo, hi]`` rows; ``ValueError`` naming
    ``name`` and the expected form otherwise. ``flat``: rows with ``lo == hi`` are allowed."""
    try:
        t = torch.as_tensor(box, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be {n} pairs [lo, hi], got {box!r}") from None
    if t.shape != (n, 2):
        raise ValueError(f"{name} must be {n} pairs [lo, hi] (shape ({n}, 2)), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or not bool((t[:, 0] <= t[:, 1] if flat else t[:, 0] < t[:, 1]).all()):
        raise ValueError(f"{name} needs finite lo {'<=' if flat else '<'} hi in every row, got {t.tolist()}")
    return t


def _float64(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).to(torch.float64)


def _decrease_fn(model64: nn.Module, V64: nn.Module, alpha: float, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Plain evaluation of ``h`` at points ``(batch, n)`` or ``(batch, n + m)``."""

    def h(xu: torch.Tensor) -> torch.Tensor:
        x, u = xu[:, :n], (xu[:, n:] if xu.shape[1] > n else None)
        with torch.no_grad():
            v, g = V64.forward_and_grad(x)
            f = model64.derivative(x, u) if hasattr(model64, "derivative") else model64(xu)
        return (g * f).sum(-1) + alpha * v

    return h


def _discrete_decrease_fn(model64: nn.Module, V64: nn.Module, alpha: float, h: float, method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Plain evaluation of ``V(step(x)) - exp(-alpha h) V(x)`` at points ``(batch, n)``."""
    from .integrators import integrate

    field = model64.fhat if hasattr(model64, "fhat") else model64
    decay = math.exp(-alpha * h)

    def d(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return V64(integrate(field, x, h, method)) - decay * V64(x)

    return d


def _step_of(model: nn.Module) -> tuple[float, str]:
    h, method = getattr(model, "dt", None), getattr(model, "integrator", None)
    if h is None or method not in STEP_METHODS:
        raise ValueError(f"the discrete condition needs a model with dt and integrator in {STEP_METHODS}; "
                         f"{type(model).__name__} has dt={h!r}, integrator={method!r}")
    return float(h), str(method)


def verify_decrease(
    model: nn.Module,
    lyapunov: nn.Module,
    box: Any,
    *,
    alpha: float,
    rho: float | None = None,
    u_box: Any = None,
    budget_s: float = 30.0,
    local: LocalCertificate | None | bool = True,
    batch: int = 512,
    progress: Callable[[float, int], None] | None = None,
    exhaustive: bool = False,
    time_domain: str = "continuous",
    split: str = "widest",
    clock: Callable[[], float] = time.perf_counter,
) -> VerificationResult:
    """Prove ``grad V . f + alpha V < 0`` on ``box`` (``n`` rows ``[lo, hi]``) minus ``E``.

    Args:
        model: the field ``f`` (``SimpleDynamics`` or a supported network).
        lyapunov: ``V`` (``LyapunovFunction``, no warp).
        alpha: decay rate ``>= 0``.
        rho: restrict the claim to ``{V <= rho}``.
        u_box: ``m`` rows ``[lo, hi]``: the condition for every input in that box.
        budget_s: time budget (seconds).
        local: ``True`` computes the local certificate (``E`` is then covered), ``False``
            uses none, or pass one already computed.
        batch, progress: see ``branch_and_bound``.
        exhaustive: after a counterexample, keep proving the rest of the box until the budget
            (``fraction`` then says how much of the box the condition provably holds on).
        time_domain: ``"continuous"`` or ``"discrete"``: the step map's decrease
            ``V(step(x)) <= exp(-alpha h) V(x)`` with the model's ``dt`` and ``integrator``
            (``"euler"`` or ``"rk4"``), ``E`` from ``local_step_certificate``.
        split, clock: see ``branch_and_bound`` (``budget_s`` and ``seconds`` count ``clock``).
    """
    if time_domain not in ("continuous", "discrete"):
        raise ValueError(f"time_domain must be 'continuous' or 'discrete', got {time_domain!r}")
    n = int(lyapunov.state_dim)
    X = parse_box(box, n)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if rho is not None and not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0 or None, got {rho!r}")
    if not (isinstance(budget_s, (int, float)) and budget_s > 0):
        raise ValueError(f"budget_s must be a number > 0, got {budget_s!r}")
    m = int(getattr(model, "action_dim", 0) or 0)
    if u_box is not None:  # a row with lo == hi fixes that input (e.g. u = 0: the unforced decrease)
        Ub = parse_box(u_box, m, "u_box", flat=True)
        X = torch.cat([X, Ub])
    elif m:
        raise ValueError(f"the model takes inputs (action_dim={m}): pass u_box, {m} pairs [lo, hi]")
    start = clock()
    model64, V64 = _float64(model), _float64(lyapunov)
    device = next(V64.parameters()).device
    X = X.to(device)
    step = None
    if time_domain == "discrete":
        if m:
            raise ValueError("the discrete condition is for autonomous models (no u_box)")
        h, method = _step_of(model)
        step = {"h": h, "integrator": method}
    if local is True:
        if m:
            local = None
        elif step is None:
            local = local_certificate(model64, V64.x_eq)
        else:
            local = local_step_certificate(model64, V64.x_eq, h, method)
    elif local is False:
        local = None

    def bound_fn(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if step is None:
                b = decrease_bounds(model64, V64, lo[:, :n], hi[:, :n], alpha, u_lo=lo[:, n:], u_hi=hi[:, n:])
                upper = b["h"][1]
            else:
                b = discrete_decrease_bounds(model64, V64, lo, hi, alpha, h, method)
                upper = b["d"][1]
        covered = torch.zeros_like(upper, dtype=torch.bool)
        if local is not None:
            covered |= local.contains_boxes(lo[:, :n], hi[:, :n])
        if rho is not None:
            covered |= b["V"][0] > rho
        return upper, covered

    value_fn = _decrease_fn(model64, V64, float(alpha), n) if step is None else _discrete_decrease_fn(model64, V64, float(alpha), h, method)
    free = X[:, 0] < X[:, 1]
    if not bool(free.all()):  # fixed inputs: branch on the other rows only (a flat side has no share of a volume to split)
        bound_fn, value_fn = _on_free_rows(bound_fn, free, X), _on_free_rows(value_fn, free, X)
    res = branch_and_bound(bound_fn, value_fn, X[free, 0], X[free, 1],
                           budget_s=max(1e-3, budget_s - (clock() - start)), batch=batch, progress=progress,
                           exhaustive=exhaustive, split=split, clock=clock)
    counterexample = res.counterexample
    if counterexample is not None and not bool(free.all()):
        counterexample = X[:, 0].clone().index_put_((free.nonzero().flatten(),), counterexample.to(X))
    return VerificationResult(
        status=res.status, fraction=res.verified_fraction, boxes=res.boxes, seconds=clock() - start,
        alpha=float(alpha), box=X.tolist(), rho=rho, covered_fraction=res.covered_fraction,
        counterexample=None if counterexample is None else counterexample.tolist(),
        counterexample_value=res.counterexample_value, local=local, worst_upper=res.worst_upper, time_domain=time_domain,
        step=step,
    )


def _on_free_rows(fn: Callable[..., Any], free: torch.Tensor, box: torch.Tensor) -> Callable[..., Any]:
    """``fn`` of full ``(batch, rows)`` points or box corners called with the ``free`` rows only;
    the other rows are fixed at their value in ``box`` (``lo == hi`` there)."""
    fixed = box[:, 0]

    def on_free(*parts: torch.Tensor) -> Any:
        full = []
        for part in parts:
            whole = fixed.to(part).expand(part.shape[0], -1).clone()
            whole[:, free] = part
            full.append(whole)
        return fn(*full)

    return on_free


def boundary_minimum(lyapunov: nn.Module, box: torch.Tensor, *, pieces: int = 4096, rounds: int = 8) -> float:
    """A certified lower bound of ``min V`` over the boundary of ``box`` (``(n, 2)`` float64).

    Each face is cut into about ``pieces / 2n`` boxes; then ``rounds`` times the quarter with
    the smallest bounds is halved along its widest free side.
    """
    V64 = _float64(lyapunov)
    n = box.shape[0]
    per_dim = max(1, int(round((pieces / (2 * n)) ** (1.0 / max(1, n - 1)))))
    lo_all, hi_all = [], []
    for j in range(n):
        for side in (0, 1):
            edges = [torch.linspace(float(box[i, 0]), float(box[i, 1]), per_dim + 1, dtype=torch.float64) for i in range(n)]
            cells_lo = torch.cartesian_prod(*[e[:-1] if i != j else box[j, side:side + 1] for i, e in enumerate(edges)]).reshape(-1, n)
            cells_hi = torch.cartesian_prod(*[e[1:] if i != j else box[j, side:side + 1] for i, e in enumerate(edges)]).reshape(-1, n)
            lo_all.append(cells_lo)
            hi_all.append(cells_hi)
    lo, hi = torch.cat(lo_all).to(V64.x_eq.device), torch.cat(hi_all).to(V64.x_eq.device)

    def lower(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return lyapunov_bounds(V64, LinearBounds.from_box(lo, hi), grad=False).value.bounds()[0][:, 0]

    lb = lower(lo, hi)
    for _ in range(rounds):
        k = max(1, lb.numel() // 4)
        worst = torch.argsort(lb)[:k]
        wlo, whi = lo[worst], hi[worst]
        dim = torch.argmax(whi - wlo, dim=1)
        mid = ((wlo + whi) / 2).gather(1, dim.unsqueeze(1))
        left_hi = whi.scatter(1, dim.unsqueeze(1), mid)
        right_lo = wlo.scatter(1, dim.unsqueeze(1), mid)
        keep = torch.ones_like(lb, dtype=torch.bool)
        keep[worst] = False
        lo = torch.cat([lo[keep], wlo, right_lo])
        hi = torch.cat([hi[keep], left_hi, whi])
        lb = torch.cat([lb[keep], lower(wlo, left_hi), lower(right_lo, whi)])
    return float(lb.min())


def region_of_attraction(
    model: nn.Module,
    lyapunov: nn.Module,
    box: Any,
    *,
    alpha: float,
    budget_s: float = 60.0,
    steps: int = 10,
    progress: Callable[[float, int], None] | None = None,
    time_domain: str = "continuous",
    split: str = "widest",
    clock: Callable[[], float] = time.perf_counter,
) -> VerificationResult:
    """The largest ``rho`` found by bisection such that the decrease is proven on
    ``{V <= rho}`` (minus ``E``), with ``{V <= rho}`` inside ``box`` (module docstring).

    Each of the ``steps`` trials gets ``budget_s / (steps + 1)`` seconds. The result is the
    best verified trial (``status="verified"``, ``rho`` set) or, if none is, the last trial
    with ``rho = None``.
    ``trials`` lists every ``(rho, status, fraction, seconds)``. ``time_domain="discrete"``:
    the same for the step map (``V`` is convex without a warp, so ``{V <= rho}`` is connected
    and a step that keeps ``V <= rho`` cannot jump out of the box). ``split``, ``clock``: see
    ``branch_and_bound``.
    """
    n = int(lyapunov.state_dim)
    X = parse_box(box, n)
    start = clock()
    model64 = _float64(model)
    x_eq = lyapunov.x_eq.detach().to(torch.float64)
    if time_domain == "discrete":
        local = local_step_certificate(model64, x_eq, *_step_of(model))
    else:
        local = local_certificate(model64, x_eq)
    rho_hi = boundary_minimum(lyapunov, X) * (1 - 1e-9)
    trials: list[dict[str, Any]] = []
    best: VerificationResult | None = None
    last: VerificationResult | None = None
    if rho_hi <= 0:
        raise ValueError(f"V's certified lower bound on the boundary of box is {rho_hi:.3g} <= 0: the box is too small")
    # six decades below the boundary level: smaller sublevel sets are of little use, and the
    # first geometric step then lands at 1e-3 of it
    rho_lo = rho_hi * 1e-6
    rho = rho_hi
    per_trial = budget_s / (steps + 1)
    for _ in range(steps):
        res = verify_decrease(model, lyapunov, X, alpha=alpha, rho=rho, budget_s=per_trial, local=local if local else False,
                              progress=progress, time_domain=time_domain, split=split, clock=clock)
        trials.append({"rho": rho, "status": res.status, "fraction": res.fraction, "seconds": res.seconds})
        last = res
        if res.status == "verified":
            best = res
            if rho == rho_hi:
                break
            rho_lo = rho
        else:
            rho_hi = rho
        rho = math.sqrt(rho_lo * rho_hi)
        if rho_hi / rho_lo < 1.05:
            break
    out = best if best is not None else last
    if best is None:
        out.rho = None  # no level was proven: the last trial's level claims nothing
    out.trials = trials
    out.seconds = clock() - start
    return out


def formal_certificate(cert: Any, model: nn.Module, *, box: Any, budget_s: float = 30.0, lyapunov: nn.Module | None = None,
                       rho: float | str | None = None, u_box: Any = None, progress: Callable[[float, int], None] | None = None) -> Any:
    """``Certificate.verify``: a copy of ``cert`` with ``details["formal"]`` and, when proven,
    evidence ``"formal"`` and ``details["region"]`` saying where the claim now holds."""
    import dataclasses

    if cert.claim == "lyapunov_convergence":
        return _contraction_certificate(cert, model, box=box, budget_s=budget_s, progress=progress)
    if cert.claim not in ("exponential_stability", "input_to_state_stability", "discrete_exponential_stability"):
        raise ValueError(f"verify proves a Lyapunov decrease (dV/dt <= -alpha V, or V(x_(k+1)) <= exp(-alpha h) V(x_k)); "
                         f"this certificate claims {cert.claim!r}")
    if cert.time_domain == "discrete":
        h, method = _step_of(model)
        if cert.h is not None and abs(cert.h - h) > 1e-12 * max(1.0, h):
            raise ValueError(f"the certificate's step h={cert.h} is not the model's dt={h}")
    if cert.weights_hash and not cert.applies_to(model):
        raise ValueError("this certificate was issued for other weights (cert.applies_to(model) is False)")
    V = lyapunov if lyapunov is not None else getattr(model, "lyapunov", None)
    if V is None:
        raise ValueError(f"{type(model).__name__} has no Lyapunov function: pass lyapunov=V")
    if rho == "auto":
        if u_box is not None:
            raise ValueError("rho='auto' (region of attraction) needs an autonomous model; give rho a level or None")
        res = region_of_attraction(model, V, box, alpha=cert.alpha, budget_s=budget_s, progress=progress, time_domain=cert.time_domain)
    elif rho is None or isinstance(rho, (int, float)):
        res = verify_decrease(model, V, box, alpha=cert.alpha, rho=rho, u_box=u_box, budget_s=budget_s, progress=progress,
                              time_domain=cert.time_domain)
    else:
        raise ValueError(f"rho must be None, a number > 0 or 'auto', got {rho!r}")
    details = dict(cert.details)
    details["formal"] = res.details()
    evidence = list(cert.evidence)
    if res.status == "verified":
        if "formal" not in evidence:
            evidence.append("formal")
        where = f"{{V <= {res.rho:.4g}}} inside the box" if res.rho is not None else "the box"
        hole = (f"; inside the local ellipsoid around x* = {_short(res.local.x_star.tolist())} (radius "
                f"<= {res.local.radius:.2g}) by the linearisation with a certified remainder") if res.local is not None else ""
        if res.time_domain == "discrete":
            hole += f"; for the {res.step['integrator']} step map with h = {res.step['h']:g}"
        details["region"] = f"{where} {_short([list(map(float, r)) for r in res.box])} (proven by bound propagation){hole}"
    return dataclasses.replace(cert, evidence=evidence, details=details)


def _contraction_certificate(cert: Any, model: nn.Module, *, box: Any, budget_s: float,
                             progress: Callable[[float, int], None] | None) -> Any:
    """``Certificate.verify`` for a LyaNet inference claim (``lyapunov_convergence``).

    LyaNet's condition on ``V_y = ||eta - y||^2`` itself cannot be proven: it needs the target
    ``y`` of every input, which the model holds only at its data points, and next to ``eta = y``
    it is ``2 (eta - y) . f(y, z, t) + O(||eta - y||^2)``, positive on half of every
    neighbourhood of ``y`` wherever the model is not exact. What is proven instead is
    contraction at rate ``alpha / 2`` (``contraction.py``): ``V_y`` then decays at rate
    ``alpha`` down to the floor the model's own residual at the target sets."""
    import dataclasses

    from .contraction import verify_contraction

    if not cert.alpha > 0:
        raise ValueError(f"a LyaNet certificate with alpha = {cert.alpha} claims no convergence to prove")
    if not hasattr(model, "ode") or not hasattr(model, "in_mean"):
        raise ValueError(f"lyapunov_convergence certificates are proven on a LyaNetWorldModel, got {type(model).__name__}")
    if cert.weights_hash and not cert.applies_to(model):
        raise ValueError("this certificate was issued for other weights (cert.applies_to(model) is False)")
    res = verify_contraction(model, box, rate=cert.alpha / 2, budget_s=budget_s, progress=progress)
    details = dict(cert.details)
    details["formal"] = res.details()
    details["formal"]["why_contraction"] = (
        "LyaNet's own condition on V_y = ||eta - y||^2 needs each input's target y (known only at data points) and fails "
        "next to eta = y wherever the model is not exact; contraction at rate alpha / 2 is proven instead, so "
        "||eta(t) - y|| <= e^(-alpha t / 2) ||y|| + (1 - e^(-alpha t / 2)) max_s ||f(y, z, s)|| / (alpha / 2) while the path "
        "stays in the eta box")
    evidence = list(cert.evidence)
    if res.status == "verified":
        if "formal" not in evidence:
            evidence.append("formal")
        details["region"] = (f"every input in {_short(box if isinstance(box, list) else torch.as_tensor(box).tolist())} "
                             f"and inference state in {_short(res.box[:model.state_dim])} (normalised): the inference ODE "
                             f"contracts at rate {cert.alpha / 2:.4g}, so ||eta - y||^2 decays at rate {cert.alpha:.4g} down to "
                             "the floor (max_s ||f(y, z, s)|| / (alpha / 2))^2 set by the model's residual at the target "
                             "(proven by interval Jacobians)")
    return dataclasses.replace(cert, evidence=evidence, details=details)


def _short(values: Sequence) -> str:
    def fmt(v: Any) -> str:
        return "[" + ", ".join(fmt(x) for x in v) + "]" if isinstance(v, (list, tuple)) else f"{v:.4g}"

    return fmt(values)


def lyapunov_payload(lyapunov: nn.Module) -> dict[str, Any]:
    """``V`` as plain data (config and weights) for a checkpoint's metadata: ``save_model(f,
    path, metadata={"lyapunov": lyapunov_payload(V), "alpha": alpha})`` stores a model whose
    ``V`` is separate (the soft-Lyapunov model), so that ``lyagym verify PATH`` finds both."""
    config = {"state_dim": lyapunov.state_dim, "hidden": list(lyapunov.g.hidden), "eps": lyapunov.eps, "d": lyapunov.d,
              "warp": lyapunov.warp_name, "x_eq": lyapunov.x_eq.tolist(), "shift": lyapunov.shift,
              "quadratic": lyapunov.L is not None}
    return {"config": config, "state_dict": {k: v.detach().cpu() for k, v in lyapunov.state_dict().items()}}


def lyapunov_from_payload(payload: dict[str, Any]) -> nn.Module:
    """The ``LyapunovFunction`` stored by ``lyapunov_payload`` (``ValueError`` if malformed)."""
    from .lyapunov import LyapunovFunction

    try:
        V = LyapunovFunction(**payload["config"])
        V = V.to(next(iter(payload["state_dict"].values())).dtype)
        V.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, StopIteration) as e:
        raise ValueError(f"the checkpoint's 'lyapunov' metadata does not build a LyapunovFunction: {e}") from None
    return V
