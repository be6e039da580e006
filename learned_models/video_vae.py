"""A convolutional VAE with learned latent dynamics for video textures (Manek & Kolter 2019,
section 4.3, Fig. 6).

An encoder ``e`` maps a frame ``y_t`` to the mean and log-variance of a Gaussian over the
latent state ``z_t in R^n`` (the paper uses ``n = 320``); a decoder ``d`` maps latents back to
frames; and latent dynamics advance the state one frame,

    z_{t+1} = z_t + f(z_t),

with ``f`` a ``StableDynamics`` (globally exponentially stable by construction) or the
unconstrained ``SimpleDynamics`` baseline. All three are trained jointly, end to end, on
pairs of successive frames with the loss of eq. 21:

    KL(N(mu_t, sigma_t^2) || N(0, I)) + E_z[ ||d(z_t) - y_t||^2 + ||d(z_t + f(z_t)) - y_{t+1}||^2 ]

To generate a texture, seed with the encoding of one frame, integrate, and decode
(:meth:`VideoVAE.generate`).

Frames inside the model are float tensors ``(batch, 3, height, width)`` in ``[0, 1]``;
:meth:`VideoVAE.frames_to_tensor` and :meth:`VideoVAE.tensor_to_frames` convert from and to
the ``(batch, height, width, 3)`` uint8 arrays that the data module and the environment use.

Unlike the 2019 reference decoder, whose output could not go below 0.5, the decoder ends in a
plain logistic sigmoid on unconstrained logits, so its output covers the whole ``(0, 1)``
range and rounds to every uint8 value from 0 to 255 (dark flames and black backgrounds
included).

>>> model = VideoVAE((32, 32), latent_dim=16, dynamics="stable")
>>> frames = model.generate(seed_frames, steps=100)   # (batch, 101, 32, 32, 3) uint8
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .files import atomic_write

__all__ = ["VideoVAE", "LATENT_DYNAMICS", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "lyagym-video-vae"
CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------- latent dynamics
def _stable(latent_dim: int, **kwargs) -> nn.Module:
    from .stable import StableDynamics

    # One latent step is one video frame: an explicit Euler step of length 1 is exactly the
    # paper's z_{t+1} = z_t + f(z_t); keep_guarantee adds StableDynamics' rescale toward the
    # equilibrium, so V(z_{t+1}) <= exp(-alpha) V(z_t) holds for the discrete map too.
    kwargs = {"alpha": 1e-3, "dt": 1.0, "integrator": "euler", "keep_guarantee": True, **kwargs}
    return StableDynamics(latent_dim, **kwargs)


def _simple(latent_dim: int, **kwargs) -> nn.Module:
    from .simple import SimpleDynamics

    kwargs = {"dt": 1.0, "integrator": "euler", **kwargs}
    return SimpleDynamics(latent_dim, **kwargs)


LATENT_DYNAMICS = {"stable": _stable, "simple": _simple}
"""Latent dynamics by name: ``"stable"`` (``StableDynamics``, the paper's model) and
``"simple"`` (the unconstrained MLP baseline). Each builder takes ``latent_dim`` and the
model's keyword arguments (defaults: an Euler step of length 1 per frame)."""


# ----------------------------------------------------------------------------- encoder / decoder
def _conv_sizes(size: int, n_layers: int) -> list[int]:
    """Spatial sizes after each stride-2 conv (kernel 3, padding 1): ``ceil(s / 2)``."""
    sizes = [size]
    for _ in range(n_layers):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class _Encoder(nn.Module):
    """``(batch, 3, H, W)`` in [0, 1] -> mean and log-variance, each ``(batch, latent_dim)``."""

    def __init__(self, frame_size: tuple[int, int], latent_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        h = _conv_sizes(frame_size[0], len(channels))[-1]
        w = _conv_sizes(frame_size[1], len(channels))[-1]
        self.head = nn.Linear(c_in * h * w, 2 * latent_dim)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # 2y - 1 centres the pixels; the network sees a zero-mean input
        mean, log_var = self.head(self.convs(2.0 * y - 1.0).flatten(1)).chunk(2, dim=-1)
        # bounded log-variance: exp() never overflows, and sigma never collapses to 0 exactly
        return mean, 8.0 * torch.tanh(log_var / 8.0)


class _Decoder(nn.Module):
    """``(batch, latent_dim)`` -> ``(batch, 3, H, W)`` in (0, 1)."""

    def __init__(self, frame_size: tuple[int, int], latent_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.frame_size = tuple(frame_size)
        rev = list(channels)[::-1]
        self.h0 = _conv_sizes(frame_size[0], len(channels))[-1]
        self.w0 = _conv_sizes(frame_size[1], len(channels))[-1]
        self.c0 = rev[0]
        self.head = nn.Linear(latent_dim, self.c0 * self.h0 * self.w0)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(rev, rev[1:] + [rev[-1]]):
            layers += [nn.SiLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out)]
        layers += [nn.SiLU(), nn.Conv2d(rev[-1], 3, 3, padding=1)]
        self.convs = nn.Sequential(*layers)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        x = self.head(z).view(-1, self.c0, self.h0, self.w0)
        x = self.convs(x)  # (batch, 3, h0 * 2^L, w0 * 2^L), at least the frame size
        return x[..., : self.frame_size[0], : self.frame_size[1]]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # A plain sigmoid on free logits spans all of (0, 1) (the 2019 decoder stopped at 0.5).
        return torch.sigmoid(self.logits(z))


# ----------------------------------------------------------------------------- the model
class VideoVAE(nn.Module):
    """Convolutional VAE with latent dynamics ``z_{t+1} = z_t + f(z_t)`` (Fig. 6, eq. 21).

    Args:
        frame_size: ``(height, width)`` of the frames (each >= 4).
        latent_dim: size ``n`` of the latent state (the paper: 320).
        channels: conv channels of the encoder, one stride-2 layer each (the decoder mirrors
            them); frames of any size work (the decoder crops to ``frame_size``).
        dynamics: ``"stable"`` (``StableDynamics``) or ``"simple"`` (the unconstrained MLP),
            see ``LATENT_DYNAMICS``.
        dynamics_kwargs: keyword arguments for the dynamics model (e.g. ``hidden``,
            ``lyap_hidden``, ``alpha``, ``eps``); default an Euler step of length 1 per frame.
        kl_weight: weight of the KL term of eq. 21 (1.0 is the paper's loss).
        latent_weight: weight of an optional latent prediction term
            ``||z_t + f(z_t) - mu_{t+1}||^2`` (``mu_{t+1}`` the encoder mean of frame t + 1,
            gradient stopped) added to eq. 21; 0 (default) is the paper's loss.
        level_weight: weight of an optional term ``(log V(mu_{t+1}) - log V(mu_t))^2`` for stable
            dynamics (0 = the paper's loss). A stable model can only follow a texture whose
            latent loop lies on a level set of its Lyapunov function ``V``; where the encoded
            clip climbs ``V`` the model must fall short, and the shortfalls add up over a long
            rollout (a ratchet toward the equilibrium). This term moves the encoder and ``V``
            so that the loop lies on a level set. Ignored for ``"simple"`` dynamics.
        predict_from: ``"sample"`` (eq. 21: the prediction branch starts from the sampled
            ``z_t``) or ``"mean"`` (it starts from ``mu_t``). Sampling noise on the input of a
            regression shrinks its prediction toward the data mean; one step shrinks little,
            but a 1000-step rollout compounds it, and the generated texture fades to the mean
            frame. Starting from ``mu_t`` removes that bias; the reconstruction term keeps
            the sampled ``z_t``.
        projection: for ``"stable"`` dynamics, ``"decrease"`` (default, eq. 10: ``fhat`` is
            projected onto ``grad V . f <= -alpha V``, i.e. ``StableDynamics.step``) or
            ``"exact"`` (projected onto ``grad V . f = -alpha V``). Eq. 10 removes only the
            outward part of ``fhat``; any inward part the regression learns (noise on its
            input shrinks predictions toward the mean) survives, and over a 1000-frame rollout
            it ratchets the latent into ``x_eq`` and the video freezes. ``"exact"`` removes the
            radial freedom: ``V`` decays at exactly the certified rate ``alpha`` and ``fhat``
            only chooses the motion along the level set, so with a small ``alpha`` the texture
            circulates for ``~1/alpha`` frames. The step keeps the same discrete guarantee
            ``V(z_{t+1}) <= exp(-alpha) V(z_t)`` (Euler step of length 1, then
            ``integrators.lyapunov_rescale``), and ``x_eq`` is still globally exponentially
            stable. Ignored for ``"simple"`` dynamics.

    Attributes:
        dynamics: the latent dynamics model (a ``WorldModel`` on ``(batch, latent_dim)``).
        reference_latents: ``(k, latent_dim)`` encoder means of frames the model was trained on
            (empty until :meth:`set_reference_frames`); saved with the model so that an
            environment can start and aim at realistic states without the training video.
        reference_labels: ``(k,)`` int labels of those frames (e.g. which texture).
    """

    def __init__(
        self,
        frame_size: tuple[int, int] | int = (32, 32),
        latent_dim: int = 32,
        *,
        channels: Sequence[int] = (32, 64, 128),
        dynamics: str = "stable",
        dynamics_kwargs: dict[str, Any] | None = None,
        kl_weight: float = 1.0,
        latent_weight: float = 0.0,
        level_weight: float = 0.0,
        predict_from: str = "sample",
        projection: str = "decrease",
        label_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        frame_size = (frame_size, frame_size) if isinstance(frame_size, int) else tuple(int(s) for s in frame_size)
        if len(frame_size) != 2 or min(frame_size) < 4:
            raise ValueError(f"frame_size must be (height, width) with each >= 4, got {frame_size}")
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        if dynamics not in LATENT_DYNAMICS:
            raise ValueError(f"dynamics must be one of {sorted(LATENT_DYNAMICS)}, got {dynamics!r}")
        if not (kl_weight >= 0 and math.isfinite(kl_weight)):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight}")
        self.frame_size = frame_size
        self.latent_dim = latent_dim
        self.channels = tuple(int(c) for c in channels)
        self.dynamics_name = dynamics
        self.dynamics_kwargs = dict(dynamics_kwargs or {})
        if not (latent_weight >= 0 and math.isfinite(latent_weight)):
            raise ValueError(f"latent_weight must be a finite number >= 0, got {latent_weight}")
        if predict_from not in ("sample", "mean"):
            raise ValueError(f"predict_from must be 'sample' or 'mean', got {predict_from!r}")
        self.predict_from = predict_from
        if projection not in ("decrease", "exact"):
            raise ValueError(f"projection must be 'decrease' or 'exact', got {projection!r}")
        self.projection = projection
        self._level_iterations = 4  # regula falsi steps of the exact-level rescale
        self.kl_weight = float(kl_weight)
        self.latent_weight = float(latent_weight)
        if not (level_weight >= 0 and math.isfinite(level_weight)):
            raise ValueError(f"level_weight must be a finite number >= 0, got {level_weight}")
        self.level_weight = float(level_weight)
        self.label_names = tuple(str(n) for n in label_names)
        self.encoder = _Encoder(frame_size, latent_dim, self.channels)
        self.decoder = _Decoder(frame_size, latent_dim, self.channels)
        self.dynamics = LATENT_DYNAMICS[dynamics](latent_dim, **self.dynamics_kwargs)
        # latents come from our own encoder, checked at the frame boundary: skip the dynamics'
        # per-call NaN check, which costs a host sync per step in training and the vector env
        self.dynamics.validate_finite = False
        self.register_buffer("reference_latents", torch.zeros(0, latent_dim))
        self.register_buffer("reference_labels", torch.zeros(0, dtype=torch.long))

    # --------------------------------------------------------------------- conversions
    @property
    def device(self) -> torch.device:
        return self.reference_latents.device

    @property
    def dtype(self) -> torch.dtype:
        return self.reference_latents.dtype

    def frames_to_tensor(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames ``(batch, H, W, 3)`` -> float ``(batch, 3, H, W)`` in [0, 1] on the model's
        device and dtype. Float tensors already ``(batch, 3, H, W)`` pass through (moved)."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
        h, w = self.frame_size
        if frames.dtype == torch.uint8:
            if frames.ndim != 4 or tuple(frames.shape[1:]) != (h, w, 3):
                raise ValueError(f"uint8 frames must have shape (batch, {h}, {w}, 3), got {tuple(frames.shape)}")
            return frames.to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 255.0
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, h, w):
            raise ValueError(f"float frames must have shape (batch, 3, {h}, {w}), got {tuple(frames.shape)}")
        return frames.to(self.device, self.dtype)

    @staticmethod
    def tensor_to_frames(y: torch.Tensor) -> torch.Tensor:
        """float ``(..., 3, H, W)`` in [0, 1] -> uint8 ``(..., H, W, 3)`` (same device)."""
        return (y.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8).movedim(-3, -1)

    # --------------------------------------------------------------------- the network
    def encode(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y: (batch, 3, H, W)`` in [0, 1] -> ``(mean, log_var)``, each ``(batch, latent_dim)``."""
        return self.encoder(y)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z: (..., latent_dim)`` -> frames ``(..., 3, H, W)`` in (0, 1), decoded in one batch."""
        lead = z.shape[:-1]
        y = self.decoder(z.reshape(-1, self.latent_dim))
        return y.reshape(*lead, *y.shape[1:])

    def latent_step(self, z: torch.Tensor) -> torch.Tensor:
        """One frame of latent dynamics, ``z: (batch, latent_dim)`` -> ``z + f(z)``."""
        if self.projection == "exact" and self.dynamics_name == "stable":
            return self._exact_level_step(z)
        return self.dynamics.step(z)

    def _exact_level_step(self, z: torch.Tensor) -> torch.Tensor:
        # projection="exact": fhat centred at x_eq (as eq. 10 does), then its component along
        # grad V set so that grad V . f = -alpha V exactly; Euler step of length 1; then the
        # guarantee-keeping rescale toward x_eq (V convex: V(z') <= exp(-alpha) V(z)).
        from .integrators import lyapunov_rescale

        dyn = self.dynamics
        x_eq = dyn.x_eq.to(z)
        out = dyn.fhat(torch.cat([z, x_eq.unsqueeze(0)], dim=0))
        fhat_c = out[:-1] - out[-1:]
        V, grad_V = dyn.lyapunov.forward_and_grad(z)
        excess = (grad_V * fhat_c).sum(-1) + dyn.alpha * V
        f = fhat_c - grad_V * (excess / grad_V.square().sum(-1).clamp_min(1e-12)).unsqueeze(-1)
        y = z + dyn.dt * f
        if not dyn.lyapunov.convex:
            return lyapunov_rescale(z, y, dyn.lyapunov, dyn.alpha, dyn.dt, x_eq, verify=True, Vx=V)
        # Pull y back onto the level b = exp(-alpha) V(z) along the ray from x_eq. The linear
        # scale s = b / V(y) (lyapunov_rescale) meets the bound by convexity but undershoots it
        # wherever V grows faster than linearly along the ray (for V ~ |z|^2 by ~|f|^2 / |z|^2
        # per frame: a steady inward drift over 1000 frames). Regula falsi from the left fixes
        # that and keeps the guarantee: on a convex V the chord from a feasible point
        # (s_lo, V_lo <= b) to (1, V(y)) lies above V, so where it crosses b, V <= b too.
        bound = math.exp(-dyn.alpha * dyn.dt) * V
        delta = y - x_eq
        v_hi = dyn.lyapunov(y)
        shrink = v_hi > bound
        s, v_lo = torch.zeros_like(V), torch.zeros_like(V)  # s = 0: x_eq, V = 0 <= b
        for _ in range(self._level_iterations):
            s = s + (1.0 - s) * ((bound - v_lo) / (v_hi - v_lo).clamp_min(torch.finfo(y.dtype).tiny)).clamp(0.0, 1.0)
            s = torch.where(shrink, s, torch.ones_like(s))
            v_lo = dyn.lyapunov(x_eq + s.unsqueeze(-1) * delta)
        return x_eq + s.unsqueeze(-1) * delta

    def rollout_latent(self, z0: torch.Tensor, steps: int) -> torch.Tensor:
        """``z0: (batch, latent_dim)`` -> ``(batch, steps + 1, latent_dim)`` with ``z0`` first."""
        zs = [z0]
        for _ in range(int(steps)):  # sequential in time, batched over the batch
            zs.append(self.latent_step(zs[-1]))
        return torch.stack(zs, dim=1)

    def forward(self, y_t: torch.Tensor, y_next: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of eq. 21 on a batch of frame pairs (``forward`` so DDP can wrap it).

        Args:
            y_t: ``(batch, 3, H, W)`` frames t in [0, 1].
            y_next: ``(batch, 3, H, W)`` frames t + 1 (eq. 21), or ``(batch, K, 3, H, W)``
                frames t + 1 .. t + K for a K-step prediction loss: the latent is rolled K
                steps and every predicted frame is compared (mean over the K terms, so the
                scale matches eq. 21).

        Returns:
            dict with ``loss`` (the scalar to minimise: batch mean of KL + both squared
            errors, each summed over pixels), ``kl``, ``recon`` and ``pred`` (per-pixel mean
            squared errors of frame t and of the predicted frames, for logging) and
            ``latent`` (the optional latent term).
        """
        if y_next.ndim == y_t.ndim:
            y_next = y_next.unsqueeze(1)
        horizon = y_next.shape[1]
        mean, log_var = self.encode(y_t)
        # z_t ~ N(mu_t, sigma_t^2 I) by reparameterisation: E_z in eq. 21 is a one-sample estimate
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        z_k, predicted = (z if self.predict_from == "sample" else mean), []
        for _ in range(horizon):
            z_k = self.latent_step(z_k)  # z_{t+1} = z_t + f(z_t)
            predicted.append(z_k)
        z_pred = torch.stack(predicted, 1)  # (batch, K, latent_dim)
        decoded = self.decode(torch.cat([z[:, None], z_pred], 1))  # one batched decode
        y_hat, y_pred = decoded[:, 0], decoded[:, 1:]
        kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(-1).mean()
        recon = (y_hat - y_t).square().flatten(1).sum(-1).mean()
        pred = (y_pred - y_next).square().flatten(2).sum(-1).mean()
        n_pixels = y_t[0].numel()
        loss = self.kl_weight * kl + recon + pred  # eq. 21
        latent = torch.zeros((), device=kl.device, dtype=kl.dtype)
        if self.latent_weight > 0:
            with torch.no_grad():
                mean_next = self.encode(y_next.flatten(0, 1))[0].view_as(z_pred)
            latent = (z_pred - mean_next).square().sum(-1).mean()
            loss = loss + self.latent_weight * latent
        level = torch.zeros((), device=kl.device, dtype=kl.dtype)
        lyapunov = getattr(self.dynamics, "lyapunov", None)
        if self.level_weight > 0 and lyapunov is not None:
            mean_next = self.encode(y_next[:, 0])[0]
            v = lyapunov(torch.cat([mean, mean_next])).clamp_min(1e-12).log()
            v_t, v_next = v.chunk(2)
            level = (v_next - v_t).square().mean()
            loss = loss + self.level_weight * level
        return {
            "loss": loss,
            "level": level.detach(),
            "kl": kl.detach(),
            "recon": recon.detach() / n_pixels,
            "pred": pred.detach() / n_pixels,
            "latent": latent.detach(),
        }

    # --------------------------------------------------------------------- generation
    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Encoder means of frames (uint8 ``(k, H, W, 3)`` or float ``(k, 3, H, W)``) -> ``(k, latent_dim)``."""
        y = self.frames_to_tensor(frames)
        return torch.cat([self.encode(chunk)[0] for chunk in y.split(batch_size)]) if len(y) else y.new_zeros(0, self.latent_dim)

    @torch.no_grad()
    def generate(
        self, seed_frames: np.ndarray | torch.Tensor, steps: int, *, return_latents: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Seed with the encoding of one frame per sequence, integrate, decode.

        Args:
            seed_frames: ``(batch, H, W, 3)`` uint8 (or ``(batch, 3, H, W)`` float) frames.
            steps: number of generated frames after the seed.
            return_latents: also return the latent trajectory.

        Returns:
            uint8 frames ``(batch, steps + 1, H, W, 3)`` on the model's device (the decoded seed
            first), and with ``return_latents`` the latents ``(batch, steps + 1, latent_dim)``.
        """
        if int(steps) < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        z0 = self.encode_frames(seed_frames)
        zs = self.rollout_latent(z0, int(steps))
        y = self.decode(zs)
        if not bool(torch.isfinite(y).all()):  # one check per rollout, not per step
            warnings.warn(
                "the latent rollout diverged (non-finite latents, typical of unconstrained dynamics); "
                "the affected frames are returned black", RuntimeWarning, stacklevel=2,
            )
            y = torch.nan_to_num(y, nan=0.0)
        frames = self.tensor_to_frames(y)
        return (frames, zs) if return_latents else frames

    @torch.no_grad()
    def set_reference_frames(self, frames: np.ndarray | torch.Tensor, labels: np.ndarray | Sequence[int] | None = None) -> None:
        """Store the encoder means of ``frames`` (and int ``labels``) with the model."""
        z = self.encode_frames(frames)
        lab = torch.zeros(len(z), dtype=torch.long) if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if lab.shape != (len(z),):
            raise ValueError(f"labels must have shape ({len(z)},), got {tuple(lab.shape)}")
        self.reference_latents = z.to(self.dtype)
        self.reference_labels = lab.to(self.device)

    # --------------------------------------------------------------------- save / load
    def config(self) -> dict[str, Any]:
        """The constructor arguments; ``VideoVAE(**model.config())`` builds the same architecture."""
        return {
            "frame_size": list(self.frame_size),
            "latent_dim": self.latent_dim,
            "channels": list(self.channels),
            "dynamics": self.dynamics_name,
            "dynamics_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.dynamics_kwargs.items()},
            "kl_weight": self.kl_weight,
            "latent_weight": self.latent_weight,
            "level_weight": self.level_weight,
            "predict_from": self.predict_from,
            "projection": self.projection,
            "label_names": list(self.label_names),
        }

    def save(self, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
        """Write config, weights and ``metadata`` (JSON-like: training settings, history...) to one
        file, atomically (temp file + rename): an interrupted save never leaves a half file."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"path {str(path)!r} is a directory; give a file name such as model.pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "metadata": dict(metadata or {}),
        }
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device | None = "cpu") -> "VideoVAE":
        """Load a model written by :meth:`save`; its metadata ends up in ``model.metadata``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is a directory, not a torch checkpoint (corrupt or
                truncated), a checkpoint of something else, of a newer format version, or its
                weights do not match its configuration.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"video VAE checkpoint {str(path)!r} does not exist")
        if path.is_dir():
            raise ValueError(f"video VAE checkpoint {str(path)!r} is a directory, expected a file written by VideoVAE.save")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # pickle, zip and torch errors all mean "not a readable checkpoint"
            raise ValueError(
                f"{str(path)!r} is not a readable video VAE checkpoint (corrupt, truncated or not a torch file): "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from err
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            found = payload.get("format", "no format tag") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{str(path)!r} is not a video VAE checkpoint (expected format {CHECKPOINT_FORMAT!r}, found {found!r})")
        if payload.get("version", 0) > CHECKPOINT_VERSION:
            raise ValueError(
                f"{str(path)!r} has checkpoint version {payload['version']}, newer than this lyagym reads "
                f"({CHECKPOINT_VERSION}); upgrade lyagym"
            )
        try:
            model = cls(**payload["config"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{str(path)!r} holds an invalid video VAE configuration: {err}") from err
        state = payload.get("state_dict", {})
        # buffers whose size depends on the data: resize before loading
        for name in ("reference_latents", "reference_labels"):
            if name in state:
                setattr(model, name, torch.empty_like(state[name]))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"{str(path)!r}: weights do not match the saved configuration: {err}") from err
        if missing or unexpected:
            raise ValueError(
                f"{str(path)!r}: weights do not match the saved configuration "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"{str(path)!r} holds non-finite weights in {bad[:5]}")
        model.metadata = payload.get("metadata", {})
        return model.to(map_location) if map_location is not None else model

    def extra_repr(self) -> str:
        return f"frame_size={self.frame_size}, latent_dim={self.latent_dim}, dynamics={self.dynamics_name!r}"
