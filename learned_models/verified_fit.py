"""Fit a soft-Lyapunov model until its decrease condition is proven on a whole box: ``fit_verified``.

A field ``f`` fitted jointly with a Lyapunov function ``V`` on the loss
``||f(x) - xdot||^2 + max(0, grad V . f + alpha V)`` at the data's states (the "soft" recipe of
``lyagym reproduce lyanet-pendulum``) decreases ``V`` where it saw data and nowhere else for
sure: on the pendulum's box ``[-pi, pi] x [-8, 8]`` the condition fails on 0.09-45% of the box
for the models of ``examples/benchmarks/bench_verify.py``, mostly where the data never went.
Neural Lyapunov control (Chang, Roohi & Gao, NeurIPS 2019) closes that gap with two players:
a *learner* that minimises the Lyapunov risk on states drawn from the whole domain, and a
*falsifier* (there dReal) whose counterexamples join the learner's states, until the falsifier
finds none. ``fit_verified`` is that loop with this package's verifier as the falsifier:

1. **learner** (``steps`` Adam steps on ``f`` and ``V`` together)::

       mean_i ||f(x_i) - xdot_i||^2  +  weight * mean_s relu(grad V(s) . f(s) / V(s) + alpha + margin)

   with ``x_i`` a batch of the data and ``s`` that batch's states, ``box_samples`` fresh
   uniform states of the box and a batch of the counterexample pool. The decrease term is the
   *rate* form of ``lyapunov_rate_violation`` (divided by ``V``): it does not vanish next to
   ``x_eq``, where ``grad V . f + alpha V`` is of second order, and it is blind to ``V``'s
   scale. ``margin`` asks the learner for a faster rate than the one proven, because branch
   and bound proves a strict inequality only with some room to spare;
2. **verifier**: ``verify_decrease(f, V, box, alpha=alpha)`` within ``budget_s`` (the local
   certificate covers the ball around ``x_eq``). Verified: stop. A counterexample (re-checked
   by plain float64 evaluation) joins the pool with ``neighbours`` states around it.

The data term keeps the field where the data is; outside it the field is free, and the loop
spends that freedom on the certificate (a model fitted near the hanging pendulum need not
reproduce the upright equilibrium it never saw, and the proven model does not: measure its
error where you mean to use it).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from .lyapunov_fit import _as_2d, lyapunov_rate_violation
from .verification import VerificationResult, parse_box, verify_decrease

__all__ = ["fit_verified"]


def _check(name: str, value: Any, *, integer: bool = False, low: float = 0.0, strict: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        kind = "an int" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} {'>' if strict else '>='} {low:g}, got {value!r}")


def fit_verified(
    model: nn.Module,
    lyapunov: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    box: Any,
    *,
    alpha: float,
    margin: float = 0.05,
    weight: float = 1.0,
    steps: int = 300,
    rounds: int = 5,
    budget_s: float = 30.0,
    lr: float = 3e-4,
    batch_size: int = 256,
    box_samples: int = 1024,
    neighbours: int = 64,
    seed: int = 0,
    progress: bool = True,
    clock=time.thread_time,
) -> dict[str, Any]:
    """Train ``model`` and ``lyapunov`` jointly until ``grad V . f + alpha V < 0`` is proven on ``box``.

    Args:
        model: an autonomous field (``SimpleDynamics`` or another network ``verify_decrease``
            bounds) with ``f(x_eq) = 0`` at ``V``'s minimum (checked), trained in place;
            parameters with ``requires_grad=False`` stay fixed.
        lyapunov: its ``LyapunovFunction`` (no warp), trained in place.
        data: ``(x, xdot)``, ``(N, n)`` each: the pairs the field must keep fitting.
        box: ``n`` pairs ``[lo, hi]``: where the decrease is sampled and proven.
        alpha: the rate proven (``>= 0``); the learner asks for ``alpha + margin`` (``margin >= 0``).
        weight: of the decrease term against the data term.
        steps: learner steps per round (0: only verify); ``rounds``: learner-verifier rounds.
        budget_s: ``clock`` seconds per verification (``time.thread_time``: one core's CPU time).
        lr, batch_size, box_samples, neighbours, seed: the learner's Adam step, data batch,
            uniform box states per step, states added around each counterexample, and seed.

    Returns:
        ``{"status", "verification" (the last ``VerificationResult``), "rounds": [per round:
        "round", "data_mse", "sampled_violation" (share of 10^5 uniform box states with
        ``h > 0``), "status", "fraction", "boxes", "verify_seconds", "counterexample"],
        "train_seconds", "seconds"}``. ``status`` is the last verification's: ``"verified"``,
        ``"counterexample"`` or ``"unknown"`` (budget spent).
    """
    n = int(getattr(lyapunov, "state_dim", 0))
    if getattr(model, "state_dim", n) != n or n == 0:
        raise ValueError(f"model and lyapunov must share state_dim, got {getattr(model, 'state_dim', None)} and {n}")
    if getattr(model, "action_dim", 0):
        raise ValueError(f"model must be autonomous (action_dim 0), got action_dim={model.action_dim}")
    if not hasattr(model, "derivative"):
        raise TypeError(f"model must have derivative(x) (a SimpleDynamics-like field), got {type(model).__name__}")
    X = parse_box(box, n)
    _check("alpha", alpha)
    _check("margin", margin)
    _check("weight", weight)
    _check("steps", steps, integer=True)
    _check("rounds", rounds, integer=True, low=1)
    _check("budget_s", budget_s, strict=True)
    _check("lr", lr, strict=True)
    for name, value in (("batch_size", batch_size), ("box_samples", box_samples)):
        _check(name, value, integer=True, low=1)
    _check("neighbours", neighbours, integer=True)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("data must be a pair (x, xdot) of (N, n) tensors")
    param = next(model.parameters())
    x, xdot = (_as_2d(t, f"data's {name}", n).to(param.device, param.dtype) for t, name in zip(data, ("x", "xdot")))
    if len(x) == 0 or len(xdot) != len(x):
        raise ValueError(f"data's x and xdot must have the same number N >= 1 of rows, got {len(x)} and {len(xdot)}")

    x_eq = lyapunov.x_eq.detach().to(param.device, param.dtype).reshape(1, n)
    with torch.no_grad():
        at_rest = float(model.derivative(x_eq).norm())
        scale = max(1.0, float(xdot.norm(dim=1).mean()))
    if not at_rest <= 1e-6 * scale:
        # V's minimum must be the field's equilibrium, or V cannot decrease next to it: no
        # training makes f(x_eq) exactly 0, and the proof would fail there every round
        raise ValueError(f"model must vanish at lyapunov.x_eq (got ||f(x_eq)|| = {at_rest:.3g}): use a field that is 0 "
                         "there by construction, e.g. a tanh SimpleDynamics whose biases are zeroed and frozen for x_eq = 0")
    lo, hi = X[:, 0].to(param.device, param.dtype), X[:, 1].to(param.device, param.dtype)
    gen = torch.Generator(device=param.device).manual_seed(seed)
    params = [p for p in list(model.parameters()) + list(lyapunov.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    pool = torch.empty(0, n, device=param.device, dtype=param.dtype)
    probe = lo + (hi - lo) * torch.rand(100_000, n, generator=gen, device=param.device, dtype=param.dtype)

    def uniform(k: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(k, n, generator=gen, device=param.device, dtype=param.dtype)

    def measure() -> tuple[float, float]:
        with torch.no_grad():
            mse = float((model.derivative(x) - xdot).square().mean())
        v, g = lyapunov.forward_and_grad(probe)
        with torch.no_grad():
            h = (g * model.derivative(probe)).sum(-1) + alpha * v
        return mse, float((h > 0).double().mean())

    bar = range(rounds)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="fit_verified", unit="round", leave=False)
    start, train_seconds = time.perf_counter(), 0.0
    history: list[dict[str, Any]] = []
    result: VerificationResult | None = None
    for r in bar:
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen, device=param.device)
            states = [x[idx], uniform(box_samples)]
            if len(pool):
                states.append(pool[torch.randint(0, len(pool), (min(box_samples, len(pool)),), generator=gen, device=param.device)])
            s = torch.cat(states)
            fit_term = (model.derivative(x[idx]) - xdot[idx]).square().mean()
            decrease = lyapunov_rate_violation(lyapunov, s, model.derivative(s), alpha, margin).mean()
            loss = fit_term + weight * decrease
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_seconds += time.perf_counter() - t0
        mse, violated = measure()
        if not math.isfinite(mse):  # checked once a round: a per-step check would sync the device every step
            raise FloatingPointError(f"training diverged in round {r} (data MSE {mse}): lower lr (got {lr:g}) or weight (got {weight:g})")
        result = verify_decrease(model, lyapunov, X, alpha=alpha, budget_s=budget_s, clock=clock)
        history.append({"round": r, "data_mse": mse, "sampled_violation": violated, "status": result.status,
                        "fraction": result.fraction, "boxes": result.boxes, "verify_seconds": result.seconds,
                        "counterexample": result.counterexample})
        if progress:
            bar.set_postfix(status=result.status, proven=f"{100 * result.fraction:.2f}%", mse=f"{mse:.3g}")
        if result.status == "verified" or steps == 0:
            break
        if result.counterexample is not None:
            c = torch.tensor(result.counterexample[:n], device=param.device, dtype=param.dtype)
            around = c + 0.01 * (hi - lo) * torch.randn(neighbours, n, generator=gen, device=param.device, dtype=param.dtype)
            pool = torch.cat([pool, c[None], torch.maximum(torch.minimum(around, hi), lo)])
    return {"status": result.status, "verification": result, "rounds": history, "train_seconds": train_seconds,
            "seconds": time.perf_counter() - start}
