"""Train a certified stable model of the damped n-link pendulum, save it, and check its certificate.

    python examples/train_stable_pendulum.py                  # n = 1, about a minute on 2 CPU cores
    python examples/train_stable_pendulum.py --links 2 --epochs 200 --out runs/pendulum2
    python examples/train_stable_pendulum.py --quick          # a few seconds

Steps: sample derivative pairs ``(x, xdot)`` from the sympy-derived physics, fit
``StableDynamics`` and the ``SimpleDynamics`` baseline on the same data, compare their
rollouts against the physics, save the stable model (one checkpoint file) and its
certificate (JSON), and run the falsification search. Writes ``stable.pt``,
``certificate.json`` and ``rollout.png`` (plus ``field.png`` with the learned V for n = 1).
"""

from __future__ import annotations

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lyagym.envs import PendulumDynamics, sample_derivative_dataset  # noqa: E402
from lyagym.learned_models import SimpleDynamics, StableDynamics, fit, load_model  # noqa: E402


def wrapped_error(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """Squared state error with angle differences wrapped to [-pi, pi): ``(..., 2n) -> (...)``."""
    diff = a - b
    angles = torch.remainder(diff[..., :n] + math.pi, 2 * math.pi) - math.pi
    return (angles**2).sum(-1) + (diff[..., n:] ** 2).sum(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--links", type=int, default=1)
    p.add_argument("--samples", type=int, default=4000, help="derivative pairs (per model)")
    p.add_argument("--box", type=float, default=math.pi / 2, help="train on states uniform in [-box, box]^(2n)")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--d", type=float, default=1.0, help="smoothed-ReLU width of V (eq. 13)")
    p.add_argument("--lyap-shift", choices=("value", "tangent"), default="tangent", help="'value' is the paper's eq. 12")
    p.add_argument("--no-quadratic", action="store_true", help="leave out the learned quadratic ||L dx||^2 of V")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/stable_pendulum")
    p.add_argument("--threads", type=int, default=1, help="torch threads (these models are small: one thread avoids contention)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.samples, args.epochs = 500, 5
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)

    n = args.links
    physics = PendulumDynamics(n_links=n, actuated=())
    data = sample_derivative_dataset(physics, args.samples, low=-args.box, high=args.box, seed=args.seed)
    models = {
        "stable": StableDynamics(
            2 * n, alpha=args.alpha, eps=args.eps, d=args.d, lyap_shift=args.lyap_shift, lyap_quadratic=not args.no_quadratic, dt=physics.dt
        ),
        "simple": SimpleDynamics(2 * n, dt=physics.dt),
    }
    for name, model in models.items():
        h = fit(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, patience=30)
        print(f"{name:>6}: best validation MSE of xdot {h['best_val_loss']:.4g} (epoch {h['best_epoch']}, {h['seconds']:.0f} s)")

    # Rollouts from the paper's evaluation box, physics and models all with RK4 at h = 0.01.
    gen = torch.Generator().manual_seed(args.seed + 1)
    x0 = (torch.rand(100, 2 * n, generator=gen) * 2 - 1) * (math.pi / 8)
    steps = 100 if args.quick else 999
    with torch.no_grad():
        truth = [x0]
        for _ in range(steps):
            truth.append(physics.step(truth[-1]))
        truth = torch.stack(truth, dim=1)
        errors = {name: wrapped_error(m.rollout(x0, steps), truth, n).mean(0) for name, m in models.items()}
    for name, e in errors.items():
        print(f"{name:>6}: average squared error over {steps} steps {e.mean():.4g} (final step {e[-1]:.4g})")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, e in errors.items():
        ax.plot(e.numpy(), label=name)
    ax.set(xlabel="step (h = 0.01)", ylabel="squared error (wrapped angles)", yscale="log", title=f"{n}-link pendulum rollouts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "rollout.png"), dpi=120)

    # Save, reload, certify, falsify.
    stable = models["stable"]
    path = os.path.join(args.out, "stable.pt")
    stable.save(path, metadata={"links": n, "samples": args.samples, "epochs": args.epochs})
    stable = load_model(path)
    cert = stable.certificate()
    cert.save(os.path.join(args.out, "certificate.json"))
    print(f"certificate: {cert.claim}, alpha={cert.alpha}, c1={cert.c1}, c2={cert.c2:.3g}, overshoot m={cert.overshoot:.3g}, evidence {cert.evidence}")
    report = cert.check(stable, progress=True, **({"n_samples": 5000, "grad_steps": 10} if args.quick else {}))
    print(report.summary())

    if n == 1:  # the Fig. 4 view: true and learned vector fields and the learned V
        th, om = torch.meshgrid(torch.linspace(-3, 3, 40), torch.linspace(-6, 6, 40), indexing="xy")
        grid = torch.stack([th.flatten(), om.flatten()], dim=-1)
        with torch.no_grad():
            f_true = torch.as_tensor(physics.derivative(grid.double())).float()
            f_learned = stable.derivative(grid)
            V = stable.lyapunov(grid)
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for ax, f, title in ((axes[0], f_true, "physics"), (axes[1], f_learned, "learned f (stable)")):
            ax.streamplot(th.numpy(), om.numpy(), f[:, 0].reshape(th.shape).numpy(), f[:, 1].reshape(th.shape).numpy(), density=1.2)
            ax.set(title=title, xlabel="theta", ylabel="theta dot")
        cs = axes[2].contourf(th.numpy(), om.numpy(), V.reshape(th.shape).numpy(), levels=30)
        fig.colorbar(cs, ax=axes[2])
        axes[2].set(title="learned V", xlabel="theta")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "field.png"), dpi=120)
    print(f"wrote {args.out}/")


if __name__ == "__main__":
    main()
