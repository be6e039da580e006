"""``lyagym demo``: the pendulum under a swing-up controller, as a GIF and a plot.

Stages, each a function so that new stages can be added (world models, certificates,
MPC) without touching these:

1. :func:`simulate_swingup` -- one ``NLinkPendulumEnv`` episode under
   :func:`energy_swingup_policy` (or random torques), with rendered frames;
2. :func:`simulate_batch` -- many pendulums at once in ``NLinkPendulumVectorEnv`` on
   ``--device`` under random torques (throughput and the spread of energies);
3. :func:`write_gif` and :func:`plot_trajectory` -- the files, written atomically;
4. :func:`train_world_models` -- pendulum data from the env, a simple (MLP) and a stable
   (Manek & Kolter, ISS with inputs) world model trained on it;
5. :func:`rollout_error_table` -- the Fig.-5-style long-rollout error of both models;
6. :func:`check_certificate` -- the stable model's certificate and its falsification run;
7. :func:`mpc_with_world_model` -- MPC planning on the stable model, acting on the real env;
8. :func:`plot_rollout_error` and :func:`write_summary` -- plots, GIF and ``summary.md``.

``run(args)`` strings them together and prints where the outputs went.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lyagym.learned_models.files import atomic_write
from .cli_types import folder, integer, number

DEFAULT_OUT = os.path.join(".", "lyagym-output", "demo")
OUTPUTS = ("pendulum.gif", "trajectory.png")
#: files of the world-model stages
MODEL_OUTPUTS = ("rollout_error.png", "mpc_stable_model.png", "mpc_stable_model.gif", "stable_model.pt",
                 "stable_certificate.json", "summary.md")


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
    "small": DemoSize(seconds=6.0, frame_size=240, gif_fps=25, batch=4096, batch_seconds=0.5),
    "full": DemoSize(seconds=12.0, frame_size=360, gif_fps=30, batch=65536, batch_seconds=1.0),
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
    ``energy (T+1,)``, ``upright_energy`` (all links up, at rest), ``upright_error (T+1,)``, ``rewards (T,)`` and ``frames``
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
        "upright_energy": float(base.dynamics.energy(np.concatenate([np.full(n_links, math.pi), np.zeros(n_links)]))),
        "upright_error": np.asarray(rewards.upright_error(states_arr)),
        "rewards": np.asarray(step_rewards),
        "frames": frames,
    }


def simulate_batch(n_links: int, batch: int, seconds: float, *, device: str = "cpu", seed: int = 0) -> dict:
    """Step ``batch`` pendulums on ``device`` under random torques (``task="free"``).

    Returns ``times (T+1,)``, ``energy_quantiles (T+1, 3)`` (10 %, 50 %, 90 % over the
    batch), ``energy_samples (T+1, k)`` (the first ``k = min(4, batch)`` pendulums),
    ``upright_energy`` (all links up, at rest), ``env_steps_per_s`` (wall-clock throughput of
    the stepping loop) and ``device``.
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
    k = min(4, batch)
    upright = torch.cat([torch.full((n_links,), math.pi), torch.zeros(n_links)])

    def record():
        e = envs.dynamics.energy(envs.state)
        energies.append(torch.quantile(e, quantile_levels))
        samples.append(e[:k])

    energies, samples = [], []
    record()
    start = time.perf_counter()
    for _ in range(steps):
        u = (torch.rand((batch, envs.action_dim), generator=generator, device=envs.device) * 2 - 1) * high
        envs.step(u)
        record()
    if envs.device.type == "cuda":
        torch.cuda.synchronize(envs.device)
    elapsed = time.perf_counter() - start
    return {
        "times": envs.dt * np.arange(steps + 1),
        "energy_quantiles": torch.stack(energies).cpu().numpy(),
        "energy_samples": torch.stack(samples).cpu().numpy(),
        "upright_energy": float(envs.dynamics.energy(upright[None].to(device=envs.device, dtype=envs.dtype))[0]),
        "env_steps_per_s": batch * steps / max(elapsed, 1e-9),
        "device": str(envs.device),
        "batch": batch,
    }


# ----------------------------------------------------------------------------- files
def _atomic_target(path: Path, write: Callable[[str], None]) -> Path:
    """Write through ``write(tmp_path)`` into a temp file next to ``path``, then rename; creates
    ``path``'s folder here, when the first file is written (not before the work)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, write)


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
    energy_line = ax.plot(t, episode["energy"], color="C3", lw=1.2, label="energy (J, left)")
    ax2 = ax.twinx()
    error_line = ax2.plot(t, episode["upright_error"], color="C2", lw=1.0, label="RMS error from upright (rad, right)")
    ax.set_ylabel("energy (J)", color="C3")
    ax2.set_ylabel("upright error (rad)", color="C2")
    lines = energy_line + error_line
    if "upright_energy" in episode:
        lines += [ax.axhline(episode["upright_energy"], color="C3", ls=":", lw=0.8, label="energy upright at rest")]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)

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
        ax.fill_between(batch["times"], q[:, 0], q[:, 2], alpha=0.3, color="C0", label="10-90 % of the batch")
        ax.plot(batch["times"], q[:, 1], color="C0", label="median")
        samples = batch.get("energy_samples")
        if samples is not None:  # a few individual pendulums: the band is made of these
            for k in range(samples.shape[1]):
                ax.plot(batch["times"], samples[:, k], color="C1", lw=0.6, alpha=0.8,
                        label=f"{samples.shape[1]} single pendulums" if k == 0 else None)
        if "upright_energy" in batch:
            ax.axhline(batch["upright_energy"], color="C3", ls=":", lw=0.8, label="energy upright at rest")
        ax.set_ylabel("energy (J)")
        ax.set_xlabel("time (s)")
        ax.set_title(
            f"{batch['batch']} pendulums, random torques, on {batch['device']}: "
            f"{batch['env_steps_per_s'] / 1e6:.2f} M env-steps/s",
            fontsize=9,
        )
        ax.legend(loc="upper left", fontsize=8, ncol=2)
    return _atomic_target(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100) or plt.close(fig))


def prepare_output(out: str | os.PathLike, names: Sequence[str], overwrite: bool) -> Path:
    """Check ``out``; refuse to replace earlier outputs unless ``overwrite``. The folder itself is
    created when the first file is written (``_atomic_target``), so a failed run leaves none."""
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--out {folder} exists and is not a folder")
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{folder} already holds {', '.join(existing)}; pass --overwrite or choose another --out")
    return folder


# ----------------------------------------------------------------------------- world models, certificate, MPC
@dataclass(frozen=True)
class ModelStageSize:
    """How much work the world-model stages do for one ``--size``."""

    episodes: int  # random-torque episodes of data from random states
    episode_steps: int  # env steps (of 0.05 s) per data episode
    hidden: tuple[int, ...]  # fhat widths of both models
    lyap_hidden: tuple[int, ...]  # ICNN widths of the stable model's V
    epochs: int  # training epochs (early stopping may end sooner)
    eval_states: int  # Fig.-5-style evaluation: initial states in [-pi/8, pi/8]^(2n)
    eval_steps: int  # ... and steps of 0.05 s
    falsify: dict  # keyword arguments of Certificate.check
    mpc_steps: int  # real env steps of MPC
    mpc_samples: int  # K
    mpc_horizon: int  # H
    frame_every: int  # GIF frame every this many env steps
    mpc_iterations: int = 1  # MPPI iterations per plan


MODEL_SIZES: dict[str, ModelStageSize] = {
    "tiny": ModelStageSize(4, 8, (16, 16), (16, 16), 1, 8, 10,
                           dict(n_samples=1000, shells=3, per_shell=50, large_norm_samples=50, grad_steps=2,
                                grad_starts=8, rollouts=8, rollout_steps=3, time_limit=10.0), 3, 16, 5, 1),
    "small": ModelStageSize(100, 20, (100, 100), (60, 60), 60, 200, 200,
                            dict(n_samples=20_000, per_shell=500, large_norm_samples=2_000, grad_steps=30,
                                 grad_starts=64, rollouts=64, rollout_steps=50, time_limit=20.0), 160, 300, 30, 2, 2),
    "full": ModelStageSize(200, 25, (100, 100), (60, 60), 150, 1000, 400, dict(time_limit=60.0), 200, 500, 30, 1, 2),
}

#: control step of the world models and the MPC env (s): coarse enough for a 1.5 s horizon
MODEL_DT = 0.05


def train_world_models(n_links: int, size: ModelStageSize, *, seed: int = 0, device: str = "cpu",
                       progress: bool = True) -> dict:
    """Collect random-torque data from ``NLinkPendulumEnv`` and train a simple and a stable
    controlled world model on it (one-step loss through each model's own RK4 step).

    Returns ``{"data": TransitionBuffer, "models": {name: model}, "histories": {name: fit history},
    "seconds": {name: training seconds}}``.
    """
    import torch

    from .mbrl import collect_random_transitions, fit_transitions, make_pendulum_env, make_world_model

    env = make_pendulum_env(n_links, dt=MODEL_DT, episode_steps=size.episode_steps)
    data = collect_random_transitions(env, size.episodes, size.episode_steps, seed=seed, progress=progress)
    base = env.unwrapped
    kinds = {
        "simple": dict(hidden=size.hidden),
        "stable": dict(hidden=size.hidden, lyap_hidden=size.lyap_hidden),
    }
    models, histories, seconds = {}, {}, {}
    for name, kwargs in kinds.items():
        model = make_world_model(name, base.state_dim, base.action_dim, base.dt, seed=seed, device=device, **kwargs)
        start = time.perf_counter()
        histories[name] = fit_transitions(model, data, epochs=size.epochs, batch_size=256, lr=3e-3, patience=15,
                                          seed=seed, progress=progress)
        seconds[name] = time.perf_counter() - start
        models[name] = model.eval().requires_grad_(False)
    env.close()
    torch.manual_seed(seed)
    return {"data": data, "models": models, "histories": histories, "seconds": seconds}


def rollout_error_table(n_links: int, models: dict, size: ModelStageSize, *, seed: int = 0, progress: bool = True):
    """Fig.-5-style evaluation at the models' step: ``eval_states`` initial states uniform in
    ``[-pi/8, pi/8]^(2n)``, physics and models both RK4 at ``h = 0.05`` without torque for
    ``eval_steps`` steps, squared state error with wrapped angles
    (``lyagym.agents.reproduce.pendulum_eval.rollout_error``).

    Returns ``(scores, markdown_table)``.
    """
    import torch

    from .mbrl import make_pendulum_env, true_physics_model
    from .reproduce.pendulum_eval import rollout_error

    env = make_pendulum_env(n_links, dt=MODEL_DT)
    physics = true_physics_model(env, dtype=torch.float64)
    env.close()
    scores = rollout_error(physics, models, n_states=size.eval_states, n_steps=size.eval_steps, h=MODEL_DT, seed=seed,
                           progress=progress, equilibrium_baseline=True)
    rows = ["| model | mean squared error over the rollout | median over trajectories | error at the last step | diverged |",
            "|---|---|---|---|---|"]
    for name, score in scores.items():
        label = f"{EQUILIBRIUM_LABEL} (reference)" if name == "equilibrium" else name
        rows.append(f"| {label} | {score.average:.4g} | {score.median:.4g} | {score.per_step[-1]:.4g} | {score.diverged} |")
    return scores, "\n".join(rows)


#: The constant prediction x = 0 of the rollout-error table and plot: a model above it is worse
#: than predicting "hanging at rest" every step.
EQUILIBRIUM_LABEL = "x = 0 (hanging at rest)"


def check_certificate(model, size: ModelStageSize, path: Path | None = None):
    """The stable model's ``Certificate`` and a falsification run of it (``Certificate.check``).

    Returns ``(certificate, report)``; writes the certificate JSON to ``path`` when given.
    """
    cert = model.certificate()
    report = cert.check(model, **size.falsify)
    if path is not None:
        cert.save(path)
    return cert, report


def mpc_with_world_model(n_links: int, model, size: ModelStageSize, *, seed: int = 0, frame_size: int = 240,
                         progress: bool = True) -> dict:
    """MPPI planning on ``model`` (its own discrete step), acting on the real
    ``NLinkPendulumEnv`` swing-up from hanging down; records frames every
    ``size.frame_every`` steps. See ``lyagym.agents.mbrl.mpc_episode``."""
    from .mbrl import angle_error, make_pendulum_env, mpc_episode

    env = make_pendulum_env(n_links, dt=MODEL_DT, episode_steps=size.mpc_steps, render_mode="rgb_array",
                            render_size=frame_size)
    episode = mpc_episode(env, model, planner="mppi", horizon=size.mpc_horizon, num_samples=size.mpc_samples,
                          iterations=size.mpc_iterations, steps=size.mpc_steps, seed=seed, frames=True, progress=progress)
    env.close()
    episode["frames"] = episode["frames"][::size.frame_every]
    episode["times"] = MODEL_DT * np.arange(len(episode["states"]))
    episode["angle_error"] = angle_error(episode["states"], n_links, math.pi)
    return episode


def plot_rollout_error(scores: dict, histories: dict, path: Path, dt: float, title: str) -> Path:
    """Fig. 5 (left) analogue: mean squared error vs time for each model (the constant
    prediction ``x = 0``, ``scores["equilibrium"]``, as a dashed black reference), and the
    training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    for name, score in scores.items():
        t = dt * np.arange(len(score.per_step))
        if name == "equilibrium":
            axes[0].semilogy(t[1:], score.per_step[1:], color="k", ls="--", lw=1.0,
                             label=f"{EQUILIBRIUM_LABEL}, reference (mean {score.average:.3g})")
        else:
            axes[0].semilogy(t[1:], score.per_step[1:], label=f"{name} (mean {score.average:.3g})")
    axes[0].set_xlabel("time (s)")
    axes[0].set_ylabel("squared state error")
    axes[0].set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    for name, history in histories.items():
        losses = history.get("val_loss") or history.get("train_loss")
        axes[1].semilogy(np.arange(1, len(losses) + 1), losses, label=name)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation loss (one step)")
    axes[1].set_title("training", fontsize=9)
    axes[1].legend(fontsize=8)
    return _atomic_target(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100) or plt.close(fig))


def plot_mpc(episode: dict, path: Path, title: str) -> Path:
    """Angles (wrapped around upright), angle error and torques of an MPC episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, x, u = episode["times"], episode["states"], episode["actions"]
    n = x.shape[1] // 2
    fig, axes = plt.subplots(2, 1, figsize=(7, 4.4), sharex=True, constrained_layout=True)
    for i in range(n):  # unwrapped: a link resting upright does not jump between +-pi
        axes[0].plot(t, x[:, i], lw=1.2, label=f"q{i + 1}")
    for k in range(int(np.floor(x[:, :n].min() / math.pi)), int(np.ceil(x[:, :n].max() / math.pi)) + 1):
        if k % 2:
            axes[0].axhline(k * math.pi, color="grey", ls=":", lw=0.8)
    axes[0].set_ylabel("angle (rad)\n0 = down, dotted = up")
    axes[0].set_title(title, fontsize=9)
    axes[0].legend(fontsize=8, ncol=n)
    for j in range(u.shape[1]):
        axes[1].step(t[1:], u[:, j], where="pre", lw=1.0, label=f"u{j + 1}")
    axes[1].set_ylabel("torque (N m)")
    axes[1].set_xlabel("time (s)")
    return _atomic_target(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100) or plt.close(fig))


def write_summary(path: Path, text: str) -> Path:
    """Write the markdown summary atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return _atomic_target(path, write)


def run_model_stages(args: argparse.Namespace, folder: Path, basic_summary: str) -> str:
    """Stages 4-8 (world models, error table, certificate, MPC, files); returns the summary text."""
    size = MODEL_SIZES[args.size]
    progress = not getattr(args, "no_progress", False)
    n = args.links
    print(f"[4/8] collecting {size.episodes} x {size.episode_steps} random-torque steps from the {n}-link env "
          f"and training simple and stable world models ...", flush=True)
    trained = train_world_models(n, size, seed=args.seed, device=args.device, progress=progress)
    models = trained["models"]
    for name, seconds in trained["seconds"].items():
        best = min(trained["histories"][name]["val_loss"] or trained["histories"][name]["train_loss"])
        print(f"      {name:6s}: trained in {seconds:5.1f} s, best one-step validation loss {best:.3g}")
    stable = models["stable"]
    stable.save(folder / MODEL_OUTPUTS[3], metadata={"trained_by": "lyagym demo", "links": n, "dt": MODEL_DT})

    print(f"[5/8] Fig.-5-style rollout error: {size.eval_states} states in [-pi/8, pi/8]^{2 * n}, "
          f"{size.eval_steps} steps of {MODEL_DT} s without torque ...", flush=True)
    cpu_models = {name: m.to("cpu") for name, m in models.items()}
    scores, table = rollout_error_table(n, cpu_models, size, seed=args.seed, progress=progress)
    print(table)
    from .reproduce.mbrl_swingup import prediction_errors

    regions_table, region_errors = prediction_errors(cpu_models, n, MODEL_DT, 5.0, n_states=min(256, size.eval_states),
                                                     seed=args.seed)
    verdicts = [f"{region}: the stable model's error is {errs['stable'] / max(errs['simple'], 1e-300):.2g}x the simple model's"
                for region, errs in region_errors.items()]
    print("      where the stability constraint helps and hurts (mean squared error of each model's own step):")
    print(regions_table)

    print("[6/8] certificate of the stable model and a falsification run ...", flush=True)
    cert, report = check_certificate(cpu_models["stable"], size, folder / MODEL_OUTPUTS[4])
    print(f"      claim: {cert.claim} (alpha = {cert.alpha:g}, evidence {cert.evidence}, {cert.time_domain} time)")
    print("      " + report.summary().replace("\n", "\n      "))

    print(f"[7/8] MPC (MPPI, K={size.mpc_samples}, H={size.mpc_horizon}, {size.mpc_iterations} iteration(s)) with the stable world model on the real env, "
          f"{size.mpc_steps} steps ...", flush=True)
    planning_model = cpu_models["stable"].to(args.device)
    episode = mpc_with_world_model(n, planning_model, size, seed=args.seed, frame_size=SIZES[args.size].frame_size,
                                   progress=progress)
    final_error = float(episode["angle_error"][-1])
    tail = episode["angle_error"][-max(1, len(episode["angle_error"]) // 5):]
    held = bool(tail.max() < 0.1)
    print(f"      return {episode['return']:.1f}; final angle error {final_error:.3f} rad; "
          f"{'swung up and held' if held else 'not held upright'} over the last 20 % of the episode "
          f"({episode['plans_per_s']:.1f} plans/s)")

    print("[8/8] writing plots, GIF and summary ...", flush=True)
    err_png = plot_rollout_error(scores, trained["histories"], folder / MODEL_OUTPUTS[0], MODEL_DT,
                                 f"{n}-link pendulum, rollout error without torque")
    mpc_png = plot_mpc(episode, folder / MODEL_OUTPUTS[1], f"MPC on the stable world model, real {n}-link env")
    mpc_gif = write_gif(episode["frames"], folder / MODEL_OUTPUTS[2], fps=max(1, int(round(1 / (MODEL_DT * size.frame_every)))))
    lines = [
        f"# lyagym demo ({n}-link pendulum, size {args.size}, seed {args.seed})",
        "",
        basic_summary,
        "",
        "## World models",
        "",
        f"Data: {size.episodes} episodes x {size.episode_steps} steps of {MODEL_DT} s with uniform random torques from "
        f"random states ({len(trained['data'])} transitions). Both models are continuous-time "
        f"`xdot = f(x, u)` networks stepped with RK4 at {MODEL_DT} s, trained on the one-step loss.",
        "",
        "| model | training (s) | best one-step validation loss |",
        "|---|---|---|",
    ]
    for name, seconds in trained["seconds"].items():
        best = min(trained["histories"][name]["val_loss"] or trained["histories"][name]["train_loss"])
        lines.append(f"| {name} | {seconds:.1f} | {best:.3g} |")
    lines += [
        "",
        f"## Rollout error (Fig. 5 style, {size.eval_states} states, {size.eval_steps} steps, no torque)",
        "",
        table,
        "",
        f"![rollout error]({MODEL_OUTPUTS[0]})",
        "",
        "Where the stability constraint helps and hurts (each model's own discrete step, same initial states and "
        "torques; mean squared state error with wrapped angles):",
        "",
        regions_table,
        "",
        "; ".join(verdicts) + ".",
        "",
        "Why: the stable model is certified to decay towards hanging at rest without input. Near upright the real "
        "pendulum falls either way, and a fall past +-pi (in the model's unwrapped coordinates: away from the "
        "equilibrium, V grows) is what the certificate forbids without torque, so the constraint costs accuracy "
        "in the unstable upright region; near hanging and under bounded torques it keeps long rollouts bounded.",
        "",
        "## Certificate of the stable model",
        "",
        f"- claim: `{cert.claim}`, alpha = {cert.alpha:g}, {cert.time_domain} time, equilibrium {cert.equilibrium}",
        f"- evidence: {', '.join(cert.evidence) or 'none'}; file `{MODEL_OUTPUTS[4]}`",
        f"- falsification: {'passed' if report.passed else 'FAILED'}, {report.n_checked} checks, "
        f"{report.n_violations} violations, worst normalised violation {report.worst_violation:.3g}",
        "",
        "## MPC with the stable world model on the real env",
        "",
        f"MPPI, K = {size.mpc_samples}, H = {size.mpc_horizon} ({size.mpc_horizon * MODEL_DT:g} s), "
        f"{size.mpc_steps} steps from hanging down: return {episode['return']:.1f}, final angle error "
        f"{final_error:.3f} rad, {'swung up and held' if held else 'not held upright'} over the last 20 %.",
        "",
        f"![MPC]({MODEL_OUTPUTS[1]}) ![MPC GIF]({MODEL_OUTPUTS[2]})",
        "",
    ]
    summary = write_summary(folder / MODEL_OUTPUTS[5], "\n".join(lines))
    for p in (err_png, mpc_png, mpc_gif, folder / MODEL_OUTPUTS[3], folder / MODEL_OUTPUTS[4], summary):
        print(f"wrote {p}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=folder, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--links", type=integer(1), default=1, help="number of pendulum links (default 1)")
    parser.add_argument("--seconds", type=number(0, strict=True), default=None, help="simulated seconds (default: from --size)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="amount of work (tiny is for tests)")
    parser.add_argument("--controller", choices=["energy", "random"], default="energy", help="swing-up controller")
    parser.add_argument("--device", default="cpu", help="torch device of the batched stage (cpu, cuda, ...)")
    parser.add_argument("--seed", type=integer(0), default=0, help="random seed")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier demo outputs in --out")
    parser.add_argument("--stages", choices=["all", "basic"], default="all",
                        help="all (default): also train world models, check the certificate and run MPC; basic: simulation only")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    size = SIZES[args.size]
    if args.links < 1:
        print(f"lyagym demo: --links must be >= 1, got {args.links}")
        return 2
    seconds = size.seconds if args.seconds is None else args.seconds
    if not (seconds > 0 and math.isfinite(seconds)):
        print(f"lyagym demo: --seconds must be a positive number, got {args.seconds}")
        return 2
    full = getattr(args, "stages", "all") == "all"
    total = 8 if full else 3
    try:
        folder = prepare_output(args.out, OUTPUTS + (MODEL_OUTPUTS if full else ()), args.overwrite)
    except (FileExistsError, NotADirectoryError) as e:
        print(f"lyagym demo: {e}")
        return 1

    start = time.perf_counter()
    print(f"[1/{total}] {args.links}-link pendulum, {seconds:g} s under the {args.controller} controller ...", flush=True)
    frame_every = max(1, int(round(100 / size.gif_fps)))  # the env runs at 1 / dt = 100 Hz
    episode = simulate_swingup(
        args.links, seconds, controller=args.controller, seed=args.seed, frame_every=frame_every, frame_size=size.frame_size
    )
    print(f"[2/{total}] {size.batch} pendulums at once on {args.device} ...", flush=True)
    batch = simulate_batch(args.links, size.batch, size.batch_seconds, device=args.device, seed=args.seed)
    print(f"[3/{total}] writing the GIF and the plot ...", flush=True)
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
    if full:
        basic_summary = (
            f"## Simulation\n\nEnergy-shaping swing-up controller ({args.controller}), {seconds:g} s: final RMS angle "
            f"error from upright {final_error:.3f} rad. Batched stepping of {batch['batch']} pendulums: "
            f"{batch['env_steps_per_s'] / 1e6:.2f} M env-steps/s on {batch['device']}.\n\n"
            f"![pendulum]({OUTPUTS[0]}) ![trajectory]({OUTPUTS[1]})"
        )
        run_model_stages(args, folder, basic_summary)
    print(f"done in {time.perf_counter() - start:.1f} s; outputs in {folder.resolve()}")
    return 0
