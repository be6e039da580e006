"""LyaNet Fig. 1 and Fig. 4 on a 2-D toy task (``lyagym reproduce lyanet-toy``).

Trains, on the same concentric circles, an MLP classifier, a neural ODE (adjoint) and a
Monte Carlo LyaNet with the same ``f`` architecture, then writes

- ``fig1_dynamics.png``: for one input ``x`` per class, the inference dynamics
  ``f(eta, x, t = 0.5)`` as a quiver plot over the 2-D hidden state space, trajectories from
  100 initial states, and the background coloured by the probability of the correct class
  ``softmax(psi(eta))_y`` (Fig. 1: LyaNet's flow points to the correct region everywhere);
- ``fig4_softmax.png``: the predicted probability of the outer class over the input plane,
  near the data and zoomed out (Fig. 4: LyaNet's transition between the circles is smooth);
- ``toy_results.json``: train/test accuracies.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from torch import nn

from lyagym.learned_models.lyanet import classification_box, evaluate, fit
from lyagym.learned_models.neural_ode import NeuralODE
from lyagym.learned_models.toy_data import TOY_TASKS, make_toy

from .lyanet_digits import prepare_output, write_atomic
from ..cli_types import folder, integer, number

__all__ = ["add_arguments", "run", "train_models"]

FILES = ["fig1_dynamics.png", "fig4_softmax.png", "toy_results.json"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=folder, default="./lyagym-output/lyanet-toy", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files in --out")
    parser.add_argument("--task", choices=sorted(TOY_TASKS), default="circles", help="toy task (default: %(default)s)")
    parser.add_argument("--n", type=integer(1), default=512, help="training points (default: %(default)s)")
    parser.add_argument("--epochs", type=integer(1), default=60, help="training epochs (default: %(default)s)")
    parser.add_argument("--kappa", type=number(0, strict=True), default=2.0, help="LyaNet convergence rate (default: %(default)s)")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed (default: %(default)s)")


class _Mlp(nn.Module):
    """The Fig. 4 MLP baseline, about as many parameters as the ODE models' ``f``."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: float = 1.0, **_: object) -> torch.Tensor:
        return self.net(x)


def train_models(x, y, *, epochs: int, kappa: float, seed: int) -> dict[str, nn.Module]:
    """``{"MLP", "Neural ODE", "LyaNet"}`` trained on ``(x, y)``."""
    s = classification_box(2, kappa)
    models: dict[str, nn.Module] = {}
    torch.manual_seed(seed)
    mlp = _Mlp()
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(epochs * 8):
        loss = nn.functional.cross_entropy(mlp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    models["MLP"] = mlp.eval()
    for label, method in (("Neural ODE", "adjoint"), ("LyaNet", "monte_carlo")):
        torch.manual_seed(seed)
        model = NeuralODE.mlp(2, 2, width=32, max_speed=s, step_size=0.1)
        fit(model, x, y, method=method, kappa=kappa, epochs=epochs, batch_size=64, lr=1e-2, seed=seed, progress=True)
        models[label] = model
    return models


def _fig1(models, x, y, path: str, kappa: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = classification_box(2, kappa)
    lim = 1.3 * s
    grid = torch.linspace(-lim, lim, 21)
    ge, gf = torch.meshgrid(grid, grid, indexing="xy")
    etas = torch.stack([ge.reshape(-1), gf.reshape(-1)], -1)
    fine = torch.linspace(-lim, lim, 120)
    fe, ff = torch.meshgrid(fine, fine, indexing="xy")
    fine_etas = torch.stack([fe.reshape(-1), ff.reshape(-1)], -1)
    picks = [int((y == c).nonzero()[0]) for c in (0, 1)]
    gen = torch.Generator().manual_seed(0)
    starts = (torch.rand(100, 2, generator=gen) * 2 - 1) * s
    fig, axes = plt.subplots(2, 2, figsize=(10, 10))
    for col, label in enumerate(("Neural ODE", "LyaNet")):
        model = models[label]
        for row, i in enumerate(picks):
            ax = axes[row, col]
            xi = x[i : i + 1]
            with torch.no_grad():
                prob = torch.softmax(model.readout(fine_etas), -1)[:, int(y[i])].reshape(fe.shape)
                f = model.f(etas, xi.expand(etas.shape[0], -1), 0.5)
                times = torch.linspace(0, 1, 41)
                paths = torch.stack([  # each start is an initial condition eta(0)
                    _solve_from(model, xi.expand(100, -1), starts, times)
                ])[0]
            ax.contourf(fe, ff, prob, levels=[i / 20 for i in range(21)], cmap="coolwarm", vmin=0, vmax=1)
            ax.quiver(ge, gf, f[:, 0].reshape(ge.shape), f[:, 1].reshape(ge.shape), color="k", alpha=0.6)
            for j in range(100):
                ax.plot(paths[:, j, 0], paths[:, j, 1], "k:", lw=0.7)
            ax.set_title(f"{label}: x of class {int(y[i])} (red = correct)")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xlabel("eta_0")
            ax.set_ylabel("eta_1")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _solve_from(model: NeuralODE, x, eta0, times):
    from torchdiffeq import odeint

    return odeint(lambda t, e: model.f(e, x, t), eta0, times, method="rk4", options={"step_size": 0.025})


def _fig4(models, x, y, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 9))
    for row, lim in enumerate((1.5, 5.0)):
        g = torch.linspace(-lim, lim, 150)
        gx, gy = torch.meshgrid(g, g, indexing="xy")
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
        axes[row, 0].scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=6)
        axes[row, 0].set_title("training data")
        axes[row, 0].set_xlim(-lim, lim)
        axes[row, 0].set_ylim(-lim, lim)
        for col, label in enumerate(("MLP", "Neural ODE", "LyaNet"), start=1):
            with torch.no_grad():
                prob = torch.softmax(models[label](pts, 1.0), -1)[:, 1].reshape(gx.shape)
            im = axes[row, col].contourf(gx, gy, prob, levels=[i / 20 for i in range(21)], cmap="coolwarm", vmin=0, vmax=1)
            axes[row, col].set_title(f"{label}" + (" (zoomed out)" if row else ""))
        fig.colorbar(im, ax=axes[row].tolist(), shrink=0.8, label="P(outer class)")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    prepare_output(args.out, FILES, args.overwrite)
    x, y = make_toy(args.task, args.n, seed=args.seed)
    xt, yt = make_toy(args.task, args.n, seed=args.seed + 1000)
    models = train_models(x, y, epochs=args.epochs, kappa=args.kappa, seed=args.seed)
    results = {}
    for label, model in models.items():
        results[label] = {"train_error": evaluate(model, x, y)[0], "test_error": evaluate(model, xt, yt)[0]}
        print(f"{label:<11} train error {100 * results[label]['train_error']:.1f}%  test error {100 * results[label]['test_error']:.1f}%")
    _fig1(models, x, y, os.path.join(args.out, FILES[0]), args.kappa)
    _fig4(models, x, y, os.path.join(args.out, FILES[1]))
    write_atomic(os.path.join(args.out, FILES[2]), json.dumps(results, indent=2))
    print(f"wrote {', '.join(FILES)} to {args.out}")
    return 0
