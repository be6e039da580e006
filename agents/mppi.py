"""Model Predictive Path Integral control (Williams et al., 2017), batched over states.

Each iteration perturbs the warm-start sequence with Gaussian noise, rolls all candidates
out through the world model and averages them with exponentiated-cost weights:

    u^k = clip(mean + eps^k),            eps^k ~ N(0, diag(sigma^2)),  eps^0 = 0
    w_k = exp(-(S_k - min_j S_j) / lambda) / sum_j exp(-(S_j - min_j S_j) / lambda)
    mean <- sum_k w_k u^k

(the path-integral update; subtracting the minimum keeps the exponentials finite).
"""

from __future__ import annotations

import torch

from .planner_base import Planner

__all__ = ["MPPIPlanner"]


class MPPIPlanner(Planner):
    """MPPI planner. See ``Planner`` for the common arguments.

    Args:
        temperature: ``lambda`` > 0 in the weights, in units of the cost; small values
            approach picking the best sample, large values the plain average.
    """

    name = "mppi"

    def __init__(self, model, cost, *, temperature: float = 1.0, **kwargs) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        super().__init__(model, cost, **kwargs)
        self.temperature = float(temperature)

    @torch.inference_mode()  # cheaper than no_grad: no version counters or view tracking
    def _optimise(self, x0, mean):
        k, h, m = self.num_samples, self.horizon, self.action_dim
        for _ in range(self.iterations):
            noise = self.sample_noise((k, h, m)) * self.noise_std  # shared by all B states
            noise[0] = 0  # sample 0 is the warm start itself, so a good plan is never lost to noise
            candidates = self.clamp(mean.unsqueeze(1) + noise)  # (B, K, H, m)
            cost = self.sequence_cost(x0, candidates)  # (B, K)
            weights = torch.softmax(-cost / self.temperature, dim=1)  # softmax subtracts the max itself
            mean = torch.einsum("bk,bkhm->bhm", weights, candidates)
        # The mean's own cost would need one more rollout; ``solution_cost`` computes it on demand.
        return mean, None
