"""``lyagym plan``: run an MPC planner on the real pendulum env with a world model.

The world model is the true physics (``--model true``, ``PendulumDynamics`` at the env's
step) or a checkpoint written by ``lyagym train`` / ``model.save`` (``--model PATH``).

Example::

    lyagym plan --links 2 --planner mppi --steps 200 --out runs/plan
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from .mbrl import angle_error, make_pendulum_env, mpc_episode, true_physics_model

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", type=int, default=1, help="number of pendulum links (default 1)")
    parser.add_argument("--task", default="swingup", choices=["swingup", "regulate"])
    parser.add_argument("--model", default="true", help="'true' (physics) or a saved world-model checkpoint")
    parser.add_argument("--planner", default="mppi", help="cem, mppi or gradient (default mppi)")
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--samples", type=int, default=500, help="K sampled sequences per plan")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="env steps to run")
    parser.add_argument("--dt", type=float, default=0.05, help="env step (s)")
    parser.add_argument("--max-torque", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="folder for a trajectory plot and GIF (optional)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    env = make_pendulum_env(args.links, task=args.task, dt=args.dt, max_torque=args.max_torque, episode_steps=args.steps,
                            render_mode="rgb_array" if args.out else None)
    if args.model == "true":
        model = true_physics_model(env, device=args.device)
    else:
        from lyagym.learned_models import load_model

        if not os.path.exists(args.model):
            print(f"lyagym plan: no checkpoint at {args.model!r} (use --model true for the physics)")
            return 2
        model = load_model(args.model, map_location=args.device)
        if abs(model.dt - env.unwrapped.dt) > 1e-12:
            print(f"lyagym plan: the checkpoint's dt={model.dt} differs from --dt {args.dt}; pass --dt {model.dt}")
            return 2
    ep = mpc_episode(env, model, planner=args.planner, horizon=args.horizon, num_samples=args.samples,
                     iterations=args.iterations, steps=args.steps, seed=args.seed, frames=bool(args.out),
                     progress=not args.no_progress)
    target = np.pi if args.task == "swingup" else 0.0
    err = float(angle_error(ep["states"][-1], args.links, target))
    print(f"return {ep['return']:.1f} over {len(ep['actions'])} steps; final angle error {err:.3f} rad; "
          f"{ep['plans_per_s']:.1f} plans/s")
    if args.out:
        from lyagym.envs.video_data import write_video

        os.makedirs(args.out, exist_ok=True)
        plot_angles(os.path.join(args.out, "mpc_trajectory.png"), ep["states"], env.unwrapped.dt, args.links, target,
                    title=f"MPC ({args.planner}) with model={os.path.basename(args.model)}")
        write_video(np.stack(ep["frames"][::2]), os.path.join(args.out, "mpc.gif"), fps=0.5 / env.unwrapped.dt)
        print(f"wrote {args.out}/mpc_trajectory.png and {args.out}/mpc.gif")
    return 0


def plot_angles(path: str, states: np.ndarray, dt: float, n_links: int, target: float | None, *, title: str = "",
                labels: list[str] | None = None, extra: list[np.ndarray] | None = None) -> None:
    """Plot joint angles (wrapped to [-pi, pi)) of one or more ``(T+1, 2n)`` trajectories against time; atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lyagym.envs.rewards import wrap_angle

    from .mbrl import _atomic

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k, traj in enumerate([states] + list(extra or [])):
        t = np.arange(len(traj)) * dt
        for i in range(n_links):
            name = (labels[k] + " " if labels else "") + f"q{i + 1}"
            ax.plot(t, wrap_angle(traj[:, i] - (target or 0.0)) + (target or 0.0) if target else wrap_angle(traj[:, i]),
                    label=name, lw=1.2, ls="-" if k == 0 else "--")
    if target is not None:
        ax.axhline(target, color="k", lw=0.6, ls=":")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("angle (rad)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
