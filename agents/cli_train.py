"""``lyagym train``: train a world model on pendulum data and save a checkpoint (and, for
stable models, its certificate next to it).

Two kinds of data:

- ``--data pairs`` (the paper's): ``(x, xdot)`` pairs with states uniform in
  ``[-pi, pi]^(2n)`` from the physics, no torque -> an autonomous model
  (``SimpleDynamics`` / ``StableDynamics``) as in Manek & Kolter's Fig. 5;
- ``--data env`` (for planning): random-torque transitions from ``NLinkPendulumEnv`` at
  control step ``--dt`` -> a controlled model (``SimpleDynamics`` /
  ``StableControlledDynamics``) that ``lyagym plan --model PATH`` can use, with the
  mechanical priors in its ``fhat`` by default (``DynamicsNet``; ``--no-model-priors``: the
  paper's plain MLP). Measured (stable, 2,000 transitions, then ``lyagym plan --links 1``):
  final angle error 0.003 rad with the priors, 0.139 rad without.

``--settle EPS SECONDS`` (stable models) makes the certificate put every state of the
training states' box within ``EPS`` of the equilibrium by ``SECONDS`` (``fit_settling``).

Example::

    lyagym train --links 1 --kind stable --data env --out stable_n1.pt
    lyagym plan --links 1 --model stable_n1.pt
    lyagym train --links 1 --kind stable --data pairs --settle 0.01 20 --out settled.pt
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_arguments", "run", "certificate_path", "MAX_DT"]

#: Largest accepted ``--dt`` (s): the pendulum env integrates a control step in 0.01 s
#: substeps, so a longer step is a long run of substeps and no longer a control step.
MAX_DT = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_types import integer, number

    parser.add_argument("--links", type=integer(1), default=1)
    parser.add_argument("--kind", default="stable", choices=["stable", "simple"], help="world model kind")
    parser.add_argument("--data", default="env", choices=["env", "pairs"], help="env transitions (controlled) or (x, xdot) pairs")
    parser.add_argument("--samples", type=integer(10), default=2000, help="transitions (env) or pairs")
    parser.add_argument("--epochs", type=integer(1), default=100)
    parser.add_argument("--batch-size", type=integer(1), default=256)
    parser.add_argument("--lr", type=number(0, strict=True, maximum=10.0), default=3e-3)
    parser.add_argument("--dt", type=number(0, strict=True, maximum=MAX_DT), default=0.05,
                        help="model step (s); env control step for --data env")
    parser.add_argument("--alpha", type=number(0), default=None, help="stable models: certified decay rate")
    parser.add_argument("--settle", nargs=2, type=number(0, strict=True), default=None, metavar=("EPS", "SECONDS"),
                        help="stable models: the certificate must put every state of the training states' box within EPS of "
                        "the equilibrium by SECONDS (the least rate that does it, then a refit of a fifth of --epochs under it: "
                        "lyagym.learned_models.fit_settling)")
    parser.add_argument("--model-priors", action=argparse.BooleanOptionalAction, default=True,
                        help="--data env: the mechanical priors in fhat (sin/cos angles, affine in torque, SiLU; "
                        "lyagym.agents.mbrl.model_priors; default on); --no-model-priors: the paper's plain MLP")
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="checkpoint path (.pt); the certificate goes to PATH.cert.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint and its certificate")
    parser.add_argument("--no-progress", action="store_true")


def certificate_path(out: str) -> str:
    """Where ``lyagym train --out OUT`` writes a stable model's certificate: ``OUT`` without its
    extension, plus ``.cert.json``."""
    return os.path.splitext(out)[0] + ".cert.json"


def run(args: argparse.Namespace) -> int:
    from .cli_types import out_file

    # Every path is checked before the (minutes long) training: a missing folder or an
    # existing certificate would otherwise only show after it.
    companions = (certificate_path(args.out),) if args.kind == "stable" else ()
    message = out_file("--out", args.out, overwrite=args.overwrite, companions=companions)
    if message is None and args.settle is not None and args.kind != "stable":
        message = f"--settle: only stable models certify a settling time, got --kind {args.kind}"
    if message:
        print(f"lyagym train: {message}", file=sys.stderr)
        return 2

    import torch

    from lyagym.learned_models import SimpleDynamics, StableDynamics, fit, fit_settling

    from .mbrl import collect_random_transitions, fit_transitions, make_pendulum_env, make_world_model, model_priors

    progress = not args.no_progress
    n = args.links
    extra = {} if args.alpha is None or args.kind == "simple" else {"alpha": args.alpha}
    if args.data == "env":
        steps = 20
        env = make_pendulum_env(n, dt=args.dt, episode_steps=steps)
        data = collect_random_transitions(env, max(1, args.samples // steps), steps, seed=args.seed, progress=progress)
        base = env.unwrapped
        model = make_world_model(args.kind, base.state_dim, base.action_dim, base.dt, seed=args.seed, device=args.device, **extra,
                                 **model_priors(n, args.model_priors))
        history = fit_transitions(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                  progress=progress)
        what = f"{len(data)} random-torque transitions at dt={args.dt}"
        x, u, x_next = data.tensors(model.device, model.dtype)
        train_data, states = (torch.stack([x, x_next], 1), u.unsqueeze(1)), x
    else:
        from lyagym.envs import PendulumDynamics, sample_derivative_dataset

        physics = PendulumDynamics(n_links=n)
        data = sample_derivative_dataset(physics, args.samples, seed=args.seed, device=args.device)
        torch.manual_seed(args.seed)
        cls = StableDynamics if args.kind == "stable" else SimpleDynamics
        model = cls(2 * n, dt=args.dt, **extra).to(args.device)
        history = fit(model, (data.x, data.xdot), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, progress=progress)
        what = f"{args.samples} (x, xdot) pairs in [-pi, pi]^{2 * n}"
        train_data, states = (data.x, data.xdot), data.x
    losses = history.get("val_loss") or history.get("train_loss")
    if args.settle is not None:
        eps, seconds = args.settle
        box = torch.stack([states.min(0).values, states.max(0).values], -1).double().cpu().tolist()
        try:
            settled = fit_settling(model, train_data, eps=eps, box=box, seconds=seconds, epochs=max(1, args.epochs // 5),
                                   batch_size=args.batch_size, lr=args.lr / 3, seed=args.seed, progress=progress)
        except ValueError as e:
            print(f"lyagym train: --settle: {e}", file=sys.stderr)
            return 2
        print(f"settling: every state of the training box within {eps:g} after {settled['seconds']:.4g} s "
              f"(was {settled['seconds_before']:.4g} s; alpha {settled['alpha_before']:.4g} -> {settled['alpha']:.4g})")
    model.save(args.out, metadata={"trained_by": "lyagym train", "links": n, "data": what})
    print(f"trained {type(model).__name__} on {what}: best validation loss {min(losses):.4g}; saved {args.out}")
    if hasattr(model, "certificate"):
        cert = model.certificate()
        cert_path = certificate_path(args.out)
        cert.save(cert_path)
        print(f"certificate ({cert.claim}, alpha={cert.alpha:g}, evidence {cert.evidence}) saved to {cert_path}")
    return 0
