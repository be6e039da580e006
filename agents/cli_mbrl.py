"""``lyagym mbrl``: model-based RL (PETS, MBPO) or a model-free SB3 baseline on any env with an
adapter, one run, logged to ``OUT/episodes.csv`` with a committed checkpoint after every episode.

Examples::

    lyagym mbrl --algo pets --model stable --links 1 --episodes 5 --out runs/pets
    lyagym mbrl --env Pendulum-v1 --algo pets --model ensemble-stable --out runs/pendulum-v1
    lyagym mbrl --env lyagym/NLinkPendulum-v0 --links 2 --algo pets --out runs/double
    lyagym mbrl --env InvertedPendulum-v5 --algo mbpo --model ensemble --episodes 300 --max-real-steps 5000 --out runs/ip
    lyagym mbrl --algo sac --steps 20000 --out runs/sac
    lyagym mbrl --algo pets --tensorboard --out runs/pets_tb   # then: tensorboard --logdir runs/pets_tb/tensorboard
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_arguments", "run", "make_env"]

ALGOS = ("pets", "mbpo", "dyna", "sac", "ppo")
MODELS = ("simple", "stable", "ensemble", "ensemble-simple", "ensemble-stable", "clf", "ensemble-clf", "certified", "ensemble-certified")
PENDULUM = "lyagym/NLinkPendulum-v0"


def add_env_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_train import MAX_DT
    from .cli_types import integer, number

    parser.add_argument("--env", default=PENDULUM, help="Gymnasium env id with a built-in adapter (lyagym.agents.adapters.ADAPTERS)")
    parser.add_argument("--links", type=integer(1), default=None, help="pendulum links (lyagym/NLinkPendulum-v0 only; default 1)")
    parser.add_argument("--task", default=None, choices=["swingup", "regulate"], help="pendulum task (default swingup)")
    parser.add_argument("--dt", type=number(0, strict=True, maximum=MAX_DT), default=None, help="pendulum env step in s (default 0.05)")
    parser.add_argument("--max-torque", type=number(0, strict=True), default=None, help="pendulum torque limit (default 5)")


def make_env(args, episode_steps: int | None, render_mode: str | None = None):
    """The real env of ``args`` (pendulum options only for the pendulum); raises ``ValueError`` on a bad combination."""
    import gymnasium as gym

    pendulum_options = {"links": args.links, "task": args.task, "dt": args.dt, "max_torque": args.max_torque}
    if args.env == PENDULUM:
        from .adapters import make_pendulum_env

        links = 1 if args.links is None else args.links
        if links < 1:
            raise ValueError(f"--links must be >= 1, got {links}")
        return make_pendulum_env(links, task=args.task or "swingup", dt=0.05 if args.dt is None else args.dt,
                                 max_torque=5.0 if args.max_torque is None else args.max_torque,
                                 episode_steps=episode_steps or 200, render_mode=render_mode)
    given = [f"--{k.replace('_', '-')}" for k, v in pendulum_options.items() if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} only apply to --env {PENDULUM}")
    from .adapters import ADAPTERS

    if args.env not in ADAPTERS:
        raise ValueError(f"--env {args.env!r} has no built-in adapter; choose one of {sorted(ADAPTERS)} "
                         "(or use the Python API with EnvAdapter(env, reward_fn=...))")
    kwargs = {"max_episode_steps": episode_steps} if episode_steps else {}
    try:
        return gym.make(args.env, render_mode=render_mode, **kwargs)
    except (gym.error.DependencyNotInstalled, ImportError) as e:
        raise ValueError(f"--env {args.env} needs an optional dependency: {e} (pip install \"lyagym[mujoco]\")") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_types import folder, integer, number

    d = argparse.ArgumentDefaultsHelpFormatter
    parser.formatter_class = d
    add_env_arguments(parser)
    parser.add_argument("--algo", default="pets", choices=ALGOS,
                        help="pets (MPC on the model), mbpo (SAC on model rollouts), dyna (legacy), sac, ppo")
    parser.add_argument("--model", default="stable", choices=MODELS,
                        help="world model for pets/mbpo/dyna; clf kinds (a control Lyapunov function certified beside the "
                             "model, for plants that are not open-loop stable) with pets only; certified: stable or clf from the plant")
    parser.add_argument("--ensemble-size", type=integer(1), default=None, help="members of an ensemble model (default 5)")
    parser.add_argument("--propagation", default=None, choices=["tsinf", "ts1", "expectation"],
                        help="ensemble propagation (default: the env adapter's: expectation on the double pendulum, else tsinf)")
    parser.add_argument("--particles", type=integer(1), default=None, help="particles per candidate with an ensemble (default 5)")
    parser.add_argument("--episodes", type=integer(0), default=5, help="real episodes after the random ones (pets/mbpo/dyna)")
    parser.add_argument("--random-episodes", type=integer(0), default=1)
    parser.add_argument("--max-real-steps", type=integer(1), default=None,
                        help="pets/mbpo: no episode starts once the run has taken this many real steps (--episodes stays the cap)")
    parser.add_argument("--episode-steps", type=integer(1), default=None, help="real env steps per episode (default: the env's adapter, 200 for the pendulum)")
    parser.add_argument("--steps", type=integer(1), default=20000,
                        help="real env steps for sac/ppo (ppo collects whole rollouts of 1024 steps: beyond 1024 the budget "
                             "rounds up to a multiple of them)")
    parser.add_argument("--planner", default=None, choices=["mppi", "cem", "icem", "gradient"], help="default mppi")
    parser.add_argument("--horizon", type=integer(1), default=None, help="planner horizon (default: the adapter's; 50 for one link, 15 for more)")
    parser.add_argument("--samples", dest="num_samples", type=integer(1), default=None, help="candidate sequences per iteration (default 300)")
    parser.add_argument("--iterations", type=integer(1), default=None, help="planner iterations per step (default 3)")
    parser.add_argument("--warmup-iterations", type=integer(0), default=None, help="iterations of each episode's first plan (default 30; 0: --iterations)")
    parser.add_argument("--noise-std", type=number(0, strict=True), default=None, help="sampling std in action units (default 1)")
    parser.add_argument("--temperature", type=number(0, strict=True), default=None, help="MPPI temperature in cost units (default 0.5)")
    parser.add_argument("--wrap-angles", action=argparse.BooleanOptionalAction, default=True,
                        help="pets plans on rollouts that wrap the angles after every step (AngleWrappedModel)")
    parser.add_argument("--model-priors", action=argparse.BooleanOptionalAction, default=True,
                        help="world model with the mechanical priors (sin/cos angles, affine in the action, SiLU; "
                        "lyagym.agents.mbrl.model_priors); --no-model-priors: the paper's plain MLP")
    parser.add_argument("--fit-epochs", type=integer(1), default=None, help="default 60")
    parser.add_argument("--fit-steps", type=integer(0), default=None, help="at least this many Adam steps per model fit (default 2000)")
    parser.add_argument("--rollout-fit-steps", type=integer(0), default=None,
                        help="an ensemble's multi-step fine-tune after each fit, in Adam steps over windows of --horizon real steps (default 0: none)")
    parser.add_argument("--random-steps", dest="random_episode_steps", type=integer(1), default=None,
                        help="length of the random-action episodes (default: --episode-steps)")
    parser.add_argument("--imagined-steps", type=integer(0), default=None, help="dyna: SAC steps per imagined batch per episode")
    mbpo = parser.add_argument_group("mbpo", "MBPO's settings (defaults: the env adapter's, else MBRLConfig's: MBPO's InvertedPendulum ones)")
    mbpo.add_argument("--model-train-every", type=integer(1), default=None,
                      help="real steps between model fits and batches of branched rollouts (default 250)")
    mbpo.add_argument("--model-rollouts", type=integer(1), default=None, help="branched model rollouts per real step (default 400)")
    mbpo.add_argument("--rollout-schedule", type=integer(0), nargs=4, metavar=("FIRST", "LAST", "MIN", "MAX"), default=None,
                      help="rollout length MIN up to episode FIRST, MAX from episode LAST, linear in between (default 1 15 1 1)")
    mbpo.add_argument("--real-ratio", type=number(0, maximum=1), default=None, help="fraction of real transitions in SAC's batches (default 0.05)")
    mbpo.add_argument("--sac-updates", dest="sac_updates_per_step", type=integer(1), default=None,
                      help="SAC gradient steps per real step (default 10; 20 on InvertedPendulum-v5, 60 on InvertedDoublePendulum-v5)")
    mbpo.add_argument("--sac-batch-size", type=integer(1), default=None, help="default 256")
    mbpo.add_argument("--sac-target-entropy", type=number(None), default=None,
                      help="SAC's entropy target (default: -0.05 on the MuJoCo pendulums, else SB3's -action_dim)")
    mbpo.add_argument("--eval-every", type=integer(1), default=None,
                      help="also score the greedy policy every this many real steps, within episodes (default: after each episode only)")
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=folder, default="lyagym-mbrl", help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue a pets, mbpo or sac run from OUT's committed checkpoint")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log every episode (and SB3's training statistics) as TensorBoard scalars to OUT/tensorboard "
                        "(needs the tensorboard package)")
    parser.add_argument("--no-progress", action="store_true")


#: the MBPO flags and their ``MBRLConfig`` fields (refused with another --algo)
MBPO_FLAGS = {"--model-train-every": "model_train_every", "--model-rollouts": "model_rollouts", "--rollout-schedule": "rollout_schedule",
              "--real-ratio": "real_ratio", "--sac-updates": "sac_updates_per_step", "--sac-batch-size": "sac_batch_size",
              "--sac-target-entropy": "sac_target_entropy", "--eval-every": "eval_every"}


def _fail(message: str) -> int:
    print(f"lyagym mbrl: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from .adapters import make_adapter
    from .mbrl_config import MBRLConfig, config_for
    from .pets import check_config

    for name in ("episodes", "random_episodes"):
        if getattr(args, name) < 0:
            return _fail(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.algo in ("sac", "ppo") and args.steps < 1:
        return _fail(f"--steps must be >= 1, got {args.steps}")
    if args.algo in ("pets", "mbpo", "dyna") and args.episodes + args.random_episodes < 1:
        return _fail("--episodes + --random-episodes must be >= 1")
    if args.algo != "pets" and args.model in ("clf", "ensemble-clf", "certified", "ensemble-certified"):
        return _fail(f"--model {args.model}: the control Lyapunov function is fitted and planned with by pets only, not {args.algo}")
    if args.rollout_fit_steps and not (args.algo in ("pets", "mbpo", "dyna") and args.model.startswith("ensemble")):
        return _fail(f"--rollout-fit-steps fine-tunes an ensemble's members: use it with --model ensemble, ensemble-stable, ... "
                     f"(got --algo {args.algo} --model {args.model})")
    mbpo_flags = [flag for flag, dest in MBPO_FLAGS.items() if getattr(args, dest) is not None]
    if mbpo_flags and args.algo != "mbpo":
        return _fail(f"{mbpo_flags[0]} is an MBPO setting: use it with --algo mbpo (got --algo {args.algo})")
    if args.resume and args.algo not in ("pets", "mbpo", "sac"):
        return _fail(f"--resume works for pets, mbpo and sac runs; {args.algo} runs cannot be resumed (start a new --out)")
    if os.path.exists(os.path.join(args.out, "episodes.csv")) and not args.resume:
        return _fail(f"{args.out}/episodes.csv exists; pass --resume to continue it or choose another --out")
    try:
        env = make_env(args, args.episode_steps)
    except ValueError as e:
        return _fail(str(e))
    adapter = make_adapter(env)
    fields = {f.name for f in dataclasses.fields(MBRLConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    given["wrap_angles"] = args.wrap_angles
    if args.rollout_schedule is not None:
        given["rollout_schedule"] = tuple(args.rollout_schedule)
    try:
        config = config_for(adapter, **given)
        check_config(config)
        if args.algo == "mbpo":
            from .mbpo import check_mbpo_config

            check_mbpo_config(config)
    except (TypeError, ValueError) as e:
        return _fail(str(e))
    progress = not args.no_progress
    tensorboard_dir = os.path.join(args.out, "tensorboard") if args.tensorboard else None
    os.makedirs(args.out, exist_ok=True)
    if args.algo in ("sac", "ppo"):
        from .sb3_baselines import train_baseline

        try:
            rows = train_baseline(args.algo, env, args.steps, seed=args.seed, out_dir=args.out, device=args.device, progress=progress,
                                  tensorboard_dir=tensorboard_dir, adapter=adapter, resume=args.resume)
        except (ValueError, FileExistsError) as e:
            return _fail(str(e))
    else:
        from .mbrl import run_dyna, run_mbpo, run_pets
        from .world_models import certified_kind, is_stabilisable_kind, world_model_for

        kind = args.model
        if kind in ("certified", "ensemble-certified"):  # the stable or the clf kind, from the plant
            kind = certified_kind(adapter, ensemble=kind.startswith("ensemble"))
        extra = {"ensemble_size": config.ensemble_size, "propagation": config.propagation} if kind.startswith("ensemble") else {}
        try:
            model = world_model_for(adapter, kind, priors=args.model_priors, seed=args.seed, device=args.device, **extra)
        except ValueError as e:
            return _fail(str(e))
        method = f"{args.algo}-{args.model}"
        try:  # the loops refuse an --out they cannot write or resume (another run's, ...) before any work
            if args.algo == "pets":
                rows = run_pets(env, model, None, config, adapter=adapter, out_dir=args.out, method=method, resume=args.resume,
                                progress=progress, tensorboard_dir=tensorboard_dir, control_lyapunov=is_stabilisable_kind(kind))
            elif args.algo == "mbpo":
                rows = run_mbpo(env, model, config, adapter=adapter, out_dir=args.out, method=method, resume=args.resume, progress=progress,
                                device=args.device, tensorboard_dir=tensorboard_dir)
            else:
                rows = run_dyna(env, model, config, adapter=adapter, out_dir=args.out, method=method, progress=progress,
                                device=args.device, tensorboard_dir=tensorboard_dir)
        except (ValueError, FileExistsError) as e:
            return _fail(str(e))
        if args.algo in ("pets", "mbpo") and rows:
            from .run_log import committed_file

            saved = committed_file(args.out, "model.pt")
            if os.path.exists(saved):
                if is_stabilisable_kind(kind):
                    rho = float(rows[-1].get("clf_rho", float("nan")))
                    what = ("prove its certificate with `lyagym verify` on that file" if rho > 0 else
                            "it certifies no region yet (rho = 0: more data and fitting raise it); `lyagym verify` proves it once it does")
                    print(f"model and its control Lyapunov function: {saved} ({what})")
                else:
                    print(f"world model: {saved} (`lyagym plan --model` on that file plans with it)")
    if rows:
        last = rows[-1]
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k in ("final_angle_error", "max_abs_angle", "min_tip_height", "max_position"))
        # A model-free baseline's budget may end inside an episode, which then has no row.
        steps = (f"{len(rows)} finished episode{'s' * (len(rows) != 1)}, the last ending at real step {last['real_steps']} of {args.steps}"
                 if args.algo in ("sac", "ppo") and last["real_steps"] != args.steps else f"{len(rows)} episodes, {last['real_steps']} real steps")
        print(f"{args.algo}: {steps}, last return {last['return']:.1f}{', ' + metrics if metrics else ''}; log in {args.out}/episodes.csv")
    return 0
