"""VideoVAE(projection="exact"): latent steps stay on the certified level of V, guarantee kept."""

import math

import pytest
import torch

from lyagym.learned_models import VideoVAE


def _model(alpha: float, projection: str = "exact") -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE(16, 6, channels=(4, 8), dynamics="stable", dynamics_kwargs={"alpha": alpha}, projection=projection)


def test_exact_projection_decays_V_at_the_certified_rate_and_no_faster():
    alpha = 1e-2
    model = _model(alpha).double()
    with torch.no_grad():
        z = model.rollout_latent(3.0 * torch.randn(32, 6, dtype=torch.float64), 40)
        V = model.dynamics.lyapunov(z.flatten(0, 1)).view(32, 41)
    ratio = V[:, 1:] / V[:, :-1]
    bound = math.exp(-alpha)
    assert (ratio <= bound * (1 + 1e-9)).all()  # the discrete guarantee V(z') <= exp(-alpha) V(z)
    # regula falsi lands on the level itself: no inward drift beyond the certified rate
    assert torch.quantile(ratio.flatten(), 0.1) > bound * (1 - 1e-3)
    assert (z[:, 1:] - z[:, :-1]).norm(dim=-1).min() > 0  # still moving along the level set


def test_decrease_projection_keeps_eq10_behaviour_and_exact_trains():
    with torch.no_grad():
        z0 = 3.0 * torch.randn(8, 6)
        a = _model(1e-2, "decrease").latent_step(z0)
        b = _model(1e-2, "decrease").dynamics.step(z0)
    torch.testing.assert_close(a, b)
    model = _model(1e-2)
    y = torch.rand(4, 3, 16, 16)
    model(y, torch.stack([y, y], 1))["loss"].backward()  # K = 2 through the exact step
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.dynamics.parameters() if p.requires_grad)
    assert VideoVAE(**model.config()).projection == "exact"
    with pytest.raises(ValueError, match="projection"):
        VideoVAE(16, 6, channels=(4,), projection="both")
