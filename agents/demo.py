"""``lyagym demo``: the pendulum under a swing-up controller, as a GIF and a plot.

Stages, each a function so later issues can add their own (world models, certificates,
MPC) without touching these:

1. :func:`simulate_swingup` -- one ``NLinkPendulumEnv`` episode under
   :func:`energy_swingup_policy` (or random torques), with rendered frames;
2. :func:`simulate_batch` -- many pendulums at once in ``NLinkPendulumVectorEnv`` on
   ``--device`` under random torques (throughput and the spread of energies);
3. :func:`write_gif` and :func:`plot_trajectory` -- the files, written atomically.

``run(args)`` strings them together and prints where the outputs went.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_OUT = os.path.join(".", "lyagym-output", "demo")
OUTPUTS = ("pendulum.gif", "trajectory.png")


@dataclass(frozen=True)
class DemoSize:
    """How much work one ``--size`` does."""

    seconds: float  # simulated time of the single-env episode
    frame_size: int  # GIF frame side (pixels)
    gif_fps: int  # GIF frame rate (frames are subsampled from the env's 1 / dt)
    batch: int  # pendulums in the batched stage
    batch_seconds: float  # simulated time of the batched stage


SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(seconds=0.5, frame_size=64, gif_fps=10, batch=16, batch_seconds=0.1),
    "small": DemoSize(seconds=6.0, frame_size=240, gif_fps=25, batch=4096, batch_seconds=1.0),
    "full": DemoSize(seconds=12.0, frame_size=360, gif_fps=30, batch=65536, batch_seconds=2.0),
}


# ----------------------------------------------------------------------------- controller
def energy_swingup_policy(env, gain: float = 2.0, catch_error: float = 0.35, kp: float = 40.0, kd: float = 6.0):
    """A swing-up controller for a fully actuated chain, ``policy(state) -> action``.

    Far from upright it pumps energy towards the upright rest energy ``E*``: link torques
    ``tau_i = gain * (E* - E) * qdot_i`` inject power ``gain (E* - E) |qdot|^2 >= 0``
    while ``E < E*`` (Astrom & Furuta's energy shaping, applied link by link). Within
    ``catch_error`` radians (RMS) of upright it switches to a PD law on every link's
    absolute angle. Joint torques follow from link torques by ``u_j = sum_{i >= j} tau_i``
    (a joint torque acts ``+u`` on its link and ``-u`` on the one below). Clipping to the
    torque limit is left to the env.

    For one link this swings up and balances; for two or more it drives the energy to the
    upright level and catches the chain when it passes close to upright, which chaotic
    chains do only sometimes -- reliable multi-link swing-up is MPC's job (``lyagym plan``).
    """
    from lyagym.envs import rewards

    dyn = env.unwrapped.dynamics
    n = dyn.n_links
    actuated = list(dyn.actuated)
    upright = np.concatenate([np.full(n, math.pi), np.zeros(n)])
    target_energy = float(dyn.energy(upright))

    def policy(x: np.ndarray) -> np.ndarray:
        q, qdot = x[:n], x[n:]
        if float(rewards.upright_error(x)) < catch_error:
            tau = -kp * rewards.wrap_angle(q - math.pi) - kd * qdot
        else:
            tau = gain * (target_energy - float(dyn.energy(x))) * qdot
        joint_torque = np.cumsum(tau[::-1])[::-1]
        return joint_torque[actuated].astype(np.float32)

    return policy


def random_policy(env, seed: int):
    """Uniform random torques in the action box, seeded."""
    space = env.action_space
    space.seed(seed)
    return lambda x: space.sample()


# ----------------------------------------------------------------------------- stages
def simulate_swingup(
    n_links: int,
    seconds: float,
    *,
    controller: str = "energy",
    seed: int = 0,
    frame_every: int = 4,
    frame_size: int = 240,
    max_torque: float = 8.0,
) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Run one ``NLinkPendulumEnv`` swing-up episode and record it.

    Returns a dict with ``times (T+1,)``, ``states (T+1, 2n)``, ``actions (T, action_dim)``,
    ``energy (T+1,)``, ``upright_error (T+1,)``, ``rewards (T,)`` and ``frames``
    (a list of ``(frame_size, frame_size, 3)`` uint8 images every ``frame_every`` steps).
    """
    import gymnasium as gym

    import lyagym.envs  # noqa: F401  (registers the env)
    from lyagym.envs import rewards

    env = gym.make(
        "lyagym/NLinkPendulum-v0",
        n_links=n_links,
        task="swingup",
        max_torque=max_torque,
        render_mode="rgb_array",
        render_size=frame_size,
        max_episode_steps=-1,  # no TimeLimit: the demo decides the length
    )
    dt = env.unwrapped.dt
    steps = max(1, int(round(seconds / dt)))
    policy = energy_swingup_policy(env) if controller == "energy" else random_policy(env, seed)
    env.reset(seed=seed)
    base = env.unwrapped
    states, actions, step_rewards, frames = [base.state], [], [], [env.render()]
    for k in range(steps):
        action = policy(states[-1])
        _, reward, terminated, truncated, _ = env.step(action)
        states.append(base.state)
        actions.append(np.clip(action, base.action_space.low, base.action_space.high))
        step_rewards.append(reward)
        if (k + 1) % frame_every == 0:
            frames.append(env.render())
    env.close()
    states_arr = np.stack(states)
    return {
        "times": dt * np.arange(steps + 1),
        "states": states_arr,
        "actions": np.stack(actions),
        "energy": np.asarray(base.dynamics.energy(states_arr)),
        "upright_error": np.asarray(rewards.upright_error(states_arr)),
        "rewards": np.asarray(step_rewards),
        "frames": frames,
    }


def simulate_batch(n_links: int, batch: int, seconds: float, *, device: str = "cpu", seed: int = 0) -> dict:
    """Step ``batch`` pendulums on ``device`` under random torques (``task="free"``).

    Returns ``times (T+1,)``, ``energy_quantiles (T+1, 3)`` (10 %, 50 %, 90 % over the
    batch), ``env_steps_per_s`` (wall-clock throughput of the stepping loop) and ``device``.
    """
    import torch

    from lyagym.envs import NLinkPendulumVectorEnv

    envs = NLinkPendulumVectorEnv(
        batch, n_links=n_links, task="free", device=device, return_torch=True, max_episode_steps=None
    )
    envs.reset(seed=seed)
    steps = max(1, int(round(seconds / envs.dt)))
    generator = torch.Generator(device=envs.device).manual_seed(seed)
    high = torch.as_tensor(envs.single_action_space.high, device=envs.device)
    quantile_levels = torch.tensor([0.1, 0.5, 0.9], device=envs.device, dtype=envs.dtype)
    energies = [torch.quantile(envs.dynamics.energy(envs.state), quantile_levels)]
    start = time.perf_counter()
    for _ in range(steps):
        u = (torch.rand((batch, envs.action_dim), generator=generator, device=envs.device) * 2 - 1) * high
        envs.step(u)
        energies.append(torch.quantile(envs.dynamics.energy(envs.state), quantile_levels))
    if envs.device.type == "cuda":
        torch.cuda.synchronize(envs.device)
    elapsed = time.perf_counter() - start
    return {
        "times": envs.dt * np.arange(steps + 1),
        "energy_quantiles": torch.stack(energies).cpu().numpy(),
        "env_steps_per_s": batch * steps / max(elapsed, 1e-9),
        "device": str(envs.device),
        "batch": batch,
    }


# ----------------------------------------------------------------------------- files
def _atomic_target(path: Path, write: Callable[[str], None]) -> Path:
    """Write through ``write(tmp_path)`` into a temp file next to ``path``, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_gif(frames: Sequence[np.ndarray], path: Path, fps: int) -> Path:
    """Write ``(H, W, 3)`` uint8 frames as a looping GIF with PIL."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    duration = max(20, int(round(1000 / fps)))  # ms per frame; browsers floor to 20 ms
    return _atomic_target(
        path,
        lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0),
    )


def plot_trajectory(episode: dict, batch: dict | None, path: Path, title: str) -> Path:
    """A PNG of the episode (angles, energy vs. upright, torques) and the batch's energies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lyagym.envs import rewards

    t, x = episode["times"], episode["states"]
    n = x.shape[1] // 2
    panels = 4 if batch is not None else 3
    fig, axes = plt.subplots(panels, 1, figsize=(7, 2.2 * panels), sharex=False, constrained_layout=True)
    ax = axes[0]
    for i in range(n):  # unwrapped, so a link resting upright does not jump between +-pi
        ax.plot(t, x[:, i], lw=1.2, label=f"q{i + 1}")
    for k in range(int(np.floor(x[:, :n].min() / math.pi)), int(np.ceil(x[:, :n].max() / math.pi)) + 1):
        if k % 2:
            ax.axhline(k * math.pi, color="grey", ls=":", lw=0.8)
    ax.set_ylabel("angle (rad)\n0 = down, dotted = up")
    ax.legend(loc="upper left", fontsize=8, ncol=n)
    ax.set_title(title)

    ax = axes[1]
    ax.plot(t, episode["energy"], color="C3", lw=1.2, label="energy")
    ax2 = ax.twinx()
    ax2.plot(t, episode["upright_error"], color="C2", lw=1.0, label="RMS error from upright")
    ax.set_ylabel("energy (J)")
    ax2.set_ylabel("upright error (rad)", color="C2")

    ax = axes[2]
    u = episode["actions"]
    for j in range(u.shape[1]):
        ax.step(t[1:], u[:, j], where="pre", lw=1.0, label=f"u{j + 1}")
    ax.set_ylabel("torque (N m)")
    ax.set_xlabel("time (s)")
    ax.legend(loc="upper left", fontsize=8, ncol=u.shape[1])

    if batch is not None:
        ax = axes[3]
        q = batch["energy_quantiles"]
        ax.fill_between(batch["times"], q[:, 0], q[:, 2], alpha=0.3, color="C0", label="10-90 %")
        ax.plot(batch["times"], q[:, 1], color="C0", label="median")
        ax.set_ylabel("energy (J)")
        ax.set_xlabel("time (s)")
        ax.set_title(
            f"{batch['batch']} pendulums, random torques, on {batch['device']}: "
            f"{batch['env_steps_per_s'] / 1e6:.2f} M env-steps/s",
            fontsize=9,
        )
        ax.legend(loc="upper left", fontsize=8)
    return _atomic_target(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100) or plt.close(fig))


def prepare_output(out: str | os.PathLike, names: Sequence[str], overwrite: bool) -> Path:
    """Create ``out``; refuse to replace earlier outputs unless ``overwrite``."""
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--out {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{folder} already holds {', '.join(existing)}; pass --overwrite or choose another --out")
    return folder


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--links", type=int, default=2, help="number of pendulum links (default 2)")
    parser.add_argument("--seconds", type=float, default=None, help="simulated seconds (default: from --size)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="amount of work (tiny is for tests)")
    parser.add_argument("--controller", choices=["energy", "random"], default="energy", help="swing-up controller")
    parser.add_argument("--device", default="cpu", help="torch device of the batched stage (cpu, cuda, ...)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier demo outputs in --out")


def run(args: argparse.Namespace) -> int:
    size = SIZES[args.size]
    if args.links < 1:
        print(f"lyagym demo: --links must be >= 1, got {args.links}")
        return 2
    seconds = size.seconds if args.seconds is None else args.seconds
    if not (seconds > 0 and math.isfinite(seconds)):
        print(f"lyagym demo: --seconds must be a positive number, got {args.seconds}")
        return 2
    try:
        folder = prepare_output(args.out, OUTPUTS, args.overwrite)
    except (FileExistsError, NotADirectoryError) as e:
        print(f"lyagym demo: {e}")
        return 1

    start = time.perf_counter()
    print(f"[1/3] {args.links}-link pendulum, {seconds:g} s under the {args.controller} controller ...", flush=True)
    frame_every = max(1, int(round(100 / size.gif_fps)))  # the env runs at 1 / dt = 100 Hz
    episode = simulate_swingup(
        args.links, seconds, controller=args.controller, seed=args.seed, frame_every=frame_every, frame_size=size.frame_size
    )
    print(f"[2/3] {size.batch} pendulums at once on {args.device} ...", flush=True)
    batch = simulate_batch(args.links, size.batch, size.batch_seconds, device=args.device, seed=args.seed)
    print("[3/3] writing the GIF and the plot ...", flush=True)
    gif = write_gif(episode["frames"], folder / OUTPUTS[0], size.gif_fps)
    title = f"{args.links}-link pendulum, {args.controller} swing-up controller"
    png = plot_trajectory(episode, batch, folder / OUTPUTS[1], title)

    final_error = float(episode["upright_error"][-1])
    print(
        f"final RMS angle error from upright: {final_error:.3f} rad "
        f"({'balanced upright' if final_error < 0.1 else 'not upright at the end'}); "
        f"batched stepping: {batch['env_steps_per_s'] / 1e6:.2f} M env-steps/s on {batch['device']}"
    )
    print(f"wrote {gif}")
    print(f"wrote {png}")
    print(f"done in {time.perf_counter() - start:.1f} s; outputs in {folder.resolve()}")
    return 0
