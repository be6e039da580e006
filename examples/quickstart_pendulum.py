"""Quick start: the n-link pendulum as a single env, as a batched torch vector env, and
under Stable-Baselines3 PPO.

    python examples/quickstart_pendulum.py            # under a minute on 2 idle CPU cores
    python examples/quickstart_pendulum.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import lyagym.envs  # noqa: F401  (registers lyagym/NLinkPendulum-v0)
from lyagym.agents.cli import parse_with_threads
from lyagym.envs import rewards


def single_env(seed: int) -> None:
    """One episode of a double pendulum under random torques, and a user-chosen start."""
    env = gym.make("lyagym/NLinkPendulum-v0", n_links=2, task="swingup", observation_mode="trig", max_episode_steps=200)
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += reward
        done = terminated or truncated
    print(f"single env: obs {obs.shape}, 200-step swing-up return under random torques {total:.1f}")

    # Start from a chosen state (q1, q2, qdot1, qdot2): both links upright, at rest.
    obs, _ = env.reset(options={"state": [np.pi, np.pi, 0.0, 0.0]})
    state = env.unwrapped.state
    print(f"  started upright: RMS error from upright {float(rewards.upright_error(state)):.3f} rad")
    env.close()


def vector_env(seed: int, num_envs: int) -> None:
    """``num_envs`` pendulums stepped as one torch batch; numpy out by default, tensors on request."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    envs = gym.make_vec(
        "lyagym/NLinkPendulum-v0",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        n_links=2,
        device=device,
        return_torch=True,  # observations, rewards and flags stay on `device`
    )
    obs, _ = envs.reset(seed=seed)
    high = torch.as_tensor(envs.single_action_space.high, device=device)
    returns = torch.zeros(num_envs, device=device)
    for _ in range(100):
        actions = (torch.rand(num_envs, 2, device=device) * 2 - 1) * high
        obs, reward, terminated, truncated, _ = envs.step(actions)
        returns += reward
    print(
        f"vector env: {num_envs} envs on {device}, obs {tuple(obs.shape)} {type(obs).__name__}, "
        f"mean 100-step return {returns.mean().item():.1f}, "
        f"autoreset {envs.metadata['autoreset_mode'].name}"
    )
    envs.close()


def ppo(seed: int, timesteps: int) -> None:
    """Stable-Baselines3 PPO on the single pendulum, unmodified."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(gym.make("lyagym/NLinkPendulum-v0", n_links=1, max_episode_steps=200))
    model = PPO("MlpPolicy", env, n_steps=512, batch_size=64, seed=seed, device="cpu", verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default leaves an empty folder in the temp dir
    model.learn(total_timesteps=timesteps, progress_bar=False)
    mean, std = evaluate_policy(model, env, n_eval_episodes=3)
    print(f"PPO after {timesteps} steps on n_links=1: mean return {mean:.1f} +- {std:.1f} (a short run: learning the swing-up takes far more steps)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_with_threads(parser, argv)
    single_env(args.seed)
    vector_env(args.seed, num_envs=256 if args.quick else 1024)
    ppo(args.seed, timesteps=1024 if args.quick else 4096)


if __name__ == "__main__":
    main()
