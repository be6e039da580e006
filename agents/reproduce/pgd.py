"""Projected gradient descent attacks (Madry et al. 2018), L-inf and L2, for the LyaNet
Table 1 analogue. Small and in-package: batched, device-agnostic, seeded random start.

``pgd_attack(predict, x, y, eps=..., norm="linf")`` maximises the classification loss of
``predict(x + e)`` over ``||e|| <= eps`` (and ``x + e`` inside ``clip``) by ``steps``
signed (L-inf) or normalised (L2) gradient steps, each followed by projection.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["pgd_attack", "ATTACK_LOSSES"]


def _margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y``: not saturated by confident logits."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


#: Per-example losses the attack ascends.
ATTACK_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": lambda z, y: F.cross_entropy(z, y, reduction="none"),
    "margin": _margin_loss,
}


def _l2_normalise(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (v.ndim - 1))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.ndim - 1))
    return delta * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)


def pgd_attack(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
    loss: str = "cross_entropy",
    random_start: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """Adversarial examples ``x + e`` with ``||e||_norm <= eps``, ``(batch, ...)`` like ``x``.

    Args:
        predict: differentiable ``(batch, ...) -> (batch, n_classes)`` logits.
        x: clean inputs; y: ``(batch,)`` int labels.
        eps: attack radius ``>= 0`` (0 returns ``x``).
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps (10 as in the paper's appendix C).
        step_size: default ``2.5 eps / steps``.
        clip: valid input range, or ``None``.
        loss: key of ``ATTACK_LOSSES``.
        random_start: start from a uniform point of the ball (seeded).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if loss not in ATTACK_LOSSES:
        raise ValueError(f"loss must be one of {sorted(ATTACK_LOSSES)}, got {loss!r}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if eps == 0:
        return x.detach().clone()
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    objective = ATTACK_LOSSES[loss]
    x = x.detach()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    if random_start:
        if norm == "linf":
            delta = (2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1) * eps
        else:
            direction = _l2_normalise(torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype))
            radius = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / x[0].numel())
            delta = direction * (eps * radius).view(-1, *[1] * (x.ndim - 1))
    else:
        delta = torch.zeros_like(x)
    for _ in range(steps):
        adv = x + delta
        if clip is not None:
            adv = adv.clamp(*clip)
        adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(objective(predict(adv), y).sum(), adv)
        step = grad.sign() if norm == "linf" else _l2_normalise(grad)
        delta = _project(adv.detach() + alpha * step - x, eps, norm)
    adv = x + delta
    return adv.clamp(*clip) if clip is not None else adv
