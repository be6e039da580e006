"""Agents: MPC planners (CEM, MPPI, gradient shooting) that query any ``WorldModel``,
model-based RL loops, Stable-Baselines3 integration, and the ``lyagym`` command line."""

# --- planners, costs, model-based RL (issue 5) ---
from .costs import COSTS, LyapunovTerminalCost, PendulumCost, QuadraticCost, make_cost
from .planners import PLANNERS, CEMPlanner, GradientPlanner, MPPIPlanner, Planner, make_planner
