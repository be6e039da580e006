"""Does the discrete certificate hold at every distance from the equilibrium, in every dtype?

For each model kind and dtype, ``--n`` states per norm band ``||x - x_eq|| in [10^k, 10^(k+1))``
(directions uniform on the sphere; for controlled models a quarter with ``u = 0``, the rest
with ``||u||`` uniform up to ``min(||x - x_eq||, 1)``: near ``x_eq`` the input's allowance is
then smallest, far away the inputs stay torque-sized) go through
the model's own ``step`` and the normalised excess of the certified bound is measured::

    r = (V(step(x, u)) - exp(-alpha h) V(x) - (1 - exp(-alpha h)) gamma ||u||^2 / alpha) / V(x)

in the model's dtype (``V`` of the member that stepped the row, for ensembles). A state
violates the certificate when ``r`` exceeds the tolerance the certificate states for that
dtype; bands inside the certificate's excluded ball for that dtype are skipped (``excl``).
The table gives, per dtype and band, the largest ``r`` over all kinds and the violation
count; ``--per-kind`` lists every kind separately. ``--claim continuous`` probes the ODE's claim
instead, ``r = (grad V . f(x, u) + alpha V - gamma ||u||^2) / V``.

Measured (1e5 states per band and kind, six kinds, one thread, 970 s on a busy 2-core machine):
0 violations; worst normalised excess 4.0e-11 in float64 (tolerance 1e-9; 2e-16 at x_eq = 0)
and 3.9e-5 in float32 (tolerance 1e-3; 1.7e-6 at x_eq = 0). With ``g(x) - g(x_eq)`` as the
difference of two evaluations (before the ICNN's centered pass): up to 1.7e-3 in float64 within
1e-11 of x_eq and 263 in float32 at 1e-8. ``--claim continuous`` (233 s): 0 violations, worst
-1.6e-17 (float64) and -6.7e-9 (float32): the decrease holds for ``f`` as computed.

Usage::

    python examples/benchmarks/probe_certificate.py                 # 1e5 states per band
    python examples/benchmarks/probe_certificate.py --n 20000 --per-kind
    python examples/benchmarks/probe_certificate.py --claim continuous
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from lyagym.learned_models import Ensemble, StableControlledDynamics, StableDynamics
from lyagym.learned_models.ensemble import member_factory

LOW, HIGH = -12, 8  # bands 1e-12 .. 1e8


def kinds(seed: int) -> dict[str, torch.nn.Module]:
    """The model kinds the certificate covers, freshly initialised (seeded)."""
    torch.manual_seed(seed)
    ens = Ensemble(member_factory("stable", 4, 2, hidden=(64, 64), lyap_hidden=(32, 32), alpha=0.5, dt=0.05), 3,
                   propagation="tsinf", sample=False)
    return {
        "StableDynamics(2)": StableDynamics(2),
        "StableDynamics(4, tangent, quadratic)": StableDynamics(4, lyap_shift="tangent", lyap_quadratic=True, alpha=0.5, dt=0.05),
        "StableDynamics(2, x_eq=(pi, 0.5))": StableDynamics(2, x_eq=[math.pi, 0.5]),
        "StableControlledDynamics(4, 2)": StableControlledDynamics(4, 2),
        "StableControlledDynamics(4, 2, DynamicsNet priors)": StableControlledDynamics(
            4, 2, angle_dims=2, control_affine=True, activation="silu", lyap_shift="tangent", lyap_quadratic=True),
        "Ensemble(3 x StableControlledDynamics(4, 2))": ens,
    }


def certificate_of(model) -> object:
    """One member's certificate for an ensemble (they share config and numerics), else the model's."""
    return model.member(0).certificate() if isinstance(model, Ensemble) else model.certificate()


def lyapunov_rows(model, x: torch.Tensor) -> torch.Tensor:
    """``V(x)`` of the member that steps each row (``tsinf``: row ``i`` -> member ``i % E``)."""
    if not isinstance(model, Ensemble):
        return model.lyapunov(x)
    out = x.new_empty(x.shape[0])
    for e in range(model.size):  # a handful of members: one V per member, not per row
        out[e :: model.size] = model.member(e).lyapunov(x[e :: model.size])
    return out


def continuous_rows(model, x: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V(x), grad V(x) . f(x, u))`` per row, from the member of each row for ensembles."""
    members = [model.member(e) for e in range(model.size)] if isinstance(model, Ensemble) else [model]
    V, dV = x.new_empty(x.shape[0]), x.new_empty(x.shape[0])
    for e, member in enumerate(members):
        rows = slice(e, None, len(members))
        v, g = member.lyapunov.forward_and_grad(x[rows])
        V[rows], dV[rows] = v, (g * member.derivative(x[rows], None if u is None else u[rows])).sum(-1)
    return V, dV


def gain(model) -> float:
    if isinstance(model, Ensemble):
        return float(model.member(0).input_gain) if model.action_dim else 0.0
    return float(getattr(model, "input_gain", 0.0))


def probe(model, dtype: torch.dtype, n: int, seed: int, claim: str = "discrete", batch: int = 20_000) -> dict[int, tuple[float, int, bool]]:
    """``{band: (max r, violations, excluded)}`` for one model in one dtype.

    ``claim="continuous"``: ``r = (grad V . f + alpha V - gamma ||u||^2) / V`` instead (the ODE's claim).
    """
    model = model.to(dtype)
    cert = certificate_of(model)
    tol, radius = cert.tolerance(dtype), cert.excluded_radius(dtype)
    x_eq = torch.tensor(cert.equilibrium, dtype=dtype)
    alpha, h = cert.alpha, cert.h
    decay = math.exp(-alpha * h)
    inject = -math.expm1(-alpha * h) / alpha if alpha > 0 else h
    gamma, m = gain(model), model.action_dim
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k in range(LOW, HIGH):
        if 10.0 ** (k + 1) <= radius:
            out[k] = (-math.inf, 0, True)
            continue
        worst, bad = -math.inf, 0
        for start in range(0, n, batch):
            b = min(batch, n - start)
            lo = max(float(k), math.log10(radius)) if radius > 0 else float(k)
            r = 10 ** (lo + (k + 1 - lo) * torch.rand(b, generator=gen, dtype=torch.float64))
            w = torch.randn(b, model.state_dim, generator=gen, dtype=torch.float64)
            x = (x_eq.double() + w / w.norm(dim=-1, keepdim=True) * r.unsqueeze(-1)).to(dtype)
            u = None
            if m:
                v = torch.randn(b, m, generator=gen, dtype=torch.float64)
                v = v / v.norm(dim=-1, keepdim=True) * (r.clamp(max=1.0) * torch.rand(b, generator=gen, dtype=torch.float64)).unsqueeze(-1)
                v[: b // 4] = 0.0
                u = v.to(dtype)
            s = gamma * (u * u).sum(-1) if u is not None else 0.0
            with torch.no_grad():
                if claim == "continuous":
                    Vx, dV = continuous_rows(model, x, u)
                    lhs = dV + alpha * Vx - s
                else:
                    Vx = lyapunov_rows(model, x)
                    lhs = lyapunov_rows(model, model.step(x, u)) - decay * Vx - inject * s
            excess = lhs / Vx.clamp_min(torch.finfo(dtype).tiny)
            excess = torch.nan_to_num(excess, nan=math.inf)
            worst = max(worst, float(excess.max()))
            bad += int((excess > tol).sum())
        out[k] = (worst, bad, False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="states per band and kind (default 1e5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-kind", action="store_true", help="one table per model kind")
    parser.add_argument("--claim", choices=("discrete", "continuous"), default="discrete",
                        help="the step map's claim (default) or the ODE's, grad V . f <= -alpha V (+ gamma ||u||^2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    total_bad = 0
    for dtype in (torch.float64, torch.float32):
        results = {}
        for name, model in kinds(args.seed).items():
            results[name] = probe(model, dtype, args.n, args.seed, args.claim)
        cert = certificate_of(next(iter(kinds(args.seed).values())).to(dtype))
        print(f"\n{args.claim} claim, {str(dtype)[6:]}: stated tolerance {cert.tolerance(dtype):g} (normalised), {args.n} states per band and kind")
        tables = results.items() if args.per_kind else [("all kinds", {k: (max(r[k][0] for r in results.values()),
                                                                              sum(r[k][1] for r in results.values()),
                                                                              all(r[k][2] for r in results.values()))
                                                                          for k in range(LOW, HIGH)})]
        for name, table in tables:
            print(f"  {name}")
            print(f"  {'band':<16}{'max excess':>14}{'violations':>12}")
            for k in range(LOW, HIGH):
                worst, bad, excluded = table[k]
                total_bad += bad
                band = f"[1e{k}, 1e{k + 1})"
                print(f"  {band:<16}{'excl' if excluded else f'{worst:.3g}':>14}{bad:>12}")
    print(f"\ntotal violations beyond the stated tolerance: {total_bad}  ({time.perf_counter() - start:.0f} s, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
