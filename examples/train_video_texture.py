"""Train the video texture model behind ``lyagym/VideoTexture-v0``.

With no arguments this rebuilds the shipped default checkpoint,
``envs/assets/video_texture_default.pt``, from the built-in textures with the settings in
``DEFAULTS`` below (a few minutes on one CPU core). Any of them can be changed on the
command line, and ``--video PATH`` trains on your own clip (a folder of frames or a video
file) instead:

    python examples/train_video_texture.py --out my_texture.pt --video my_clip.mp4
    python -c "import gymnasium as gym, lyagym.envs; gym.make('lyagym/VideoTexture-v0', checkpoint='my_texture.pt')"

Runs unchanged on several GPUs or CPU processes with DistributedDataParallel:

    torchrun --nproc_per_node=2 examples/train_video_texture.py --out my_texture.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lyagym.envs.video_data import TEXTURES, load_frames, make_texture
from lyagym.learned_models import VideoVAE, fit_video
from lyagym.learned_models.video_training import cleanup_distributed, init_distributed

ASSET = Path(__file__).resolve().parents[1] / "envs" / "assets" / "video_texture_default.pt"

# The settings of the shipped default checkpoint.
DEFAULTS = dict(
    textures=["fire", "water", "clouds"],
    size=48,  # >= 36 so Stable-Baselines3's CnnPolicy accepts the frames
    frames=384,  # per texture; one seamless loop each
    latent=32,
    channels=[16, 32, 64],
    alpha=1e-4,  # per-frame decay rate of V: slow, so textures keep moving for 1000s of frames
    eps=1.0,  # V = sigma(g(z) - g(0)) + eps |z|^2: KL puts latents on a shell |z| ~ sqrt(n), a level set of eps |z|^2
    kl_weight=1.0,
    latent_weight=1.0,
    level_weight=0.0,
    horizon=1,
    predict_from="sample",
    epochs=30,
    batch_size=32,
    lr=1e-3,
    references=32,  # reference frames per texture stored for env starts and targets
    seed=0,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ASSET), help=f"checkpoint to write (default: the shipped {ASSET.name})")
    parser.add_argument("--video", default=None, help="train on this clip (folder of frames or video file) instead of the built-in textures")
    parser.add_argument("--textures", nargs="+", choices=sorted(TEXTURES), default=DEFAULTS["textures"])
    for key in ("size", "frames", "latent", "epochs", "batch_size", "references", "seed", "horizon"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=DEFAULTS[key])
    parser.add_argument("--channels", type=int, nargs="+", default=DEFAULTS["channels"])
    for key in ("alpha", "eps", "kl_weight", "latent_weight", "level_weight", "lr"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, default=DEFAULTS[key])
    parser.add_argument("--predict-from", choices=("sample", "mean"), default=DEFAULTS["predict_from"])
    parser.add_argument("--dynamics", choices=("stable", "simple"), default="stable")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rank, world_size, device = init_distributed()
    if args.video:
        clips, names = [load_frames(args.video, size=args.size)], [Path(args.video).stem]
    else:
        clips = [make_texture(k, n_frames=args.frames, size=args.size, seed=args.seed + i) for i, k in enumerate(args.textures)]
        names = list(args.textures)
    torch.manual_seed(args.seed)
    model = VideoVAE(
        (args.size, args.size), args.latent, channels=args.channels, dynamics=args.dynamics,
        dynamics_kwargs={"alpha": args.alpha, "eps": args.eps} if args.dynamics == "stable" else {},
        kl_weight=args.kl_weight, latent_weight=args.latent_weight, level_weight=args.level_weight,
        predict_from=args.predict_from, label_names=names,
    )
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"training on {sum(map(len, clips))} frames ({', '.join(names)}) at {args.size}x{args.size}, "
              f"{n_params / 1e6:.2f} M parameters, {world_size} process(es) on {device}")
    tic = time.perf_counter()
    history = fit_video(model, clips, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        device=device, horizon=args.horizon)
    if rank == 0:
        refs = [np.linspace(0, len(c) - 1, min(args.references, len(c)), dtype=int) for c in clips]
        model.set_reference_frames(np.concatenate([c[i] for c, i in zip(clips, refs)]),
                                   np.concatenate([np.full(len(i), j) for j, i in enumerate(refs)]))
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        model.cpu().save(args.out, metadata={"settings": settings, "history": history, "train_seconds": time.perf_counter() - tic})
        size_mb = Path(args.out).stat().st_size / 2**20
        print(f"wrote {args.out} ({size_mb:.2f} MB); final loss {history['loss'][-1]:.2f}, "
              f"recon MSE {history['recon'][-1]:.4f}, prediction MSE {history['pred'][-1]:.4f}, "
              f"{history['frames_per_s']:.0f} frame pairs/s")
    cleanup_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
