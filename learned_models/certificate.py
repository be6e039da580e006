"""What a world model guarantees, stated as data and checkable.

A ``Certificate`` says *what* is claimed (e.g. global exponential stability of the ODE
``xdot = f(x)`` towards ``equilibrium`` at rate ``alpha``), *where* (continuous time or the
discrete step map with a given integrator and step ``h``), with which constants, for which
exact weights (``weights_hash``: a certificate stops applying after fine-tuning), and on
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
``m = sqrt(c2 / c1)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write

__all__ = ["Certificate", "CLAIMS", "EVIDENCE", "weights_hash"]

#: The claims a certificate can make.
CLAIMS = (
    "exponential_stability",  # of the continuous-time ODE xdot = f(x)
    "discrete_exponential_stability",  # of the step map: V(x_{k+1}) <= exp(-alpha h) V(x_k)
    "input_to_state_stability",  # with inputs: dV/dt <= -alpha V + sigma(x, u), sigma(x, 0) = 0
    "lyapunov_convergence",  # LyaNet: inference ODE converges to its prediction at rate kappa
)
#: Kinds of evidence, strongest first.
EVIDENCE = ("by_construction", "formal", "falsification", "empirical")

FORMAT_VERSION = 1

#: The explanations written into every certificate's JSON (``"meaning"``).
MEANING = {
    "alpha": "certified decay rate of V: dV/dt <= -alpha V (discrete: V(x_{k+1}) <= exp(-alpha h) V(x_k))",
    "c1": "V(x) >= c1 ||x - x_eq||^2: a small V forces a small distance to the equilibrium",
    "c2": "V(x) <= c2 ||x - x_eq||^2 (null: unknown)",
    "overshoot": "sqrt(c2 / c1): ||x(t) - x_eq|| <= overshoot ||x(0) - x_eq|| exp(-alpha t / 2)",
    "time_domain": "continuous: the ODE xdot = f(x); discrete: the model's step map with `integrator` and step `h`",
    "evidence": "by_construction (architecture), formal (proven over a box by bound propagation; see details.formal), "
                "falsification (no counterexample found), empirical (measured on data)",
    "weights_hash": "sha256 of the exact weights the claim is about; fine-tuning voids it",
}


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
        weights_hash: ``weights_hash(model)`` of the model the claim is about.
        model_class: the model's class name.
        details: free-form supporting numbers (falsification counts, measured rates, radii).
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
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.claim not in CLAIMS:
            raise ValueError(f"claim must be one of {CLAIMS}, got {self.claim!r}")
        bad = [e for e in self.evidence if e not in EVIDENCE]
        if bad:
            raise ValueError(f"evidence must be drawn from {EVIDENCE}, got {bad}")
        if self.time_domain not in ("continuous", "discrete"):
            raise ValueError(f"time_domain must be 'continuous' or 'discrete', got {self.time_domain!r}")
        if self.time_domain == "discrete" and (self.h is None or self.integrator is None):
            raise ValueError("a discrete-time certificate needs both `integrator` and `h`")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")

    @property
    def overshoot(self) -> float | None:
        """``m = sqrt(c2 / c1)`` in ``||x(t) - x_eq|| <= m ||x(0) - x_eq|| exp(-alpha t / 2)``."""
        if self.c1 is None or self.c2 is None or self.c1 <= 0:
            return None
        return math.sqrt(self.c2 / self.c1)

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

        domain = self.time_domain if self.time_domain == "continuous" else f"discrete, {self.integrator} step h={self.h:g}"
        m = self.overshoot
        lines = [
            f"Certificate: {self.claim.replace('_', ' ')} ({domain}) of {self.model_class or 'a model'}",
            f"  region:    {self.region()}; equilibrium {_short_list(self.equilibrium)}",
            f"  alpha:     {num(self.alpha)} (decay rate of V; distance decays like exp(-alpha t / 2))",
            f"  c1, c2:    {num(self.c1)}, {num(self.c2)} (c1 |x - x_eq|^2 <= V(x) <= c2 |x - x_eq|^2)",
            f"  overshoot: {num(m)} (sqrt(c2/c1): |x(t) - x_eq| <= overshoot |x(0) - x_eq| exp(-alpha t / 2))",
        ]
        if isinstance(self.iss_gain, dict) and "dissipation" in self.iss_gain:
            lines.append(f"  inputs:    {self.iss_gain['dissipation']}")
        lines.append(f"  evidence:  {', '.join(self.evidence) if self.evidence else 'none yet (run cert.check(model))'}")
        if "precision" in self.details or "dtype" in self.details:
            dtype = f"{self.details['dtype']} weights; " if "dtype" in self.details else ""
            lines.append(f"  precision: {dtype}{self.details.get('precision', '')}".rstrip("; "))
        lines.append(f"  weights:   sha256 {self.weights_hash[:12] or '(none)'}... (cert.applies_to(model) checks it)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def applies_to(self, model: torch.nn.Module) -> bool:
        """True if ``model`` has exactly the weights this certificate was issued for."""
        return weights_hash(model) == self.weights_hash

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
        version = d.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"certificate format_version {version} is newer than this lyagym understands ({FORMAT_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown certificate fields: {sorted(unknown)}")
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
        with open(path) as f:
            return cls.from_json(f.read())

    def check(self, model, **kwargs: Any):
        """Try to falsify this certificate on ``model``; see ``lyagym.learned_models.falsification.falsify``.

        Returns a report (counts, worst normalised violation, counterexamples).
        """
        from .falsification import falsify  # the falsifier is heavier; load on demand

        return falsify(self, model, **kwargs)

    def verify(self, model, *, box: Any, budget_s: float = 30.0, lyapunov: torch.nn.Module | None = None,
               rho: float | str | None = None, u_box: Any = None, progress: Any = None) -> "Certificate":
        """Prove this certificate's decrease condition on ``box``; see ``lyagym.learned_models.verification``.

        ``box``: ``state_dim`` pairs ``[lo, hi]``; ``lyapunov``: ``V`` (default ``model.lyapunov``);
        ``rho``: ``None`` (the whole box), a level (``{V <= rho}``) or ``"auto"`` (the largest level
        found by bisection: a region of attraction). Returns a copy with evidence ``"formal"``
        added when proven, and ``details["formal"]`` (tool, boxes, fraction, margin, seconds,
        rho, the local certificate, or the counterexample) either way. ``check()`` stays the
        fast falsifier.
        """
        from .verification import formal_certificate  # bounds and branch and bound load on demand

        return formal_certificate(self, model, box=box, budget_s=budget_s, lyapunov=lyapunov, rho=rho, u_box=u_box, progress=progress)


def _short_list(values: list[float], n: int = 4) -> str:
    shown = ", ".join(f"{v:.3g}" for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}] ({len(values)}-dim)" if values else "(not given)"
