"""Agents: MPC planners (CEM, MPPI, gradient shooting) that query any ``WorldModel``,
model-based RL loops, Stable-Baselines3 integration, and the ``lyagym`` command line."""

# --- planners, costs, model-based RL (issue 5) ---
from .costs import COSTS, LyapunovTerminalCost, PendulumCost, QuadraticCost, RewardCost, make_cost
from .planners import PLANNERS, CEMPlanner, GradientPlanner, ICEMPlanner, MPPIPlanner, Planner, make_planner

# World-model envs and MBRL loops import Stable-Baselines3; load them on first use so
# `lyagym --help` and planner-only users do not pay for it (PEP 562).
_LAZY = {
    "WorldModelEnv": "world_model_env",
    "WorldModelVectorEnv": "world_model_env",
    "SB3WorldModelVecEnv": "world_model_env",
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
    "train_baseline": "sb3_baselines",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
