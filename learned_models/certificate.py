"""What a world model guarantees, stated as data and checkable.

A ``Certificate`` says *what* is claimed (e.g. global exponential stability of the ODE
``xdot = f(x)`` towards ``equilibrium`` at rate ``alpha``), *where* (continuous time or the
discrete step map with a given integrator and step ``h``), with which constants, for which
exact model (``weights_hash`` is ``model_hash``: class, config, dtype and weights, so a
certificate stops applying after fine-tuning and after changing ``alpha``, the integrator,
the step, the rescale or the dtype), to which precision per dtype (``numerics``: the
tolerance and the ball around ``x_eq`` where rounding of the states themselves rules), and on
what ``evidence``:

- ``"by_construction"``: the claim follows from the model's architecture (Manek & Kolter's
  projection); no sample can violate it except through floating point error.
- ``"falsification"``: a search for counterexamples (``Certificate.check``) found none.
- ``"empirical"``: measured on held-out data (e.g. LyaNet's soft Lyapunov loss); a
  statement about the data seen, not a proof.
- ``"formal"``: proven by sound bound propagation and branch and bound over a box of states
  (``Certificate.verify``; ``details["formal"]`` says where: the box, the sublevel level
  ``rho``, the local ellipsoid at the equilibrium, the proven fraction and the margin).

The exponential-stability constants follow eq. (2) of Manek & Kolter:
``c1 ||x - x_eq||^2 <= V(x) <= c2 ||x - x_eq||^2`` and ``dV/dt <= -alpha V`` give
``||x(t) - x_eq|| <= m ||x(0) - x_eq|| exp(-alpha t / 2)`` with overshoot
``m = sqrt(c2 / c1)``. So from every start within distance ``R`` of ``x_eq`` the state is within
``eps`` of it after ``time_to(eps, region=R) = (2 / alpha) ln(m R / eps)`` (a box region is
reduced to the distance of its farthest corner); a model certifies how long it takes to settle,
not only that it does.

A ``"stabilisability"`` claim (``control_lyapunov.ControlLyapunov``) is about a plant that is
not open-loop stable: on the region ``{V <= rho}`` it names, the fallback input ``u_fb(x)`` it
names gives ``dV/dt <= -alpha V``, so the model's closed loop under ``u_fb`` converges; the
constants and ``time_to`` read as above for that closed loop and that region.

Models without a guarantee (``SimpleDynamics``, ensembles of them) issue a certificate with
claim ``"none"``: it states nothing, and its ``check`` passes with nothing to check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write

__all__ = ["Certificate", "CLAIMS", "EVIDENCE", "weights_hash", "model_hash"]

#: The claims a certificate can make.
CLAIMS = (
    "exponential_stability",  # of the continuous-time ODE xdot = f(x)
    "discrete_exponential_stability",  # of the step map: V(x_{k+1}) <= exp(-alpha h) V(x_k)
    "input_to_state_stability",  # with inputs: dV/dt <= -alpha V + sigma(x, u), sigma(x, 0) = 0
    "stabilisability",  # a control Lyapunov function: on {V <= rho}, the fallback input gives dV/dt <= -alpha V
    "lyapunov_convergence",  # LyaNet: inference ODE converges to its prediction at rate kappa
    "none",  # an unconstrained model: nothing is claimed (check passes with nothing to check)
)
#: Kinds of evidence, strongest first.
EVIDENCE = ("by_construction", "formal", "falsification", "empirical")

#: 2: ``weights_hash`` is ``model_hash`` (class, config, dtype and weights; version 1 hashed
#: the weights' values only) and ``numerics`` states the per-dtype tolerance and excluded ball.
FORMAT_VERSION = 2

#: Floating point dtypes a certificate can state its precision for.
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Normalised tolerances assumed when a certificate states none (format version 1).
DEFAULT_TOLERANCE = {"float32": 1e-3, "float64": 1e-6}

#: The explanations written into every certificate's JSON (``"meaning"``).
MEANING = {
    "alpha": "certified decay rate of V: dV/dt <= -alpha V (discrete: V(x_{k+1}) <= exp(-alpha h) V(x_k))",
    "c1": "V(x) >= c1 ||x - x_eq||^2: a small V forces a small distance to the equilibrium",
    "c2": "V(x) <= c2 ||x - x_eq||^2 (null: unknown)",
    "overshoot": "sqrt(c2 / c1): ||x(t) - x_eq|| <= overshoot ||x(0) - x_eq|| exp(-alpha t / 2)",
    "time_domain": "continuous: the ODE xdot = f(x); discrete: the model's step map with `integrator` and step `h`",
    "evidence": "by_construction (architecture), formal (proven over a box by bound propagation; see details.formal), "
                "falsification (no counterexample found), empirical (measured on data)",
    "weights_hash": "sha256 of the model the claim is about: class, config (alpha, integrator, step, rescale, ...), "
    "dtype and weights; fine-tuning or changing any of them voids it",
    "numerics": "per dtype: the claim holds as evaluated in that dtype up to `tolerance` (normalised by V(x)) at "
    "every state with ||x - x_eq|| >= `radius` (closer states round to within a few units of x_eq)",
    "settling": "details.settling, where stated: from every start in `region` (a radius around x_eq or a box), "
    "||x(t) - x_eq|| <= eps for all t >= `time` (= (2 / alpha) ln(overshoot * radius / eps), radius the region's "
    "farthest distance from x_eq; discrete: rounded up to a whole step); with inputs, for u = 0. Where the model "
    "knows V's maximum over a box region exactly (a convex V: at a corner), also `time_from_levels` = "
    "ln(max_V_region / (c1 eps^2)) / alpha, the same statement from V's levels (tighter)",
}

#: ``eps`` of the settling line every ``summary`` prints: the time to shrink the distance 100-fold.
_SUMMARY_SHRINK = 0.01


def weights_hash(module: torch.nn.Module | None) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes, dtypes and values).

    Device-independent: tensors are hashed from their CPU float64 values.
    """
    h = hashlib.sha256()
    if module is None:
        return h.hexdigest()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().to("cpu")
        h.update(str(tuple(t.shape)).encode())
        h.update(t.to(torch.float64).contiguous().numpy().tobytes() if t.is_floating_point() else t.contiguous().numpy().tobytes())
    return h.hexdigest()


def model_hash(module: torch.nn.Module | None) -> str:
    """SHA-256 of everything a model's behaviour, and so a claim about it, depends on.

    The class name, ``module.config()`` where the model has one (``alpha``, integrator, step,
    ``keep_guarantee``, ``x_eq``, ...; canonical JSON), every tensor's dtype and
    ``weights_hash`` of the values. Device-independent. Changing ``alpha``, the integrator or
    the rescale, converting with ``.double()`` or fine-tuning all change it. Config keys the
    class lists in ``runtime_config_keys`` (run-time choices that leave every claim as it is,
    such as an ensemble's ``propagation``) are left out.
    """
    h = hashlib.sha256(b"lyagym model_hash 2\0")
    if module is None:
        return h.hexdigest()
    h.update(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if callable(config):
        exempt = set(getattr(module, "runtime_config_keys", ()))
        h.update(json.dumps({k: v for k, v in config().items() if k not in exempt}, sort_keys=True, default=repr).encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}".encode())
    h.update(weights_hash(module).encode())
    return h.hexdigest()


def _dtype_name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Certificate:
    """A checkable statement of what a model guarantees. See the module docstring.

    ``print(cert)`` (or ``cert.summary()``) gives a few readable lines; ``repr`` the full data.

    What the constants mean (``V`` is the model's Lyapunov function, ``x_eq`` its equilibrium):

    - ``alpha``: the certified decay rate, ``dV/dt <= -alpha V`` (discrete:
      ``V(x_{k+1}) <= exp(-alpha h) V(x_k)``); ``||x - x_eq||`` then decays like
      ``exp(-alpha t / 2)``.
    - ``c1``: how fast ``V`` grows at least, ``V(x) >= c1 ||x - x_eq||^2`` (a small ``V``
      forces a small distance).
    - ``c2``: how fast it grows at most, ``V(x) <= c2 ||x - x_eq||^2``.
    - ``overshoot = sqrt(c2 / c1)``: the worst transient amplification,
      ``||x(t) - x_eq|| <= overshoot ||x(0) - x_eq|| exp(-alpha t / 2)``; 1 means the
      distance never grows, 10 means a trajectory may first move up to 10x farther away.

    The JSON (``to_dict``/``save``) carries the same explanations in its ``"meaning"`` field.

    Attributes:
        claim: one of ``CLAIMS``.
        alpha: the certified decay rate of ``V`` (``dV/dt <= -alpha V``).
        c1: lower constant, ``V(x) >= c1 ||x - x_eq||^2`` (Manek & Kolter's ``eps``).
        c2: upper constant ``V(x) <= c2 ||x - x_eq||^2`` where known (may be an estimate
            over ``c2_region``), else ``None``.
        equilibrium: the equilibrium ``x_eq`` as a list of floats.
        time_domain: ``"continuous"`` or ``"discrete"``.
        integrator: for discrete claims, the step method (e.g. ``"rk4+lyapunov_rescale"``).
        h: for discrete claims, the step size.
        iss_gain: for ISS claims, a description or bound of the input gain.
        evidence: a subset of ``EVIDENCE``.
        weights_hash: ``model_hash(model)`` of the model the claim is about (class, config,
            dtype and weights; ``applies_to`` compares it).
        model_class: the model's class name.
        details: free-form supporting numbers (falsification counts, measured rates, radii).
        numerics: per dtype name (``"float32"``, ``"float64"``), ``{"tolerance": t, "radius": r}``:
            evaluated in that dtype, the claim holds up to normalised excess ``t`` at every
            state with ``||x - x_eq|| >= r`` (``tolerance(dtype)``, ``excluded_radius(dtype)``;
            ``check`` uses both). Empty: an exact-arithmetic claim with the default tolerances.
    """

    claim: str
    alpha: float
    c1: float | None = None
    c2: float | None = None
    equilibrium: list[float] = field(default_factory=list)
    time_domain: str = "continuous"
    integrator: str | None = None
    h: float | None = None
    iss_gain: Any = None
    evidence: list[str] = field(default_factory=list)
    weights_hash: str = ""
    model_class: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    numerics: dict[str, dict[str, float]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.format_version, int) or isinstance(self.format_version, bool) or self.format_version < 1:
            raise ValueError(f"format_version must be an int >= 1, got {self.format_version!r}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(f"certificate format_version {self.format_version} is newer than this lyagym understands ({FORMAT_VERSION})")
        if self.claim not in CLAIMS:
            raise ValueError(f"claim must be one of {CLAIMS}, got {self.claim!r}")
        bad = [e for e in self.evidence if e not in EVIDENCE]
        if bad:
            raise ValueError(f"evidence must be drawn from {EVIDENCE}, got {bad}")
        if self.time_domain not in ("continuous", "discrete"):
            raise ValueError(f"time_domain must be 'continuous' or 'discrete', got {self.time_domain!r}")
        if self.time_domain == "discrete" and (self.h is None or self.integrator is None):
            raise ValueError("a discrete-time certificate needs both `integrator` and `h`")
        if not (_finite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if self.h is not None and not (_finite(self.h) and self.h > 0):
            raise ValueError(f"h must be a finite number > 0 (the step size), got {self.h!r}")
        if self.c1 is not None and not (_finite(self.c1) and self.c1 > 0):
            raise ValueError(f"c1 must be a finite number > 0 (V >= c1 ||x - x_eq||^2) or None, got {self.c1!r}")
        if self.c2 is not None and not (_finite(self.c2) and self.c2 > 0 and (self.c1 is None or self.c2 >= self.c1)):
            raise ValueError(f"c2 must be a finite number >= c1 > 0 (V <= c2 ||x - x_eq||^2) or None, got {self.c2!r} (c1 = {self.c1!r})")
        if not isinstance(self.equilibrium, list) or not all(_finite(v) for v in self.equilibrium):
            raise ValueError(f"equilibrium must be a list of finite numbers, got {self.equilibrium!r}")
        if not isinstance(self.evidence, list):
            raise ValueError(f"evidence must be a list drawn from {EVIDENCE}, got {self.evidence!r}")
        if not isinstance(self.weights_hash, str) or not isinstance(self.model_class, str) or not isinstance(self.details, dict):
            raise ValueError("weights_hash and model_class must be strings and details a dict")
        if not isinstance(self.numerics, dict):
            raise ValueError(f"numerics must be a dict {{dtype name: {{'tolerance': t, 'radius': r}}}}, got {self.numerics!r}")
        for name, entry in self.numerics.items():
            if name not in DTYPES:
                raise ValueError(f"numerics names an unknown dtype {name!r}; known: {sorted(DTYPES)}")
            if not isinstance(entry, dict) or set(entry) != {"tolerance", "radius"} or not all(_finite(v) and v >= 0 for v in entry.values()):
                raise ValueError(f"numerics[{name!r}] must be {{'tolerance': t >= 0, 'radius': r >= 0}} (finite numbers), got {entry!r}")

    @property
    def overshoot(self) -> float | None:
        """``m = sqrt(c2 / c1)`` in ``||x(t) - x_eq|| <= m ||x(0) - x_eq|| exp(-alpha t / 2)``."""
        if self.c1 is None or self.c2 is None or self.c1 <= 0:
            return None
        return math.sqrt(self.c2 / self.c1)

    def region_radius(self, region: float | Sequence[Sequence[float]]) -> float:
        """The largest ``||x0 - x_eq||`` over ``region``: a radius (returned as is) or a box of
        ``state_dim`` pairs ``[lo, hi]`` (the distance of its farthest corner from ``x_eq``)."""
        if isinstance(region, (int, float)) and not isinstance(region, bool):
            if not (math.isfinite(region) and region >= 0):
                raise ValueError(f"region as a radius must be a finite number >= 0, got {region!r}")
            return float(region)
        try:
            box = [[float(lo), float(hi)] for lo, hi in region]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"region must be a radius or a box of state_dim pairs [lo, hi], got {region!r}") from None
        n = len(self.equilibrium)
        if len(box) != n or not all(math.isfinite(lo) and math.isfinite(hi) and lo <= hi for lo, hi in box):
            raise ValueError(f"region as a box must have {n} pairs [lo, hi] of finite numbers with lo <= hi (one per state entry), got {region!r}")
        return math.sqrt(sum(max(abs(lo - e), abs(hi - e)) ** 2 for (lo, hi), e in zip(box, self.equilibrium)))

    def time_to(self, eps: float, region: float | Sequence[Sequence[float]]) -> float:
        """When the certified bound puts every start of ``region`` within ``eps`` of ``x_eq``.

        ``||x(t) - x_eq|| <= m R exp(-alpha t / 2) <= eps`` for all ``t >= (2 / alpha) ln(m R / eps)``,
        with ``m`` the overshoot and ``R = region_radius(region)`` (``region``: a radius, or a box
        of ``state_dim`` pairs ``[lo, hi]``); 0 when ``m R <= eps``, ``inf`` when ``alpha = 0``.
        In the model's time unit; a discrete claim holds at whole steps, so the time is rounded up
        to a multiple of ``h``. For an ISS claim this is the unforced (``u = 0``) motion.

        Raises ``ValueError`` when the certificate bounds no distance: it claims nothing,
        states no ``c1`` / ``c2`` (e.g. a warped ``V``), or is LyaNet's convergence claim.
        """
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0 (a distance to x_eq), got {eps!r}")
        radius = self.region_radius(region)
        m = self.overshoot
        if self.claim in ("none", "lyapunov_convergence") or m is None:
            why = "claims nothing" if self.claim == "none" else (
                "is about LyaNet's inference ODE, not a state's distance" if self.claim == "lyapunov_convergence" else "states no c2 (overshoot unknown)")
            raise ValueError(f"this certificate bounds no distance to x_eq: it {why}")
        if m * radius <= eps:
            return 0.0
        if self.alpha <= 0:
            return math.inf
        t = 2.0 / self.alpha * math.log(m * radius / eps)
        if self.time_domain == "discrete":
            # The bound holds at every step k with t = k h, so the first whole step past t.
            t = math.ceil(t / self.h * (1 - 1e-12)) * self.h
        return t

    def with_settling(self, eps: float, region: float | Sequence[Sequence[float]]) -> "Certificate":
        """A copy whose ``details["settling"]`` states ``time_to(eps, region)`` and the overshoot
        (``summary`` prints it): ``{"eps", "region", "radius", "time", "overshoot", "region_text"}``."""
        t = self.time_to(eps, region)
        radius = self.region_radius(region)
        if isinstance(region, (int, float)):
            stored: Any = float(region)
            text = f"the ball of radius {radius:.4g}"
        else:
            stored = [[float(lo), float(hi)] for lo, hi in region]  # type: ignore[union-attr]
            text = "the box " + " x ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in stored[:4]) + (" x ..." if len(stored) > 4 else "")
        details = dict(self.details)
        details["settling"] = {"eps": float(eps), "region": stored, "radius": radius, "time": t, "overshoot": self.overshoot, "region_text": text}
        return dataclasses.replace(self, details=details)

    @classmethod
    def claims_nothing(cls, model: torch.nn.Module, reason: str) -> "Certificate":
        """The certificate of a model that guarantees nothing (claim ``"none"``), for ``model``'s
        current weights; ``reason`` goes to ``details["reason"]``."""
        return cls(claim="none", alpha=0.0, weights_hash=model_hash(model), model_class=type(model).__name__,
                   details={"reason": reason})

    def tolerance(self, dtype: torch.dtype | str) -> float:
        """The normalised excess this certificate allows when evaluated in ``dtype``."""
        name = self._dtype_key(dtype)
        entry = self.numerics.get(name)
        return float(entry["tolerance"]) if entry is not None else DEFAULT_TOLERANCE[name]

    def excluded_radius(self, dtype: torch.dtype | str) -> float:
        """``r``: the claim is made for ``||x - x_eq|| >= r`` when evaluated in ``dtype`` (0: everywhere)."""
        entry = self.numerics.get(self._dtype_key(dtype))
        return float(entry["radius"]) if entry is not None else 0.0

    @staticmethod
    def _dtype_key(dtype: torch.dtype | str) -> str:
        name = _dtype_name(dtype)
        if name not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} (a certificate states no precision for {name}), got {dtype!r}")
        return name

    def region(self) -> str:
        """Where the claim holds, in words (``details["region"]`` when the issuer says so)."""
        if "region" in self.details:
            return str(self.details["region"])
        if self.claim == "lyapunov_convergence":
            return "along the inference ODE, from its initial state"
        if self.c2 is not None and "c2_region" in self.details:
            return f"all states (c2 measured over {self.details['c2_region']})"
        return "all states (global)"

    def summary(self) -> str:
        """A few readable lines: claim, region, constants, evidence, precision and weights."""

        def num(v: float | None) -> str:
            return "unknown" if v is None else f"{v:.4g}"

        if self.claim == "none":
            return "\n".join([
                f"Certificate: claims nothing about {self.model_class or 'a model'}",
                f"  why:       {self.details.get('reason', 'no guarantee is built in')}",
                "  check:     passes with nothing to check",
                f"  model:     sha256 {self.weights_hash[:12] or '(none)'}... of class, config, dtype and weights",
            ])
        domain = self.time_domain if self.time_domain == "continuous" else f"discrete, {self.integrator} step h={self.h:g}"
        m = self.overshoot
        lines = [
            f"Certificate: {self.claim.replace('_', ' ')} ({domain}) of {self.model_class or 'a model'}",
            f"  region:    {self.region()}; equilibrium {_short_list(self.equilibrium)}",
            f"  alpha:     {num(self.alpha)} (decay rate of V; distance decays like exp(-alpha t / 2))",
            f"  c1, c2:    {num(self.c1)}, {num(self.c2)} (c1 |x - x_eq|^2 <= V(x) <= c2 |x - x_eq|^2)",
            f"  overshoot: {num(m)} (sqrt(c2/c1): |x(t) - x_eq| <= overshoot |x(0) - x_eq| exp(-alpha t / 2)",
        ]
        if m is not None and self.claim != "lyapunov_convergence" and self.alpha > 0:
            # When the bound settles, on the overshoot line (the summary stays short).
            unforced = ", u = 0" if self.claim == "input_to_state_stability" else ""
            lines[-1] += f", <= 1% of |x(0) - x_eq| after t = {num(self.time_to(_SUMMARY_SHRINK, 1.0))}{unforced}; cert.time_to(eps, region))"
        else:
            lines[-1] += ")"
        settling = self.details.get("settling")
        if isinstance(settling, dict) and {"eps", "radius", "time"} <= set(settling):
            lines.append(f"  settles:   |x - x_eq| <= {settling['eps']:g} after t = {num(settling['time'])} from every start "
                         f"within {settling['radius']:.4g} of x_eq ({settling.get('region_text', 'the stated region')})")
            if "time_from_levels" in settling:
                lines.append(f"             and after t = {num(settling['time_from_levels'])} from every start in that box, by V's "
                             f"levels (its maximum there {settling['max_V_region']:.4g}, V >= c1 |x - x_eq|^2)")
        if self.claim == "stabilisability" and "fallback" in self.details:
            lines.append(f"  input:     {self.details['fallback']}")
        if isinstance(self.iss_gain, dict) and "dissipation" in self.iss_gain:
            lines.append(f"  inputs:    {self.iss_gain['dissipation']}")
        lines.append(f"  evidence:  {', '.join(self.evidence) if self.evidence else 'none yet (run cert.check(model))'}")
        if "precision" in self.details or "dtype" in self.details:
            dtype = f"{self.details['dtype']} weights; " if "dtype" in self.details else ""
            lines.append(f"  precision: {dtype}{self.details.get('precision', '')}".rstrip("; "))
        for name, entry in sorted(self.numerics.items()):
            where = f"||x - x_eq|| >= {entry['radius']:.3g}" if entry["radius"] > 0 else "every state"
            lines.append(f"  {name}:   holds to {entry['tolerance']:g} (relative to V) at {where}")
        lines.append(f"  model:     sha256 {self.weights_hash[:12] or '(none)'}... of class, config, dtype and weights "
                     "(cert.applies_to(model) checks it)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def applies_to(self, model: torch.nn.Module) -> bool:
        """True if ``model`` is exactly the model this certificate was issued for: same class,
        config (``alpha``, integrator, step, ``keep_guarantee``, ...), dtype and weights.

        A version-1 certificate hashed the weights' values only, which cannot tell a changed
        ``alpha`` or integrator apart: it applies to no model (re-issue it).
        """
        return self.format_version >= 2 and model_hash(model) == self.weights_hash

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overshoot"] = self.overshoot
        d["meaning"] = dict(MEANING)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Certificate":
        d = dict(d)
        d.pop("overshoot", None)
        d.pop("meaning", None)
        version = d.setdefault("format_version", 1)  # every file since version 1 names it
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"certificate format_version must be an int, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(f"certificate format_version {version} is newer than this lyagym understands ({FORMAT_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown certificate fields: {sorted(unknown)}")
        missing = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING} - set(d)
        if missing:
            raise ValueError(f"certificate lacks the fields {sorted(missing)}")
        return cls(**d)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Certificate":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a valid certificate JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError("certificate JSON must be an object")
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> None:
        """Write the certificate as JSON, atomically (temp file + rename)."""
        text = self.to_json()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Certificate":
        if not os.path.exists(path):
            raise FileNotFoundError(f"no certificate at {os.fspath(path)!r}")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise ValueError(f"{os.fspath(path)!r} is not a certificate: not UTF-8 text (a binary file?)") from None
        try:
            return cls.from_json(text)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{os.fspath(path)!r} is not a valid certificate: {e}") from None

    def check(self, model, **kwargs: Any):
        """Try to falsify this certificate on ``model``; see ``lyagym.learned_models.falsification.falsify``.

        Returns a report (counts, worst normalised violation, counterexamples). A
        ``"stabilisability"`` claim is checked by ``control_lyapunov.check_stabilisability``
        (pass ``lyapunov=`` the ``ControlLyapunov`` it was issued with).
        """
        if self.claim == "stabilisability":  # the decrease under the fallback input, on the stated region
            from .control_lyapunov import check_stabilisability

            return check_stabilisability(self, model, **kwargs)
        from .falsification import falsify  # the falsifier is heavier; load on demand

        return falsify(self, model, **kwargs)

    def verify(self, model, *, box: Any = None, budget_s: float = 30.0, lyapunov: torch.nn.Module | None = None,
               rho: float | str | None = None, u_box: Any = None, progress: Any = None) -> "Certificate":
        """Prove this certificate's decrease condition on ``box``; see ``lyagym.learned_models.verification``.

        ``box``: ``state_dim`` pairs ``[lo, hi]``; ``lyapunov``: ``V`` (default ``model.lyapunov``);
        ``rho``: ``None`` (the whole box), a level (``{V <= rho}``) or ``"auto"`` (the largest level
        found by bisection: a region of attraction). Returns a copy with evidence ``"formal"``
        added when proven, and ``details["formal"]`` (tool, boxes, fraction, margin, seconds,
        rho, the local certificate, or the counterexample) either way. ``check()`` stays the
        fast falsifier.

        A ``"stabilisability"`` claim (``lyagym.learned_models.clf_verification``) needs
        ``lyapunov=`` its ``ControlLyapunov``; its region is the certificate's own (``rho`` and
        ``u_box`` must stay ``None``) and ``box`` defaults to the bounding box of that region.
        """
        if self.claim == "stabilisability":
            if rho is not None or u_box is not None:
                raise ValueError("a stabilisability claim is verified on its own region {inner * rho <= V <= rho} under its "
                                 f"fallback input: rho and u_box must be None, got rho={rho!r}, u_box={u_box!r}")
            from .clf_verification import stabilisability_formal_certificate

            return stabilisability_formal_certificate(self, model, lyapunov=lyapunov, box=box, budget_s=budget_s, progress=progress)
        from .verification import formal_certificate  # bounds and branch and bound load on demand

        return formal_certificate(self, model, box=box, budget_s=budget_s, lyapunov=lyapunov, rho=rho, u_box=u_box, progress=progress)


def _short_list(values: list[float], n: int = 4) -> str:
    shown = ", ".join(f"{v:.3g}" for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}] ({len(values)}-dim)" if values else "(not given)"
