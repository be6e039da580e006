"""Shooting MPC by gradient descent through a differentiable world model.

``K`` action sequences per state (the warm start plus ``K - 1`` perturbed restarts) are
optimised jointly with Adam on the summed rollout cost, ``d J / d a`` flowing back through
``model.step``; after each step the actions are projected back into the bounds. The
cheapest sequence after the last step is returned. Needs a model whose ``step`` is
differentiable in ``u`` (true physics in torch, every lyagym learned model).
"""

from __future__ import annotations

import torch

from .planner_base import Planner

__all__ = ["GradientPlanner"]


class GradientPlanner(Planner):
    """Gradient-shooting planner. See ``Planner`` for the common arguments.

    Args:
        lr: Adam learning rate, in action units.
        num_samples: ``K`` restarts per state (default 16; restart 0 is the warm start itself).
        iterations: Adam steps per ``plan`` call (default 20).
    """

    name = "gradient"

    def __init__(self, model, cost, *, lr: float = 0.05, num_samples: int = 16, iterations: int = 20, **kwargs) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        super().__init__(model, cost, num_samples=num_samples, iterations=iterations, **kwargs)
        self.lr = float(lr)

    def _optimise(self, x0, mean):
        b = x0.shape[0]
        k, h, m = self.num_samples, self.horizon, self.action_dim
        noise = self.sample_noise((k, h, m)) * self.noise_std
        noise[0] = 0  # restart 0 continues from the warm start exactly
        actions = self.clamp(mean.unsqueeze(1) + noise).detach().requires_grad_(True)  # (B, K, H, m)
        optimiser = torch.optim.Adam([actions], lr=self.lr)
        x0 = x0.detach()
        with torch.enable_grad():
            for _ in range(self.iterations):
                cost = self.sequence_cost(x0, actions)
                # autograd.grad (not backward) so the model's own parameters never collect grads.
                (grad,) = torch.autograd.grad(cost.sum(), actions)
                actions.grad = grad
                optimiser.step()
                with torch.no_grad():
                    actions.copy_(self.clamp(actions))
        with torch.no_grad():
            cost = self.sequence_cost(x0, actions)
            best_cost, best_idx = cost.min(dim=1)
            best = torch.gather(actions, 1, best_idx[:, None, None, None].expand(b, 1, h, m))[:, 0]
        return best.detach(), best_cost
