"""Gymnasium environments: the sympy-derived n-link pendulum (single and batched torch
vector env) and video textures. Importing this module registers ``lyagym/NLinkPendulum-v0``
(and ``lyagym/VideoTexture-v0``)."""

# --- pendulum dynamics and datasets ---
from .datasets import DerivativeData, sample_derivative_dataset, trajectory_dataset
from .dynamics import PendulumDynamics

# --- pendulum environments and registration ---
from .n_link_pendulum import NLinkPendulumEnv
from .vector_env import NLinkPendulumVectorEnv


def _register_pendulum() -> None:
    from gymnasium.envs.registration import register, registry

    # A reload (or a second import path) must not register the id twice.
    if "lyagym/NLinkPendulum-v0" not in registry:
        register(
            id="lyagym/NLinkPendulum-v0",
            entry_point="lyagym.envs.n_link_pendulum:NLinkPendulumEnv",
            vector_entry_point="lyagym.envs.vector_env:NLinkPendulumVectorEnv",
            max_episode_steps=500,
        )


_register_pendulum()

# --- video texture ---
from .video_texture import VideoTextureEnv, VideoTextureVectorEnv


def _register_video_texture() -> None:
    from gymnasium.envs.registration import register, registry

    if "lyagym/VideoTexture-v0" not in registry:
        register(
            id="lyagym/VideoTexture-v0",
            entry_point="lyagym.envs.video_texture:VideoTextureEnv",
            vector_entry_point="lyagym.envs.video_texture:VideoTextureVectorEnv",
            max_episode_steps=200,
        )


_register_video_texture()
