"""Manek & Kolter (2019) Fig. 7: stable vs unconstrained latent dynamics for video textures.

Trains two :class:`VideoVAE` models on the same texture with the same settings and seed --
one with ``StableDynamics`` as ``f`` in ``z_{t+1} = z_t + f(z_t)``, one with the unconstrained
``SimpleDynamics`` MLP -- then rolls both out for ``--steps`` (1000) frames from the same seed
frames and measures, at every step,

- **realism**: RMS pixel distance (0..1 scale) of the generated frame to the nearest
  training frame;
- **motion**: RMS pixel change between consecutive generated frames.

A step counts as *realistic* when its realism is within ``--real-factor`` (1.5) times the
95th percentile of the same distance for the model's own reconstructions of the training
frames (the best the VAE can do), and as *moving* when its motion is at least
``--motion-factor`` (0.25) times the median frame-to-frame change of the reconstructed
training clip. The paper's claim (section 4.3): the stable model keeps generating realistic,
moving frames; the unconstrained one "quickly diverges and produces a static image".

Defaults that make the stable model hold the texture for 1000 frames (both models share every
setting but the stability projection): ``--projection exact`` (``fhat`` projected onto
``grad V . f = -alpha V``, so with ``alpha = 1e-4`` the latent circulates on a slowly shrinking
level set of ``V`` instead of ratcheting into ``x_eq`` -- eq. 10's one-sided projection keeps
the inward drift a noisy regression learns; see ``VideoVAE``) and ``--horizon 4`` (the latent
is rolled 4 frames in training and every predicted frame is scored, so one-step errors that
would carry the trajectory off the texture along the level set are trained away).

Writes to ``--out``: ``frames.png`` (rows: model x seed, columns: steps), ``rollouts.gif``,
``curves.png``, ``latent.png`` (trajectories projected to 2-D, Fig. 7 top), ``table.md``,
``table.csv``, ``summary.json`` and both checkpoints.

    lyagym reproduce video-fig7 --out runs/video_fig7
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from ..cli_types import existing_path, folder, integer, number

MODELS = ("stable", "simple")
COLUMNS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lyagym.envs.video_data import TEXTURES

    data = parser.add_argument_group("data")
    data.add_argument("--texture", default="fire", choices=sorted(TEXTURES), help="built-in texture (default: fire, like the paper's bonfire)")
    data.add_argument("--video", type=existing_path, default=None, help="train on a real clip instead: a folder of frames or a video file")
    data.add_argument("--size", type=integer(8), default=32, help="frame height and width in pixels (default 32)")
    data.add_argument("--frames", type=integer(2), default=512, help="number of training frames (default 512)")
    model = parser.add_argument_group("model and training (shared by both models)")
    model.add_argument("--latent", type=integer(1), default=32, help="latent size n (paper: 320; default 32)")
    model.add_argument("--channels", type=integer(1), nargs="+", default=[16, 32, 64], help="encoder conv channels")
    model.add_argument("--epochs", type=integer(1), default=40)
    model.add_argument("--batch-size", type=integer(1), default=32)
    model.add_argument("--lr", type=number(0, strict=True), default=1e-3)
    model.add_argument("--alpha", type=number(0), default=1e-4, help="decay rate of the stable model's V per frame (default 1e-4)")
    model.add_argument("--eps", type=number(0, strict=True), default=1.0, help="weight of eps*||z||^2 in the stable model's V (default 1)")
    model.add_argument("--kl-weight", type=number(0), default=1.0, help="weight of the KL term of eq. 21 (paper: 1)")
    model.add_argument("--latent-weight", type=number(0), default=1.0, help="weight of the latent prediction term (0 = eq. 21 only)")
    model.add_argument("--level-weight", type=number(0), default=0.0, help="weight of the level-set term for the stable model (see VideoVAE)")
    model.add_argument("--projection", choices=("exact", "decrease"), default="exact",
                       help="stable model: project fhat onto grad V . f = -alpha V (exact, default) or <= (eq. 10); see VideoVAE")
    model.add_argument("--horizon", type=integer(1), default=4,
                       help="frames predicted per encoded frame (1 = eq. 21; default 4, the same for both models)")
    model.add_argument("--predict-from", choices=("sample", "mean"), default="sample",
                       help="latent the prediction branch starts from (eq. 21: sample; see VideoVAE)")
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--steps", type=integer(1), default=1000, help="rollout length (default 1000)")
    ev.add_argument("--seeds", type=integer(1), default=4, help="number of seed frames (spread over the clip)")
    ev.add_argument("--real-factor", type=number(0, strict=True), default=1.5)
    ev.add_argument("--motion-factor", type=number(0, strict=True), default=0.25)
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=integer(1), default=1, help="CPU threads for torch (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (16x16, 32 frames, 2 epochs, 50 steps)")
    parser.add_argument("--out", type=folder, default="runs/video_fig7", help="output folder")


def _load_clip(args) -> np.ndarray:
    from lyagym.envs.video_data import load_frames, make_texture

    if args.video:
        return load_frames(args.video, size=args.size, max_frames=args.frames)
    return make_texture(args.texture, n_frames=args.frames, size=args.size, seed=args.seed)


def _rms_to_nearest(generated: torch.Tensor, train: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """RMS distance ``(k,)`` of each flattened frame ``(k, D)`` to its nearest row of ``train``."""
    d = train.shape[1]
    return torch.cat([torch.cdist(g, train).min(1).values for g in generated.split(chunk)]) / d**0.5


def evaluate(model, clip: np.ndarray, seed_idx: np.ndarray, steps: int, real_factor: float, motion_factor: float) -> dict:
    """Roll ``model`` out from ``clip[seed_idx]`` and score every step (see module doc)."""
    with torch.no_grad():
        train = model.frames_to_tensor(clip).flatten(1).float()
        recon = model.decode(model.encode_frames(clip)).flatten(1).float()
        recon_u8 = model.tensor_to_frames(model.decode(model.encode_frames(clip)))
        recon_real = _rms_to_nearest(recon_u8.permute(0, 3, 1, 2).flatten(1).float() / 255.0, train)
        recon_motion = (recon[1:] - recon[:-1]).square().mean(1).sqrt()
        frames, latents = model.generate(clip[seed_idx], steps, return_latents=True)  # (S, T+1, H, W, 3)
        g = frames.permute(0, 1, 4, 2, 3).flatten(2).float() / 255.0  # (S, T+1, D)
        realism = _rms_to_nearest(g.flatten(0, 1), train).reshape(len(seed_idx), steps + 1)
        motion = (g[:, 1:] - g[:, :-1]).square().mean(-1).sqrt()  # (S, T)
    real_thr = real_factor * float(torch.quantile(recon_real, 0.95))
    motion_thr = motion_factor * float(recon_motion.median())
    ok_real = realism[:, 1:] <= real_thr
    ok_move = motion >= motion_thr
    ok = ok_real & ok_move
    first_fail = [int(np.argmin(r.cpu().numpy())) + 1 if not bool(r.all()) else None for r in ok]
    return {
        "frames": frames.cpu().numpy(),
        "latents": latents.cpu().numpy(),
        "realism": realism.cpu().numpy(),
        "motion": motion.cpu().numpy(),
        "real_threshold": real_thr,
        "motion_threshold": motion_thr,
        "recon_rms": float(recon_real.median()),
        "clip_motion": float(recon_motion.median()),
        "frac_realistic": float(ok_real.float().mean()),
        "frac_moving": float(ok_move.float().mean()),
        "frac_both": float(ok.float().mean()),
        "all_steps_ok": bool(ok.all()),
        "first_failure_step": first_fail,
        "latent_norm_end": float(latents[:, -1].norm(dim=-1).mean()),
        "latent_norm_start": float(latents[:, 0].norm(dim=-1).mean()),
    }


def _upscale(frames: np.ndarray, k: int) -> np.ndarray:
    return frames.repeat(k, axis=-3).repeat(k, axis=-2)


def _write_outputs(out: Path, clip: np.ndarray, results: dict, models: dict, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lyagym.envs.video_data import write_video

    cols = [c for c in COLUMNS if c <= steps]
    h, w = clip.shape[1:3]
    k = max(1, 64 // max(h, w))
    # frames.png: rows = model x seed, columns = steps; a gap column after the ground truth row
    rows = [np.concatenate([_upscale(clip[min(c, len(clip) - 1)], k) for c in cols], 1)]
    labels = ["training clip"]
    for name in MODELS:
        for s, traj in enumerate(results[name]["frames"]):
            rows.append(np.concatenate([_upscale(traj[c], k) for c in cols], 1))
            labels.append(f"{name} seed {s}")
    grid = np.concatenate(rows, 0)
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 1.5, 1.0 * len(rows) + 0.6))
    ax.imshow(grid)
    ax.set_xticks([(i + 0.5) * w * k for i in range(len(cols))], [str(c) for c in cols])
    ax.set_yticks([(i + 0.5) * h * k for i in range(len(rows))], labels, fontsize=8)
    ax.set_xlabel("step")
    ax.set_title("Generated frames (Fig. 7): stable vs unconstrained latent dynamics")
    fig.tight_layout()
    fig.savefig(out / "frames.png", dpi=110)
    plt.close(fig)

    # rollouts.gif: seeds down, [stable | simple] across, every 2nd step
    stride = 2 if steps > 200 else 1
    tiles = []
    for s in range(len(results["stable"]["frames"])):
        tiles.append(np.concatenate([_upscale(results[n]["frames"][s][::stride], k) for n in MODELS], axis=2))
    write_video(np.concatenate(tiles, axis=1), out / "rollouts.gif", fps=25)

    # curves.png: realism and motion per step, mean over seeds with min-max band
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, color in zip(MODELS, ("tab:blue", "tab:red")):
        r = results[name]
        for ax, key, thr, above in ((axes[0], "realism", r["real_threshold"], False), (axes[1], "motion", r["motion_threshold"], True)):
            y = r[key] if key == "motion" else r[key][:, 1:]
            t = np.arange(1, y.shape[1] + 1)
            ax.plot(t, y.mean(0), color=color, label=name)
            ax.fill_between(t, y.min(0), y.max(0), color=color, alpha=0.2)
            ax.axhline(thr, color=color, ls="--", lw=0.8)
    axes[0].set(xscale="log", xlabel="step", ylabel="RMS distance to nearest training frame", title="realism (lower is better; dashed: threshold)")
    axes[1].set(xscale="log", yscale="log", xlabel="step", ylabel="RMS change from previous frame", title="motion (higher than dashed = moving)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    # latent.png: trajectories projected on the top-2 principal components of the training latents
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, name in zip(axes, MODELS):
        z_train = models[name].encode_frames(clip).cpu().numpy()
        mean = z_train.mean(0)
        _, _, vt = np.linalg.svd(z_train - mean, full_matrices=False)
        proj = lambda z: (z - mean) @ vt[:2].T  # noqa: E731
        ax.plot(*proj(z_train).T, color="0.7", lw=1, label="training clip (encoded)")
        for s, traj in enumerate(results[name]["latents"]):
            p = proj(traj)
            ax.plot(*p.T, lw=0.8, label=f"seed {s}" if s < 4 else None)
            ax.plot(*p[0], "ko", ms=3)
        ax.set_title(f"{name}: latent trajectories (PCA of training latents)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latent.png", dpi=110)
    plt.close(fig)


def _table(results: dict, steps: int) -> tuple[list[str], list[list]]:
    mid = min(100, steps)
    header = ["model", "recon RMS", "realism@1", f"realism@{mid}", f"realism@{steps}", "real thr",
              "motion@1", f"motion@{mid}", f"motion@{steps}", "motion thr", "% realistic", "% moving", "% both", "all steps ok"]
    rows = []
    for name in MODELS:
        r = results[name]
        at = lambda a, s: float(a[:, min(s, a.shape[1] - 1)].mean())  # noqa: E731
        rows.append([
            name, f"{r['recon_rms']:.4f}", f"{at(r['realism'], 1):.4f}", f"{at(r['realism'], mid):.4f}", f"{at(r['realism'], steps):.4f}",
            f"{r['real_threshold']:.4f}", f"{at(r['motion'], 0):.4f}", f"{at(r['motion'], mid - 1):.4f}", f"{at(r['motion'], steps - 1):.4f}",
            f"{r['motion_threshold']:.4f}", f"{100 * r['frac_realistic']:.1f}", f"{100 * r['frac_moving']:.1f}",
            f"{100 * r['frac_both']:.1f}", "yes" if r["all_steps_ok"] else "no",
        ])
    return header, rows


def run(args: argparse.Namespace) -> int:
    from lyagym.learned_models import VideoVAE, fit_video

    torch.set_num_threads(max(1, int(args.threads)))
    if args.quick:
        args.size, args.frames, args.epochs, args.steps, args.latent, args.channels = 16, 32, 2, 50, 8, [8, 16]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = _load_clip(args)
    seed_idx = np.linspace(0, len(clip) - 1, args.seeds, endpoint=False).astype(int)
    print(f"video-fig7: {len(clip)} frames of {clip.shape[2]}x{clip.shape[1]} "
          f"({'clip ' + args.video if args.video else 'texture ' + args.texture}), latent {args.latent}, device {device}")

    results, models, timings = {}, {}, {}
    for name in MODELS:
        torch.manual_seed(args.seed)  # same VAE initialisation and data order for both
        kwargs = {"alpha": args.alpha, "eps": args.eps} if name == "stable" else {}
        model = VideoVAE(clip.shape[1:3], args.latent, channels=args.channels, dynamics=name, dynamics_kwargs=kwargs,
                         kl_weight=args.kl_weight, latent_weight=args.latent_weight, level_weight=args.level_weight,
                         predict_from=args.predict_from, projection=args.projection)
        tic = time.perf_counter()
        history = fit_video(model, clip, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            device=device, horizon=args.horizon)
        timings[name] = time.perf_counter() - tic
        model.set_reference_frames(clip[seed_idx])
        model.save(out / f"{name}.pt", metadata={"study": "video-fig7", "history": {k: v for k, v in history.items()}})
        models[name] = model
        results[name] = evaluate(model, clip, seed_idx, args.steps, args.real_factor, args.motion_factor)
        print(f"  {name}: trained in {timings[name]:.0f} s, final loss {history['loss'][-1]:.2f}, "
              f"realistic {100 * results[name]['frac_realistic']:.0f}% / moving {100 * results[name]['frac_moving']:.0f}% of steps")

    _write_outputs(out, clip, results, models, args.steps)
    header, rows = _table(results, args.steps)
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    (out / "table.md").write_text("\n".join(md) + "\n")
    summary = {
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_") and isinstance(v, (int, float, str, list, bool, type(None)))},
        "train_seconds": timings,
        **{name: {k: v for k, v in r.items() if k not in ("frames", "latents", "realism", "motion")} for name, r in results.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n".join(md))
    target = results["stable"]["all_steps_ok"] and not results["simple"]["all_steps_ok"]
    print(f"target (stable realistic and moving for all {args.steps} steps, unconstrained not): {'MET' if target else 'NOT met'}")
    print(f"outputs in {out.resolve()}: frames.png rollouts.gif curves.png latent.png table.md table.csv summary.json")
    return 0
