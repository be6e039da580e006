"""LyaNet Table 1 analogue on scikit-learn's 8x8 digits (``lyagym reproduce lyanet-digits``).

The paper's FashionMNIST row (test error %, nominal / PGD L-inf 8/255 / PGD L2 127/255):
neural ODE 8.66 / 77.9 / 29.85 vs LyaNet 7.9 / 46.33 / 25.14. Here the same comparison on
a dataset that ships offline: the data-controlled neural ODE (eq. 1-3, ``k = m = 10``
hidden dimensions, identity readout, ``eta(0) = 0``) with identical architecture, trained

- by the adjoint method (the baseline, "neural ODE"),
- by Monte Carlo LyaNet (Alg. 1) and
- by path-integral LyaNet (Alg. 2, exponential form of eq. 16),

then attacked with a 10-step PGD (L-inf and L2). For each LyaNet model the Theorem-3
certified L-inf radius is reported with both Lipschitz estimates. Writes ``table.md``,
``results.json`` and prints the table. Needs scikit-learn (``pip install scikit-learn``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import time

import torch

from lyagym.learned_models.lyanet import classification_box, evaluate, fit, lipschitz_estimate, theorem3_radii
from lyagym.learned_models.files import atomic_write
from lyagym.learned_models.neural_ode import NeuralODE

from .pgd import pgd_attack

__all__ = ["add_arguments", "run", "load_digits_split", "build_model", "prepare_output", "write_atomic", "METHODS"]

#: Rows of the table: label -> training method of ``lyanet.fit``.
METHODS = {"Neural ODE (adjoint)": "adjoint", "LyaNet (Monte Carlo)": "monte_carlo", "LyaNet (path integral)": "path_integral"}

PAPER_ROW = "FashionMNIST (paper): neural ODE 8.66 / 77.9 / 29.85, LyaNet 7.9 / 46.33 / 25.14"


def load_digits_split(*, test_fraction: float = 0.2, seed: int = 0, dtype=torch.float32):
    """``(x_train, y_train, x_test, y_test)``: digits scaled to ``[0, 1]``, ``(n, 64)``, labels int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the digits study needs scikit-learn, an optional dependency: pip install scikit-learn"
        ) from None
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=dtype)
    y = torch.tensor(labels, dtype=torch.int64)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * x.shape[0]))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def build_model(input_dim: int, n_classes: int, *, kappa: float, width: int = 128, depth: int = 2, seed: int = 0) -> NeuralODE:
    """The model every row shares: ``f`` bounded by the appendix-B box ``s(kappa)`` so that
    inference paths from ``eta(0) = 0`` stay in the box that Monte Carlo training samples."""
    torch.manual_seed(seed)
    s = classification_box(n_classes, kappa)
    return NeuralODE.mlp(input_dim, n_classes, width=width, depth=depth, max_speed=s, method="rk4", step_size=0.1)


def prepare_output(out: str, names: list[str], overwrite: bool) -> None:
    """Create ``out``; refuse to replace existing result files unless ``overwrite``."""
    os.makedirs(out, exist_ok=True)
    existing = [n for n in names if os.path.exists(os.path.join(out, n))]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {existing}; pass --overwrite to replace them")


def write_atomic(path: str, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="./lyagym-output/lyanet-digits", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files in --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, initialisation and training (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs of every model (default: %(default)s)")
    parser.add_argument("--kappa", type=float, default=4.0, help="LyaNet convergence rate; also sets the state box "
                        "and the speed bound of every model (default: %(default)s)")
    parser.add_argument("--width", type=int, default=128, help="hidden width of f (default: %(default)s)")
    parser.add_argument("--eps-linf", type=float, nargs="+", default=[8 / 255, 16 / 255],
                        help="PGD L-inf radii; the first is the main column (default: 8/255 as in the paper, and 16/255)")
    parser.add_argument("--eps-l2", type=float, nargs="+", default=[127 / 255],
                        help="PGD L2 radii; the first is the main column (default: 127/255 as in the paper)")
    parser.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations (default: %(default)s)")
    parser.add_argument("--attack-loss", choices=("cross_entropy", "margin"), default="cross_entropy",
                        help="loss the attack ascends (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a few epochs, for a smoke test")


def _robust_error(model: NeuralODE, x, y, *, eps: float, norm: str, steps: int, loss: str, seed: int) -> float:
    adv = pgd_attack(lambda z: model(z, 1.0), x, y, eps=eps, norm=norm, steps=steps, loss=loss, seed=seed)
    return evaluate(model, adv, y)[0]


def run(args: argparse.Namespace) -> int:
    prepare_output(args.out, ["table.md", "results.json"], args.overwrite)
    epochs = 3 if args.quick else args.epochs
    xtr, ytr, xte, yte = load_digits_split(seed=args.seed)
    results = {}
    for label, method in METHODS.items():
        model = build_model(64, 10, kappa=args.kappa, width=args.width, seed=args.seed)
        start = time.perf_counter()
        history = fit(model, xtr, ytr, method=method, kappa=args.kappa, epochs=epochs, seed=args.seed,
                      batch_size=64, progress=True)
        train_s = time.perf_counter() - start
        model.eval()
        row = {
            "method": method,
            "train_seconds": train_s,
            "nominal": evaluate(model, xte, yte)[0],
            "linf": {eps: _robust_error(model, xte, yte, eps=eps, norm="linf", steps=args.pgd_steps, loss=args.attack_loss, seed=args.seed)
                     for eps in args.eps_linf},
            "l2": {eps: _robust_error(model, xte, yte, eps=eps, norm="l2", steps=args.pgd_steps, loss=args.attack_loss, seed=args.seed)
                   for eps in args.eps_l2},
            "final_train_objective": history.train_loss[-1],
        }
        lip_sampled = lipschitz_estimate(model, norm="linf", method="sampled", x=xte, y=yte,
                                         half_width=classification_box(10, args.kappa))
        lip_spectral = lipschitz_estimate(model, norm="linf", method="spectral")
        radii = theorem3_radii(model, xte, yte, kappa=args.kappa, lipschitz=lip_sampled)
        row.update(
            lipschitz_sampled=lip_sampled,
            lipschitz_spectral=lip_spectral,
            radius_linf_median_sampled=float(radii["radius"].median()),
            radius_linf_median_spectral=float(radii["radius"].median()) * lip_sampled / lip_spectral,
            share_certified=float((radii["radius"] > 0).float().mean()),
            share_path_stable=float(radii["stable"].float().mean()),
            share_path_points_decreasing=float(radii["stable_fraction"].mean()),
        )
        results[label] = row
        attacks = "  ".join(f"L-inf {e:.3f}: {100 * v:.2f}%" for e, v in row["linf"].items())
        attacks += "  " + "  ".join(f"L2 {e:.3f}: {100 * v:.2f}%" for e, v in row["l2"].items())
        print(f"{label}: nominal {100 * row['nominal']:.2f}%  {attacks}  ({train_s:.1f} s)")
    lines = [
        f"Digits (sklearn, {xtr.shape[0]} train / {xte.shape[0]} test), test error %; PGD {args.pgd_steps} steps "
        f"({args.attack_loss}); {epochs} epochs, kappa={args.kappa}, width {args.width}, seed {args.seed}.",
        "",
        "| method | nominal | " + " | ".join(f"L-inf {e:.4f}" for e in args.eps_linf) + " | "
        + " | ".join(f"L2 {e:.4f}" for e in args.eps_l2)
        + " | train s | Thm-3 L-inf radius (median, sampled L) | certified share | path points with eq. 10 |",
        "|---|---|" + "---|" * (len(args.eps_linf) + len(args.eps_l2)) + "---|---|---|---|",
    ]
    for label, r in results.items():
        cells = " | ".join(f"{100 * v:.2f}" for v in [*r["linf"].values(), *r["l2"].values()])
        lines.append(
            f"| {label} | {100 * r['nominal']:.2f} | {cells} | {r['train_seconds']:.1f} | "
            f"{r['radius_linf_median_sampled']:.2e} | {100 * r['share_certified']:.1f}% | {100 * r['share_path_points_decreasing']:.1f}% |"
        )
    lines += ["", PAPER_ROW, ""]
    table = "\n".join(lines)
    print(table)
    write_atomic(os.path.join(args.out, "table.md"), table)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}
    write_atomic(os.path.join(args.out, "results.json"), json.dumps({"config": config, "results": results}, indent=2))
    print(f"wrote {args.out}/table.md and results.json")
    return 0
