"""``lyagym plan``: run an MPC planner on a real env with a world model.

The world model is the true physics of the pendulum (``--model true``, ``PendulumDynamics``
at the env's step) or a checkpoint written by ``lyagym train`` / ``model.save``
(``--model PATH``, any env with an adapter: ``--env Pendulum-v1``).

Example::

    lyagym plan --links 2 --planner mppi --steps 200 --out runs/plan
    lyagym plan --env Pendulum-v1 --model runs/pendulum-v1/model.pt
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import sys

from .cli_mbrl import PENDULUM, add_env_arguments, make_env

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_types import folder, integer

    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add_env_arguments(parser)
    parser.add_argument("--model", default="true",
                        help="'true' (physics) or a saved world-model checkpoint (save_model, lyagym train, or the model.pt an mbrl run prints)")
    parser.add_argument("--planner", default="mppi", choices=PLANNER_NAMES, help="the MPC planner")
    parser.add_argument("--horizon", type=integer(1), default=30)
    parser.add_argument("--samples", type=integer(1), default=500, help="K sampled sequences per plan")
    parser.add_argument("--iterations", type=integer(1), default=2)
    parser.add_argument("--steps", type=integer(1), default=200, help="env steps to run")
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=folder, default=None, help="folder for a trajectory plot and GIF (optional)")
    parser.add_argument("--overwrite", action="store_true", help="replace the plot and GIF of an earlier run in --out")
    parser.add_argument("--no-progress", action="store_true")


#: What ``--planner`` accepts (``lyagym.agents.planners.PLANNERS``, named here so that parsing
#: the command line imports no torch).
PLANNER_NAMES = ("mppi", "cem", "icem", "gradient")


def _fail(message: str) -> int:
    print(f"lyagym plan: {message}", file=sys.stderr)
    return 2


def _check_out(args: argparse.Namespace) -> str | None:
    """The one-line reason ``--out`` cannot take this run's files, or ``None``."""
    if args.out is None:
        return None
    names = ("mpc.gif",) if args.env != PENDULUM else ("mpc_trajectory.png", "mpc.gif")
    existing = [os.path.join(args.out, name) for name in names if os.path.exists(os.path.join(args.out, name))]
    if existing and not args.overwrite:
        return f"--out: {' and '.join(existing)} {'exists' if len(existing) == 1 else 'exist'}; pass --overwrite to replace it or choose another --out"
    return None


def _check_checkpoint(model, adapter, args: argparse.Namespace) -> str | None:
    """The one-line reason the loaded checkpoint ``model`` cannot drive ``adapter``'s env, or ``None``."""
    trained_on = (getattr(model, "checkpoint_metadata", None) or {}).get("env")
    if trained_on and trained_on != adapter.env_id:  # same shapes and step, other physics
        return f"--model {args.model} learned --env {trained_on}, not {adapter.env_id}; pass --env {trained_on}"
    if abs(model.dt - adapter.dt) > 1e-12:
        return (f"the checkpoint's dt={model.dt} differs from the env's step {adapter.dt}"
                + (f"; pass --dt {model.dt}" if args.env == PENDULUM else ""))
    if (model.state_dim, model.action_dim) == (adapter.state_dim, adapter.action_dim):
        return None
    if not model.action_dim:
        return (f"--model {args.model} is an autonomous model (action_dim=0: no input, e.g. trained on (x, xdot) pairs): "
                "there is nothing to plan with it; train a controlled one (lyagym train --data env, or lyagym mbrl)")
    if args.env == PENDULUM and model.state_dim % 2 == 0 and model.state_dim != adapter.state_dim:
        links = model.state_dim // 2
        return (f"--model {args.model} is for {links} link{'s' if links != 1 else ''} (state_dim={model.state_dim}, "
                f"action_dim={model.action_dim}) but --links {adapter.state_dim // 2} makes state_dim={adapter.state_dim}, "
                f"action_dim={adapter.action_dim}; pass --links {links}")
    return (f"the checkpoint is for state_dim={model.state_dim}, action_dim={model.action_dim}; "
            f"--env {args.env} has {adapter.state_dim} and {adapter.action_dim}")


def _cannot_render(args: argparse.Namespace, error: Exception) -> str:
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return (f"--out: --env {args.env} cannot render here ({reason}); on a machine without a display set "
            "MUJOCO_GL=egl or MUJOCO_GL=osmesa, or leave out --out")


def _render_check(env, args: argparse.Namespace) -> str | None:
    """The one-line reason ``env`` cannot draw the GIF that ``--out`` asks for, or ``None``: one
    frame is rendered before any planning, so a machine without a display or OpenGL fails fast."""
    try:
        env.reset(seed=args.seed)
        frame = env.render()
    except Exception as e:  # renderers raise their own types (mujoco.FatalError, OpenGL's, pygame.error)
        return _cannot_render(args, e)
    if frame is None:
        return f"--out: --env {args.env} rendered no frame; leave out --out"
    return None


def run(args: argparse.Namespace) -> int:
    message = _check_out(args)
    if message:
        return _fail(message)
    if args.model != "true" and not os.path.isfile(args.model):
        return _fail(f"--model: no checkpoint file at {args.model!r} (use --model true for the physics)")

    from .adapters import make_adapter, true_physics_model
    from .mpc import mpc_episode

    if args.out and sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # MuJoCo's default OpenGL back-end (GLFW) needs a display; EGL renders off-screen
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        env = make_env(args, args.steps, render_mode="rgb_array" if args.out else None)
    except ValueError as e:
        return _fail(str(e))
    except Exception as e:  # an OpenGL back-end that cannot load (MUJOCO_GL naming a missing one)
        if not args.out:
            raise
        return _fail(_cannot_render(args, e))
    if args.out:
        message = _render_check(env, args)
        if message:
            return _fail(message)
    adapter = make_adapter(env)
    if args.model == "true":
        if args.env != PENDULUM:
            return _fail(f"--model: --env {args.env} needs a saved world model (e.g. the model.pt a `lyagym mbrl --env {args.env}` "
                         "run prints); --model true, the default, is our pendulum's own physics")
        model = true_physics_model(env, device=args.device)
    else:
        from lyagym.learned_models import load_model

        try:
            model = load_model(args.model, map_location=args.device)
        except (ValueError, OSError) as e:
            return _fail(f"--model {args.model}: {str(e).splitlines()[0]}")  # torch's own text runs to many lines
        message = _check_checkpoint(model, adapter, args)
        if message:
            return _fail(message)
    ep = mpc_episode(env, model, planner=args.planner, horizon=args.horizon, num_samples=args.samples,
                     iterations=args.iterations, steps=args.steps, seed=args.seed, frames=bool(args.out),
                     progress=not args.no_progress, adapter=adapter)
    metrics = "".join(f"; {k.replace('_', ' ')} {v:.3f}" for k, v in adapter.metrics(ep["states"]).items() if k != "hold_angle_error")
    print(f"return {ep['return']:.1f} over {len(ep['actions'])} steps{metrics}; {ep['plans_per_s']:.1f} plans/s")
    if args.out and args.env != PENDULUM:
        os.makedirs(args.out, exist_ok=True)
        from lyagym.envs.video_data import write_video

        write_video(np.stack(ep["frames"][::2]), os.path.join(args.out, "mpc.gif"), fps=0.5 / adapter.dt)
        print(f"wrote {args.out}/mpc.gif")
    elif args.out:
        links = adapter.n_links
        target = adapter.target
        from lyagym.envs.video_data import write_video

        os.makedirs(args.out, exist_ok=True)
        plot_angles(os.path.join(args.out, "mpc_trajectory.png"), ep["states"], adapter.dt, links, target,
                    title=f"MPC ({args.planner}) with model={os.path.basename(args.model)}", actions=np.asarray(ep["actions"]))
        write_video(np.stack(ep["frames"][::2]), os.path.join(args.out, "mpc.gif"), fps=0.5 / env.unwrapped.dt)
        print(f"wrote {args.out}/mpc_trajectory.png and {args.out}/mpc.gif")
    return 0


def wrapped_for_plot(t: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(t, wrap_angle(angle))`` in ``[-pi, pi)`` with a NaN point inserted at every wrap, so a
    line plot breaks there instead of drawing a vertical stroke across the axes."""
    from lyagym.envs.rewards import wrap_angle

    w = np.asarray(wrap_angle(np.asarray(angle, dtype=float)))
    jumps = np.flatnonzero(np.abs(np.diff(w)) > np.pi) + 1
    t = np.asarray(t, dtype=float)
    return np.insert(t, jumps, np.nan), np.insert(w, jumps, np.nan)


def plot_angles(path: str, states: np.ndarray, dt: float, n_links: int, target: float | None, *, title: str = "",
                labels: list[str] | None = None, extra: list[np.ndarray] | None = None,
                actions: np.ndarray | None = None) -> None:
    """Plot joint angles of one or more ``(T+1, 2n)`` trajectories against time, and the torques.

    Angles are wrapped to ``[-pi, pi)`` as in ``lyagym demo`` (0 = hanging down, +-pi = upright;
    the line breaks where an angle wraps); ``target`` (if any) is drawn dotted, at both ``+-pi``
    for the upright target. ``actions`` (``(T, action_dim)``, optional) adds a torque panel.
    Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lyagym.envs.rewards import wrap_angle

    from .mbrl import _atomic

    panels = 1 if actions is None else 2
    fig, axes = plt.subplots(panels, 1, figsize=(7, 3.2 if panels == 1 else 5.2), sharex=True, squeeze=False)
    ax = axes[0, 0]
    for k, traj in enumerate([states] + list(extra or [])):
        t = np.arange(len(traj)) * dt
        for i in range(n_links):
            name = (labels[k] + " " if labels else "") + f"q{i + 1}"
            ax.plot(*wrapped_for_plot(t, traj[:, i]), label=name, lw=1.2, ls="-" if k == 0 else "--")
    if target is not None:
        w = float(wrap_angle(target))
        for level in ((-np.pi, np.pi) if abs(abs(w) - np.pi) < 1e-9 else (w,)):
            ax.axhline(level, color="k", lw=0.6, ls=":")
    ax.set_ylim(-np.pi - 0.2, np.pi + 0.2)
    ax.set_yticks([-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], ["-pi", "-pi/2", "0", "pi/2", "pi"])
    ax.set_ylabel("angle (rad)\n0 = down, +-pi = up")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    if actions is not None:
        ax = axes[1, 0]
        u = np.asarray(actions).reshape(len(actions), -1)
        edges = np.arange(len(u) + 1) * dt  # action k acts over [k dt, (k + 1) dt)
        for j in range(u.shape[1]):
            ax.stairs(u[:, j], edges, lw=1.0, label=f"u{j + 1}")
        ax.set_ylabel("torque (N m)")
        ax.legend(fontsize=7, ncol=max(1, u.shape[1]))
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
