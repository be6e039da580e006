"""Manek & Kolter (2019) Fig. 4: the damped simple pendulum (n = 1), simulated vs learned.

A ``StableDynamics`` model is trained on ``(x, xdot)`` pairs of the true damped pendulum
(``PendulumDynamics(1)``: mass 1, length 1, g = 9.81, damping 0.3) drawn uniformly from
the plotted box ``[-pi, pi] x [-2 pi, 2 pi]``. The figure shows, left to right:

1. the true vector field as a stream plot, with one long physics trajectory;
2. the learned stable field ``f`` (eq. 10), with the model's trajectory from the same start;
3. the contour of the learned Lyapunov function ``V`` (eq. 12), under which ``f`` decays.

The trajectories are both stepped with RK4 at h = 0.01 (the Fig. 5 protocol), for
``--steps`` steps (default 2000, 20 s). The squared error along the trajectory is printed.

Run::

    lyagym reproduce fig4 --out ./lyagym-output/fig4
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .fig3 import contour_plot, prepare_output, save_figure, save_text, stream_plot
from .fig5 import widen_icnn_init
from .pendulum_eval import STEP_SIZE, rk4_step, squared_state_error
from ..cli_types import folder, integer, number

__all__ = ["add_arguments", "run", "Fig4Config", "PRESETS"]


@dataclass(frozen=True)
class Fig4Config:
    samples: int = 20000
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    alpha: float = 1e-3
    eps: float = 1e-3
    steps: int = 2000
    n_grid: int = 40


PRESETS = {
    "tiny": Fig4Config(samples=500, epochs=2, steps=100, n_grid=12),
    "default": Fig4Config(),
    "full": Fig4Config(samples=50000, epochs=100, steps=3000, n_grid=60),
}

#: The plotted box: angle in [-pi, pi], angular velocity in [-2 pi, 2 pi].
EXTENT = (-math.pi, math.pi, -2 * math.pi, 2 * math.pi)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=folder, default="./lyagym-output/fig4", help="output folder (default: %(default)s)")
    parser.add_argument("--size", choices=sorted(PRESETS), default="default", help="preset (default: %(default)s)")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of data and initialisation (default: %(default)s)")
    parser.add_argument("--x0", type=number(), nargs=2, default=(2.5, 0.0), metavar=("ANGLE", "VELOCITY"),
                        help="start of the long trajectory (default: 2.5 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lyagym.envs import PendulumDynamics
    from lyagym.learned_models import StableDynamics, fit

    config = PRESETS[args.size]
    if not all(math.isfinite(v) for v in args.x0):
        raise SystemExit(f"--x0 must be finite, got {args.x0}")
    folder = prepare_output(args.out, ["fig4.png", "fig4.md", "fig4_model.pt"], args.overwrite)
    physics = PendulumDynamics(n_links=1)

    # Training pairs uniform in the plotted box, labelled by the exact physics.
    rng = np.random.default_rng(args.seed + 1)
    low, high = np.array(EXTENT[0::2]), np.array(EXTENT[1::2])
    x = rng.uniform(low, high, size=(config.samples, 2))
    data = (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(np.asarray(physics.derivative(x)), dtype=torch.float32))
    torch.manual_seed(args.seed)
    model = StableDynamics(2, alpha=config.alpha, eps=config.eps, dt=STEP_SIZE, integrator="rk4")
    widen_icnn_init(model)  # as in Fig. 5 (see fig5.widen_icnn_init for why)
    start = time.perf_counter()
    fit(model, data, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=args.seed, progress=not args.no_progress)
    train_seconds = time.perf_counter() - start
    model.eval()

    # One long trajectory from the same start, both stepped with RK4 at h = 0.01.
    x0 = torch.tensor([list(args.x0)], dtype=torch.float64)
    true = torch.as_tensor(np.asarray(physics.simulate(x0.numpy(), config.steps, dt=STEP_SIZE, method="rk4")))[0]
    learned = [x0.to(model.dtype)]
    with torch.no_grad():
        for _ in range(config.steps):
            learned.append(rk4_step(model.derivative, learned[-1], STEP_SIZE))
    learned = torch.cat(learned).to(torch.float64)
    error = squared_state_error(true, learned, 1)
    avg_error = float(error[1:].mean())

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    labels = (r"$\theta$", r"$\dot\theta$")
    stream_plot(axes[0], lambda z: torch.as_tensor(physics.derivative(z)), EXTENT, n_grid=config.n_grid,
                like=torch.zeros((), dtype=torch.float64), title="Simulated", labels=labels)
    stream_plot(axes[1], model.derivative, EXTENT, n_grid=config.n_grid, like=model, title="Learned $f$", labels=labels)
    for ax, traj, name in ((axes[0], true, "physics"), (axes[1], learned, "learned")):
        ax.plot(traj[:, 0].numpy(), traj[:, 1].numpy(), color="tab:red", lw=1.5, label=f"{name} trajectory")
        ax.plot(*traj[0].numpy(), "o", color="tab:red")
        ax.legend(loc="upper right", fontsize=8)
    contour_plot(axes[2], model.lyapunov, EXTENT, n_grid=config.n_grid, like=model, title="Learned $V$", labels=labels)
    fig.suptitle(f"Manek & Kolter Fig. 4: damped pendulum; trajectory of {config.steps} RK4 steps, mean squared error {avg_error:.3g}")
    fig.tight_layout()
    save_figure(fig, folder / "fig4.png")
    model.save(folder / "fig4_model.pt")
    summary = (
        f"Fig. 4 (n = 1): StableDynamics trained on {config.samples} pairs uniform in "
        f"[-pi, pi] x [-2pi, 2pi] for {config.epochs} epochs ({train_seconds:.0f} s).\n\n"
        f"Trajectory from x0 = {tuple(args.x0)} for {config.steps} RK4 steps of h = 0.01: "
        f"mean squared error {avg_error:.4g}, final error {float(error[-1]):.3g}.\n\n"
        f"Command: `lyagym reproduce fig4 --size {args.size} --seed {args.seed}`\n"
    )
    save_text(summary, folder / "fig4.md")
    print(summary)
    print(f"wrote {folder / 'fig4.png'}, {folder / 'fig4.md'}, {folder / 'fig4_model.pt'}")
    return 0
