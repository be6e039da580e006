"""``lyagym reproduce mbrl-swingup``: MPC and model-based RL vs SAC and PPO on pendulum swing-up.

Methods (each for several seeds, every episode 200 steps of 0.05 s from hanging down):

- ``mpc-true``: MPPI on the true physics (the planner's ceiling; no learning);
- ``pets-stable`` / ``pets-simple``: the PETS-style loop (``lyagym.agents.mbrl.run_pets``)
  with the stable (ISS, Manek & Kolter projection) or the plain MLP world model;
- ``dyna-stable`` / ``dyna-simple``: SB3 SAC trained on imagined rollouts branched from
  real states (``run_dyna``);
- ``sac`` / ``ppo``: Stable-Baselines3 on the real env.

Writes ``episodes.csv`` (all rows), ``learning_curves.png`` (return vs real env steps, mean
over seeds), and ``summary.md``: for each method its final return and the real steps it
needed to reach SAC's final return (mean of SAC's last 5 episodes), with the ratio to SAC's.

Example::

    lyagym reproduce mbrl-swingup --links 1 --seeds 0 1 2 --out runs/mbrl_n1
    lyagym reproduce mbrl-swingup --quick          # minutes, smaller budgets
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections import defaultdict

import numpy as np

__all__ = ["add_arguments", "run", "METHODS", "steps_to_reach", "summarise"]

METHODS = ("mpc-true", "pets-stable", "pets-simple", "dyna-stable", "dyna-simple", "sac", "ppo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", type=int, default=1, help="pendulum links, all actuated (default 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["mpc-true", "pets-stable", "pets-simple", "sac"], choices=METHODS)
    parser.add_argument("--episodes", type=int, default=10, help="real episodes of the model-based methods (incl. 1 random)")
    parser.add_argument("--sac-steps", type=int, default=20_000, help="real env steps of SAC/PPO")
    parser.add_argument("--samples", type=int, default=300, help="MPPI samples K")
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--fit-epochs", type=int, default=100)
    parser.add_argument("--imagined-steps", type=int, default=2000, help="SAC steps per real episode in dyna")
    parser.add_argument("--dt", type=float, default=0.05)
    parser.add_argument("--max-torque", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small budgets for a smoke run (minutes)")
    parser.add_argument("--out", default=os.path.join("lyagym-output", "mbrl-swingup"))
    parser.add_argument("--no-progress", action="store_true")


def steps_to_reach(rows: list[dict], target: float, window: int = 1) -> float:
    """Real steps at the first episode whose return (moving average over ``window``
    episodes) reaches ``target``; ``inf`` if never."""
    returns = np.array([r["return"] for r in rows], dtype=float)
    steps = np.array([r["real_steps"] for r in rows], dtype=float)
    if len(returns) == 0:
        return math.inf
    smoothed = np.convolve(returns, np.ones(window) / window, mode="valid") if len(returns) >= window else returns[-1:]
    hit = np.flatnonzero(smoothed >= target - 1e-9 * abs(target))  # the defining window itself counts
    return float(steps[hit[0] + min(window, len(returns)) - 1]) if len(hit) else math.inf


def summarise(rows: list[dict]) -> tuple[str, dict]:
    """Markdown table and numbers: final return per method and steps to SAC's final return."""
    by_method: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_method[r["method"]][int(r["seed"])].append(r)
    target = None
    if "sac" in by_method:
        finals = [np.mean([r["return"] for r in runs[-5:]]) for runs in by_method["sac"].values()]
        target = float(np.mean(finals))
    sac_steps = None
    if target is not None:
        sac_steps = float(np.median([steps_to_reach(runs, target, window=5) for runs in by_method["sac"].values()]))
    lines = [
        f"SAC's final return (mean of its last 5 episodes over seeds): {target:.1f}" if target is not None else
        "no SAC run: steps-to-SAC columns left empty",
        "",
        "| method | seeds | real steps used | final return (mean +- std over seeds) | final angle error (rad, median) | "
        "real steps to SAC's final return (median) | fewer steps than SAC |",
        "|---|---|---|---|---|---|---|",
    ]
    numbers = {"sac_final_return": target, "sac_steps": sac_steps, "methods": {}}
    for method, runs in by_method.items():
        finals = [runs_[-1]["return"] for runs_ in runs.values()]
        errors = [runs_[-1].get("final_angle_error", float("nan")) for runs_ in runs.values()]
        used = int(np.median([runs_[-1]["real_steps"] for runs_ in runs.values()]))
        reach = float(np.median([steps_to_reach(r, target, window=5 if method == "sac" else 1) for r in runs.values()])) \
            if target is not None else math.nan
        ratio = sac_steps / reach if target is not None and math.isfinite(reach) and reach > 0 else math.nan
        numbers["methods"][method] = {"final_return": float(np.mean(finals)), "steps_to_sac": reach, "ratio": ratio}
        lines.append(
            f"| {method} | {len(runs)} | {used} | {np.mean(finals):.1f} +- {np.std(finals):.1f} | {np.nanmedian(errors):.3f} | "
            f"{'never' if not math.isfinite(reach) else int(reach)} | {'' if math.isnan(ratio) else f'{ratio:.1f}x'} |"
        )
    return "\n".join(lines), numbers


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


def plot_learning_curves(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lyagym.agents.mbrl import _atomic

    by_method: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_method[r["method"]][int(r["seed"])].append(r)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for k, (method, runs) in enumerate(by_method.items()):
        color = f"C{k}"
        length = min(len(r) for r in runs.values())
        returns = np.array([[e["return"] for e in r[:length]] for r in runs.values()])
        steps = np.array([e["real_steps"] for e in next(iter(runs.values()))[:length]])
        mean, std = returns.mean(0), returns.std(0)
        if method == "mpc-true":
            ax.axhline(mean.mean(), color=color, ls="--", lw=1, label=f"{method} (no learning)")
            continue
        ax.plot(steps, mean, color=color, lw=1.5, marker="o" if length < 30 else None, ms=3, label=method)
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("real environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from lyagym.agents.costs import PendulumCost
    from lyagym.agents.mbrl import (
        MBRLConfig,
        make_pendulum_env,
        make_world_model,
        mpc_episode,
        angle_error,
        run_dyna,
        run_pets,
        write_csv,
    )
    from lyagym.agents.sb3_baselines import train_baseline

    if args.quick:
        args.seeds = args.seeds[:2]
        args.episodes = min(args.episodes, 4)
        args.sac_steps = min(args.sac_steps, 4000)
        args.samples = min(args.samples, 150)
        args.fit_epochs = min(args.fit_epochs, 40)
        args.imagined_steps = min(args.imagined_steps, 500)
    os.makedirs(args.out, exist_ok=True)
    progress = not args.no_progress
    rows: list[dict] = []
    t0 = time.perf_counter()
    for method in args.methods:
        for seed in args.seeds:
            env = make_pendulum_env(args.links, dt=args.dt, max_torque=args.max_torque, episode_steps=200)
            base = env.unwrapped
            run_dir = os.path.join(args.out, method, f"seed{seed}")
            print(f"== {method}, seed {seed} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
            if method == "mpc-true":
                from lyagym.agents.mbrl import true_physics_model

                ep = mpc_episode(env, true_physics_model(env, device=args.device), horizon=args.horizon,
                                 num_samples=args.samples, iterations=2, steps=200, seed=seed, progress=progress)
                rows.append({"method": method, "seed": seed, "episode": 0, "real_steps": 0, "return": ep["return"],
                             "final_angle_error": float(angle_error(ep["states"][-1], args.links, math.pi))})
                continue
            if method in ("sac", "ppo"):
                rows += train_baseline(method, env, args.sac_steps, seed=seed, out_dir=run_dir, device=args.device,
                                       progress=progress)
                continue
            kind = method.split("-")[1]
            config = MBRLConfig(episodes=args.episodes - 1, random_episodes=1, episode_steps=200, seed=seed,
                                fit_epochs=args.fit_epochs, horizon=args.horizon, num_samples=args.samples,
                                imagined_steps=args.imagined_steps)
            model = make_world_model(kind, base.state_dim, base.action_dim, base.dt, seed=seed, device=args.device)
            if method.startswith("pets"):
                cost = PendulumCost(args.links, "swingup", action_dim=base.action_dim, **base.weights)
                rows += run_pets(env, model, cost, config, out_dir=run_dir, method=method, resume=True, progress=progress)
            else:
                rows += run_dyna(env, model, config, out_dir=run_dir, method=method, progress=progress, device=args.device)
            write_csv(os.path.join(args.out, "episodes.csv"), rows)
    write_csv(os.path.join(args.out, "episodes.csv"), rows)
    table, _ = summarise(rows)
    prediction = ""
    trained = {}
    for kind in ("stable", "simple"):
        weights = os.path.join(args.out, f"pets-{kind}", f"seed{args.seeds[0]}", "model_weights.pt")
        if os.path.exists(weights):
            import torch

            model = make_world_model(kind, 2 * args.links, args.links, args.dt, device="cpu")
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            trained[f"pets-{kind}"] = model.eval().requires_grad_(False)
    if trained:
        pred_table, _ = prediction_errors(trained, args.links, args.dt, args.max_torque)
        prediction = (f"\n\n## Prediction error of the final PETS models (seed {args.seeds[0]}), mean squared state error\n\n"
                      f"{pred_table}\n")
        print(pred_table)
    plot_learning_curves(rows, os.path.join(args.out, "learning_curves.png"),
                         f"{args.links}-link swing-up: model-based vs model-free (seeds {args.seeds})")
    text = (f"# MBRL swing-up, {args.links} link(s)\n\nCommand: `lyagym reproduce mbrl-swingup "
            f"--links {args.links} --seeds {' '.join(map(str, args.seeds))} --methods {' '.join(args.methods)}"
            f"{' --quick' if args.quick else ''}`\n\n{table}\n\n![learning curves](learning_curves.png)\n{prediction}")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    print(table)
    print(f"wrote {args.out}/episodes.csv, learning_curves.png, summary.md ({time.perf_counter() - t0:.0f} s)")
    return 0
