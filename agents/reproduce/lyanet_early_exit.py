"""LyaNet Fig. 3 analogue: prediction loss vs inference time with early termination
(``lyagym reproduce lyanet-early-exit``).

Trains the digits neural ODE (adjoint) and Monte Carlo LyaNet of ``lyanet_digits``, then
stops inference at ``t = 0.05, 0.1, ..., 1`` (fixed-step rk4, step 0.05, so the cost is
proportional to ``t``) and records, on the test examples both models classify correctly at
``t = 1`` (as in the paper), the mean cross-entropy loss and the error, against the measured
wall-clock inference time (median of repeats). Writes ``fig3_early_exit.png`` and
``early_exit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from lyagym.learned_models.lyanet import fit
from lyagym.learned_models.neural_ode import NeuralODE

from .lyanet_digits import build_model, load_digits_split, prepare_output, write_atomic
from ..cli_types import folder, integer, number

__all__ = ["add_arguments", "run", "early_exit_curve"]

FILES = ["fig3_early_exit.png", "early_exit.json"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=folder, default="./lyagym-output/lyanet-early-exit", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files in --out")
    parser.add_argument("--epochs", type=integer(1), default=60, help="training epochs (default: %(default)s)")
    parser.add_argument("--kappa", type=number(0, strict=True), default=4.0, help="LyaNet convergence rate (default: %(default)s)")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed (default: %(default)s)")
    parser.add_argument("--repeats", type=integer(1), default=5, help="timing repeats per point (default: %(default)s)")


@torch.no_grad()
def early_exit_curve(model: NeuralODE, x, y, times, *, step_size: float = 0.05, repeats: int = 5) -> list[dict]:
    """For each exit time ``t``: mean CE loss, error and median inference seconds on ``(x, y)``."""
    rows = []
    for t in times:
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            logits = model(x, float(t), method="rk4", step_size=step_size)
            seconds.append(time.perf_counter() - start)
        loss = torch.nn.functional.cross_entropy(logits, y)
        err = (logits.argmax(-1) != y).float().mean()
        rows.append({"t": float(t), "loss": float(loss), "error": float(err), "seconds": statistics.median(seconds),
                     "nfe": model.last_nfe})
    return rows


def run(args: argparse.Namespace) -> int:
    prepare_output(args.out, FILES, args.overwrite)
    xtr, ytr, xte, yte = load_digits_split(seed=args.seed)
    models = {}
    for label, method in (("Neural ODE", "adjoint"), ("LyaNet", "monte_carlo")):
        model = build_model(64, 10, kappa=args.kappa, seed=args.seed)
        fit(model, xtr, ytr, method=method, kappa=args.kappa, epochs=args.epochs, seed=args.seed, progress=True)
        models[label] = model.eval()
    with torch.no_grad():
        both = torch.ones_like(yte, dtype=torch.bool)
        for model in models.values():
            both &= model(xte, 1.0).argmax(-1) == yte
    x, y = xte[both], yte[both]
    times = [round(0.05 * i, 2) for i in range(1, 21)]
    curves = {label: early_exit_curve(m, x, y, times, repeats=args.repeats) for label, m in models.items()}
    print(f"{int(both.sum())} test examples classified correctly by both models at t = 1")
    print(f"{'t':>5} | " + " | ".join(f"{label} loss / err / ms" for label in curves))
    for i, t in enumerate(times):
        cells = [f"{c[i]['loss']:.3f} / {100 * c[i]['error']:.1f}% / {1e3 * c[i]['seconds']:.1f}" for c in curves.values()]
        print(f"{t:>5.2f} | " + " | ".join(cells))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, c in curves.items():
        axes[0].plot([r["nfe"] for r in c], [r["loss"] for r in c], "o-", label=label)
        axes[1].plot([r["t"] for r in c], [100 * r["error"] for r in c], "o-", label=label)
    # Function evaluations, not noisy wall-clock, on the axis: with a fixed step the time of
    # inference is proportional to them (medians in ms are in early_exit.json).
    axes[0].set_xlabel("inference cost with early termination (function evaluations)")
    axes[0].set_ylabel("cross-entropy loss")
    axes[0].set_yscale("log")
    axes[1].set_xlabel("exit time t")
    axes[1].set_ylabel("error on these examples (%)")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Digits, {len(y)} test examples correct at t = 1 for both models")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, FILES[0]), dpi=90)
    plt.close(fig)
    write_atomic(os.path.join(args.out, FILES[1]), json.dumps({"n_examples": len(y), "curves": curves}, indent=2))
    print(f"wrote {', '.join(FILES)} to {args.out}")
    return 0
