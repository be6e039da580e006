"""Manek & Kolter (2019) Fig. 3: a random, untrained stable model in 2-D (section 4.1).

Three stream plots side by side: the nominal dynamics ``fhat`` of a random 2-100-100-2
MLP, the convex positive definite Lyapunov function ``V`` of a random 2-100-100-1 ICNN
(as contours), and the resulting stable dynamics ``f`` of eq. 10, which is ``fhat``
projected so that ``grad V . f <= -alpha V`` everywhere. Even with random weights every
trajectory of ``f`` flows into the equilibrium at the origin.

Run::

    lyagym reproduce fig3 --out ./lyagym-output/fig3

This module also holds the plotting helpers the other pendulum figures share
(``stream_plot``, ``contour_plot``, ``save_figure``, ``prepare_output``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from lyagym.learned_models.files import atomic_write
from ..cli_types import folder, integer, number

__all__ = ["add_arguments", "run", "stream_plot", "contour_plot", "save_figure", "prepare_output"]

#: Grid points per axis for each ``--size``.
GRID = {"tiny": 12, "default": 40, "full": 80}


# --------------------------------------------------------------------------- shared helpers


def prepare_output(out: str | os.PathLike, names: Sequence[str], overwrite: bool) -> Path:
    """Create ``out`` and refuse to replace existing result files unless ``overwrite``.

    Returns the output folder. Raises ``FileExistsError`` naming the files otherwise.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    existing = [n for n in names if (folder / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{folder} already holds {', '.join(existing)}; pass --overwrite to replace them or choose another --out"
        )
    return folder


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    atomic_write(path, write)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (temp file + ``os.replace``) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    _atomic_write(path, write)
    return path


def _grid(extent: Sequence[float], n_grid: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    x0, x1, y0, y1 = extent
    xs, ys = np.linspace(x0, x1, n_grid), np.linspace(y0, y1, n_grid)
    X, Y = np.meshgrid(xs, ys)
    pts = torch.as_tensor(np.stack([X.ravel(), Y.ravel()], axis=1))
    return X, Y, pts


def _evaluate(fn: Callable[[torch.Tensor], torch.Tensor], pts: torch.Tensor, like) -> np.ndarray:
    dtype = getattr(like, "dtype", torch.float64)
    device = getattr(like, "device", "cpu")
    with torch.no_grad():
        out = fn(pts.to(device=device, dtype=dtype))
    out = out.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError("the plotted function returned NaN or inf on the grid")
    return out


def stream_plot(
    ax,
    field: Callable[[torch.Tensor], torch.Tensor],
    extent: Sequence[float],
    *,
    n_grid: int = 40,
    like=None,
    title: str | None = None,
    labels: tuple[str, str] = ("$x_1$", "$x_2$"),
) -> None:
    """Stream plot of a 2-D vector field ``field: (batch, 2) -> (batch, 2)`` on ``extent``.

    ``like`` (a model or tensor) gives the dtype and device to evaluate in; lines are
    coloured by speed.
    """
    X, Y, pts = _grid(extent, n_grid)
    F = _evaluate(field, pts, like)
    U, W = F[:, 0].reshape(X.shape), F[:, 1].reshape(X.shape)
    speed = np.hypot(U, W)
    ax.streamplot(X, Y, U, W, color=np.log1p(speed), cmap="viridis", density=1.2, linewidth=0.8, arrowsize=0.8)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if title:
        ax.set_title(title)


def contour_plot(
    ax,
    fn: Callable[[torch.Tensor], torch.Tensor],
    extent: Sequence[float],
    *,
    n_grid: int = 40,
    like=None,
    title: str | None = None,
    labels: tuple[str, str] = ("$x_1$", "$x_2$"),
) -> None:
    """Filled contours of a scalar function ``fn: (batch, 2) -> (batch,)`` on ``extent``."""
    X, Y, pts = _grid(extent, n_grid)
    Z = _evaluate(fn, pts, like).reshape(X.shape)
    cs = ax.contourf(X, Y, Z, levels=20, cmap="magma")
    ax.contour(X, Y, Z, levels=20, colors="k", linewidths=0.3, alpha=0.5)
    ax.figure.colorbar(cs, ax=ax, shrink=0.8)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if title:
        ax.set_title(title)


def nominal_field(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fhat`` of a ``StableDynamics`` model, the unprojected network (eq. 10's input)."""
    for name in ("fhat", "nominal", "f_hat"):
        fhat = getattr(model, name, None)
        if callable(fhat):
            return fhat
    raise AttributeError(f"{type(model).__name__} exposes no nominal dynamics (fhat)")


# --------------------------------------------------------------------------- the study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=folder, default="./lyagym-output/fig3", help="output folder (default: %(default)s)")
    parser.add_argument("--size", choices=sorted(GRID), default="default", help="grid resolution preset")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of the random networks (default: %(default)s)")
    parser.add_argument("--alpha", type=number(0), default=0.5, help="decay rate of eq. 10 (default: %(default)s)")
    parser.add_argument("--extent", type=number(0, strict=True), default=2.0, help="plot [-E, E]^2 (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files in --out")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lyagym.learned_models import StableDynamics

    if not args.extent > 0:
        raise SystemExit(f"--extent must be > 0, got {args.extent}")
    folder = prepare_output(args.out, ["fig3.png"], args.overwrite)
    torch.manual_seed(args.seed)
    # Section 4.1: fhat a 2-100-100-2 MLP, V a 2-100-100-1 ICNN, PyTorch's default init.
    model = StableDynamics(2, hidden=(100, 100), lyap_hidden=(100, 100), alpha=args.alpha).double()
    # "the ICNN having its U weights further put through a softplus": softplus of PyTorch's
    # default (Kaiming-uniform) init, not the ICNN's own smaller start.
    from .fig5 import widen_icnn_init

    widen_icnn_init(model, offset=0.0)
    model.eval()
    E = float(args.extent)
    extent = (-E, E, -E, E)
    n_grid = GRID[args.size]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    stream_plot(axes[0], nominal_field(model), extent, n_grid=n_grid, like=model, title=r"Nominal $\hat f$ (random)")
    contour_plot(axes[1], model.lyapunov, extent, n_grid=n_grid, like=model, title="Lyapunov function $V$ (random ICNN)")
    stream_plot(axes[2], model.derivative, extent, n_grid=n_grid, like=model, title=f"Stable $f$ (eq. 10, alpha={args.alpha:g})")
    fig.suptitle("Manek & Kolter Fig. 3: random networks, before any training")
    fig.tight_layout()
    path = save_figure(fig, folder / "fig3.png")
    print(f"wrote {path}")
    return 0
