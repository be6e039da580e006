"""VideoTexture speed: env steps/s (single and batched, CPU and CUDA when present) and video VAE
training throughput (frame pairs/s).

Run:  python examples/benchmarks/bench_video.py [--threads 1] [--repeats 5] [--checkpoint PATH]

1. Single env: ``VideoTextureEnv`` steps/s, beside Gymnasium's ``Acrobot-v1`` (a familiar
   anchor for what one Python env step costs; Acrobot returns 6 numbers, we decode a frame).
2. Batched: ``VideoTextureVectorEnv`` env-steps/s for N = 64 and 1024 environments (one
   batched decode per step), beside Gymnasium's ``SyncVectorEnv`` of N single envs -- the
   per-environment Python loop a user gets without our vector env -- at N = 64, as a ratio.
   On CUDA (when present) N = 1024 and 16384.
3. Training throughput: frame pairs/s of ``fit_video`` (eq. 21, Adam) with stable and with
   unconstrained latent dynamics, on CPU and CUDA when present.

All figures are medians over ``--repeats`` timed runs after a warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

from lyagym.envs.video_data import make_texture
from lyagym.envs.video_texture import DEFAULT_CHECKPOINT, VideoTextureEnv, VideoTextureVectorEnv
from lyagym.learned_models import VideoVAE, fit_video


def median_rate(fn, units: float, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return units / statistics.median(times)


def single_env_rate(env, steps: int, repeats: int) -> float:
    env.reset(seed=0)
    actions = [env.action_space.sample() for _ in range(steps)]

    def run():
        for a in actions:
            env.step(a)

    return median_rate(run, steps, repeats)


def vector_rate(envs, steps: int, repeats: int, device: torch.device) -> float:
    envs.reset(seed=0)
    n = envs.num_envs
    if getattr(envs, "as_torch", False):
        actions = torch.rand(n, *envs.single_action_space.shape, device=device) * 2 - 1
    else:
        actions = np.random.default_rng(0).uniform(-1, 1, (n, *envs.single_action_space.shape)).astype(np.float32)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def run():
        for _ in range(steps):
            envs.step(actions)

    return median_rate(run, steps * n, repeats, sync)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="steps per timed run")
    parser.add_argument("--checkpoint", default=None, help=f"video VAE checkpoint (default: {DEFAULT_CHECKPOINT.name})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    model = VideoVAE.load(args.checkpoint or DEFAULT_CHECKPOINT)
    h, w = model.frame_size
    print(f"checkpoint: {args.checkpoint or DEFAULT_CHECKPOINT.name} ({h}x{w} frames, latent {model.latent_dim}, "
          f"{model.dynamics_name} dynamics); torch {torch.__version__}, {args.threads} CPU thread(s)")

    print("\n1. single env (steps/s)")
    ours = single_env_rate(VideoTextureEnv(model), args.steps, args.repeats)
    acrobot = single_env_rate(gym.make("Acrobot-v1").unwrapped, 5 * args.steps, args.repeats)
    print(f"   VideoTextureEnv (cpu)     {ours:10.0f}")
    print(f"   Gymnasium Acrobot-v1      {acrobot:10.0f}   ratio ours/Acrobot = {ours / acrobot:.2f}")

    print("\n2. batched (env-steps/s)")
    n_anchor = 64
    sync_env = gym.vector.SyncVectorEnv([lambda: VideoTextureEnv(model) for _ in range(n_anchor)])
    anchor = vector_rate(sync_env, max(5, args.steps // 10), args.repeats, torch.device("cpu"))
    print(f"   Gymnasium SyncVectorEnv of VideoTextureEnv, N={n_anchor:<6} {anchor:12.0f}")
    for device in devices:
        for n in ((64, 1024) if device.type == "cpu" else (1024, 16384)):
            envs = VideoTextureVectorEnv(n, model, device=device, as_torch=device.type == "cuda")
            rate = vector_rate(envs, max(5, args.steps // (10 if n >= 1024 else 2)), args.repeats, device)
            ratio = f"   ratio vs SyncVectorEnv = {rate / anchor:.1f}" if device.type == "cpu" else ""
            print(f"   VideoTextureVectorEnv ({device.type}), N={n:<6}          {rate:12.0f}{ratio}")

    print("\n3. training throughput (frame pairs/s, eq. 21, batch 32)")
    clip = make_texture("fire", n_frames=129, size=(h, w), seed=0)
    for device in devices:
        rates = {}
        for name in ("stable", "simple"):
            vae = VideoVAE((h, w), model.latent_dim, channels=model.channels, dynamics=name)
            runs = [fit_video(vae, clip, epochs=1, batch_size=32, device=device, progress=False)["frames_per_s"] for _ in range(args.repeats)]
            rates[name] = statistics.median(runs[1:] if len(runs) > 1 else runs)
        print(f"   {device.type}: stable {rates['stable']:8.0f}   unconstrained {rates['simple']:8.0f}   "
              f"ratio stable/unconstrained = {rates['stable'] / rates['simple']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
