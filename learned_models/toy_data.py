"""Small 2-D classification tasks generated in-package (LyaNet Fig. 1 and Fig. 4).

Each generator returns ``(x, y)``: ``x`` float ``(n, 2)`` points, ``y`` int64 ``(n,)``
labels, reproducible from ``seed``. Pick one by name from ``TOY_TASKS``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["TOY_TASKS", "concentric_circles", "two_moons", "make_toy"]


def _check(n: int, noise: float) -> None:
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")


def concentric_circles(
    n: int = 512, *, radii: tuple[float, float] = (0.5, 1.0), noise: float = 0.05, seed: int = 0, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy concentric circles (Fig. 4): class 0 on the inner radius, class 1 on the outer.

    Args:
        n: number of points, split evenly between the classes.
        radii: ``(inner, outer)`` radii, ``0 < inner < outer``.
        noise: standard deviation of isotropic Gaussian noise added to each point.
        seed: generator seed.
    """
    _check(n, noise)
    inner, outer = radii
    if not 0 < inner < outer:
        raise ValueError(f"radii must satisfy 0 < inner < outer, got {radii!r}")
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    angle = torch.rand(n, generator=gen, dtype=torch.float64) * (2 * math.pi)
    radius = torch.where(y == 0, torch.tensor(float(inner)), torch.tensor(float(outer))).to(torch.float64)
    x = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=-1)
    x = x + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return x.to(dtype), y


def two_moons(n: int = 512, *, noise: float = 0.1, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half circles, centred near the origin."""
    _check(n, noise)
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    angle = torch.rand(n, generator=gen, dtype=torch.float64) * math.pi
    upper = torch.stack([angle.cos(), angle.sin()], dim=-1)
    lower = torch.stack([1.0 - angle.cos(), 0.5 - angle.sin()], dim=-1)
    x = torch.where((y == 0).unsqueeze(-1), upper, lower) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    x = x + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return x.to(dtype), y


#: Toy tasks by name.
TOY_TASKS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "circles": concentric_circles,
    "moons": two_moons,
}


def make_toy(name: str, n: int = 512, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``TOY_TASKS[name](n, **kwargs)`` with a clear error for an unknown name."""
    if name not in TOY_TASKS:
        raise ValueError(f"unknown toy task {name!r}; choose from {sorted(TOY_TASKS)}")
    return TOY_TASKS[name](n, **kwargs)
