"""``lyagym reproduce mbrl-swingup``: MPC and model-based RL vs SAC and PPO on pendulum swing-up.

Methods (each for several seeds; every episode 200 steps of ``--dt`` from hanging down, all
joints actuated, torques in ``[-max_torque, max_torque]``):

- ``mpc-true``: MPPI on the true physics (the planner's ceiling; no learning);
- ``pets-stable`` / ``pets-simple``: the PETS-style loop (``lyagym.agents.mbrl.run_pets``)
  with the stable (ISS, Manek & Kolter projection) or the plain MLP world model: one
  random-torque episode of ``--random-steps``, then MPPI episodes, refitting the model
  (warm-started, at least ``--fit-steps`` Adam steps) after every episode;
- ``dyna-stable`` / ``dyna-simple``: SB3 SAC trained only on imagined rollouts branched
  from real states (``run_dyna``), acting on the real env with its stochastic policy;
- ``sac`` / ``ppo``: Stable-Baselines3 on the real env (``train_baseline``).

**Learning curve.** The *evaluation return* after ``k`` real steps is the return of one
200-step episode from the (seeded) hanging start by the agent that has learned from ``k``
real env steps: for SAC, PPO and Dyna the deterministic policy on a separate env copy
(every ``--eval-every`` training steps for SAC/PPO, after every real episode for Dyna);
for PETS the MPC episode planned on the model fitted to the first ``k`` steps (that
episode's data is then added). Curves show the mean +- std over seeds.

**Sample-efficiency metric.** ``target`` = SAC's final return: the mean over SAC's seeds of
its *last* evaluation return. A run *reaches* the target at the first ``k`` whose
evaluation return is ``>= target - tolerance * |target|`` (``--tolerance``, default 0.05).
``SAC steps`` = the median over SAC's seeds of its ``k``; each run's ratio is
``SAC steps / k`` (0 if never reached); the table gives the per-seed ratios and their
median. Counting the evaluation episode itself as spent (``k + 200`` for every method)
gives the stricter ratio in the last column.

**Planner settings** (``--samples 300 --horizon 50 --iterations 3 --warmup-iterations 30
--noise-std 1 --temperature 0.5``, the defaults for one link; ``lyagym.agents.mbrl.default_horizon`` for more).
Tuned on the true physics only, so the planner is not what keeps PETS from SAC's return;
the env, reward and ``dt`` are SAC's. The swing-up return is bimodal: a plan that swings
up in one go scores about -285 to -295, one that needs an extra swing about -390 to -420.
The old settings (K = 300, H = 30, 2 iterations, noise std 2.5 = a quarter of the torque
range) swung up in one go from 1 of 5 starts (mean -391 over reset seeds 0-4): a 1.5 s
horizon does not see a whole swing-up, the first plan of an episode (no warm start) was
half optimised, and wide noise clipped at the torque limit pulls MPPI's average off the
saturated torque the last push needs. With the defaults: mean -303, median -291 over reset
seeds 0-9 (8 of 10 in one go) and -288.1 +- 3.3 from SAC's three evaluation starts
(``mpc-true``; SAC's final return -289.0). K = 1000 or 4-6 iterations did not remove the
occasional extra swing; CEM (K = 500, 5 iterations) had no extra swings but cost ~2x.

**Where the stability constraint helps and hurts** (``--analysis``, needs ``pets-stable``):
a fresh stable and a fresh simple model are fitted with the same settings to the *same*
data (the final PETS buffer of the first seed of ``pets-stable``), then compared on (a)
open-loop prediction error along the real recorded episodes at horizons 1-100 steps,
split by where the prediction starts (near upright or not), (b) the fixed regions of
``prediction_errors`` and (c) MPC on the real env from hanging and from near upright.

Every (method, seed) run is stored in ``OUT/<method>/seed<s>/run.json`` and reused by a
later invocation with the same settings (``--rerun`` forces it), so methods can be run in
separate processes and summarised together; a run with other settings goes to
``OUT/<method>/seed<s>-<settings hash>/`` (it neither overwrites nor resumes the other).
Writes ``evaluations.csv`` (all evaluation points), ``episodes.csv`` (all training
episodes), ``learning_curves.csv`` (mean/std per method and step), ``learning_curves.png``
and ``summary.md``.

Example::

    lyagym reproduce mbrl-swingup --links 1 --seeds 0 1 2 --out runs/mbrl_n1
    lyagym reproduce mbrl-swingup --quick          # minutes, smaller budgets

Results (defaults, 2-core CPU shared with other jobs; ``--stored-only`` summary of runs made
one (method, seed) per process; ``summary.md`` of the run has the full tables):

- n = 1. SAC (seeds 0-2, 20k steps): final return -289.0 +- 1.5, reached (>= -303.5) after
  14200, 9400, 9800 real steps (median 9800). ``mpc-true``: -288.1 +- 3.3.
  PETS planning on angle-wrapped rollouts (``--wrap-angles``, the default), seeds 0-4, with
  the mechanical priors (``--model-priors``, the default): ``pets-stable`` reached it after
  400, 400, 400, 600, 400 real steps, ``pets-simple`` after 400 on every seed (median 24.5x
  for both; 16.7x counting the scoring episode), then held it (every later episode -278 to
  -301). With the plain MLP (``--no-model-priors``): ``pets-stable`` after 600, 600, 600,
  600, 800 real steps (median 16.3x; 12.5x), ``pets-simple`` after 800, 800, 800, 600, 800
  (12.2x; 10.0x): >= 10x on every seed of both models either way. Without wrapping (``--no-wrap-angles``) each
  model reached it in 2 of 5 seeds only (600-800 steps; the rest scored -420 to -660 with an
  extra swing): upright is the wrap point, so every planned swing over the top extrapolated
  the model past pi, where it has no data. A shorter random episode (``--random-steps 100``,
  pets-simple) reached it after 500-700 steps. PPO (20k steps) and Dyna-SAC (1000 real
  steps, 2 seeds) never swing up.
- The help/hurt analysis (seed 0's buffer), with the priors: the simple model is 1.4-70x more
  accurate 1-60 steps ahead and 58-940x in the fixed regions (hanging without torque 1.1e-4
  vs 0.11), and about as accurate 100 steps ahead (8.3 / 13.3 vs 7.9 / 10.7): with a model
  that no longer diverges, the constraint costs accuracy and buys little at n = 1. Both hold
  upright from every MPC start. With the plain MLP: the stable model's open-loop errors along the
  real episodes are smaller from 30 steps ahead on (2x at 30, 14-16x at 60, 1100-2900x at
  100 steps: bounded rollouts), but 3-4x larger at 1-10 steps ahead (except 1 step near
  upright) and 1.5-6x larger in the fixed regions (hanging without torque 6x, near upright
  2x): the constraint costs short-term accuracy. Planning with either
  model from hanging swings up and holds (-287 stable, -290 simple, -292 true physics).
  With H = 50, MPC from 0.3 rad off upright lets the pendulum fall through a full turn
  (return -127 instead of -1.3) on the true physics too (H <= 40 catches it): the long
  horizon needed for the swing-up makes the planner's local search see "fall and swing
  back up" before "catch".
- n = 2 (``--links 2 --episodes 12 --seeds 0 1 2 3 4``, horizon 15; SAC and PPO seeds 0-2):
  ``mpc-true`` swings up and holds, final angle error 0.009-0.037 rad (return -179.7 +- 1.2).
  SAC (20k steps) swings up on seeds 1 and 2 (-197, -225; angle error 0.18, 0.38 rad), not on
  seed 0 (-1263), so its target is -561.6, reached after 18400 steps (median); PPO never.
  PETS with the mechanical priors (``--model-priors``, the default;
  ``lyagym.agents.mbrl.model_priors``): ``pets-stable`` reached it after 600, 1200, 1000, never,
  800 real steps (median 18.4x; 15.5x counting the scoring episode), ``pets-simple`` after 800,
  600, 1200, 1800, 1600 (15.3x; 13.3x): >= 10x for every seed of the simple model, 4 of 5 of the
  stable one (seed 3 is the hard start for both). Final returns of 8 of the 10 runs -178 to
  -187. Analysis (pets-stable seed 0's 2400 transitions): the stable model is 1.1-1.9x less
  accurate 1-30 steps ahead, 690x / 4e5x more accurate 100 steps ahead; MPC from 0.3 rad short
  of upright holds with it (0.04 rad) and fails with the simple model (2.3 rad).
  Without the priors (``--no-model-priors``, seeds 0-2), PETS with 2400 real steps swung up
  with neither model (final -1349 to -1960): the plain MLP's one-step validation error stays
  near 1e-2 (5e-5 at n = 1). Tried then, on seed 0 (pets-simple, no priors): ``--fit-steps
  8000`` (best -1541), ``--samples 1000 --horizon 20`` (best -1305), a 3 x 256 model (best
  -1476): no swing-up. What led to the priors: ReLU models (sin/cos inputs) fitted to 20,000
  random transitions did not swing up either (-1201 to -1828), while the true physics with
  masses 50% off, one-step error 1.3e-2 along the swing-up, still did (-187): the size of the
  one-step error was not what failed, its shape was.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict

import numpy as np

from ..cli_types import folder, integer, number

__all__ = [
    "add_arguments",
    "run",
    "METHODS",
    "steps_to_reach",
    "summarise",
    "prediction_errors",
    "horizon_errors",
    "plot_learning_curves",
]

METHODS = ("mpc-true", "pets-stable", "pets-simple", "dyna-stable", "dyna-simple", "sac", "ppo")
EPISODE_STEPS = 200
#: tolerances of the extra table in ``summary.md``
TOLERANCES = (0.05, 0.1, 0.2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", type=integer(1), default=1, help="pendulum links, all actuated (default 1)")
    parser.add_argument("--seeds", type=integer(0), nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["mpc-true", "pets-stable", "pets-simple", "sac"], choices=METHODS)
    parser.add_argument("--episodes", type=integer(1), default=5, help="real episodes of the model-based methods (incl. 1 random)")
    parser.add_argument("--random-steps", type=integer(1), default=200, help="length of the random-torque first episode")
    parser.add_argument("--sac-steps", type=integer(1), default=20_000, help="real env steps of SAC")
    parser.add_argument("--ppo-steps", type=integer(1), default=None, help="real env steps of PPO (default: --sac-steps)")
    parser.add_argument("--eval-every", type=integer(1), default=EPISODE_STEPS, help="SAC/PPO evaluation period (real steps)")
    # MPPI settings tuned on the true physics (module docstring, "Planner settings")
    parser.add_argument("--samples", type=integer(1), default=300, help="MPPI samples K")
    parser.add_argument("--horizon", type=integer(1), default=None,
                        help="MPPI horizon H (steps; default 50 for one link, 15 for more)")
    parser.add_argument("--iterations", type=integer(1), default=3, help="MPPI iterations per step")
    parser.add_argument("--warmup-iterations", type=integer(0), default=30,
                        help="MPPI iterations of each episode's first plan (0: --iterations)")
    parser.add_argument("--noise-std", type=number(0, strict=True), default=1.0,
                        help="MPPI sampling std in torque units (0 or less: a quarter of the torque range)")
    parser.add_argument("--temperature", type=number(0, strict=True), default=0.5, help="MPPI temperature (cost units)")
    parser.add_argument("--wrap-angles", action=argparse.BooleanOptionalAction, default=True,
                        help="PETS plans on rollouts that wrap the angle after every step (AngleWrappedModel)")
    parser.add_argument("--model-priors", action=argparse.BooleanOptionalAction, default=True,
                        help="world models with the mechanical priors (sin/cos angles, affine in torque, SiLU; "
                        "lyagym.agents.mbrl.model_priors; default on); --no-model-priors: the paper's plain MLP")
    parser.add_argument("--fit-epochs", type=integer(1), default=100)
    parser.add_argument("--fit-steps", type=integer(0), default=2000, help="at least this many Adam steps per model fit")
    parser.add_argument("--imagined-steps", type=integer(0), default=2000, help="SAC steps (of 128 imagined envs) per real episode in dyna")
    parser.add_argument("--tolerance", type=number(0), default=0.05, help="reach SAC's final return within this fraction of it")
    parser.add_argument("--dt", type=number(0, strict=True, maximum=1.0), default=0.05)
    parser.add_argument("--max-torque", type=number(0, strict=True), default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--analysis", action=argparse.BooleanOptionalAction, default=True,
                        help="stable-vs-simple help/hurt analysis (needs pets-stable runs)")
    parser.add_argument("--rerun", action="store_true", help="ignore stored runs with the same settings")
    parser.add_argument("--stored-only", action="store_true",
                        help="run nothing: summarise the stored runs with these settings (missing ones are skipped)")
    parser.add_argument("--quick", action="store_true", help="small budgets for a smoke run (minutes)")
    parser.add_argument("--out", type=folder, default=os.path.join("lyagym-output", "mbrl-swingup"))
    parser.add_argument("--no-progress", action="store_true")


# ---------------------------------------------------------------------- metric
def steps_to_reach(evaluations: list[dict], target: float, tolerance: float = 0.0) -> float:
    """First ``real_steps`` whose evaluation ``return >= target - tolerance * |target|``
    (rows in any order); ``inf`` if never."""
    threshold = target - tolerance * abs(target)
    hits = [r["real_steps"] for r in evaluations if r["return"] >= threshold - 1e-9 * abs(threshold)]
    return float(min(hits)) if hits else math.inf


def _by_method(rows: list[dict]) -> dict[str, dict[int, list[dict]]]:
    by: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["method"]][int(r["seed"])].append(r)
    for runs in by.values():
        for seed in runs:
            runs[seed].sort(key=lambda r: r["real_steps"])
    return by


def summarise(evaluations: list[dict], tolerance: float = 0.05, eval_steps: int = EPISODE_STEPS) -> tuple[str, dict]:
    """Markdown table and numbers of the sample-efficiency metric (module docstring).

    Args:
        evaluations: rows ``{method, seed, real_steps, return, final_angle_error?}``.
        tolerance: fraction of ``|target|`` a return may fall short of SAC's final return.
        eval_steps: length of an evaluation episode (the strict ratio counts it as spent).
    """
    by_method = _by_method(evaluations)
    target = sac_steps = None
    if "sac" in by_method:
        target = float(np.mean([runs[-1]["return"] for runs in by_method["sac"].values()]))
        sac_steps = float(np.median([steps_to_reach(r, target, tolerance) for r in by_method["sac"].values()]))
    lines = [
        (f"Target: SAC's final return {target:.1f} (mean over seeds of its last evaluation), reached at "
         f">= {target - tolerance * abs(target):.1f} (tolerance {tolerance:g} x |target|); SAC reached it after "
         f"{sac_steps:.0f} real steps (median over seeds)." if target is not None else
         "No SAC run: the steps-to-SAC columns are left empty."),
        "",
        "| method | seeds | real steps used | final eval return (mean +- std) | final angle error (rad, median) | "
        "real steps to target, per seed | ratio to SAC, per seed | median ratio | median ratio incl. eval episode |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    numbers: dict = {"target": target, "tolerance": tolerance, "sac_steps": sac_steps, "methods": {}}
    for method, runs in by_method.items():
        finals = [r[-1]["return"] for r in runs.values()]
        errors = [e for e in (r[-1].get("final_angle_error") for r in runs.values()) if e is not None and math.isfinite(e)]
        used = int(max(r[-1].get("steps_used", r[-1]["real_steps"]) for r in runs.values()))
        entry = {"final_return": float(np.mean(finals)), "final_return_std": float(np.std(finals)), "seeds": sorted(runs)}
        reach_txt = ratio_txt = median_txt = strict_txt = ""
        if target is not None and method != "mpc-true":
            reach = [steps_to_reach(runs[s], target, tolerance) for s in sorted(runs)]
            ratios = [sac_steps / k if math.isfinite(k) and k > 0 else (math.inf if k == 0 else 0.0) for k in reach]
            strict = [(sac_steps + eval_steps) / (k + eval_steps) if math.isfinite(k) else 0.0 for k in reach]
            entry.update(steps_to_target=reach, ratios=ratios, median_ratio=float(np.median(ratios)),
                         median_strict_ratio=float(np.median(strict)))
            reach_txt = ", ".join("never" if not math.isfinite(k) else f"{k:.0f}" for k in reach)
            ratio_txt = ", ".join(f"{x:.1f}x" for x in ratios)
            median_txt = f"**{np.median(ratios):.1f}x**"
            strict_txt = f"{np.median(strict):.1f}x"
        numbers["methods"][method] = entry
        lines.append(
            f"| {method} | {len(runs)} | {used} | {np.mean(finals):.1f} +- {np.std(finals):.1f} | {np.median(errors) if errors else math.nan:.3f} | "
            f"{reach_txt} | {ratio_txt} | {median_txt} | {strict_txt} |"
        )
    return "\n".join(lines), numbers


def learning_curves(evaluations: list[dict]) -> list[dict]:
    """Mean and std over seeds of the evaluation return at every ``real_steps`` that all of a
    method's seeds evaluated: rows ``{method, real_steps, mean_return, std_return, seeds}``."""
    out = []
    for method, runs in _by_method(evaluations).items():
        per_seed = [{r["real_steps"]: r["return"] for r in rows} for rows in runs.values()]
        common = sorted(set.intersection(*(set(d) for d in per_seed)))
        for k in common:
            values = [d[k] for d in per_seed]
            out.append({"method": method, "real_steps": k, "mean_return": float(np.mean(values)),
                        "std_return": float(np.std(values)), "seeds": len(values)})
    return out


def plot_learning_curves(evaluations: list[dict], path: str, title: str, target: float | None = None,
                         tolerance: float = 0.05) -> None:
    """Evaluation return vs real env steps (symlog x), mean +- std over seeds, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lyagym.agents.mbrl import _atomic

    curves = learning_curves(evaluations)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    methods = list(dict.fromkeys(c["method"] for c in curves))
    for k, method in enumerate(methods):
        rows = [c for c in curves if c["method"] == method]
        steps = np.array([c["real_steps"] for c in rows], dtype=float)
        mean = np.array([c["mean_return"] for c in rows])
        std = np.array([c["std_return"] for c in rows])
        color = f"C{k}"
        if method == "mpc-true":
            ax.axhline(mean.mean(), color=color, ls=":", lw=1.2, label="mpc-true (no learning)")
            continue
        ax.plot(steps, mean, color=color, lw=1.6, marker="o" if len(steps) < 30 else None, ms=3.5,
                label=f"{method} ({rows[0]['seeds']} seeds)")
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15, lw=0)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"SAC's final return ({target:.0f})")
        ax.axhspan(target - tolerance * abs(target), target, color="k", alpha=0.06, lw=0)
    ax.set_xscale("symlog", linthresh=EPISODE_STEPS)
    ax.set_xlim(left=0)
    ax.set_xlabel("real environment steps learned from")
    ax.set_ylabel("evaluation return (200 steps)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


# ---------------------------------------------------------------------- analysis
#: prediction regions: name -> (angle centre, angle half-width, speed half-width, torques?, steps)
REGIONS = {
    "hanging, no torque (Fig. 5 box), 10 s": (0.0, math.pi / 8, math.pi / 8, False, 200),
    "near upright, no torque, 1 s": (math.pi, 0.3, 0.3, False, 20),
    "hanging, random torques, 5 s": (0.0, math.pi / 8, math.pi / 8, True, 100),
}


def prediction_errors(models: dict, n_links: int, dt: float, max_torque: float, *, n_states: int = 256,
                      seed: int = 0) -> tuple[str, dict]:
    """Where does the stability constraint help or hurt prediction? Mean squared state error
    (wrapped angles) of each model's own ``step`` rollout against the physics, per region
    (``REGIONS``), from the same seeded initial states and torque sequences.

    Returns ``(markdown_table, {region: {model: error}})``.
    """
    import torch

    from lyagym.agents.mbrl import make_pendulum_env, true_physics_model, wrap_state
    from lyagym.agents.reproduce.pendulum_eval import squared_state_error

    env = make_pendulum_env(n_links, dt=dt)
    physics = true_physics_model(env, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    n = n_links
    results: dict = {}
    for region, (centre, half_q, half_v, torques, steps) in REGIONS.items():
        q = centre + half_q * (2 * torch.rand(n_states, n, generator=g, dtype=torch.float64) - 1)
        v = half_v * (2 * torch.rand(n_states, n, generator=g, dtype=torch.float64) - 1)
        x0 = wrap_state(torch.cat([q, v], -1), n)
        u = max_torque * (2 * torch.rand(n_states, steps, n, generator=g, dtype=torch.float64) - 1)
        if not torques:
            u = torch.zeros_like(u)
        with torch.no_grad():
            truth = physics.rollout(x0, u)
            results[region] = {}
            for name, model in models.items():
                pred = model.rollout(x0.to(model.dtype), u.to(model.dtype)).to(torch.float64)
                err = squared_state_error(pred, truth, n)
                results[region][name] = float(torch.nan_to_num(err, nan=float("inf")).mean())
    names = list(models)
    lines = ["| region | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for region, errs in results.items():
        lines.append(f"| {region} | " + " | ".join(f"{errs[m]:.4g}" for m in names) + " |")
    return "\n".join(lines), results


def horizon_errors(models: dict, states: np.ndarray, actions: np.ndarray, episode_lengths: list[int], n_links: int, *,
                   horizons=(1, 10, 30, 60, 100), stride: int = 5, upright_radius: float = 0.5) -> tuple[str, dict]:
    """Open-loop prediction error along recorded real episodes.

    From every ``stride``-th step of each episode, each model rolls out the *recorded*
    torques for ``h`` steps; the error is the squared state error (wrapped angles) against
    the recorded real state after ``h`` steps, averaged over the starts that lie near
    upright (every ``|wrap(q_i - pi)| < upright_radius``) and over the others.

    Args:
        models: name -> controlled world model.
        states: ``(N, 2n)`` physical states of the transitions (``TransitionBuffer.states``).
        actions: ``(N, m)`` applied torques; ``next_states`` are not needed: ``states``
            of one episode are consecutive.
        episode_lengths: transitions per episode, in order (sum = ``N``).

    Returns ``(markdown_table, {(region, h): {model: error}})``.
    """
    import torch

    from lyagym.agents.mbrl import angle_error, wrap_state
    from lyagym.agents.reproduce.pendulum_eval import squared_state_error

    n = n_links
    starts, truths, torques = {h: [] for h in horizons}, {h: [] for h in horizons}, {h: [] for h in horizons}
    offset = 0
    for length in episode_lengths:
        ep_states = np.asarray(states[offset:offset + length], dtype=np.float64)
        ep_actions = np.asarray(actions[offset:offset + length], dtype=np.float64)
        # consecutive wrapped states -> a continuous trajectory (the wrap may jump by 2 pi)
        q = np.unwrap(ep_states[:, :n], axis=0)
        ep_states = np.concatenate([q, ep_states[:, n:]], axis=1)
        for h in horizons:
            for i in range(0, length - h, stride):
                starts[h].append(ep_states[i])
                truths[h].append(ep_states[i + h])
                torques[h].append(ep_actions[i:i + h])
        offset += length
    results: dict = {}
    for h in horizons:
        if not starts[h]:
            continue
        x0 = np.asarray(starts[h])
        near = angle_error(x0, n, math.pi) < upright_radius
        x0_t = wrap_state(torch.as_tensor(x0), n)
        truth = torch.as_tensor(np.asarray(truths[h]))
        u = torch.as_tensor(np.asarray(torques[h]))
        shift = torch.as_tensor(x0)[:, :n] - x0_t[:, :n]  # what wrapping removed, to compare with the truth
        for region, mask in (("near upright", near), ("swinging / hanging", ~near)):
            if not mask.any():
                continue
            results[(region, h)] = {"starts": int(mask.sum())}
            with torch.no_grad():
                for name, model in models.items():
                    pred = model.rollout(x0_t[mask].to(model.dtype), u[mask].to(model.dtype))[:, -1].to(torch.float64)
                    pred = torch.cat([pred[:, :n] + shift[mask], pred[:, n:]], -1)
                    err = squared_state_error(pred, truth[mask], n)
                    results[(region, h)][name] = float(torch.nan_to_num(err, nan=float("inf")).mean())
    names = list(models)
    lines = ["| start region | horizon (steps) | starts | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for (region, h), errs in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(f"| {region} | {h} | {errs['starts']} | " + " | ".join(f"{errs[m]:.3g}" for m in names) + " |")
    return "\n".join(lines), results


def mpc_from_starts(models: dict, args, starts: dict, steps: dict) -> tuple[str, dict]:
    """MPC with each model on the real env from named start states: final / hold angle error
    and return. ``starts``: name -> physical state; ``steps``: name -> episode length."""
    from lyagym.agents.mbrl import angle_error, make_pendulum_env, mpc_episode

    results: dict = {}
    for start, x0 in starts.items():
        env = make_pendulum_env(args.links, dt=args.dt, max_torque=args.max_torque, episode_steps=steps[start])
        results[start] = {}
        for name, model in models.items():
            ep = mpc_episode(env, model, horizon=args.horizon, num_samples=args.samples, iterations=args.iterations,
                             steps=steps[start], seed=0, progress=False, start_state=x0, **_planner_options(args))
            err = angle_error(ep["states"], args.links, math.pi)
            results[start][name] = {"final": float(err[-1]), "hold": float(err[-max(1, len(err) // 5):].max()),
                                    "return": ep["return"]}
    names = list(models)
    lines = ["| start | " + " | ".join(f"{m}: final / hold error (rad), return" for m in names) + " |",
             "|---|" + "---|" * len(names)]
    for start, by_model in results.items():
        cells = [f"{r['final']:.3f} / {r['hold']:.3f}, {r['return']:.1f}" for r in by_model.values()]
        lines.append(f"| {start} | " + " | ".join(cells) + " |")
    return "\n".join(lines), results


def analysis(args, runs: dict) -> str:
    """The stable-vs-simple help/hurt section of ``summary.md`` (module docstring)."""
    from lyagym.agents.mbrl import MBRLConfig, TransitionBuffer, _fit, make_world_model, true_physics_model, make_pendulum_env

    from lyagym.agents.mbrl import _atomic

    seed = args.seeds[0]
    run_dir = _run_dir(args.out, "pets-stable", seed, _run_settings(args, "pets-stable"))
    from lyagym.agents.run_log import committed_file

    if not os.path.exists(committed_file(run_dir, "buffer.npz")):
        return ""
    stored_path = os.path.join(args.out, "analysis.json")
    settings = {**_run_settings(args, "pets-stable"), "seed": seed}
    if not args.rerun and os.path.exists(stored_path):
        with open(stored_path) as f:
            stored = json.load(f)
        if stored.get("settings") == settings:
            print(f"analysis: stored result reused ({stored_path})", flush=True)
            return stored["text"]
    buffer = TransitionBuffer.load(committed_file(run_dir, "buffer.npz"))
    lengths = [int(r["real_steps"] - r["learn_steps"]) for r in runs[("pets-stable", seed)]["episodes"]]
    config = MBRLConfig(seed=seed, fit_epochs=args.fit_epochs, fit_steps=args.fit_steps)
    n = args.links
    models = {}
    for kind in ("stable", "simple"):
        model = make_world_model(kind, 2 * n, n, args.dt, seed=seed, device="cpu", **_model_priors(args))
        print(f"analysis: fitting a fresh {kind} model to the {len(buffer)} real transitions of pets-stable seed {seed}", flush=True)
        _fit(model, buffer, config, progress=not args.no_progress)
        models[kind] = model.eval().requires_grad_(False)
    horizon_table, horizon = horizon_errors(models, buffer.states, buffer.actions, lengths, n)
    region_table, regions = prediction_errors(models, n, args.dt, args.max_torque)
    starts = {"hanging (the task), 200 steps": np.zeros(2 * n),
              "upright + 0.3 rad, 60 steps": np.concatenate([np.full(n, math.pi + 0.3), np.zeros(n)]),
              "upright - 0.3 rad, 60 steps": np.concatenate([np.full(n, math.pi - 0.3), np.zeros(n)])}
    steps = {k: (EPISODE_STEPS if k.startswith("hanging") else 60) for k in starts}
    env = make_pendulum_env(n, dt=args.dt, max_torque=args.max_torque)
    mpc_models = {**models, "true physics": true_physics_model(env)}
    print("analysis: MPC from hanging and near upright with each model", flush=True)
    mpc_table, mpc = mpc_from_starts(mpc_models, args, starts, steps)
    text = (
        f"\n## Where the stability constraint helps and where it hurts (n = {n})\n\n"
        f"A fresh stable and a fresh simple model, fitted with the same settings to the same {len(buffer)} real "
        f"transitions (the final PETS buffer of pets-stable, seed {seed}).\n\n"
        f"**(a) Open-loop prediction error along the recorded real episodes** (mean squared state error, wrapped "
        f"angles, recorded torques; starts every 5 steps; near upright: every angle within 0.5 rad of upright):\n\n"
        f"{horizon_table}\n\n"
        f"**(b) Fixed regions** (256 seeded starts; mean squared state error against the physics):\n\n{region_table}\n\n"
        f"**(c) MPC on the real env** (MPPI K = {args.samples}, H = {args.horizon}, {args.iterations} iterations, "
        f"the study's planner settings):\n\n"
        f"{mpc_table}\n"
    )
    text += _verdict(horizon, regions, mpc)
    _atomic(stored_path, lambda f: f.write(json.dumps({"settings": settings, "text": text})), mode="w")
    return text


def _verdict(horizon: dict, regions: dict, mpc: dict) -> str:
    """A few sentences that read the analysis numbers (written from them, not hard-coded)."""
    lines = ["", "Reading:"]
    for region in ("swinging / hanging", "near upright"):
        keys = sorted(h for (r, h) in horizon if r == region)
        if keys:
            long = keys[-1]
            s, m = horizon[(region, long)]["stable"], horizon[(region, long)]["simple"]
            lines.append(f"- starts {region}, {long} steps ahead: stable {s:.3g} vs simple {m:.3g} "
                         f"({'stable better' if s < m else 'simple better'}, x{max(s, m) / max(min(s, m), 1e-12):.1f}).")
    for region, errs in regions.items():
        s, m = errs["stable"], errs["simple"]
        lines.append(f"- {region}: stable {s:.3g} vs simple {m:.3g} ({'stable better' if s < m else 'simple better'}).")
    for start, by in mpc.items():
        verdicts = ", ".join(f"{name} {'holds' if r['hold'] < 0.1 else 'fails'} ({r['hold']:.2f} rad)" for name, r in by.items())
        lines.append(f"- MPC from {start}: {verdicts}.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- runs


def _noise_std(args) -> float | None:
    return args.noise_std if args.noise_std is not None and args.noise_std > 0 else None


def _planner_options(args) -> dict:
    """MPPI options beyond K, H and iterations, shared by mpc-true, PETS and the analysis."""
    return {"temperature": args.temperature, "noise_std": _noise_std(args), "warmup_iterations": args.warmup_iterations}


def _planner_settings(args) -> dict:
    settings = {"samples": args.samples, "horizon": args.horizon, "iterations": args.iterations}
    # only options that differ from the original study's are part of the key, so older stored runs stay valid
    for key, value, old in (("warmup_iterations", args.warmup_iterations, 0), ("noise_std", _noise_std(args), None),
                            ("temperature", args.temperature, 0.5)):
        if value != old:
            settings[key] = value
    return settings


def _run_settings(args, method: str) -> dict:
    common = {"links": args.links, "dt": args.dt, "max_torque": args.max_torque}
    if method == "mpc-true":
        return {**common, **_planner_settings(args)}
    if method == "sac":
        return {**common, "steps": args.sac_steps, "eval_every": args.eval_every}
    if method == "ppo":
        return {**common, "steps": args.ppo_steps or args.sac_steps, "eval_every": args.eval_every}
    settings = {**common, "episodes": args.episodes, "random_steps": args.random_steps, "fit_epochs": args.fit_epochs,
                "fit_steps": args.fit_steps}
    if _model_priors(args):  # part of the key only when on (older stored runs: no priors)
        settings["model_priors"] = True
    if method.startswith("pets"):
        # only a non-default of the original study is part of the key (older stored runs: no wrapping)
        return {**settings, **_planner_settings(args), **({"wrap_angles": True} if args.wrap_angles else {})}
    return {**settings, "imagined_steps": args.imagined_steps}


def _model_priors(args) -> dict:
    from lyagym.agents.mbrl import model_priors

    return model_priors(args.links, getattr(args, "model_priors", True))


def run_method(method: str, seed: int, args, run_dir: str) -> dict:
    """One (method, seed) run: ``{"evaluations": [...], "episodes": [...]}``."""
    from lyagym.agents.costs import PendulumCost
    from lyagym.agents.mbrl import (MBRLConfig, angle_error, make_pendulum_env, make_world_model, mpc_episode, run_dyna,
                                    run_pets, true_physics_model)
    from lyagym.agents.sb3_baselines import baseline_cell

    progress = not args.no_progress
    env = make_pendulum_env(args.links, dt=args.dt, max_torque=args.max_torque, episode_steps=EPISODE_STEPS)
    base = env.unwrapped
    if method == "mpc-true":
        model = true_physics_model(env, device=args.device)
        ep = mpc_episode(env, model, horizon=args.horizon, num_samples=args.samples, iterations=args.iterations,
                         steps=EPISODE_STEPS, seed=1_000_003 + seed, progress=progress, **_planner_options(args))
        row = {"method": method, "seed": seed, "real_steps": 0, "return": ep["return"],
               "final_angle_error": float(angle_error(ep["states"][-1], args.links, math.pi))}
        return {"evaluations": [row], "episodes": []}
    if method in ("sac", "ppo"):
        steps = args.sac_steps if method == "sac" else (args.ppo_steps or args.sac_steps)
        # a killed SAC cell goes on from its last episode
        evaluations, episodes = baseline_cell(method, env, steps, run_dir, seed=seed, device=args.device, progress=progress,
                                              eval_every=args.eval_every)
        for r in evaluations:
            r["steps_used"] = steps
        return {"evaluations": evaluations, "episodes": episodes}
    kind = method.split("-")[1]
    config = MBRLConfig(episodes=args.episodes - 1, random_episodes=1, random_episode_steps=args.random_steps,
                        episode_steps=EPISODE_STEPS, seed=seed, fit_epochs=args.fit_epochs, fit_steps=args.fit_steps,
                        horizon=args.horizon, num_samples=args.samples, iterations=args.iterations,
                        warmup_iterations=args.warmup_iterations, noise_std=_noise_std(args), temperature=args.temperature,
                        wrap_angles=args.wrap_angles, imagined_steps=args.imagined_steps)
    model = make_world_model(kind, base.state_dim, base.action_dim, base.dt, seed=seed, device=args.device, **_model_priors(args))
    if method.startswith("pets"):
        cost = PendulumCost(args.links, "swingup", action_dim=base.action_dim, **base.weights)
        episodes = run_pets(env, model, cost, config, out_dir=run_dir, method=method, resume=not args.rerun, overwrite=args.rerun,
                            progress=progress)
        evaluations = [{"method": method, "seed": seed, "real_steps": r["learn_steps"], "return": r["return"],
                        "final_angle_error": r.get("final_angle_error"), "hold_angle_error": r.get("hold_angle_error"),
                        "steps_used": episodes[-1]["real_steps"]}
                       for r in episodes if r["policy"] == "mpc"]
    else:
        episodes = run_dyna(env, model, config, out_dir=run_dir, method=method, progress=progress, device=args.device)
        evaluations = [{"method": method, "seed": seed, "real_steps": r["learn_steps"], "return": r["eval_return"],
                        "final_angle_error": r.get("eval_final_angle_error"), "hold_angle_error": r.get("eval_hold_angle_error"),
                        "steps_used": episodes[-1]["real_steps"]}
                       for r in episodes if "eval_return" in r]
    return {"evaluations": evaluations, "episodes": episodes}


def _stored_settings(run_dir: str):
    """Settings of the run in ``run_dir`` (finished: ``run.json``; started: ``settings.json``);
    ``None`` for a folder with files but neither (unknown settings); ``"empty"`` for none."""
    for name in ("run.json", "settings.json"):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            return data.get("settings") if name == "run.json" else data
    return None if os.path.isdir(run_dir) and os.listdir(run_dir) else "empty"


def _run_dir(out: str, method: str, seed: int, settings: dict) -> str:
    """Where the (method, seed) run with ``settings`` lives: ``OUT/<method>/seed<s>``, unless
    that folder holds a run with other settings; then ``OUT/<method>/seed<s>-<settings hash>``,
    so a run with other settings neither overwrites that run nor resumes from its checkpoint."""
    import hashlib

    plain = os.path.join(out, method, f"seed{seed}")
    stored = _stored_settings(plain)
    if stored == "empty" or stored == settings:
        return plain
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"{plain}-{digest}"


def _load_or_run(method: str, seed: int, args) -> dict:
    from lyagym.agents.mbrl import _atomic

    settings = _run_settings(args, method)
    run_dir = _run_dir(args.out, method, seed, settings)
    path = os.path.join(run_dir, "run.json")
    if not args.rerun and os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored.get("settings") == settings:
            print(f"== {method}, seed {seed}: stored run reused ({path})", flush=True)
            return stored
        print(f"== {method}, seed {seed}: stored run has other settings {stored.get('settings')}", flush=True)
    if getattr(args, "stored_only", False):
        print(f"== {method}, seed {seed}: no stored run with settings {settings}: skipped (--stored-only)", flush=True)
        return None
    t0 = time.perf_counter()
    print(f"== {method}, seed {seed} ({run_dir})", flush=True)
    _atomic(os.path.join(run_dir, "settings.json"), lambda f: f.write(json.dumps(settings)), mode="w")
    result = run_method(method, seed, args, run_dir)
    result["settings"] = settings
    result["seconds"] = round(time.perf_counter() - t0, 1)
    os.makedirs(run_dir, exist_ok=True)
    _atomic(path, lambda f: f.write(json.dumps(result, default=float)), mode="w")
    return result


def run(args: argparse.Namespace) -> int:
    from lyagym.agents.mbrl import _atomic, default_horizon, write_csv

    command = "lyagym reproduce mbrl-swingup " + _command_line(args)
    if args.horizon is None:
        args.horizon = default_horizon(args.links)
    if args.quick:
        args.seeds = args.seeds[:2]
        args.episodes = min(args.episodes, 3)
        args.sac_steps = min(args.sac_steps, 2000)
        args.ppo_steps = min(args.ppo_steps or args.sac_steps, 2000)
        args.samples = min(args.samples, 100)
        args.horizon = min(args.horizon, 20)
        args.warmup_iterations = min(args.warmup_iterations, 10)
        args.fit_steps = min(args.fit_steps, 300)
        args.imagined_steps = min(args.imagined_steps, 100)
    if not 0 <= args.tolerance < 1:
        raise SystemExit(f"--tolerance must be in [0, 1), got {args.tolerance}")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    runs: dict = {}
    for method in args.methods:
        for seed in args.seeds:
            result = _load_or_run(method, seed, args)
            if result is not None:
                runs[(method, seed)] = result
    if not runs:
        print("no runs to summarise")
        return 1
    evaluations = [r for run_ in runs.values() for r in run_["evaluations"]]
    episodes = [r for run_ in runs.values() for r in run_["episodes"]]
    write_csv(os.path.join(args.out, "evaluations.csv"), evaluations)
    write_csv(os.path.join(args.out, "episodes.csv"), episodes)
    write_csv(os.path.join(args.out, "learning_curves.csv"), learning_curves(evaluations))
    table, numbers = summarise(evaluations, args.tolerance)
    plot_learning_curves(evaluations, os.path.join(args.out, "learning_curves.png"),
                         f"{args.links}-link swing-up, mean +- std over seeds {args.seeds}", numbers["target"], args.tolerance)
    budget = (f"Budgets: model-based {args.episodes} episodes (first: {args.random_steps} random-torque steps, then "
              f"{EPISODE_STEPS}-step episodes), MPPI K = {args.samples}, H = {args.horizon}, {args.iterations} iterations "
              f"({args.warmup_iterations or args.iterations} for an episode's first plan), noise std "
              f"{_noise_std(args) or 'a quarter of the torque range'}, temperature {args.temperature:g}, "
              f">= {args.fit_steps} Adam steps per fit; Dyna {args.imagined_steps} x 128 imagined steps per episode; "
              f"SAC {args.sac_steps} and PPO {args.ppo_steps or args.sac_steps} real steps, evaluated every {args.eval_every}.")
    lines = ["| method | " + " | ".join(f"tolerance {t:g}" for t in TOLERANCES) + " |", "|---|" + "---|" * len(TOLERANCES)]
    by_tolerance = {t: summarise(evaluations, t)[1] for t in TOLERANCES}
    for method in numbers["methods"]:
        if method in ("mpc-true",) or numbers["target"] is None:
            continue
        cells = []
        for t in TOLERANCES:
            entry = by_tolerance[t]["methods"][method]
            cells.append(f"{entry['median_ratio']:.1f}x (" + ", ".join("never" if not math.isfinite(k) else f"{k:.0f}"
                                                               for k in entry["steps_to_target"]) + ")")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    tolerance_table = ("Median ratio to SAC (real steps to the target per seed) at other tolerances; SAC's own steps: "
                       + ", ".join(f"{by_tolerance[t]['sac_steps']:.0f} at {t:g}" for t in TOLERANCES
                                   if by_tolerance[t]["sac_steps"] is not None) + ".\n\n" + "\n".join(lines)
                       if numbers["target"] is not None else "")
    seconds = ", ".join(f"{m} s{s} {r.get('seconds', 0):.0f} s" for (m, s), r in runs.items())
    extra = ""
    if args.analysis and ("pets-stable", args.seeds[0]) in runs:
        extra = analysis(args, runs)
        print(extra)
    text = (f"# MBRL swing-up, {args.links} link(s)\n\nCommand: `{command}`\n\n{budget}\n\n{table}\n\n{tolerance_table}\n\n"
            f"![learning curves](learning_curves.png)\n\nRun times (wall, shared CPU): {seconds}.\n{extra}")
    _atomic(os.path.join(args.out, "summary.md"), lambda f: f.write(text), mode="w")
    print(table)
    print(tolerance_table)
    print(f"wrote {args.out}/evaluations.csv, episodes.csv, learning_curves.csv, learning_curves.png, summary.md "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


def _command_line(args) -> str:
    parts = [f"--links {args.links}", "--seeds " + " ".join(map(str, args.seeds)), "--methods " + " ".join(args.methods)]
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    for action in defaults._actions:
        if action.dest in ("links", "seeds", "methods", "help", "no_progress", "rerun", "stored_only", "quick", "out"):
            continue
        value = getattr(args, action.dest, None)
        if value != action.default:
            flag = action.option_strings[0]
            parts.append(f"{flag} {value}" if not isinstance(value, bool) else (flag if value else f"--no-{flag[2:]}"))
    if args.quick:
        parts.append("--quick")
    return " ".join(parts + [f"--out {args.out}"])
