"""``lyagym mbrl``: model-based RL (PETS / Dyna-SAC) or a model-free SB3 baseline on the
pendulum swing-up, one run, logged to ``OUT/episodes.csv`` with checkpoints.

Examples::

    lyagym mbrl --algo pets --model stable --links 1 --episodes 5 --out runs/pets
    lyagym mbrl --algo dyna --model stable --links 1 --episodes 10 --out runs/dyna
    lyagym mbrl --algo sac --steps 20000 --out runs/sac
    lyagym mbrl --algo pets --tensorboard --out runs/pets_tb   # then: tensorboard --logdir runs/pets_tb/tensorboard
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_arguments", "run"]

ALGOS = ("pets", "dyna", "sac", "ppo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", default="pets", choices=ALGOS, help="pets (MPC on the model), dyna (SAC in imagination), sac, ppo")
    parser.add_argument("--model", default="stable", choices=["stable", "simple"], help="world model for pets/dyna")
    parser.add_argument("--links", type=int, default=1)
    parser.add_argument("--task", default="swingup", choices=["swingup", "regulate"])
    parser.add_argument("--dt", type=float, default=0.05, help="env step (s)")
    parser.add_argument("--max-torque", type=float, default=5.0)
    parser.add_argument("--episodes", type=int, default=5, help="real episodes after the random ones (pets/dyna)")
    parser.add_argument("--random-episodes", type=int, default=1)
    parser.add_argument("--episode-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20000, help="real env steps for sac/ppo")
    # planner defaults: MBRLConfig's, tuned for the n = 1 swing-up (see lyagym.agents.mbrl.MBRLConfig)
    parser.add_argument("--planner", default="mppi")
    parser.add_argument("--horizon", type=int, default=None, help="planner horizon (steps; default 50 for one link, 15 for more)")
    parser.add_argument("--samples", dest="num_samples", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=3, help="planner iterations per step")
    parser.add_argument("--warmup-iterations", type=int, default=30, help="iterations of each episode's first plan (0: --iterations)")
    parser.add_argument("--noise-std", type=float, default=1.0, help="sampling std in torque units")
    parser.add_argument("--temperature", type=float, default=0.5, help="MPPI temperature (cost units)")
    parser.add_argument("--wrap-angles", action=argparse.BooleanOptionalAction, default=True,
                        help="pets plans on rollouts that wrap the angles after every step (AngleWrappedModel)")
    parser.add_argument("--model-priors", action=argparse.BooleanOptionalAction, default=True,
                        help="world model with the mechanical priors (sin/cos angles, affine in torque, SiLU; "
                        "lyagym.agents.mbrl.model_priors; default on); --no-model-priors: the paper's plain MLP")
    parser.add_argument("--fit-epochs", type=int, default=60)
    parser.add_argument("--fit-steps", type=int, default=0, help="at least this many Adam steps per model fit (pets/dyna)")
    parser.add_argument("--random-steps", dest="random_episode_steps", type=int, default=None,
                        help="length of the random-torque episodes (default: --episode-steps)")
    parser.add_argument("--imagined-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="lyagym-mbrl", help="output folder (default ./lyagym-mbrl)")
    parser.add_argument("--resume", action="store_true", help="continue a pets run from OUT's checkpoint")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log every episode (and SB3's training statistics) as TensorBoard scalars to OUT/tensorboard "
                        "(needs the tensorboard package)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from .costs import PendulumCost
    from .mbrl import config_from_args, default_horizon, make_pendulum_env, make_world_model, model_priors, run_dyna, run_pets
    from .sb3_baselines import train_baseline

    if os.path.exists(os.path.join(args.out, "episodes.csv")) and not args.resume:
        print(f"lyagym mbrl: {args.out}/episodes.csv exists; pass --resume to continue it or choose another --out")
        return 2
    os.makedirs(args.out, exist_ok=True)
    env = make_pendulum_env(args.links, task=args.task, dt=args.dt, max_torque=args.max_torque, episode_steps=args.episode_steps)
    progress = not args.no_progress
    tensorboard_dir = os.path.join(args.out, "tensorboard") if args.tensorboard else None
    base = env.unwrapped
    if args.algo in ("sac", "ppo"):
        rows = train_baseline(args.algo, env, args.steps, seed=args.seed, out_dir=args.out, device=args.device, progress=progress,
                              tensorboard_dir=tensorboard_dir)
    else:
        if args.horizon is None:
            args.horizon = default_horizon(args.links)
        config = config_from_args(args)
        model = make_world_model(args.model, base.state_dim, base.action_dim, base.dt, seed=args.seed, device=args.device,
                                 **model_priors(args.links, args.model_priors))
        if args.algo == "pets":
            cost = PendulumCost(args.links, args.task, action_dim=base.action_dim, **base.weights)
            rows = run_pets(env, model, cost, config, out_dir=args.out, method=f"pets-{args.model}", resume=args.resume,
                            progress=progress, tensorboard_dir=tensorboard_dir)
        else:
            rows = run_dyna(env, model, config, out_dir=args.out, method=f"dyna-{args.model}", progress=progress, device=args.device,
                            tensorboard_dir=tensorboard_dir)
    if rows:
        last = rows[-1]
        err = last.get("final_angle_error", float("nan"))
        print(f"{args.algo}: {len(rows)} episodes, {last['real_steps']} real steps, last return {last['return']:.1f}, "
              f"final angle error {err:.3f} rad; log in {args.out}/episodes.csv")
    return 0
