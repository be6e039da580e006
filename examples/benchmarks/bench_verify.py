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
  and ``soft-n2-pinned-fitted-V`` as for one link;
- ``soft-n2-pinned-local-V``: ``soft-n2-pinned``'s field with a ``V`` fitted on, and verified
  on, the smaller box ``[-0.5, 0.5]`` (angles) x ``[-1, 1]`` (velocities): on the whole box the
  decrease of ``soft-n2-pinned-fitted-V`` fails on 29% of sampled states, so no verifier can
  prove 99% of it.
- ``soft-n1-verified``, ``soft-n2-verified``: the ``-pinned-fitted-V`` field and ``V`` trained
  further by ``fit_verified`` (neural Lyapunov control's learner-verifier loop: MSE on the same
  training pairs plus the decrease at rate ``ALPHA + 0.05`` on uniform states of the whole box
  and on the verifier's counterexamples, until the box is proven or the rounds run out). The
  training pairs lie near the hanging pendulum, so the field is free elsewhere and the loop
  spends that freedom on the certificate: the printout gives the training pairs' error before
  and after.

With ``--lyanet``: ``lyagym reproduce lyanet-pendulum``'s LyaNet world model for one link, whose
inference contraction (``contraction.py``; LyaNet's own condition needs each input's target)
is proven over a box of inputs, its training cube of inference states and ``t in [0, 1]``
(5-D), at half its certificate's rate and at half the worst sampled rate: on the pendulum box
``[-pi, pi] x [-8, 8]`` (35 of its inputs' standard deviations wide: the training pairs stay
near hanging) and on the box of its training inputs; and ``lyanet-n1-small``, the same recipe
with a 32-32 network and time-independent inference ``f(eta, z)`` (4-D), on the box of its
training inputs at a half and a quarter of its worst sampled rate.

Each row also prints the share of 10^6 uniform states of the box where ``h > 0`` (the verifier
can prove at most the rest), the CPU time at which 90% and 99% of the box were proven, and,
when ``bound-propagation`` (GPL-3.0, an optional extra never imported by the package)
imports, its CROWN and alpha-CROWN bounds of the same field beside ours.

For each: the decrease ``grad V . f + alpha V < 0`` on the whole box (``[-pi, pi]`` angles,
``[-8, 8]`` velocities; exhaustive: the worst counterexample found and the share of the box
proven within the budget), and the certified region of attraction ``{V <= rho}`` by
bisection (``region_of_attraction``). Budgets and times are this thread's CPU seconds
(``time.thread_time``: one core, whatever else the machine runs) on one thread
(``torch.set_num_threads(1)``, ``--threads``), one run each (a verification is not repeated:
its time is its answer's).

Why the whole box cannot be verified for a model that is accurate on all of it: the upright
state is an equilibrium of the physics, so a model close to it there has one nearby, where
``f = 0`` and ``grad V . f + alpha V = alpha V > 0``. The verifier finds that counterexample in
seconds. The soft models' training pairs never reach the upright, and the ``-verified`` models
use that: their fields keep the pairs' error and move no equilibrium into the box.
Near the bottom, a model whose ``f(x_eq) != 0`` (every unconstrained MLP) has its equilibrium
``x*`` off ``V``'s minimum and ``V`` cannot decrease around ``x_eq``: no sublevel set of that
``V`` is a region of attraction, which is what the verifier reports for ``soft-n1``.

With ``--clf-seeds``: the *stabilisability* certificates (control Lyapunov functions) of the
``InvertedPendulum-v5`` PETS cells stored in ``examples/results/mbrl-envs`` (``pets-ensemble-clf``,
the committed model and CLF of the run, rebuilt as ``certificate_check`` rebuilds them): the
decrease under the fallback input on the claimed set ``inner * rho <= V <= rho``
(``clf_verification.py``), the share of that set proven within ``--budget-clf`` CPU seconds,
and the share of 10^6 uniform states of the set's bounding box, inside the set, that violate it;
``--clf-upright`` adds the pendulum's upright regulation (``examples/clf_pendulum_upright.py``'s
model and CLF, trained here in a few seconds).

Usage::

    python examples/benchmarks/bench_verify.py                    # all models
    python examples/benchmarks/bench_verify.py --models soft-n1-pinned --budget 30
    python examples/benchmarks/bench_verify.py --models soft-n1-verified soft-n2-verified --budget 30 --budget-4d 600
    python examples/benchmarks/bench_verify.py --models soft-n2-pinned-local-V --budget-4d 600 --budget-roa-4d 300
    python examples/benchmarks/bench_verify.py --models soft-n1-pinned-fitted-V --lyanet   # + LyaNet contraction rows
    python examples/benchmarks/bench_verify.py --models --clf-seeds 3 4 --clf-upright --budget-clf 60  # only the CLF rows
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import time

import torch

from lyagym.learned_models import LyapunovFunction, SimpleDynamics
from lyagym.learned_models.verification import region_of_attraction, verify_decrease

ALPHA = 1e-3

#: Published figures of other verifiers (their networks are smaller than ours; sizes not published with them).
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
    # angles in [-0.5, 0.5], velocities in [-1, 1]: V fitted there, and that box verified
    "soft-n2-pinned-local-V": dict(links=2, activation="tanh", pinned=True, fitted_V=True, region=(0.5, 1.0)),
    # the fitted-V models trained on by fit_verified (learner-verifier rounds) until the whole box is proven
    "soft-n1-verified": dict(links=1, activation="tanh", pinned=True, fitted_V=True, verified_fit=dict(steps=300, rounds=5, budget_s=30.0)),
    "soft-n2-verified": dict(links=2, activation="tanh", pinned=True, fitted_V=True,
                             verified_fit=dict(steps=1000, rounds=4, budget_s=120.0)),
}
#: what fit_verified did to each verified model (rounds, data error before and after, seconds), for the printout
FIT_NOTES: dict[str, str] = {}


def fit_V_to_field(f: SimpleDynamics, seed: int = 0, region: tuple[float, float] | None = None) -> LyapunovFunction:
    """A ``V`` for ``f``'s own field (see ``soft-n1-pinned-fitted-V``): states uniform in the
    box below 3/4 of the physics' lowest non-hanging equilibrium energy (15 of 19.6 J/kg for one
    link), plus 2,000 within 0.15 of ``x_eq`` for the quadratic's linear fit. With ``region =
    (a, w)``: 40,000 states uniform in ``[-a, a]`` (angles) x ``[-w, w]`` (velocities) and 4,000
    in the same box shrunk 20 times."""
    from lyagym.envs import PendulumDynamics
    from lyagym.learned_models.lyapunov_fit import fit_lyapunov, init_quadratic, quadratic_lyapunov

    n = f.state_dim // 2
    if region is not None:
        half = torch.tensor([region[0]] * n + [region[1]] * n)
        gen = torch.Generator().manual_seed(seed)
        x = (torch.rand(40000, 2 * n, generator=gen) * 2 - 1) * half
        near = (torch.rand(4000, 2 * n, generator=gen) * 2 - 1) * half * 0.05
        with torch.no_grad():
            fx, fnear = f(x), f(near)
        torch.manual_seed(seed)
        V = LyapunovFunction(2 * n, (32, 32), eps=1e-3, shift="tangent", quadratic=True)
        init_quadratic(V, quadratic_lyapunov(near, fnear)[1])
        fit_lyapunov(V, (torch.cat([x, near]), torch.cat([fx, fnear])), alpha=ALPHA, margin=0.05, steps=300, seed=seed,
                     progress=False)
        return V
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
    if spec.get("verified_fit"):
        return train_verified(name, cache)
    if spec.get("fitted_V"):
        f, _ = train(name.removesuffix("-fitted-V").removesuffix("-local-V"), cache)
        path = os.path.join(cache, f"{name}.pt")
        V = LyapunovFunction(2 * n, (32, 32), eps=1e-3, shift="tangent", quadratic=True)
        if os.path.exists(path):
            V.load_state_dict(torch.load(path, weights_only=True))
        else:
            V = fit_V_to_field(f, region=spec.get("region"))
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


def train_verified(name: str, cache: str) -> tuple[SimpleDynamics, LyapunovFunction]:
    """``soft-nK-pinned-fitted-V`` after ``fit_verified`` on its box (MSE on the same training
    pairs, the decrease at rate ALPHA + 0.05 on uniform box states and the verifier's
    counterexamples), from ``cache`` if there."""
    import json

    from lyagym.agents.reproduce.fig5 import Fig5Config, training_data
    from lyagym.envs import PendulumDynamics
    from lyagym.learned_models import fit_verified
    from lyagym.learned_models.files import atomic_write

    spec = MODELS[name]
    n = spec["links"]
    f, V = train(f"soft-n{n}-pinned-fitted-V", cache)
    f, V = copy.deepcopy(f).float(), copy.deepcopy(V).float()
    base_error = physics_error(f, region_box(name, 2 * n))
    path = os.path.join(cache, f"{name}.pt")
    if os.path.exists(path):
        state = torch.load(path, weights_only=True)
        f.load_state_dict(state["f"])
        V.load_state_dict(state["V"])
        FIT_NOTES[name] = f"{state['note']}; {physics_note(base_error, physics_error(f, region_box(name, 2 * n)))}"
        return f, V
    config = dataclasses.replace(Fig5Config(), samples_per_link=2000, train_steps=3000, seed=0)
    x, xdot = training_data(PendulumDynamics(n_links=n), config)
    x, xdot = x.float(), xdot.float()
    with torch.no_grad():
        before = float((f.derivative(x) - xdot).square().mean())
    out = fit_verified(f, V, (x, xdot), region_box(name, 2 * n), alpha=ALPHA, clock=time.thread_time, **spec["verified_fit"])
    rounds = out["rounds"]
    note = (f"fit_verified: {len(rounds)} round(s) of {spec['verified_fit']['steps']} steps, "
            f"{out['train_seconds']:.1f} s of training; proofs {', '.join(r['status'] for r in rounds)} "
            f"({', '.join(format(100 * r['fraction'], '.4g') + '%' for r in rounds)} of the box); training-pair MSE {before:.3g} -> "
            f"{rounds[-1]['data_mse']:.3g}")
    print(f"{name}: {note}")
    print(json.dumps(rounds))
    FIT_NOTES[name] = f"{note}; {physics_note(base_error, physics_error(f, region_box(name, 2 * n)))}"
    os.makedirs(cache, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"f": f.state_dict(), "V": V.state_dict(), "note": note}, tmp))
    return f, V


def physics_error(f: SimpleDynamics, box: list[list[float]], samples: int = 20_000) -> float:
    """Relative squared error ``sum ||f - f*||^2 / sum ||f*||^2`` of the field against the
    pendulum's physics ``f*`` on ``samples`` uniform states of ``box`` (seeded)."""
    from lyagym.envs import PendulumDynamics

    B = torch.tensor(box, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = B[:, 0] + (B[:, 1] - B[:, 0]) * torch.rand(samples, B.shape[0], generator=gen, dtype=torch.float64)
    truth = PendulumDynamics(n_links=B.shape[0] // 2).derivative(x)
    with torch.no_grad():
        pred = copy.deepcopy(f).double().derivative(x)
    return float((pred - truth).square().sum() / truth.square().sum())


def physics_note(before: float, after: float) -> str:
    return f"relative squared error against the physics on the whole box {before:.3g} -> {after:.3g}"


def milestones(clock, levels: tuple[float, ...] = (0.9, 0.99)):
    """``(reached, progress)``: a branch-and-bound progress callback that records in ``reached``
    the ``clock`` time from now at which the proven share first passed each of ``levels``."""
    reached: dict[float, float] = {}
    start = clock()

    def progress(fraction: float, boxes: int) -> None:
        for level in levels:
            if fraction >= level and level not in reached:
                reached[level] = clock() - start

    return reached, progress


def sizes(f: SimpleDynamics, V: LyapunovFunction) -> str:
    layers = [m for m in f.fhat.modules() if isinstance(m, torch.nn.Linear)]
    widths = [layers[0].in_features] + [m.out_features for m in layers]
    return f"f {'-'.join(map(str, widths))} ({sum(p.numel() for p in f.parameters())} weights), V ICNN " \
           f"{V.state_dim}-{'-'.join(map(str, V.g.hidden))}-1 ({V.g.theta.numel()} weights)"


def region_box(name: str, n: int) -> list[list[float]]:
    """The box a model is verified on: ``[-pi, pi]`` angles and ``[-8, 8]`` velocities, or its ``region``."""
    a, w = MODELS[name].get("region", (math.pi, 8.0))
    return [[-a, a]] * (n // 2) + [[-w, w]] * (n // 2)


def violated_share(f: SimpleDynamics, V: LyapunovFunction, box: list[list[float]], samples: int = 1_000_000) -> float:
    """Share of ``samples`` uniform states of ``box`` (seeded) where ``grad V . f + alpha V > 0``
    (float64): the verifier can prove at most the rest."""
    f64, V64 = copy.deepcopy(f).double(), copy.deepcopy(V).double()
    B = torch.tensor(box, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    bad = 0
    for _ in range(samples // 100_000):
        x = B[:, 0] + (B[:, 1] - B[:, 0]) * torch.rand(100_000, B.shape[0], generator=gen, dtype=torch.float64)
        with torch.no_grad():
            v, g = V64.forward_and_grad(x)
            bad += int(((g * f64(x)).sum(-1) + ALPHA * v > 0).sum())
    return bad / samples


def third_party_bounds(f: SimpleDynamics, box: list[list[float]], rel: float = 1 / 8, count: int = 256) -> str:
    """Bounds of ``f`` on ``count`` random boxes ``rel`` of ``box``'s width: ours beside
    ``bound-propagation``'s CROWN and alpha-CROWN (GPL-3.0, imported here only), as the median
    over boxes and outputs of (bound width / sampled range), and the time per call."""
    try:
        from bound_propagation import BoundModelFactory, HyperRectangle  # GPL-3.0: never a dependency
    except ImportError:
        return "bound-propagation did not install/import here: no third-party bounds printed"
    from lyagym.learned_models.bounds import LinearBounds, network_bounds

    dn = f.fhat.double()
    if isinstance(dn, torch.nn.Sequential):
        net, scale = dn, torch.ones(len(box), dtype=torch.float64)
    elif dn.angle_dims or dn.control_affine:
        return "bound-propagation comparison: only for fields without angle features or inputs"
    else:
        net, scale = dn.net, dn.input_scale.detach()
    B = torch.tensor(box, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    half = (B[:, 1] - B[:, 0]) / 2
    c = B.mean(1) + (torch.rand(count, B.shape[0], generator=gen, dtype=torch.float64) * 2 - 1) * half * (1 - rel)
    inv = 1.0 / scale  # the inner MLP sees x / input_scale (positive output scale: ratios unchanged)
    lo, hi = (c - rel * half) * inv, (c + rel * half) * inv
    pts = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(count, 1000, B.shape[0], generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = net(pts)
    rng = y.max(1).values - y.min(1).values
    bnet = BoundModelFactory().build(net)
    rows = []
    for label, fn in (("ours (forward linear)", lambda: network_bounds(net, LinearBounds.from_box(lo, hi)).bounds()),
                      ("CROWN", lambda: (lambda b: (b.lower, b.upper))(bnet.crown(HyperRectangle(lo, hi)).concretize())),
                      ("alpha-CROWN", lambda: (lambda b: (b.lower, b.upper))(bnet.crown(HyperRectangle(lo, hi), alpha=True).concretize()))):
        start = time.thread_time()
        with torch.no_grad() if label.startswith("ours") else torch.enable_grad():
            low, up = fn()
        seconds = time.thread_time() - start
        ok = bool((low.unsqueeze(1) <= y + 1e-9).all() and (y <= up.unsqueeze(1) + 1e-9).all())
        ratio = float(((up - low) / rng).detach().median())
        rows.append(f"{label}: width / sampled range {ratio:.2f}, {seconds:.3f} s for {count} boxes, encloses samples: {ok}")
    return "f on %d boxes of 1/%d the box's width: " % (count, round(1 / rel)) + "; ".join(rows)


def lyanet_training_pairs():
    """``lyagym reproduce lyanet-pendulum``'s training pairs for one link (Fig. 5 trajectories near hanging)."""
    from lyagym.agents.reproduce.fig5 import Fig5Config, training_data
    from lyagym.envs import PendulumDynamics

    config = dataclasses.replace(Fig5Config(), samples_per_link=2000, seed=0)
    return (*training_data(PendulumDynamics(n_links=1), config), config)


def train_lyanet(cache: str, small: bool = False):
    """``lyagym reproduce lyanet-pendulum``'s LyaNet world model for one link (seed 0, 3000 + 750
    steps of Fig. 5 pairs, kappa = 12), from ``cache`` if there. ``small``: the same recipe with
    a 32-32 network and time-independent inference dynamics (``f(eta, z)``: the condition's
    space is 4-D, the anchors' 4-D case)."""
    from lyagym.learned_models.lyanet_world_model import LyaNetWorldModel

    path = os.path.join(cache, "lyanet-n1-small.pt" if small else "lyanet-n1.pt")
    if os.path.exists(path):
        return LyaNetWorldModel.load(path)
    x, xdot, config = lyanet_training_pairs()
    torch.manual_seed(0)
    model = LyaNetWorldModel(2, 0, dt=0.01, target="derivative", integrator="rk4", kappa=12.0, step_size=0.1,
                             **(dict(width=32, time_dependent=False) if small else {}))
    phase1, phase2 = (max(1, math.ceil(s * config.batch_size / x.shape[0])) for s in (3000, 750))
    model.fit(x, None, xdot, epochs=phase1, batch_size=config.batch_size, lr=1e-3, seed=0, sampler="targets", weighting="sqrt",
              finetune_epochs=phase2, finetune_weighting="relative")
    os.makedirs(cache, exist_ok=True)
    model.save(path)
    return model


def lyanet_rows(cache: str, budget: float, clock) -> str:
    """LyaNet world models' inference contraction (``contraction.py``), at half the certificate's
    measured rate (what ``Certificate.verify`` proves) and at a half and a quarter of the worst
    contraction rate sampled on 10^5 points of (inference state, input[, t]): ``lyanet-pendulum``'s
    model on the pendulum box ``[-pi, pi] x [-8, 8]`` and on the box of its training inputs, and
    the small time-independent model on the box of its training inputs."""
    from lyagym.learned_models.contraction import log_norm_at, verify_contraction

    x, xdot, _ = lyanet_training_pairs()
    data_box = torch.stack([x.min(0).values, x.max(0).values], 1).double().tolist()
    pendulum_box = [[-math.pi, math.pi], [-8.0, 8.0]]
    out = []
    training_box = "training inputs' box"
    for small, boxes in ((False, ((pendulum_box, "[-pi, pi] x [-8, 8]", (0.5,)), (data_box, training_box, (0.5,)))),
                         (True, ((data_box, training_box, (0.5, 0.25)),))):
        model = train_lyanet(cache, small=small)
        cert = model.certificate()
        with torch.no_grad():
            rel = float(((model.predict(x.to(model.in_mean.dtype)) - xdot) ** 2).sum() / (xdot**2).sum())
        model = model.double()
        net = model.ode.dynamics.net
        time_rows = [torch.tensor([[0.0, 1.0]], dtype=torch.float64)] if model.ode.dynamics.time_dependent else []
        widths = [net[0].in_features] + [m.out_features for m in net if isinstance(m, torch.nn.Linear)]
        label = "lyanet-n1-small" if small else "lyanet-n1"
        H = torch.tensor([[-model.half_width, model.half_width]] * 2, dtype=torch.float64)
        for box, box_name, fractions in boxes:
            B = torch.tensor(box, dtype=torch.float64)
            Z = (B - model.in_mean.unsqueeze(1)) / model.in_std.unsqueeze(1)
            full = torch.cat([H, Z, *time_rows])
            gen = torch.Generator().manual_seed(0)
            pts = full[:, 0] + (full[:, 1] - full[:, 0]) * torch.rand(100_000, full.shape[0], generator=gen, dtype=torch.float64)
            mu = log_norm_at(net, pts, 2)
            rates = ([cert.alpha / 2] if box is pendulum_box else []) + [-float(mu.max()) * f for f in fractions]
            for rate in rates:
                share = float((mu + rate > 0).double().mean())
                reached, progress = milestones(clock)
                res = verify_contraction(model, box, rate=rate, budget_s=budget, exhaustive=True, progress=progress, clock=clock)
                answer = res.status + (f" (mu + c = {res.counterexample_value:.3g})" if res.counterexample_value is not None else "")
                times = " / ".join("-" if level not in reached else f"{reached[level]:.1f} s" for level in (0.9, 0.99))
                print(f"{label} on {box_name} at c = {rate:.3g}: {answer}, {100 * res.fraction:.4g}% proven, {res.boxes} boxes, "
                      f"{res.seconds:.1f} s; 90% / 99% at {times}", flush=True)
                out.append(f"| {label}, contraction at c = {rate:.3g} | f {'-'.join(map(str, widths))} SiLU on [eta, z{', t' if time_rows else ''}]; "
                           f"relative squared error on its training pairs {rel:.2g} | eta in [{-model.half_width:.3g}, {model.half_width:.3g}]^2, "
                           f"inputs {box_name}{' (' + ' x '.join(f'[{lo:.3g}, {hi:.3g}]' for lo, hi in box) + ')' if box is data_box else ''}"
                           f"{', t in [0, 1]' if time_rows else ''} | {100 * share:.3g}% (of 10^5) "
                           f"| {answer}, {100 * res.fraction:.4g}%, {res.seconds:.1f} s | {times} | certificate alpha = {cert.alpha:.3g} "
                           f"(sampled mu <= {float(mu.max()):.3g}) | - |")
    return "\n".join(out)


def clf_row(label: str, model, V, budget: float, clock) -> str:
    """One stabilisability row: ``V``'s certificate of ``model`` verified on its claimed set."""
    from lyagym.learned_models.clf_verification import region_box, region_fraction, verify_stabilisability
    from lyagym.learned_models.control_lyapunov import _members

    cert = V.certificate(model)
    rho, inner = cert.details["rho"], cert.details["inner_level"]
    # sampled violations: 10^6 uniform states of the set's bounding box, those in the set (float64)
    V64 = copy.deepcopy(V).double()
    members = [copy.deepcopy(m).double() for m in _members(model, V.ensemble)]
    B = region_box(V64, rho)
    gen = torch.Generator().manual_seed(0)
    inside = bad = 0
    for _ in range(10):
        x = B[:, 0] + (B[:, 1] - B[:, 0]) * torch.rand(100_000, B.shape[0], generator=gen, dtype=torch.float64)
        with torch.no_grad():
            v = V64(x)
        x = x[(v <= rho) & (v >= inner)]
        inside += x.shape[0]
        bad += int((V64.violation(None, x, members=members) > 0).sum())
    res = verify_stabilisability(model, V, alpha=cert.alpha, rho=rho, inner_level=inner, time_domain=cert.time_domain,
                                 budget_s=budget, clock=clock)
    share = region_fraction(res, V, inner, samples=100_000)
    member = members[0].models[0] if hasattr(members[0], "models") else members[0]
    widths = [m.out_features for m in member.fhat.net if isinstance(m, torch.nn.Linear)]
    first = member.fhat.net[0].in_features
    maps = f"{len(members[0].models)} members' mean map" if hasattr(members[0], "models") else "the model"
    size = (f"f {first}-{'-'.join(map(str, widths))} {member.fhat.activation} ({maps}, {member.integrator} h = {member.dt:g}); "
            f"V LQR + {'-'.join(map(str, (V.state_dim, *V.hidden, V.state_dim)))} tanh")
    answer = res.status + (f" (d = {res.counterexample_value:.3g})" if res.counterexample_value is not None else "")
    return (f"| {label} | {size} | rho {rho:.3g}, inner {inner:.2g}, alpha {cert.alpha:.3g} | {100 * bad / max(inside, 1):.3g}% of "
            f"{inside} | {answer}, {res.boxes} boxes, {res.seconds:.1f} s | {100 * share:.6g}% | {100 * res.fraction:.6g}% |")


def clf_rows(seeds: list[int], budget: float, clock, results: str = "examples/results/mbrl-envs", key: str | None = None) -> list[str]:
    """The stabilisability rows (module docstring) for the stored ``pets-ensemble-clf`` cells of
    ``InvertedPendulum-v5`` with these seeds whose run folder holds the committed weights: the
    cells of settings ``key`` (the hash ending the cell's folder name), else each seed's most
    recently stored cell."""
    import glob
    import json

    from lyagym.agents.adapters import make_adapter
    from lyagym.agents.reproduce.mbrl_envs import _cell_config_and_model, _make_env
    from lyagym.agents.run_log import RunFolder
    from lyagym.agents.world_models import CLF_ENSEMBLE_CLAIM
    from lyagym.learned_models.control_lyapunov import ControlLyapunov

    rows = []
    for seed in seeds:
        folders = glob.glob(os.path.join(results, "InvertedPendulum-v5", "pets-ensemble-clf", f"seed{seed}-{key or '*'}"))
        folders.sort(key=lambda f: os.path.getmtime(os.path.join(f, "cell.json")) if os.path.exists(os.path.join(f, "cell.json")) else 0,
                     reverse=True)
        run = RunFolder(os.path.join(folders[0], "run"), algo="pets", settings={}) if folders else None
        manifest = run.manifest() if run is not None else None
        if manifest is None or not os.path.exists(run.file(manifest, "clf_weights.pt")):
            rows.append(f"| InvertedPendulum-v5 seed {seed} | no stored weights in {results} | - | - | - | - | - |")
            continue
        with open(os.path.join(folders[0], "cell.json")) as fh:
            settings = json.load(fh)["settings"]
        adapter = make_adapter(_make_env(settings))
        _, model = _cell_config_and_model(settings, adapter, seed, "cpu")
        model.load_state_dict(torch.load(run.file(manifest, "model_weights.pt"), weights_only=True))
        V = ControlLyapunov(adapter.state_dim, adapter.action_dim, box=[[-1.0, 1.0]] * adapter.state_dim, u_low=adapter.action_low,
                            u_high=adapter.action_high, x_eq=[0.0] * adapter.state_dim, angle_dims=adapter.angle_dims,
                            ensemble=CLF_ENSEMBLE_CLAIM)
        V.load_state_dict(torch.load(run.file(manifest, "clf_weights.pt"), weights_only=True))
        rows.append(clf_row(f"InvertedPendulum-v5 PETS seed {seed}", model, V, budget, clock))
        print(f"clf: {rows[-1]}", flush=True)
    return rows


def upright_row(budget: float, clock, seed: int = 0) -> str:
    """The pendulum's upright (``examples/clf_pendulum_upright.py``'s model and CLF, its seed
    and steps: 60 random-torque episodes of 20 steps from near upright, a control-affine
    ``SimpleDynamics`` 3-64-64-4 fitted for 300 epochs, the LQR ``V`` with 200 correction steps)."""
    import numpy as np

    from lyagym.agents.adapters import NLinkPendulumAdapter, make_pendulum_env
    from lyagym.agents.data import TransitionBuffer, collect_episode
    from lyagym.agents.world_models import fit_transitions, world_model_for
    from lyagym.learned_models.control_lyapunov import ControlLyapunov

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = make_pendulum_env(1, task="swingup", dt=0.05, max_torque=5.0, episode_steps=100)
    adapter = NLinkPendulumAdapter(env)
    buffer = TransitionBuffer(adapter.state_dim, adapter.action_dim, adapter.angle_dims)
    for k in range(60):
        start = np.array([math.pi + rng.uniform(-1.0, 1.0), rng.uniform(-3.0, 3.0)])
        ep = collect_episode(env, None, steps=20, seed=seed * 1000 + k, start_state=start, adapter=adapter)
        buffer.add_trajectory(ep["states"], ep["actions"], ep["rewards"], ep["terminated"])
    model = world_model_for(adapter, "clf", seed=seed, hidden=(64, 64))
    fit_transitions(model, buffer, epochs=300, seed=seed, progress=False)
    V = ControlLyapunov(2, 1, box=[[math.pi - 1, math.pi + 1], [-4.0, 4.0]], u_low=adapter.action_low,
                        u_high=adapter.action_high, x_eq=[math.pi, 0.0], angle_dims=(0,))
    V.initialise(model)
    V.fit(model, steps=200, seed=seed)
    row = clf_row("NLinkPendulum n = 1, upright", model, V, budget, clock)
    print(f"clf: {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["soft-n1", "soft-n1-pinned", "soft-n1-pinned-fitted-V", "soft-n1-verified", "soft-n2",
                                                        "soft-n2-pinned-fitted-V", "soft-n2-pinned-local-V"], choices=list(MODELS))
    parser.add_argument("--budget", type=float, default=30.0, help="CPU seconds per 2-D verification (box, then ROA)")
    parser.add_argument("--budget-4d", type=float, default=600.0, help="CPU seconds per 4-D verification of the box")
    parser.add_argument("--budget-roa-4d", type=float, default=300.0, help="CPU seconds per 4-D region of attraction")
    parser.add_argument("--lyanet", action="store_true", help="add the LyaNet world model's inference contraction rows")
    parser.add_argument("--budget-lyanet", type=float, default=120.0, help="CPU seconds per LyaNet contraction proof")
    parser.add_argument("--clf-seeds", type=int, nargs="*", default=[], help="stored InvertedPendulum-v5 pets-ensemble-clf cells")
    parser.add_argument("--clf-key", default=None,
                        help="the settings hash of those cells (their folder names end with it; default: each seed's newest)")
    parser.add_argument("--clf-upright", action="store_true", help="add the pendulum upright CLF row (clf_pendulum_upright.py's model)")
    parser.add_argument("--budget-clf", type=float, default=60.0, help="CPU seconds per stabilisability verification")
    parser.add_argument("--cache", default="./lyagym-output/bench-verify")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time  # one core's CPU time: the machine may be busy with other work
    rows = []
    for name in args.models:
        f, V = train(name, args.cache)
        n = f.state_dim
        box = region_box(name, n)
        budget, budget_roa = (args.budget, args.budget) if n == 2 else (args.budget_4d, args.budget_roa_4d)
        violated = violated_share(f, V, box)
        reached, progress = milestones(clock)
        # exhaustive: past the first counterexample, how much of the box is proven in the budget
        whole = verify_decrease(f, V, box, alpha=ALPHA, budget_s=budget, exhaustive=True, progress=progress, clock=clock)
        roa = region_of_attraction(f, V, box, alpha=ALPHA, budget_s=budget_roa, steps=6, clock=clock)
        rows.append((name, sizes(f, V), box, violated, whole, reached, roa, third_party_bounds(f, box)))
        print(f"{name}: sampled violations {100 * violated:.3g}% of the box; box {whole.status} ({100 * whole.fraction:.4g}% proven, "
              f"{whole.boxes} boxes, {whole.seconds:.1f} s; 99% at {reached.get(0.99)}"
              + (f", h = {whole.counterexample_value:.3g} at {[round(v, 4) for v in whole.counterexample]}" if whole.counterexample else "")
              + f"); region of attraction {roa.status} rho = {roa.rho}, {roa.seconds:.1f} s; local ball: "
              + ("none" if roa.local is None else f"x* = {[float(f'{v:.3g}') for v in roa.local.x_star.tolist()]}, radius {roa.local.radius:.3g}"),
              flush=True)
    print(f"\nthreads: {args.threads} (torch.set_num_threads); times are this thread's CPU seconds (time.thread_time); "
          f"alpha = {ALPHA}; one run each\n")
    print("| model | networks | box | sampled h > 0 (1e6 states) | whole box: answer, share proven in the budget, CPU time "
          "| time to 90% / 99% | region of attraction {V <= rho}: answer, rho, time | local ball at x* |")
    print("|---|---|---|---|---|---|---|---|")
    for name, size, box, violated, whole, reached, roa, _ in rows:
        box_answer = whole.status + (f" (h = {whole.counterexample_value:.3g} at {[round(v, 3) for v in whole.counterexample]})" if whole.counterexample else "")
        roa_answer = f"{roa.status}, rho = {roa.rho:.3g}" if roa.status == "verified" else f"none (no level of {len(roa.trials)} tried proven)"
        local = "none" if roa.local is None else f"radius {roa.local.radius:.2g}, rate {roa.local.rate:.3g}"
        times = " / ".join("-" if level not in reached else f"{reached[level]:.1f} s" for level in (0.9, 0.99))
        links = len(box) // 2
        sides = " x ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in box[::links][:2]) + ("" if links == 1 else f" (each of {links})")
        print(f"| {name} | {size} | {sides} | {100 * violated:.3g}% | {box_answer}, {100 * whole.fraction:.4g}%, {whole.seconds:.1f} s "
              f"| {times} | {roa_answer}, {roa.seconds:.1f} s | {local} |")
    if args.lyanet:
        print(lyanet_rows(args.cache, args.budget_lyanet, clock))
    if args.clf_seeds or args.clf_upright:
        clf = clf_rows(args.clf_seeds, args.budget_clf, clock, key=args.clf_key) + ([upright_row(args.budget_clf, clock)] if args.clf_upright else [])
        print("\nStabilisability (control Lyapunov function: the decrease under u_fb on inner * rho <= V <= rho, the "
              f"discrete claim of the model's step map), {args.budget_clf:g} CPU s each:\n")
        print("| cell | networks | claim | sampled violations in the set | answer, boxes, CPU time | share of the set proven "
              "| share of the searched cube proven or outside the set |")
        print("|---|---|---|---|---|---|---|")
        for row in clf:
            print(row)
    for name, note in FIT_NOTES.items():
        print(f"- {name}: {note}")
    print("\nPublished anchors (their networks are smaller than ours; sizes not published with them):\n")
    for what, figure in ANCHORS:
        print(f"- {what}: {figure}")
    print("\nThird-party bounds on the same fields (bound-propagation, GPL-3.0, optional; one thread):\n")
    for name, *_, third in rows:
        print(f"- {name}: {third}")


if __name__ == "__main__":
    main()
