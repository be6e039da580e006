"""MPC swing-up of the n-link pendulum with the true physics and with a learned stable model.

1. MPPI on the true physics (``PendulumDynamics``) swings up and holds n = 1 (control step
   0.05 s) and n = 2 (0.02 s, a longer horizon: the short double pendulum is faster).
2. A stable world model (``StableControlledDynamics``) learned from 1000 real env steps
   (5 episodes' worth: 50 random-torque episodes of 20 steps from random states) swings up
   n = 1. (The PETS loop started from hanging down needs more: see
   ``lyagym reproduce mbrl-swingup``.)

Prints the final angle errors and writes plots and GIFs to ``--out``.

Example: ``python examples/mpc_swingup.py --out lyagym-output/mpc`` (about 10-20 minutes on
a 2-core CPU; ``--skip-learned`` for part 1 only).
"""

import argparse
import math
import os
import sys

import numpy as np

from lyagym.agents.cli import parse_with_threads
from lyagym.agents.cli_plan import plot_angles
from lyagym.agents.mbrl import (
    angle_error,
    collect_random_transitions,
    fit_transitions,
    make_pendulum_env,
    make_world_model,
    mpc_episode,
    true_physics_model,
)
from lyagym.envs.video_data import write_video

# (links, control step, horizon, samples, iterations, MPPI temperature, steps)
TRUE_PHYSICS_RUNS = [(1, 0.05, 30, 300, 2, 1.0, 200), (2, 0.02, 50, 600, 1, 1.0, 300)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("lyagym-output", "mpc"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-learned", action="store_true")
    args = parse_with_threads(parser, argv)
    os.makedirs(args.out, exist_ok=True)
    ok = True
    for n, dt, horizon, samples, iterations, temperature, steps in TRUE_PHYSICS_RUNS:
        env = make_pendulum_env(n, dt=dt, episode_steps=steps, render_mode="rgb_array", render_size=240)
        ep = mpc_episode(env, true_physics_model(env), horizon=horizon, num_samples=samples, iterations=iterations,
                         steps=steps, seed=args.seed, frames=True, temperature=temperature)
        errors = angle_error(ep["states"], n, math.pi)
        held = errors[-steps // 5:].max()
        ok &= bool(errors[-1] < 0.1)
        print(f"true physics, n={n}: final angle error {errors[-1]:.3f} rad, max over the last 20 % {held:.3f} rad "
              f"(target < 0.1), return {ep['return']:.1f}")
        plot_angles(os.path.join(args.out, f"mpc_true_n{n}.png"), ep["states"], dt, n, math.pi, title=f"MPC on true physics, n={n}")
        write_video(np.stack(ep["frames"][:: max(1, int(round(0.1 / dt)))]), os.path.join(args.out, f"mpc_true_n{n}.gif"), fps=10)
    if not args.skip_learned:
        env = make_pendulum_env(1, dt=0.05, episode_steps=200, render_mode="rgb_array", render_size=240)
        data = collect_random_transitions(env, 50, 20, seed=args.seed)
        model = make_world_model("stable", 2, 1, 0.05, seed=args.seed)
        fit_transitions(model, data, epochs=80, lr=3e-3, seed=args.seed)
        model.requires_grad_(False)
        ep = mpc_episode(env, model, horizon=30, num_samples=300, iterations=2, steps=200, seed=args.seed, frames=True)
        errors = angle_error(ep["states"], 1, math.pi)
        ok &= bool(errors[-1] < 0.1)
        print(f"learned stable model, n=1, {len(data)} real steps of data: final angle error {errors[-1]:.3f} rad, "
              f"max over the last 20 % {errors[-40:].max():.3f} rad (target < 0.1), return {ep['return']:.1f}")
        plot_angles(os.path.join(args.out, "mpc_learned_stable_n1.png"), ep["states"], 0.05, 1, math.pi,
                    title="MPC on a learned stable model, n=1")
        write_video(np.stack(ep["frames"][::2]), os.path.join(args.out, "mpc_learned_stable_n1.gif"), fps=10)
    print(f"outputs in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
