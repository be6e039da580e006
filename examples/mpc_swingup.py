"""MPC swing-up of the n-link pendulum with the true physics and with a learned stable model.

1. MPPI on the true physics (``PendulumDynamics``) swings up and holds n = 1 (control step
   0.05 s) and n = 2 (0.02 s, a longer horizon: the short double pendulum is faster).
2. A stable world model (``StableControlledDynamics``) learned PETS-style from at most 5
   episodes of real data swings up n = 1.

Prints the final angle errors and writes plots and GIFs to ``--out``.

Example: ``python examples/mpc_swingup.py --out lyagym-output/mpc`` (about 10-20 minutes on
a 2-core CPU; ``--skip-learned`` for part 1 only).
"""

import argparse
import math
import os
import sys

import numpy as np

from lyagym.agents import PendulumCost
from lyagym.agents.cli_plan import plot_angles
from lyagym.agents.mbrl import (
    MBRLConfig,
    angle_error,
    make_pendulum_env,
    make_world_model,
    mpc_episode,
    run_pets,
    true_physics_model,
)
from lyagym.envs.video_data import write_video

# (links, control step, horizon, samples, iterations, MPPI temperature, steps)
TRUE_PHYSICS_RUNS = [(1, 0.05, 30, 300, 2, 1.0, 200), (2, 0.02, 50, 300, 1, 1.0, 300)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("lyagym-output", "mpc"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=5, help="real episodes of data for the learned model (incl. 1 random)")
    parser.add_argument("--skip-learned", action="store_true")
    args = parser.parse_args(argv)
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
        env = make_pendulum_env(1, dt=0.05, episode_steps=200)
        base = env.unwrapped
        model = make_world_model("stable", 2, 1, 0.05, seed=args.seed)
        config = MBRLConfig(episodes=args.episodes - 1, random_episodes=1, fit_epochs=100, num_samples=300, seed=args.seed)
        rows = run_pets(env, model, PendulumCost(1, "swingup", **base.weights), config,
                        out_dir=os.path.join(args.out, "pets_stable_n1"), method="pets-stable")
        for r in rows:
            print(f"  episode {r['episode']} ({r['real_steps']} real steps so far): return {r['return']:.1f}, "
                  f"final angle error {r['final_angle_error']:.3f} rad")
        best = min(r["final_angle_error"] for r in rows)
        ok &= bool(best < 0.1)
        print(f"learned stable model, n=1, {len(rows)} episodes of data: best final angle error {best:.3f} rad (target < 0.1)")
    print(f"outputs in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
