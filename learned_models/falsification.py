"""Search for counterexamples to a ``Certificate``: ``falsify(cert, model)``.

The quantity checked is the claim's *normalised violation* at a state ``x`` (and input ``u``)::

    continuous  r(x) = (grad V(x) . f(x, u) + alpha V(x) - s(u)) / V(x)
    discrete    r(x) = (V(step(x, u)) - exp(-alpha h) V(x) - (1 - exp(-alpha h)) s(u) / alpha) / V(x)

with ``s(u) = gamma ||u||^2`` for an ISS claim of gain ``gamma`` and ``s = 0`` otherwise. The
claim holds at ``x`` iff ``r(x) <= 0``; dividing by ``V`` makes states near the equilibrium
count as much as far ones. A state is a counterexample when ``r > tol``.

Where the search looks (all batched):

1. ``random``: ``n_samples`` states ``x_eq + r w``, ``w`` uniform on the sphere, ``r``
   log-uniform in ``[1e-3, 1e2]``;
2. ``shells``: spheres of radius ``1e-12 .. 1`` around ``x_eq`` (where 0/0 and cancellation
   lurk), and one more right at the certificate's excluded radius for the dtype when that is
   below ``1e-12`` (``Certificate.excluded_radius``: closer states are not claimed, and no
   phase counts them);
3. ``large_norm``: spheres of radius ``1 .. max_norm`` (overflow, saturation);
4. ``gradient``: Adam ascent on ``r`` from the worst states found so far;
5. ``rollouts`` (discrete claims): trajectories of the model's own ``step``, every transition
   checked.

By default the model is evaluated on a float64 copy, so that a reported violation is a
property of the weights, not float32 rounding (pass ``dtype=None`` to test as-is, or
``dtype=torch.float32``). The tolerance is the one the certificate states for that dtype
(``Certificate.tolerance``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .certificate import Certificate, model_hash

__all__ = ["falsify", "FalsificationReport", "empirical_certificate"]


@dataclass
class FalsificationReport:
    """Outcome of ``falsify``.

    Attributes:
        claim: the certificate's claim.
        passed: no counterexample found, every phase ran, and the certificate's weights
            hash matches the model (``applies``).
        n_checked: states (or transitions) evaluated.
        n_violations: of them, those with normalised violation ``> tolerance``.
        worst_violation: the largest normalised violation seen (``<= 0`` is comfortable).
        counterexamples: ``(k, state_dim)`` violating states, worst first (``k <= max_counterexamples``).
        counterexample_inputs: ``(k, action_dim)`` their inputs (ISS claims) or ``None``.
        per_test: ``{phase: {"checked", "violations", "worst"}}``.
        applies: the certificate's ``weights_hash`` matches the model (or it has none).
        complete: every phase ran to its end within ``time_limit`` (``False`` when the limit
            skipped a phase or stopped one part way; then ``passed`` is ``False`` and the
            summary says INCOMPLETE unless a violation was found).
        tolerance, seconds.
        note: why nothing was checked (a certificate that claims nothing), else ``""``.
    """

    claim: str
    passed: bool
    n_checked: int
    n_violations: int
    worst_violation: float
    counterexamples: torch.Tensor
    counterexample_inputs: torch.Tensor | None
    per_test: dict[str, dict[str, float]] = field(default_factory=dict)
    applies: bool = True
    complete: bool = True
    tolerance: float = 0.0
    seconds: float = 0.0
    note: str = ""

    @property
    def verdict(self) -> str:
        """``"PASSED"``, ``"FAILED"`` (a violation, or the certificate is another model's) or
        ``"INCOMPLETE"`` (no violation in what the time limit let run)."""
        if self.passed:
            return "PASSED"
        return "INCOMPLETE" if (self.n_violations == 0 and self.applies and not self.complete) else "FAILED"

    def summary(self) -> str:
        if self.note:
            return f"{self.claim}: {self.verdict} -- nothing to check: {self.note}"
        lines = [
            f"{self.claim}: {self.verdict} -- {self.n_violations} violations in {self.n_checked} checks, "
            f"worst normalised violation {self.worst_violation:.3g} (tol {self.tolerance:g}), {self.seconds:.1f} s"
        ]
        for name, t in self.per_test.items():
            lines.append(f"  {name:<11} checked {int(t['checked']):>8}  violations {int(t['violations']):>6}  worst {t['worst']:.3g}")
        if not self.applies:
            lines.append("  the certificate was issued for another model (its hash of class, config, dtype and weights differs)")
        if not self.complete:
            lines.append("  time limit reached before every phase ran to its end: the search is incomplete (raise time_limit)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "passed": self.passed,
            "n_checked": self.n_checked,
            "n_violations": self.n_violations,
            "worst_violation": self.worst_violation,
            "per_test": self.per_test,
            "applies": self.applies,
            "complete": self.complete,
            "tolerance": self.tolerance,
            "seconds": self.seconds,
            "verdict": self.verdict,
            **({"note": self.note} if self.note else {}),
        }


def _value_and_grad(V: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(V, "forward_and_grad"):
        return V.forward_and_grad(x)
    training = torch.is_grad_enabled()
    with torch.enable_grad():
        xg = x if (x.requires_grad and training) else x.detach().requires_grad_(True)
        v = V(xg)
        (g,) = torch.autograd.grad(v.sum(), xg, create_graph=training)
    return (v, g) if training else (v.detach(), g.detach())


def _sphere(n_points: int, dim: int, radii: torch.Tensor, gen: torch.Generator, dtype: torch.dtype, device) -> torch.Tensor:
    w = torch.randn(n_points, dim, generator=gen, dtype=dtype).to(device)
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return w * radii.to(device, dtype).unsqueeze(-1)


_COUNTS = ("n_samples", "shells", "per_shell", "large_norm_samples", "grad_steps", "grad_starts", "rollouts", "rollout_steps", "max_counterexamples")


def _check_arguments(cert: Any, args: dict[str, Any]) -> None:
    """``falsify``'s arguments, checked before any work (an error names the argument)."""
    if not isinstance(cert, Certificate):
        raise TypeError(f"cert must be a Certificate, got {type(cert).__name__}")
    for name in _COUNTS:
        v = args[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if not isinstance(args["batch"], int) or isinstance(args["batch"], bool) or args["batch"] < 1:
        raise ValueError(f"batch must be an int >= 1 (states per evaluation chunk), got {args['batch']!r}")
    if not isinstance(args["seed"], int) or isinstance(args["seed"], bool):
        raise ValueError(f"seed must be an int, got {args['seed']!r}")

    def number(name: str, ok: Callable[[float], bool], what: str, none_ok: bool = False) -> None:
        v = args[name]
        if v is None and none_ok:
            return
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v) or not ok(float(v)):
            raise ValueError(f"{name} must be {what}, got {v!r}")

    number("tol", lambda v: math.isfinite(v) and v >= 0, "None or a finite number >= 0 (normalised violation)", none_ok=True)
    number("max_norm", lambda v: math.isfinite(v) and v >= 1, "a finite number >= 1 (the largest radius probed)")
    number("input_scale", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
    number("time_limit", lambda v: v > 0, "a number of seconds > 0")
    if args["dtype"] not in (None, torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float64, torch.float32 or None (the model's own), got {args['dtype']!r}")


def falsify(
    cert: Certificate,
    model: Any,
    *,
    V: Callable[[torch.Tensor], torch.Tensor] | None = None,
    f: Callable[..., torch.Tensor] | None = None,
    n_samples: int = 100_000,
    shells: int = 13,
    per_shell: int = 2_000,
    max_norm: float = 1e6,
    large_norm_samples: int = 10_000,
    grad_steps: int = 100,
    grad_starts: int = 256,
    rollouts: int = 256,
    rollout_steps: int = 100,
    input_scale: float = 1.0,
    tol: float | None = None,
    dtype: torch.dtype | None = torch.float64,
    seed: int = 0,
    time_limit: float = 60.0,
    batch: int = 16_384,
    max_counterexamples: int = 64,
    progress: bool = False,
) -> FalsificationReport:
    """Try to falsify ``cert`` on ``model``; see the module docstring.

    Args:
        cert: the ``Certificate`` (its claim, ``alpha``, equilibrium, ``h``, ISS gain).
        model: a world model; ``model.lyapunov`` and ``model.derivative`` are used unless
            ``V`` / ``f`` are given; discrete claims use ``model.step``.
        V: ``(batch, n) -> (batch,)`` Lyapunov function (default ``model.lyapunov``).
        f: ``f(x)`` or ``f(x, u)`` vector field (default ``model.derivative``).
        n_samples, shells, per_shell, max_norm, large_norm_samples, grad_steps, grad_starts,
            rollouts, rollout_steps: sizes of the phases.
        input_scale: inputs for ISS claims are drawn in ``[-input_scale, input_scale]^m``
            (a quarter of them zero).
        tol: normalised violation counted as a counterexample (default: what the certificate
            states for the dtype evaluated, ``cert.tolerance(dtype)``; ``1e-6`` in float64 and
            ``1e-3`` in float32 when it states none).
        dtype: evaluate on a copy in this dtype, ``torch.float64`` (default) or
            ``torch.float32``; ``None`` keeps the model's (which must be one of them).
        seed, time_limit (seconds; phases that do not fit are skipped, ``complete=False``),
        batch (evaluation chunk), max_counterexamples, progress (tqdm over phases).
    """
    start = time.perf_counter()
    _check_arguments(cert, locals())
    claim = cert.claim
    if claim == "none":
        applies = (not cert.weights_hash) or not isinstance(model, nn.Module) or cert.applies_to(model)
        n = len(cert.equilibrium) or int(getattr(model, "state_dim", 0))
        return FalsificationReport(
            claim=claim, passed=applies, n_checked=0, n_violations=0, worst_violation=-math.inf,
            counterexamples=torch.empty(0, n), counterexample_inputs=None, applies=applies,
            tolerance=0.0, seconds=time.perf_counter() - start,
            note="the certificate claims nothing" + (f" ({cert.details['reason']})" if cert.details.get("reason") else ""),
        )
    discrete = cert.time_domain == "discrete"
    applies = (not cert.weights_hash) or not isinstance(model, nn.Module) or cert.applies_to(model)
    if dtype is not None and isinstance(model, nn.Module):
        model = copy.deepcopy(model).to(dtype)
        if isinstance(V, nn.Module):
            V = copy.deepcopy(V).to(dtype)
    if V is None:
        V = getattr(model, "lyapunov", None)
        if V is None:
            raise ValueError(f"{type(model).__name__} has no `lyapunov`; pass the Lyapunov function as V=")
    if isinstance(V, nn.Module) and dtype is not None:
        V = V.to(dtype)
    work_dtype = dtype or getattr(model, "dtype", torch.get_default_dtype())
    if work_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: the model is {work_dtype}; falsify evaluates in torch.float32 or torch.float64 (pass dtype=)")
    device = getattr(model, "device", torch.device("cpu"))
    n = int(getattr(model, "state_dim", len(cert.equilibrium)))
    m = int(getattr(model, "action_dim", 0))
    if len(cert.equilibrium) != n:
        raise ValueError(f"certificate equilibrium has {len(cert.equilibrium)} entries, model state_dim is {n}")
    x_eq = torch.tensor(cert.equilibrium, dtype=work_dtype, device=device)
    if tol is None:
        tol = cert.tolerance(work_dtype)
    radius = cert.excluded_radius(work_dtype)
    alpha = float(cert.alpha)
    gamma = 0.0
    if claim == "input_to_state_stability":
        g = cert.iss_gain.get("gamma") if isinstance(cert.iss_gain, dict) else cert.iss_gain
        if not isinstance(g, (int, float)):
            raise ValueError(f"an ISS certificate needs a numeric gain (iss_gain['gamma']), got {cert.iss_gain!r}")
        gamma = float(g)
    use_inputs = m > 0
    if discrete:
        h = float(cert.h)
        if hasattr(model, "dt") and abs(model.dt - h) > 1e-12 * max(1.0, h):
            raise ValueError(f"certificate is for step h={h} but the model steps dt={model.dt}")
        decay = math.exp(-alpha * h)
        inject = -math.expm1(-alpha * h) / alpha if alpha > 0 else h
        step = model._step if hasattr(model, "_step") else model.step
    if f is None:
        field_fn = model._derivative if hasattr(model, "_derivative") else model.derivative
    else:
        field_fn = (lambda x, u: f(x, u)) if use_inputs else (lambda x, u: f(x))
    tiny = torch.finfo(work_dtype).tiny

    def violation(x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        s = gamma * (u * u).sum(-1) if (u is not None and gamma) else 0.0
        if discrete:
            Vx = V(x)
            lhs = V(step(x, u)) - decay * Vx - inject * s
        else:
            Vx, gV = _value_and_grad(V, x)
            lhs = (gV * field_fn(x, u)).sum(-1) + alpha * Vx - s
        return lhs / Vx.clamp_min(tiny)

    gen = torch.Generator().manual_seed(seed)

    def inputs(k: int) -> torch.Tensor | None:
        if not use_inputs:
            return None
        u = (2 * torch.rand(k, m, generator=gen, dtype=work_dtype) - 1) * input_scale
        u[torch.rand(k, generator=gen) < 0.25] = 0.0
        return u.to(device)

    per_test: dict[str, dict[str, float]] = {}
    worst_states: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []  # (x, u, r) pools
    totals = {"checked": 0, "violations": 0, "worst": -math.inf}
    complete = True

    def record(name: str, x: torch.Tensor, u: torch.Tensor | None, r: torch.Tensor) -> None:
        r = torch.nan_to_num(r, nan=math.inf)  # a NaN is a violation, never a pass
        checked = r.numel()
        if radius > 0:  # inside the excluded ball nothing is claimed: not counted
            inside = (x - x_eq).norm(dim=-1) < radius
            r = r.masked_fill(inside, -math.inf)
            checked -= int(inside.sum())
        t = per_test.setdefault(name, {"checked": 0, "violations": 0, "worst": -math.inf})
        bad = int((r > tol).sum())
        worst = float(r.max()) if r.numel() else -math.inf
        t["checked"] += checked
        t["violations"] += bad
        t["worst"] = max(t["worst"], worst)
        totals["checked"] += checked
        totals["violations"] += bad
        totals["worst"] = max(totals["worst"], worst)
        k = min(grad_starts, r.numel())
        top = r.topk(k).indices
        worst_states.append((x[top].detach(), None if u is None else u[top].detach(), r[top].detach()))

    cut = []  # the phases the time limit stopped part way

    def evaluate(name: str, x: torch.Tensor) -> None:
        for i in range(0, x.shape[0], batch):
            if i and out_of_time():
                cut.append(name)
                return
            xb = x[i : i + batch]
            ub = inputs(xb.shape[0])
            with torch.no_grad():
                r = violation(xb, ub)
            record(name, xb, ub, r)

    def out_of_time() -> bool:
        return time.perf_counter() - start > time_limit

    phases: list[tuple[str, Callable[[], None]]] = []
    phases.append(("random", lambda: evaluate("random", x_eq + _sphere(n_samples, n, 10 ** (torch.rand(n_samples, generator=gen, dtype=work_dtype) * 5 - 3), gen, work_dtype, device))))

    def run_shells() -> None:
        # One shell per decade from 1e-12 (or the excluded radius) to 1, and one at the
        # excluded radius itself when it is smaller: the claim is probed right up to its edge.
        edge = radius * (1 + 1e-3)  # just outside: the stored states round by ~u |x_eq|
        lo = max(edge, 1e-12)
        radii = torch.logspace(math.log10(lo), 0, shells, dtype=work_dtype) if shells > 1 else torch.full((shells,), lo, dtype=work_dtype)
        if 0 < edge < lo:
            radii = torch.cat([radii.new_full((1,), edge), radii])
        radii = radii.repeat_interleave(per_shell)
        evaluate("shells", x_eq + _sphere(radii.numel(), n, radii, gen, work_dtype, device))

    def run_large() -> None:
        radii = 10 ** (torch.rand(large_norm_samples, generator=gen, dtype=work_dtype) * math.log10(max(max_norm, 1.0 + 1e-9)))
        evaluate("large_norm", x_eq + _sphere(large_norm_samples, n, radii, gen, work_dtype, device))

    def run_gradient() -> None:
        # Start from the worst states seen so far; optimise log-radius and direction (and the input).
        xs = torch.cat([w[0] for w in worst_states])
        rs = torch.cat([w[2] for w in worst_states])
        us = torch.cat([w[1] for w in worst_states]) if use_inputs else None
        top = rs.topk(min(grad_starts, rs.numel())).indices
        dx = (xs[top] - x_eq).clone()
        floor = max(radius * (1 + 1e-3), tiny ** 0.5)
        log_r = dx.norm(dim=-1, keepdim=True).clamp_min(floor).log().requires_grad_(True)
        w = (dx / dx.norm(dim=-1, keepdim=True).clamp_min(tiny)).requires_grad_(True)
        params = [log_r, w]
        if use_inputs:
            v = torch.atanh((us[top] / input_scale).clamp(-0.999, 0.999)).clone().requires_grad_(True)
            params.append(v)
        opt = torch.optim.Adam(params, lr=0.05)
        for k in range(grad_steps):
            x = x_eq + log_r.clamp(min=math.log(floor), max=math.log(max_norm)).exp() * w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            u = input_scale * torch.tanh(v) if use_inputs else None
            with torch.enable_grad():
                r = violation(x, u)
                opt.zero_grad()
                (-r.clamp(max=1e6).sum()).backward()
            for p in params:  # a NaN/inf gradient (e.g. through the rescale's min) gives no direction:
                p.grad = torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0)  # else Adam makes x NaN
            last = k == grad_steps - 1
            if last or k % 10 == 0:
                record("gradient", x.detach(), None if u is None else u.detach(), r.detach())
                if not last and out_of_time():
                    cut.append("gradient")
                    break
            opt.step()

    def run_rollouts() -> None:
        radii = 10 ** (torch.rand(rollouts, generator=gen, dtype=work_dtype) * 5 - 3)
        x = x_eq + _sphere(rollouts, n, radii, gen, work_dtype, device)
        with torch.no_grad():
            for k in range(rollout_steps):
                u = inputs(rollouts)
                Vx = V(x)
                y = step(x, u)
                s = gamma * (u * u).sum(-1) if (u is not None and gamma) else 0.0
                r = (V(y) - decay * Vx - inject * s) / Vx.clamp_min(tiny)
                record("rollouts", x, u, r)
                x = y
                if k % 20 == 0 and k < rollout_steps - 1 and out_of_time():
                    cut.append("rollouts")
                    break

    phases += [("shells", run_shells), ("large_norm", run_large), ("gradient", run_gradient)]
    if discrete:
        phases.append(("rollouts", run_rollouts))
    names = [p[0] for p in phases]
    if progress:
        from tqdm.auto import tqdm

        phases = tqdm(phases, desc=f"falsify {claim}", unit="phase", leave=False)
    for name, run in phases:
        if out_of_time():
            complete = False
            break
        if name == "gradient" and (grad_steps <= 0 or not worst_states):
            continue
        run()
    if cut:
        complete = False
    for name in names:
        per_test.setdefault(name, {"checked": 0, "violations": 0, "worst": -math.inf})

    xs = torch.cat([w[0] for w in worst_states]) if worst_states else torch.empty(0, n)
    rs = torch.cat([w[2] for w in worst_states]) if worst_states else torch.empty(0)
    bad = rs > tol
    order = rs[bad].argsort(descending=True)[:max_counterexamples]
    counterexamples = xs[bad][order].cpu()
    cex_u = torch.cat([w[1] for w in worst_states])[bad][order].cpu() if (use_inputs and worst_states) else None
    return FalsificationReport(
        claim=claim,
        passed=totals["violations"] == 0 and applies and complete,
        n_checked=int(totals["checked"]),
        n_violations=int(totals["violations"]),
        worst_violation=float(totals["worst"]),
        counterexamples=counterexamples,
        counterexample_inputs=cex_u,
        per_test=per_test,
        applies=applies,
        complete=complete,
        tolerance=float(tol),
        seconds=time.perf_counter() - start,
    )


def empirical_certificate(
    model: Any,
    V: Callable[[torch.Tensor], torch.Tensor],
    alpha: float,
    *,
    f: Callable[[torch.Tensor], torch.Tensor] | None = None,
    states: torch.Tensor | None = None,
    x_eq: torch.Tensor | list[float] | None = None,
    claim: str = "exponential_stability",
    run_falsification: bool = True,
    tol: float | None = None,
    **falsify_kwargs: Any,
) -> Certificate:
    """A certificate for a model whose stability is *not* built in (e.g. LyaNet's soft loss).

    Checks ``grad V . f <= -alpha V`` (continuous time) on ``states`` (held-out data: evidence
    ``"empirical"`` if none violates it) and, with ``run_falsification``, runs ``falsify``
    (evidence ``"falsification"`` if it passes). Never ``"by_construction"``. The measured
    numbers go to ``details`` (``empirical_violation_rate``, ``falsification`` report), so a
    certificate that failed both tests still says how badly.

    Args:
        model: the model (for ``state_dim``, ``derivative`` and the weights hash).
        V: ``(batch, n) -> (batch,)`` Lyapunov candidate with ``V(x_eq) = 0``.
        alpha: claimed rate.
        f: vector field ``f(x)`` (default ``model.derivative``).
        states: ``(N, n)`` states to test empirically (e.g. held-out data), or ``None``.
        x_eq: equilibrium (default ``model.x_eq`` or the origin).
        claim: ``"exponential_stability"`` or ``"lyapunov_convergence"``.
        tol: normalised violation counted as one (default: ``falsify``'s for the dtype used).
        falsify_kwargs: passed to ``falsify``. With a custom ``f`` (which ``falsify`` cannot
            convert) the model is tested in its own dtype unless ``dtype`` is given.
    """
    n = int(model.state_dim)
    if x_eq is None:
        x_eq = getattr(model, "x_eq", None)
    x_eq = torch.zeros(n) if x_eq is None else torch.as_tensor(x_eq, dtype=torch.float64).reshape(-1)
    custom_f = f is not None
    if f is None:
        f = lambda x: model.derivative(x)  # noqa: E731
    details: dict[str, Any] = {}
    evidence: list[str] = []
    if states is not None:
        with torch.no_grad():
            Vx, gV = _value_and_grad(V, states)
            r = ((gV * f(states)).sum(-1) + alpha * Vx) / Vx.clamp_min(torch.finfo(Vx.dtype).tiny)
        rate = float((r > (tol if tol is not None else (1e-6 if r.dtype == torch.float64 else 1e-3))).double().mean())
        details.update(empirical_states=int(states.shape[0]), empirical_violation_rate=rate, empirical_worst=float(r.max()))
        if rate == 0.0:
            evidence.append("empirical")
    cert = Certificate(
        claim=claim,
        alpha=float(alpha),
        equilibrium=[float(v) for v in x_eq.tolist()],
        time_domain="continuous",
        evidence=evidence,
        weights_hash=model_hash(model) if isinstance(model, nn.Module) else "",
        model_class=type(model).__name__,
        details=details,
    )
    if run_falsification:
        if custom_f:
            falsify_kwargs.setdefault("dtype", None)
        report = falsify(cert, model, V=V, f=f if custom_f else None, tol=tol, **falsify_kwargs)
        cert.details["falsification"] = report.to_dict()
        if report.passed:
            cert.evidence.append("falsification")
    return cert
