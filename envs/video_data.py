"""Video textures to train on: seeded built-in generators and loaders for real clips.

Frames are always ``numpy`` arrays of shape ``(n_frames, height, width, 3)`` and dtype
``uint8``. The built-in textures loop seamlessly with a configurable ``period`` (every
temporal frequency is a whole number of cycles per period), which makes the frame-to-frame
map a deterministic function of the frame -- what the latent dynamics of Manek & Kolter
(2019, section 4.3) must learn -- while still looking like fire, water or sky.

>>> frames = make_texture("fire", n_frames=100, size=(32, 32), seed=0)
>>> frames.shape, frames.dtype
((100, 32, 32, 3), dtype('uint8'))

Kinds (``TEXTURES``): ``"fire"`` (flickering flames rising from the bottom edge),
``"water"`` (a wave field with deep-water dispersion, shaded by a light source),
``"clouds"`` (fractal cloud cover drifting across a sky gradient) and ``"pendulum"``
(an n-link pendulum simulated with :class:`lyagym.envs.PendulumDynamics` and drawn).

Real clips: :func:`load_frames` reads a folder of images (Pillow) or a video file
(GIF/APNG/WebP/TIFF through Pillow, anything else through the optional ``imageio``
package with its ffmpeg plugin: ``pip install "lyagym[video]"``). :func:`write_video`
writes GIF (Pillow) or MP4 (imageio) atomically.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageSequence, UnidentifiedImageError

__all__ = ["TEXTURES", "make_texture", "load_frames", "write_video"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
PILLOW_VIDEO_SUFFIXES = (".gif", ".png", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- noise core
def _looping_noise(
    rng: np.random.Generator,
    n_frames: int,
    height: int,
    width: int,
    *,
    period: int,
    spectral_slope: float,
    temporal_cycles: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    drift: tuple[int, int] = (0, 0),
    chunk: int = 64,
) -> np.ndarray:
    """A random field ``(n_frames, height, width)`` float32 with zero mean and unit std.

    Spatial Fourier modes k get amplitude ``|k|**-spectral_slope`` (fractal noise) and
    evolve with a whole number ``m_k`` of cycles per ``period`` frames (``temporal_cycles``
    draws them); ``drift = (dy, dx)`` translates the field by whole domain sizes per period.
    Both keep frame ``t + period`` equal to frame ``t`` (a seamless loop).
    """
    ky = np.fft.fftfreq(height, 1.0 / height)[:, None]
    kx = np.fft.fftfreq(width, 1.0 / width)[None, :]
    k = np.hypot(ky, kx)
    amplitude = np.where(k > 0, np.maximum(k, 1e-9) ** -spectral_slope, 0.0)
    coeffs = amplitude * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    cycles = temporal_cycles(k, rng) - ky * drift[0] - kx * drift[1]
    out = np.empty((n_frames, height, width), dtype=np.float32)
    for start in range(0, n_frames, chunk):  # chunks bound memory for long, large clips
        t = np.arange(start, min(start + chunk, n_frames), dtype=np.float64)[:, None, None]
        phase = np.exp(2j * np.pi * cycles[None] * t / period)
        out[start : start + len(t)] = np.fft.ifft2(coeffs[None] * phase).real
    out -= out.mean()
    out /= out.std() + 1e-12
    return out


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ----------------------------------------------------------------------------- textures
def _fire(rng, n_frames, height, width, period) -> np.ndarray:
    # Turbulent noise advected upward (2 heights per period); small scales flicker faster.
    noise = _looping_noise(
        rng, n_frames, height, width, period=period, spectral_slope=1.8,
        temporal_cycles=lambda k, r: np.rint(r.normal(0.0, 1.0, k.shape) * (1.0 + 0.6 * k)),
        drift=(2, 0),
    )
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[None, :, None]  # 0 at the top
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, None, :]
    fuel = 2.0 * y - 0.75 - 0.7 * x**2  # hottest at the bottom centre
    heat = np.clip(0.3 * noise + 0.6 * fuel * (1.0 + 0.3 * noise) + 0.2, 0.0, 1.0)
    heat = _smoothstep(0.08, 1.0, heat)
    # black -> red -> orange/yellow -> near white, the usual blackbody-like ramp
    rgb = np.stack([np.clip(3.0 * heat, 0, 1), np.clip(3.0 * heat - 1.0, 0, 1) ** 1.2, np.clip(3.0 * heat - 2.0, 0, 1) ** 1.5], -1)
    return _to_uint8(rgb)


def _water(rng, n_frames, height, width, period) -> np.ndarray:
    # Deep-water dispersion omega ~ sqrt(|k|): long waves roll slowly, ripples fast.
    waves = lambda k, r: np.rint(1.6 * np.sqrt(k)) * r.choice([-1.0, 1.0], size=k.shape)
    h = _looping_noise(rng, n_frames, height, width, period=period, spectral_slope=2.2, temporal_cycles=waves)
    gy, gx = np.gradient(h, axis=(1, 2))
    normal = np.stack([-gx, -gy, np.full_like(h, 0.35)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([0.4, 0.5, 0.77], dtype=np.float32)
    light /= np.linalg.norm(light)
    diffuse = np.clip(normal @ light, 0, 1)[..., None]
    specular = (np.clip(normal @ light, 0, 1) ** 40)[..., None]
    deep = np.array([0.02, 0.12, 0.28], np.float32)
    shallow = np.array([0.10, 0.55, 0.70], np.float32)
    depth_mix = _smoothstep(-2.0, 2.0, h)[..., None]
    rgb = (deep + (shallow - deep) * depth_mix) * (0.45 + 0.75 * diffuse) + 0.6 * specular
    return _to_uint8(rgb)


def _clouds(rng, n_frames, height, width, period) -> np.ndarray:
    # Fractal cover drifting one width per period, slowly changing shape.
    cover = _looping_noise(
        rng, n_frames, height, width, period=period, spectral_slope=1.7,
        temporal_cycles=lambda k, r: r.integers(-2, 3, size=k.shape).astype(float),
        drift=(0, 1),
    )
    density = _smoothstep(-0.3, 1.4, cover)[..., None]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[None, :, None, None]
    sky = np.array([0.18, 0.38, 0.78], np.float32) * (1 - y) + np.array([0.55, 0.75, 0.95], np.float32) * y
    shade = 0.78 + 0.22 * _smoothstep(-1.0, 2.5, cover)[..., None]  # thick cloud is brighter on top
    rgb = sky * (1.0 - density) + shade * density
    return _to_uint8(rgb)


def _pendulum(rng, n_frames, height, width, period, *, n_links: int = 2, damping: float = 0.0, frame_dt: float = 0.05) -> np.ndarray:
    import torch

    from .dynamics import PendulumDynamics  # lazy: the generators above need no physics

    if frame_dt <= 0:
        raise ValueError(f"frame_dt must be > 0, got {frame_dt}")
    dynamics = PendulumDynamics(n_links=int(n_links), damping=float(damping), dt=float(frame_dt))
    # Start well away from rest so an undamped chain keeps swinging for the whole clip.
    q0 = rng.uniform(-0.6 * np.pi, 0.6 * np.pi, n_links)
    x = torch.as_tensor(np.concatenate([q0, rng.normal(0.0, 1.0, n_links)]), dtype=torch.float64)[None]
    substeps = max(1, int(np.ceil(frame_dt / 0.01)))  # RK4 at <= 10 ms keeps the chain accurate
    states = [x]
    with torch.no_grad():
        for _ in range(n_frames - 1):  # time stepping is sequential by nature
            x = dynamics.step(x, None, substeps=substeps)
            states.append(x)
    states = torch.cat(states).numpy()
    positions = np.asarray(dynamics.positions(states))  # (n_frames, n_links, 2), pivot at 0, y up
    return _draw_pendulum(positions, height, width)


def _draw_pendulum(positions: np.ndarray, height: int, width: int, supersample: int = 4) -> np.ndarray:
    """Draw link chains ``(n_frames, n_links, 2)`` (pivot at the origin, y up) into frames."""
    total = float(np.abs(np.diff(np.concatenate([np.zeros_like(positions[:, :1]), positions], 1), axis=1)).sum(-1).max()) or 1.0
    s = supersample
    scale = 0.45 * min(height, width) * s / total
    cx, cy = width * s / 2, height * s / 2
    frames = np.empty((len(positions), height, width, 3), np.uint8)
    for i, chain in enumerate(positions):  # drawing is per frame; generation, not a hot loop
        img = Image.new("RGB", (width * s, height * s), (236, 232, 222))
        draw = ImageDraw.Draw(img)
        points = [(cx, cy)] + [(cx + scale * px, cy - scale * py) for px, py in chain]
        draw.line(points, fill=(40, 60, 90), width=max(1, int(0.06 * min(height, width) * s / 2)))
        r = 0.05 * min(height, width) * s
        for px, py in points[1:]:
            draw.ellipse((px - r, py - r, px + r, py + r), fill=(200, 70, 50))
        draw.ellipse((cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2), fill=(30, 30, 30))
        frames[i] = np.asarray(img.resize((width, height), Image.LANCZOS))
    return frames


TEXTURES: dict[str, Callable[..., np.ndarray]] = {
    "fire": _fire,
    "water": _water,
    "clouds": _clouds,
    "pendulum": _pendulum,
}


def make_texture(
    kind: str = "fire",
    *,
    n_frames: int = 100,
    size: tuple[int, int] | int = (32, 32),
    period: int | None = None,
    seed: int | None = 0,
    **kwargs,
) -> np.ndarray:
    """Generate a built-in video texture.

    Args:
        kind: one of ``TEXTURES`` (``"fire"``, ``"water"``, ``"clouds"``, ``"pendulum"``).
        n_frames: number of frames (>= 2).
        size: ``(height, width)`` or one int for square frames (each >= 8).
        period: frames per seamless loop (default ``n_frames``); ignored by ``"pendulum"``,
            whose motion is the simulated physics.
        seed: seeds everything random; the same seed gives the same clip.
        **kwargs: kind-specific options; ``"pendulum"`` takes ``n_links`` (2),
            ``damping`` (0.0: keeps moving) and ``frame_dt`` (0.05 s between frames).

    Returns:
        ``(n_frames, height, width, 3)`` uint8 frames.
    """
    if kind not in TEXTURES:
        raise ValueError(f"kind must be one of {sorted(TEXTURES)}, got {kind!r}")
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 2:
        raise ValueError(f"n_frames must be an int >= 2, got {n_frames!r}")
    height, width = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if min(height, width) < 8:
        raise ValueError(f"size must be at least 8x8 pixels, got {(height, width)}")
    period = int(n_frames if period is None else period)
    if period < 2:
        raise ValueError(f"period must be >= 2 frames, got {period}")


    allowed = [p for p in inspect.signature(TEXTURES[kind]).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - {p.name for p in allowed})
    if unknown:
        raise TypeError(
            f"texture {kind!r} got unexpected option(s) {unknown}; it accepts {[p.name for p in allowed] or 'none'}"
        )
    rng = np.random.default_rng(seed)
    return TEXTURES[kind](rng, int(n_frames), int(height), int(width), period, **kwargs)


# ----------------------------------------------------------------------------- loading
def _natural_key(path: Path):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", path.name)]


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"could not read image file {str(path)!r}: {err}") from err


def _read_video(path: Path, max_frames: int | None) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    if path.suffix.lower() in PILLOW_VIDEO_SUFFIXES:
        try:
            with Image.open(path) as img:
                for frame in ImageSequence.Iterator(img):
                    frames.append(np.asarray(frame.convert("RGB")))
                    if max_frames is not None and len(frames) >= max_frames:
                        break
            return frames
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"could not read video file {str(path)!r}: {err}") from err
    try:
        import imageio.v3 as iio
    except ImportError as err:
        raise ImportError(
            f"reading {path.suffix or 'this'} video files needs the optional imageio package with its "
            f"ffmpeg plugin: pip install \"lyagym[video]\" (or convert the clip to a folder of PNG frames / a GIF)"
        ) from err
    try:
        for frame in iio.imiter(path):
            frame = np.asarray(frame)
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, -1)
            frames.append(frame[..., :3])
            if max_frames is not None and len(frames) >= max_frames:
                break
    except Exception as err:  # imageio raises plugin-specific types; all mean "unreadable"
        hint = ""
        if "ffmpeg" in str(err).lower() or "plugin" in str(err).lower() or "backend" in str(err).lower():
            hint = ' (is the ffmpeg plugin installed? pip install "imageio[ffmpeg]")'
        raise ValueError(f"could not read video file {str(path)!r}{hint}: {err}") from err
    return frames


def load_frames(
    path: str | os.PathLike,
    *,
    size: tuple[int, int] | int | None = None,
    max_frames: int | None = None,
    min_frames: int = 2,
) -> np.ndarray:
    """Load a real clip as frames ``(n_frames, height, width, 3)`` uint8.

    Args:
        path: a folder of images (png/jpg/bmp/gif/tif/webp/ppm, sorted naturally so
            ``frame2`` comes before ``frame10``) or a video file. GIF/APNG/WebP/TIFF are
            read with Pillow; other formats (mp4, avi, mov, ...) need ``imageio[ffmpeg]``.
        size: resize every frame to ``(height, width)`` (or a square int). Without it all
            frames must have the same size.
        max_frames: keep only the first ``max_frames`` frames.
        min_frames: fewer frames than this is an error (training needs pairs: >= 2).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unreadable file, frames of mixed sizes (without ``size``), or too
            few frames.
        ImportError: a video format that needs imageio, which is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist (expected a folder of frames or a video file)")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if max_frames is not None:
            files = files[:max_frames]
        frames = [_read_image(p) for p in files]
        names = [p.name for p in files]
    else:
        frames = _read_video(path, max_frames)
        names = [f"frame {i}" for i in range(len(frames))]
    if len(frames) < min_frames:
        raise ValueError(
            f"{str(path)!r} holds {len(frames)} readable frame(s); at least min_frames={min_frames} are needed"
        )
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        frames = [
            f if f.shape[:2] == (height, width) else np.asarray(Image.fromarray(f).resize((width, height), Image.LANCZOS))
            for f in frames
        ]
    else:
        first = frames[0].shape
        for name, frame in zip(names, frames):
            if frame.shape != first:
                raise ValueError(
                    f"frames in {str(path)!r} have mixed sizes: {names[0]} is {first[1]}x{first[0]} but "
                    f"{name} is {frame.shape[1]}x{frame.shape[0]} (width x height); pass size=(height, width) to resize"
                )
    return np.stack(frames).astype(np.uint8, copy=False)


# ----------------------------------------------------------------------------- writing
def write_video(frames: np.ndarray, path: str | os.PathLike, *, fps: float = 20.0) -> Path:
    """Write ``(n_frames, height, width, 3)`` uint8 frames to ``.gif`` (Pillow) or another
    video format (``.mp4`` ...; needs ``imageio[ffmpeg]``), atomically (temp file + rename)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 of shape (n_frames, height, width, 3), got {frames.dtype} {frames.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
        else:
            try:
                import imageio.v3 as iio
            except ImportError as err:
                raise ImportError(f'writing {path.suffix} needs imageio with ffmpeg: pip install "lyagym[video]" (or write a .gif)') from err
            iio.imwrite(tmp, frames, fps=fps, extension=path.suffix)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
