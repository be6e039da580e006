"""The cross-entropy method for MPC (Rubinstein 1999; as used by PETS, Chua et al. 2018).

Each iteration samples ``K`` sequences from a per-state Gaussian, keeps the ``E`` cheapest
(the elites) and refits the Gaussian to them, smoothed by ``alpha``:

    u^k = clip(mean + std * eps^k),   elites = argsort_k S_k [:E]
    mean <- alpha mean + (1 - alpha) mean(elites),  std <- alpha std + (1 - alpha) std(elites)

The returned sequence is the cheapest sample seen in any iteration (or the final mean
with ``return_mean=True``).
"""

from __future__ import annotations

import torch

from .planner_base import Planner

__all__ = ["CEMPlanner"]


class CEMPlanner(Planner):
    """CEM planner. See ``Planner`` for the common arguments.

    Args:
        num_elites: ``E``, samples kept per iteration (default 10% of ``num_samples``, >= 2).
        alpha: smoothing of the mean/std update (0 = no memory).
        min_std: floor on the sampling std, so the distribution never collapses to a point.
        return_mean: return the final mean instead of the best sample.
    """

    name = "cem"

    def __init__(self, model, cost, *, num_elites: int | None = None, alpha: float = 0.1,
                 min_std: float = 1e-3, return_mean: bool = False, iterations: int = 5, **kwargs) -> None:
        super().__init__(model, cost, iterations=iterations, **kwargs)
        self.num_elites = max(2, self.num_samples // 10) if num_elites is None else int(num_elites)
        if not 1 <= self.num_elites <= self.num_samples:
            raise ValueError(f"num_elites must be in [1, num_samples={self.num_samples}], got {num_elites!r}")
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        self.min_std = float(min_std)
        self.return_mean = bool(return_mean)

    @torch.inference_mode()  # cheaper than no_grad: no version counters or view tracking
    def _optimise(self, x0, mean):
        b = x0.shape[0]
        k, h, m = self.num_samples, self.horizon, self.action_dim
        std = self.noise_std.expand(b, h, m).clone()
        best = mean
        best_cost = torch.full((b,), float("inf"), device=self.device, dtype=self.dtype)
        for _ in range(self.iterations):
            noise = self.sample_noise((k, h, m))  # shared by all B states
            noise[0] = 0  # sample 0 is the mean itself (the warm start on the first iteration)
            candidates = self.clamp(mean.unsqueeze(1) + std.unsqueeze(1) * noise)  # (B, K, H, m)
            cost = self.sequence_cost(x0, candidates)  # (B, K)
            elite_cost, elite_idx = torch.topk(cost, self.num_elites, dim=1, largest=False)
            elites = torch.gather(candidates, 1, elite_idx[:, :, None, None].expand(b, self.num_elites, h, m))
            # Keep the cheapest sample seen so far (no host sync: torch.where on device).
            improved = elite_cost[:, 0] < best_cost
            best = torch.where(improved[:, None, None], elites[:, 0], best)
            best_cost = torch.where(improved, elite_cost[:, 0], best_cost)
            mean = self.alpha * mean + (1 - self.alpha) * elites.mean(1)
            std = (self.alpha * std + (1 - self.alpha) * elites.std(1)).clamp_min(self.min_std)
        if self.return_mean:
            return mean, None  # its cost is computed on demand by ``solution_cost``
        return best, best_cost
