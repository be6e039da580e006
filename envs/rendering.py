"""Drawing the n-link pendulum: pure pictures, no physics.

``draw_pendulum`` turns link end points (``PendulumDynamics.positions(x)``) into an
``(H, W, 3)`` uint8 image with PIL (links, point masses, the pivot, and an optional trail
and torque arcs); ``HumanWindow`` shows such
frames in a pygame window for ``render_mode="human"``. pygame is imported lazily, only when
a window is opened, so headless use never needs it.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_pendulum", "HumanWindow"]

_BACKGROUND = (255, 255, 255)
_LINK = (40, 70, 160)
_MASS = (200, 60, 40)
_PIVOT = (30, 30, 30)
_TARGET = (200, 200, 200)
_TORQUE = (40, 160, 60)


def draw_pendulum(
    points: np.ndarray,
    masses: Sequence[float] | None = None,
    *,
    size: int = 500,
    torque: np.ndarray | None = None,
    max_torque: float | np.ndarray | None = None,
    actuated: Sequence[int] | None = None,
    trail: np.ndarray | None = None,
    target: float | None = None,
) -> np.ndarray:
    """Draw one pendulum configuration.

    Args:
        points: ``(n, 2)`` link end points in metres (x right, y up, pivot at the origin),
            as ``PendulumDynamics.positions(x)`` returns them. The picture is scaled so the
            fully stretched chain fits.
        masses: ``(n,)`` masses; bob areas scale with them (uniform when ``None``).
        size: image side in pixels.
        torque: ``(action_dim,)`` torques to draw as arcs at the actuated joints.
        max_torque: the torque limit(s), to scale the arcs (a half circle at the limit).
        actuated: 0-based joint index of each torque entry (default ``0..action_dim-1``).
        trail: ``(k, 2)`` earlier tip positions (metres) drawn as a faint line.
        target: if given, marks where the tip would be with every link at this absolute
            angle (e.g. ``pi`` for the upright target).

    Returns:
        ``(size, size, 3)`` uint8 RGB image.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 1:
        raise ValueError(f"points must have shape (n_links, 2), got {points.shape}")
    n = points.shape[0]
    masses = np.ones(n) if masses is None else np.asarray(masses, dtype=np.float64).reshape(-1)
    if masses.shape[0] != n:
        raise ValueError(f"masses must have {n} entries (one per link), got {masses.shape[0]}")
    joints = np.vstack([np.zeros((1, 2)), points])
    # The chain's length is constant, so the scale never jumps between frames.
    reach = float(np.linalg.norm(np.diff(joints, axis=0), axis=1).sum()) or 1.0

    image = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    scale = 0.45 * size / reach
    centre = size / 2.0

    def to_pixels(xy: np.ndarray) -> list[tuple[float, float]]:
        xy = np.atleast_2d(xy)
        return [(centre + scale * x, centre - scale * y) for x, y in xy]

    if target is not None:
        r = scale * reach
        tip = to_pixels(np.array([reach * math.sin(target), -reach * math.cos(target)]))[0]
        draw.ellipse([centre - r, centre - r, centre + r, centre + r], outline=(235, 235, 235), width=1)
        draw.ellipse([tip[0] - 6, tip[1] - 6, tip[0] + 6, tip[1] + 6], outline=_TARGET, width=2)

    if trail is not None and len(trail) > 1:
        draw.line(to_pixels(np.asarray(trail)), fill=(170, 190, 230), width=max(1, size // 250))

    pixels = to_pixels(joints)
    draw.line(pixels, fill=_LINK, width=max(2, size // 60), joint="curve")

    if torque is not None:
        torque = np.asarray(torque, dtype=np.float64).reshape(-1)
        which = range(len(torque)) if actuated is None else actuated
        limit = np.broadcast_to(np.abs(np.asarray(1.0 if max_torque is None else max_torque, dtype=np.float64)), torque.shape)
        radius = max(6.0, size / 14)
        for j, tau, lim in zip(which, torque, limit):
            if tau == 0 or lim == 0:
                continue
            x, y = pixels[j]
            sweep = 180.0 * min(abs(tau) / lim, 1.0)
            # PIL angles grow clockwise on screen; a positive torque turns counter-clockwise.
            start = -90.0 - sweep if tau > 0 else -90.0
            draw.arc([x - radius, y - radius, x + radius, y + radius], start, start + sweep, fill=_TORQUE, width=3)

    base_radius = max(3.0, size / 40)
    for (x, y), m in zip(pixels[1:], masses / masses.max()):
        r = base_radius * math.sqrt(max(m, 0.05))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_MASS)
    x, y = pixels[0]
    r = max(2.0, size / 100)
    draw.ellipse([x - r, y - r, x + r, y + r], fill=_PIVOT)
    return np.asarray(image, dtype=np.uint8)


class HumanWindow:
    """A pygame window that shows rgb frames at a fixed frame rate (``render_mode="human"``)."""

    def __init__(self, size: int, fps: float, title: str = "lyagym"):
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            import pygame
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise ImportError(
                'render_mode="human" needs pygame; install it with `pip install pygame` '
                'or use render_mode="rgb_array"'
            ) from e
        self._pygame = pygame
        pygame.display.init()  # display only: a full pygame.init() would also open audio
        self.screen = pygame.display.set_mode((size, size))
        pygame.display.set_caption(title)
        self.clock = pygame.time.Clock()
        self.fps = fps

    def show(self, frame: np.ndarray) -> None:
        """Blit an ``(H, W, 3)`` uint8 frame and wait to keep ``fps``."""
        pygame = self._pygame
        pygame.event.pump()
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        self.screen.blit(surface, (0, 0))
        pygame.display.flip()
        self.clock.tick(self.fps)

    def close(self) -> None:
        pygame = self._pygame
        pygame.display.quit()
