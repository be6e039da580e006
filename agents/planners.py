"""Pick an MPC planner by name: ``make_planner("mppi", model, cost, horizon=30)``."""

from __future__ import annotations

from .cem import CEMPlanner
from .gradient_planner import GradientPlanner
from .icem import ICEMPlanner
from .mppi import MPPIPlanner
from .planner_base import Planner

__all__ = ["PLANNERS", "make_planner", "Planner", "CEMPlanner", "ICEMPlanner", "MPPIPlanner", "GradientPlanner"]

#: name -> planner class
PLANNERS: dict[str, type[Planner]] = {
    "cem": CEMPlanner,
    "icem": ICEMPlanner,
    "mppi": MPPIPlanner,
    "gradient": GradientPlanner,
}


def make_planner(name: str, model, cost, **kwargs) -> Planner:
    """Build the planner called ``name`` (one of ``PLANNERS``) for ``model`` and ``cost``.

    Keyword arguments go to the planner class (``horizon``, ``num_samples``, ``iterations``,
    ``action_low``, ``action_high``, ``terminal_cost``, ``seed``, and its own options).
    """
    try:
        cls = PLANNERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown planner {name!r}; choose one of {sorted(PLANNERS)}") from None
    return cls(model, cost, **kwargs)
