"""Agents: MPC planners (CEM, MPPI, gradient shooting) that query any ``WorldModel``,
model-based RL loops, Stable-Baselines3 integration, and the ``lyagym`` command line."""

# Planners and costs import torch, world-model envs and MBRL loops Stable-Baselines3; everything
# loads on first use (PEP 562) so `lyagym --help` and `lyagym info` import neither.
_LAZY = {
    # --- planners, costs, model-based RL ---
    **dict.fromkeys(["COSTS", "LyapunovTerminalCost", "PendulumCost", "QuadraticCost", "RewardCost", "make_cost"], "costs"),
    **dict.fromkeys(["PLANNERS", "CEMPlanner", "GradientPlanner", "ICEMPlanner", "MPPIPlanner", "Planner", "make_planner"],
                    "planners"),
    "WorldModelEnv": "world_model_env",
    "WorldModelVectorEnv": "world_model_env",
    "SB3WorldModelVecEnv": "world_model_env",
    "SB3VectorEnv": "sb3_vector",
    "make_sb3_vec_env": "sb3_vector",
    "WorldModelTorchRLEnv": "torchrl_env",  # needs torchrl (pip install "lyagym[torchrl]")
    "MPCController": "mbrl",
    "run_pets": "mbrl",
    "run_dyna": "mbrl",
    "run_mbpo": "mbpo",
    "MBRLConfig": "mbrl_config",
    "config_for": "mbrl_config",
    "world_model_for": "world_models",
    "make_world_model": "world_models",
    "EnvAdapter": "adapters",
    "make_adapter": "adapters",
    "ADAPTERS": "adapters",
    "mpc_episode": "mpc",
    "CertifiedFallback": "safeguard",
    "certified_kind": "world_models",
    "train_baseline": "sb3_baselines",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
