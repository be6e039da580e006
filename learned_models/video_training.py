"""Training a :class:`VideoVAE` on frame pairs: one CPU, one GPU, or many under ``torchrun``.

The same call runs everywhere. Under ``torchrun`` (environment variables ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``) :func:`init_distributed` joins the process group -- ``nccl`` on
GPUs, ``gloo`` on CPUs -- and :func:`fit_video` wraps the model in PyTorch's
``DistributedDataParallel`` and shards the pairs with ``DistributedSampler``; gradients are
averaged by DDP, so every replica takes the same optimiser step and the weights stay
identical. Only rank 0 shows a progress bar.

    torchrun --nproc_per_node=4 examples/train_video_texture.py --out model.pt

>>> history = fit_video(model, frames, epochs=50, batch_size=32)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from .video_vae import VideoVAE

__all__ = ["fit_video", "init_distributed", "cleanup_distributed", "frame_pairs"]


def init_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Join the ``torchrun`` process group if there is one; a no-op for a single process.

    Args:
        backend: ``None`` picks ``"nccl"`` when CUDA is available and ``"gloo"`` otherwise.

    Returns:
        ``(rank, world_size, device)``: the device is ``cuda:LOCAL_RANK`` on GPU machines and
        the CPU otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def cleanup_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def frame_pairs(clips: np.ndarray | Sequence[np.ndarray], horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """All frames of one or several clips, and the indices ``t`` whose ``t, ..., t + horizon``
    lie in the same clip.

    Args:
        clips: ``(n_frames, H, W, 3)`` uint8, or a sequence of such clips of one frame size.

    Returns:
        ``frames: (total_frames, H, W, 3)`` uint8 and ``starts: (n_pairs,)`` int64.
    """
    if isinstance(clips, np.ndarray):
        clips = [clips]
    clips = list(clips)
    if not clips:
        raise ValueError("clips must hold at least one clip")
    shape = None
    for i, clip in enumerate(clips):
        clip = np.asarray(clip)
        if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
            raise ValueError(f"clip {i} must be uint8 (n_frames, height, width, 3), got {clip.dtype} {clip.shape}")
        if len(clip) < horizon + 1:
            raise ValueError(f"clip {i} has {len(clip)} frame(s); training with horizon={horizon} needs at least {horizon + 1}")
        if shape is not None and clip.shape[1:] != shape:
            raise ValueError(f"clip {i} has frames of size {clip.shape[1:3]}, clip 0 has {shape[:2]}; resize them to one size")
        shape = clip.shape[1:]
    lengths = np.array([len(c) for c in clips])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    starts = np.concatenate([off + np.arange(n - horizon) for off, n in zip(offsets, lengths)])
    return np.concatenate(clips), starts.astype(np.int64)


def fit_video(
    model: VideoVAE,
    clips: np.ndarray | Sequence[np.ndarray],
    *,
    epochs: int = 50,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: float | None = 10.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    num_workers: int = 0,
    horizon: int = 1,
) -> dict[str, Any]:
    """Train encoder, decoder and latent dynamics jointly with the loss of eq. 21.

    Args:
        model: the :class:`VideoVAE` (moved to ``device``; trained in place).
        clips: frames ``(n_frames, H, W, 3)`` uint8 or a list of clips; pairs never straddle
            two clips.
        epochs: passes over all pairs (each rank sees ``1 / world_size`` of them per epoch).
        batch_size: pairs per step and per process (the global batch is
            ``batch_size * world_size``).
        lr, weight_decay: Adam(W) settings; the learning rate follows a cosine schedule to
            ``lr / 10``.
        grad_clip: clip the global gradient norm (``None``: no clipping).
        seed: seeds the shuffling and the reparameterisation noise (offset by the rank).
        device: default: ``cuda:LOCAL_RANK`` when available, else the CPU.
        progress: show a tqdm bar (rank 0 only).
        horizon: frames predicted from each encoded frame; 1 is eq. 21, K > 1 rolls the
            latent dynamics K steps and compares every decoded prediction (see
            ``VideoVAE.forward``).

    Returns:
        history: ``{"loss", "kl", "recon", "pred"}`` per-epoch means (averaged over ranks),
        ``"frames_per_s"`` (pairs per second over all ranks, the last epoch) and the
        settings used.
    """
    import time

    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    rank, world_size, default_device = init_distributed()
    device = torch.device(device) if device is not None else default_device
    frames_np, starts = frame_pairs(clips, horizon)
    if frames_np.shape[1:3] != model.frame_size:
        raise ValueError(f"frames are {frames_np.shape[1:3]} (height, width) but the model expects {model.frame_size}")

    model.to(device).train()
    frames = torch.from_numpy(frames_np).to(device)  # uint8 on the device: converted per batch
    torch.manual_seed(seed + rank)  # different noise per replica; DDP syncs the weights
    net = model
    if dist.is_initialized() and dist.get_world_size() > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        sampler = DistributedSampler(range(len(starts)), shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(range(len(starts)), generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(starts.tolist(), batch_size=batch_size, sampler=sampler, drop_last=len(starts) >= batch_size, num_workers=num_workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader), eta_min=lr / 10)

    history: dict[str, Any] = {k: [] for k in ("loss", "kl", "recon", "pred")}
    bar = tqdm(range(epochs), desc="video VAE", disable=not progress or rank != 0, unit="epoch")
    frames_per_s = float("nan")
    for epoch in bar:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        sums = torch.zeros(5, device=device, dtype=torch.float64)  # loss, kl, recon, pred, count
        tic = time.perf_counter()
        for idx in loader:
            idx = idx.to(device)
            y_t = model.frames_to_tensor(frames[idx])
            ahead = idx[:, None] + torch.arange(1, horizon + 1, device=device)  # (batch, K)
            y_next = model.frames_to_tensor(frames[ahead.flatten()]).unflatten(0, ahead.shape)
            out = net(y_t, y_next)  # eq. 21 (forward of VideoVAE, so DDP syncs gradients)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            schedule.step()
            n = len(idx)
            sums += torch.stack([out["loss"].detach() * n, out["kl"] * n, out["recon"] * n, out["pred"] * n,
                                 torch.tensor(float(n), device=device)]).to(torch.float64)
        if dist.is_initialized():
            dist.all_reduce(sums)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - tic
        means = (sums[:4] / sums[4]).tolist()  # one host sync per epoch
        if not all(math.isfinite(v) for v in means):
            raise FloatingPointError(f"training diverged at epoch {epoch}: losses {dict(zip(history, means))}; lower lr")
        for key, value in zip(("loss", "kl", "recon", "pred"), means):
            history[key].append(value)
        frames_per_s = float(sums[4]) / elapsed
        bar.set_postfix(loss=f"{means[0]:.1f}", recon=f"{means[2]:.4f}", pred=f"{means[3]:.4f}")
    model.eval()
    history.update(
        frames_per_s=frames_per_s, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        world_size=world_size, device=str(device), n_pairs=int(len(starts)), horizon=horizon,
    )
    return history
