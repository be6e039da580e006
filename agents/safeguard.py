"""The certified safeguard of an MPC controller: keep the planner's action only where the model
predicts the certified decrease of a control Lyapunov function, else apply the fallback input.

With a ``"stabilisability"`` certificate (``lyagym.learned_models.control_lyapunov``) the model's
closed loop under the fallback ``u_fb`` converges from every state of ``{V <= rho}``. A planner
optimises something else (the env's reward) and may pick an action that lets ``V`` grow. The
safeguard, at a state ``x`` of the certified region, applies the planned ``u`` only if

    V(step_k(x, u)) <= exp(-alpha dt) V(x)      for every member k of the model
                                                (or the members' mean, as V was certified)

(the certificate's discrete condition, with the model's own integrator and ``dt``; for a
continuous claim ``grad V . f(x, u) <= -alpha V``), and
``u_fb(x)`` otherwise; so every applied action satisfies the certified decrease on the model,
and the model's closed loop under the safeguarded controller converges whatever the planner
does. Outside the region (no claim there) and below its inner level the plan is applied as is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["CertifiedFallback"]


class CertifiedFallback:
    """``safeguard(state, action) -> action``: the plan where it keeps the certified decrease, else ``u_fb``.

    Args:
        lyapunov: the ``ControlLyapunov`` (certified region ``{V <= rho}``, rate ``alpha``).
        model: the world model it was certified on (an ``Ensemble``: every member must decrease ``V``).

    Attributes:
        counts: ``{"steps", "in_region", "replaced"}`` since construction (``reset_counts``).
    """

    def __init__(self, lyapunov, model) -> None:
        from lyagym.learned_models.control_lyapunov import ControlLyapunov, _members

        if not isinstance(lyapunov, ControlLyapunov):
            raise TypeError(f"lyapunov must be a ControlLyapunov, got {type(lyapunov).__name__}")
        self.lyapunov, self.model = lyapunov, model
        self.members = _members(model, lyapunov.ensemble)  # an ensemble's members (or their mean), built once per controller
        self.reset_counts()

    def reset_counts(self) -> None:
        self.counts = {"steps": 0, "in_region": 0, "replaced": 0}

    def in_region(self, x: torch.Tensor) -> torch.Tensor:
        """Whether states ``(batch, n)`` are in the certified region (above its inner level): ``(batch,)`` bool."""
        V = self.lyapunov
        rho = float(V.rho)
        v = V(x)
        return (v <= rho) & (v >= float(V.inner) * rho) & torch.tensor(rho > 0)

    @torch.no_grad()
    def __call__(self, state: np.ndarray, action: np.ndarray) -> np.ndarray:
        """``state: (n,)``, the planned ``action: (m,)`` -> the action to apply ``(m,)`` (float32)."""
        V = self.lyapunov
        dtype, device = V.P.dtype, V.P.device
        x = torch.as_tensor(np.asarray(state, np.float64), dtype=dtype, device=device).reshape(1, -1)
        self.counts["steps"] += 1
        if not bool(self.in_region(x)[0]):
            return np.asarray(action, np.float32)
        self.counts["in_region"] += 1
        u = torch.as_tensor(np.asarray(action, np.float64), dtype=dtype, device=device).reshape(1, -1)
        u = torch.clamp(u, V.u_low, V.u_high)
        if float(V.violation(None, x, u, members=self.members)[0]) <= 0:  # in V's time domain (discrete by default)
            return np.asarray(action, np.float32)
        self.counts["replaced"] += 1
        return V.fallback(None, x, members=self.members)[0].cpu().numpy().astype(np.float32)

    def __repr__(self) -> str:
        return f"CertifiedFallback(rho={float(self.lyapunov.rho):.4g}, counts={self.counts})"

    def stats(self) -> dict[str, Any]:
        """Counts and the share of in-region steps whose plan was replaced."""
        c = self.counts
        return {**c, "replaced_fraction": c["replaced"] / c["in_region"] if c["in_region"] else 0.0}
