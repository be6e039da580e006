"""Formal verification of soft-Lyapunov pendulum models, beside the published anchors.

Models (trained here on first use and cached in ``--cache``; the recipe of ``lyagym reproduce
lyanet-pendulum``: Fig. 5 training pairs, ``SimpleDynamics`` plus an ICNN ``LyapunovFunction``
fitted jointly with MSE + the Lyapunov loss ``max(0, grad V . f + alpha V)``, alpha = 1e-3):

- ``soft-n1``: the single pendulum, ReLU field 2-100-100-2, V's ICNN 2-60-60-1 (value shift);
- ``soft-n1-pinned``: the same with a tanh field whose biases are fixed at 0, so that
  ``f(x_eq) = 0`` and V's minimum is the model's own equilibrium;
- ``soft-n1-pinned-fitted-V``: ``soft-n1-pinned``'s field with a new ``V`` (tangent shift,
  learned quadratic, ICNN 2-32-32-1) fitted to that field by the staged recipe of
  ``lyapunov_fit`` (quadratic from the Lyapunov equation of the linear fit near ``x_eq``, then
  ``fit_lyapunov`` with margin 0.05 on 20,000 box states below 15 J/kg of pendulum energy,
  the upright being 19.6);
- ``soft-n2``: the double pendulum, ReLU field 4-100-100-4, ICNN 4-60-60-1; ``soft-n2-pinned``
  and ``soft-n2-pinned-fitted-V`` as for one link.

For each: the decrease ``grad V . f + alpha V < 0`` on the whole box (``[-pi, pi]`` angles,
``[-8, 8]`` velocities; exhaustive: the worst counterexample found and the share of the box
proven within the budget), and the certified region of attraction ``{V <= rho}`` by
bisection (``region_of_attraction``). Times are wall-clock on one thread (``torch.set_num_threads(1)``,
``--threads``), one run each (a verification is not repeated: its time is its answer's).

Why the whole box cannot be verified for an accurate pendulum model: the upright state is
an equilibrium of the physics, so a model close to it has one nearby, where ``f = 0`` and
``grad V . f + alpha V = alpha V > 0``. The verifier finds that counterexample in seconds.
Near the bottom, a model whose ``f(x_eq) != 0`` (every unconstrained MLP) has its equilibrium
``x*`` off ``V``'s minimum and ``V`` cannot decrease around ``x_eq``: no sublevel set of that
``V`` is a region of attraction, which is what the verifier reports for ``soft-n1``.

Usage::

    python examples/benchmarks/bench_verify.py                    # all models
    python examples/benchmarks/bench_verify.py --models soft-n1-pinned --budget 30
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time

import torch

from lyagym.learned_models import LyapunovFunction, SimpleDynamics
from lyagym.learned_models.verification import region_of_attraction, verify_decrease

ALPHA = 1e-3

#: Published figures quoted in the issue (network sizes there: smaller than ours; not quoted).
ANCHORS = [
    ("CROWN-based branch and bound, 2-D neural Lyapunov condition, CPU", "4.5 s, verified"),
    ("CROWN-based branch and bound, 4-D, CPU", "131 s, verified"),
    ("CROWN-based branch and bound, 6-D, CPU", "0.7% verified after 180 s"),
    ("alpha,beta-CROWN, pendulum discrete-time ROA sub-specs, large GPU (Yang et al. 2024)", "<= 23 s each"),
    ("dReal, pendulum Lyapunov function (Chang et al. 2019)", "37 s"),
    ("LyZNet, 2x30 tanh Van der Pol", "973 s"),
]

MODELS = {
    "soft-n1": dict(links=1, activation="relu", pinned=False),
    "soft-n1-pinned": dict(links=1, activation="tanh", pinned=True),
    "soft-n1-pinned-fitted-V": dict(links=1, activation="tanh", pinned=True, fitted_V=True),
    "soft-n2": dict(links=2, activation="relu", pinned=False),
    "soft-n2-pinned": dict(links=2, activation="tanh", pinned=True),
    "soft-n2-pinned-fitted-V": dict(links=2, activation="tanh", pinned=True, fitted_V=True),
}


def fit_V_to_field(f: SimpleDynamics, seed: int = 0) -> LyapunovFunction:
    """A ``V`` for ``f``'s own field (see ``soft-n1-pinned-fitted-V``): states uniform in the
    box below 3/4 of the physics' lowest non-hanging equilibrium energy (15 of 19.6 J/kg for one
    link), plus 2,000 within 0.15 of ``x_eq`` for the quadratic's linear fit."""
    from lyagym.envs import PendulumDynamics
    from lyagym.learned_models.lyapunov_fit import fit_lyapunov, init_quadratic, quadratic_lyapunov

    n = f.state_dim // 2
    physics = PendulumDynamics(n_links=n)
    gen = torch.Generator().manual_seed(seed)
    half = torch.tensor([math.pi] * n + [8.0] * n)
    x = (torch.rand(20000 * n, 2 * n, generator=gen) * 2 - 1) * half
    rest = torch.zeros(1, 2 * n, dtype=torch.float64)
    e0 = physics.energy(rest)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, math.pi], dtype=torch.float64)] * n).reshape(-1, n)[1:]
    barrier = float((physics.energy(torch.cat([corners, torch.zeros_like(corners)], -1)) - e0).min())
    energy = physics.energy(x.double()) - e0
    x = x[energy < 0.75 * barrier]
    near = (torch.rand(2000, 2 * n, generator=gen) * 2 - 1) * 0.15
    with torch.no_grad():
        fx, fnear = f(x), f(near)
    torch.manual_seed(seed)
    V = LyapunovFunction(2 * n, (32, 32), eps=1e-3, shift="tangent", quadratic=True)
    init_quadratic(V, quadratic_lyapunov(near, fnear)[1])
    fit_lyapunov(V, (torch.cat([x, near]), torch.cat([fx, fnear])), alpha=ALPHA, margin=0.05, steps=300, seed=seed, progress=False)
    return V


def train(name: str, cache: str) -> tuple[SimpleDynamics, LyapunovFunction]:
    """The model ``name`` of ``MODELS`` (``lyanet-pendulum``'s soft recipe), from ``cache`` if there."""
    from lyagym.agents.reproduce.fig5 import Fig5Config, training_data
    from lyagym.agents.reproduce.lyanet_pendulum import fit_soft_lyapunov
    from lyagym.envs import PendulumDynamics

    spec = MODELS[name]
    n = spec["links"]
    if spec.get("fitted_V"):
        f, _ = train(name.removesuffix("-fitted-V"), cache)
        path = os.path.join(cache, f"{name}.pt")
        V = LyapunovFunction(2 * n, (32, 32), eps=1e-3, shift="tangent", quadratic=True)
        if os.path.exists(path):
            V.load_state_dict(torch.load(path, weights_only=True))
        else:
            V = fit_V_to_field(f)
            from lyagym.learned_models.files import atomic_write

            atomic_write(path, lambda tmp: torch.save(V.state_dict(), tmp))
        return f, V
    torch.manual_seed(0)
    f = SimpleDynamics(2 * n, hidden=(100, 100), activation=spec["activation"])
    torch.manual_seed(0)
    V = LyapunovFunction(2 * n, (60, 60), eps=1e-3)
    path = os.path.join(cache, f"{name}.pt")
    if os.path.exists(path):
        state = torch.load(path, weights_only=True)
        f.load_state_dict(state["f"])
        V.load_state_dict(state["V"])
        return f, V
    if spec["pinned"]:
        # f(0) = 0: no biases anywhere (tanh(0) = 0), frozen so that Adam leaves them at 0.
        for layer in f.fhat.net:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.zeros_(layer.bias)
                layer.bias.requires_grad_(False)
    # lyanet-pendulum's defaults: 2000 pairs per link, 3000 (+ a quarter) steps as whole epochs
    config = dataclasses.replace(Fig5Config(), samples_per_link=2000, train_steps=3000, seed=0)
    x, xdot = training_data(PendulumDynamics(n_links=n), config)
    epochs = max(1, math.ceil((3000 + 750) * config.batch_size / x.shape[0]))
    start = time.perf_counter()
    fit_soft_lyapunov(f, V, x, xdot, alpha=ALPHA, weight=1.0, epochs=epochs, batch_size=config.batch_size, lr=config.lr, seed=0)
    print(f"trained {name} in {time.perf_counter() - start:.0f} s")
    os.makedirs(cache, exist_ok=True)
    from lyagym.learned_models.files import atomic_write

    atomic_write(path, lambda tmp: torch.save({"f": f.state_dict(), "V": V.state_dict()}, tmp))
    return f, V


def sizes(f: SimpleDynamics, V: LyapunovFunction) -> str:
    layers = [m for m in f.fhat.modules() if isinstance(m, torch.nn.Linear)]
    widths = [layers[0].in_features] + [m.out_features for m in layers]
    return f"f {'-'.join(map(str, widths))} ({sum(p.numel() for p in f.parameters())} weights), V ICNN " \
           f"{V.state_dim}-{'-'.join(map(str, V.g.hidden))}-1 ({V.g.theta.numel()} weights)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["soft-n1", "soft-n1-pinned", "soft-n1-pinned-fitted-V", "soft-n2",
                                                        "soft-n2-pinned-fitted-V"], choices=list(MODELS))
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per 2-D verification (box, then ROA)")
    parser.add_argument("--budget-4d", type=float, default=300.0, help="seconds per 4-D verification (box, then ROA)")
    parser.add_argument("--cache", default="./lyagym-output/bench-verify")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        f, V = train(name, args.cache)
        n = f.state_dim
        box = [[-math.pi, math.pi]] * (n // 2) + [[-8.0, 8.0]] * (n // 2)
        budget = args.budget if n == 2 else args.budget_4d
        # exhaustive: past the first counterexample, how much of the box is proven in the budget
        whole = verify_decrease(f, V, box, alpha=ALPHA, budget_s=budget, exhaustive=True)
        roa = region_of_attraction(f, V, box, alpha=ALPHA, budget_s=budget, steps=6)
        rows.append((name, sizes(f, V), whole, roa))
        print(f"{name}: box {whole.status} ({100 * whole.fraction:.4g}% proven, {whole.boxes} boxes, {whole.seconds:.1f} s"
              + (f", h = {whole.counterexample_value:.3g} at {[round(v, 4) for v in whole.counterexample]}" if whole.counterexample else "")
              + f"); region of attraction {roa.status} rho = {roa.rho}, {roa.seconds:.1f} s; local ball: "
              + ("none" if roa.local is None else f"x* = {[float(f'{v:.3g}') for v in roa.local.x_star.tolist()]}, radius {roa.local.radius:.3g}"))
    print(f"\nthreads: {args.threads} (torch.set_num_threads); alpha = {ALPHA}; one run each\n")
    print("| model | networks | whole box: answer, share proven in the budget, time | region of attraction {V <= rho}: answer, rho, time | local ball at x* |")
    print("|---|---|---|---|---|")
    for name, size, whole, roa in rows:
        box_answer = whole.status + (f" (h = {whole.counterexample_value:.3g} at {[round(v, 3) for v in whole.counterexample]})" if whole.counterexample else "")
        roa_answer = f"{roa.status}, rho = {roa.rho:.3g}" if roa.status == "verified" else f"none (no level of {len(roa.trials)} tried proven)"
        local = "none" if roa.local is None else f"radius {roa.local.radius:.2g}, rate {roa.local.rate:.3g}"
        print(f"| {name} | {size} | {box_answer}, {100 * whole.fraction:.4g}%, {whole.seconds:.1f} s | {roa_answer}, {roa.seconds:.1f} s | {local} |")
    print("\nPublished anchors (as quoted in the issue; their networks are smaller than ours, sizes not quoted there):\n")
    for what, figure in ANCHORS:
        print(f"- {what}: {figure}")
    try:
        import bound_propagation  # noqa: F401  -- GPL-3.0, never a dependency
    except ImportError:
        print("\n(bound-propagation is not installed: no third-party bounds to print beside ours)")


if __name__ == "__main__":
    main()
