"""fit(): learns a damped pendulum, seeded, early stopping, trajectories, clear errors."""

from typing import NamedTuple

import pytest
import torch

from lyagym.learned_models import SimpleDynamics, StableControlledDynamics, StableDynamics, fit


def pendulum(x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """Damped pendulum theta'' = -(g/l) sin(theta) - b theta' (+ u): closed form of the field."""
    th, w = x[:, 0], x[:, 1]
    acc = -9.81 * torch.sin(th) - 0.5 * w
    if u is not None:
        acc = acc + u[:, 0]
    return torch.stack([w, acc], dim=-1)


def pendulum_pairs(count: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(count, 2, generator=g) * 2 - 1) * torch.tensor([2.0, 4.0])
    return x, pendulum(x)


def pendulum_trajectories(count: int = 16, steps: int = 12, h: float = 0.05):
    x = (torch.rand(count, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1) * torch.tensor([1.0, 2.0])
    out = [x]
    for _ in range(steps):
        k1 = pendulum(x)
        k2 = pendulum(x + 0.5 * h * k1)
        k3 = pendulum(x + 0.5 * h * k2)
        k4 = pendulum(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(x)
    return torch.stack(out, dim=1)


class DerivativeData(NamedTuple):  # the shape of lyagym.envs.datasets.DerivativeData
    x: torch.Tensor
    xdot: torch.Tensor
    u: torch.Tensor | None


@pytest.mark.parametrize("cls", [SimpleDynamics, StableDynamics])
def test_fit_learns_the_damped_pendulum(cls):
    torch.manual_seed(0)
    # The tangent shift of V avoids the paper's V getting stuck at eps ||x||^2 near x_eq.
    model = cls(2, hidden=(32, 32), **({"lyap_hidden": (16, 16), "lyap_shift": "tangent"} if cls is StableDynamics else {}))
    history = fit(model, pendulum_pairs(), epochs=25, batch_size=64, lr=3e-3, progress=False)
    assert history["kind"] == "pairs" and history["n_val"] > 0
    assert history["best_val_loss"] < 0.3 * history["val_loss"][0]
    # The restored weights are the best epoch's: recomputing the validation-set loss is not needed,
    # the held-out error on fresh states must be small too.
    x, xdot = pendulum_pairs(256, seed=5)
    with torch.no_grad():
        err = ((model.derivative(x) - xdot) ** 2).mean()
    assert err < 0.5 * history["val_loss"][0]


def test_fit_is_seeded_and_restores_the_best_weights():
    data = pendulum_pairs(256)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = SimpleDynamics(2, hidden=(16,))
        runs.append((fit(model, data, epochs=6, batch_size=32, lr=0.05, seed=7, progress=False), model))
    assert runs[0][0]["train_loss"] == runs[1][0]["train_loss"]
    h, model = runs[0]
    # lr=0.05 makes the loss bounce: the final model is the best epoch's, not the last one's.
    assert h["best_epoch"] == min(range(len(h["val_loss"])), key=h["val_loss"].__getitem__)
    torch.manual_seed(3)
    other = SimpleDynamics(2, hidden=(16,))
    h2 = fit(other, data, epochs=6, batch_size=32, lr=0.05, seed=8, progress=False)
    assert h2["train_loss"] != h["train_loss"]


def test_early_stopping_stops():
    # Adam with lr=1 overshoots from the first step on: no epoch beats the first for long.
    model = SimpleDynamics(2, hidden=(8,))
    h = fit(model, pendulum_pairs(128), epochs=200, batch_size=0, lr=1.0, patience=3, progress=False)
    assert h["stopped_early"] and h["epochs_run"] == h["best_epoch"] + 4


def test_fit_on_trajectories_with_multistep_loss():
    traj = pendulum_trajectories()
    model = StableDynamics(2, hidden=(32, 32), lyap_hidden=(16, 16), dt=0.05)
    h = fit(model, (traj, None), epochs=8, batch_size=32, lr=3e-3, multistep=4, progress=False)
    assert h["kind"] == "trajectories"
    assert h["best_val_loss"] < h["val_loss"][0]
    assert h["n_train"] + h["n_val"] == 16 * (13 - 4)


def test_fit_accepts_named_fields_inputs_and_dtype():
    x, xdot = pendulum_pairs(128)
    u = torch.randn(128, 1)
    model = StableControlledDynamics(2, 1, hidden=(16,), lyap_hidden=(8,))
    h = fit(model, DerivativeData(x, pendulum(x, u), u), epochs=2, progress=False, dtype=torch.float64)
    assert model.dtype == torch.float64 and len(h["train_loss"]) == 2
    fit(SimpleDynamics(2, hidden=(8,)), DerivativeData(x, xdot, None), epochs=1, progress=False)


def test_fit_rejects_bad_data():
    x, xdot = pendulum_pairs(64)
    model = SimpleDynamics(2, hidden=(8,))
    with pytest.raises(ValueError, match=r"xdot must have shape \(64, 2\)"):
        fit(model, (x, xdot[:10]), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"x must have shape \(\?, 2\)"):
        fit(model, (torch.zeros(5, 3), torch.zeros(5, 3)), epochs=1, progress=False)
    bad = xdot.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="xdot contains NaN"):
        fit(model, (x, bad), epochs=1, progress=False)
    with pytest.raises(ValueError, match="multistep"):
        fit(model, (x, xdot), epochs=1, multistep=3, progress=False)
    with pytest.raises(ValueError, match="action_dim=1"):
        fit(StableControlledDynamics(2, 1), (x, xdot), epochs=1, progress=False)
    with pytest.raises(ValueError, match="too short"):
        fit(model, (pendulum_trajectories(steps=2), None), epochs=1, multistep=5, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, (x, xdot), epochs=0, progress=False)
    with pytest.raises(ValueError, match="cannot read training data"):
        fit(model, {"foo": x}, epochs=1, progress=False)
