"""Paper reproductions (Manek & Kolter Fig. 3, 4, 5): the evaluation metric and tiny CLI runs."""

import csv
import math

import numpy as np
import pytest
import torch

from lyagym.agents import cli
from lyagym.agents.reproduce.pendulum_eval import (
    initial_states,
    rk4_step,
    rollout_error,
    squared_state_error,
    wrapped_state_difference,
)


# ------------------------------------------------------------------ the metric, by hand


def test_wrapped_angle_difference_across_the_cut():
    # pi - 0.1 and -pi + 0.1 are 0.2 apart on the circle, not 2 pi - 0.2.
    x = torch.tensor([[math.pi - 0.1, 0.5]], dtype=torch.float64)
    y = torch.tensor([[-math.pi + 0.1, 0.5]], dtype=torch.float64)
    assert squared_state_error(x, y, n_angles=1).item() == pytest.approx(0.2**2, rel=1e-12)
    assert wrapped_state_difference(x, y, 1)[0, 0].item() == pytest.approx(-0.2, abs=1e-12)


def test_velocities_are_not_wrapped_and_angles_differing_by_2pi_agree():
    # Two links: angles (q1, q2), velocities (w1, w2). Velocities differ by 2 pi + 0.3: no wrapping.
    x = torch.tensor([[0.3 + 2 * math.pi, -1.0, 2 * math.pi + 0.3, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.3, -1.0 + 4 * math.pi + 0.05, 0.0, 0.1]], dtype=torch.float64)
    expected = 0.0**2 + 0.05**2 + (2 * math.pi + 0.3) ** 2 + 0.1**2
    assert squared_state_error(x, y, n_angles=2).item() == pytest.approx(expected, rel=1e-9)


def test_initial_states_are_seeded_and_in_the_paper_box():
    a = initial_states(3, 500, seed=4)
    b = initial_states(3, 500, seed=4)
    assert a.shape == (500, 6) and a.dtype == torch.float64
    assert torch.equal(a, b)
    assert a.abs().max() <= math.pi / 8
    assert a.abs().max() > 0.9 * math.pi / 8  # uniform in the box, not a smaller one
    with pytest.raises(ValueError, match="n_links"):
        initial_states(0)


class _LinearPhysics:
    """xdot = A x for a damped oscillator, closed form available; exposes only derivative."""

    n_links = 1

    def __init__(self, w=2.0, b=0.3):
        self.A = torch.tensor([[0.0, 1.0], [-w * w, -b]], dtype=torch.float64)

    def derivative(self, x):
        return x @ self.A.T


def test_rollout_error_against_a_hand_computation():
    physics = _LinearPhysics()
    offset = torch.tensor([0.01, -0.02], dtype=torch.float64)
    x0 = initial_states(1, 7, seed=1)
    h, n_steps = 0.01, 25

    # The model is the physics plus a constant bias in xdot.
    def model(x):
        return physics.derivative(x) + offset

    scores = rollout_error(physics, {"perfect": physics.derivative, "biased": model}, x0=x0, n_steps=n_steps, h=h, progress=False)
    assert scores["perfect"].average == 0.0 and scores["perfect"].diverged == 0

    # By hand: step both with RK4, squared error per step, mean over steps 1..n, then over states.
    xt, xm, errs = x0.clone(), x0.clone(), []
    for _ in range(n_steps):
        xt, xm = rk4_step(physics.derivative, xt, h), rk4_step(model, xm, h)
        errs.append(((xt - xm) ** 2).sum(-1))
    errs = torch.stack(errs)  # (n_steps, n_states)
    got = scores["biased"]
    assert got.per_step.shape == (n_steps + 1,) and got.per_step[0] == 0.0
    np.testing.assert_allclose(got.per_step[1:], errs.mean(1).numpy(), rtol=1e-10)
    np.testing.assert_allclose(got.per_trajectory, errs.mean(0).numpy(), rtol=1e-10)
    assert got.average == pytest.approx(errs.mean().item(), rel=1e-10)


def test_rollout_error_counts_diverged_trajectories_as_inf():
    physics = _LinearPhysics()

    def exploding(x):
        return 1e200 * x.abs() + 1e200

    got = rollout_error(physics, {"bad": exploding}, n_states=5, n_steps=10, progress=False)["bad"]
    assert got.diverged == 5
    assert math.isinf(got.average)


def test_rollout_error_rejects_bad_input():
    physics = _LinearPhysics()
    with pytest.raises(ValueError, match="x0"):
        rollout_error(physics, {"m": physics.derivative}, x0=torch.zeros(3, 4), progress=False)
    with pytest.raises(ValueError, match="model_step"):
        rollout_error(physics, {"m": physics.derivative}, model_step="euler", progress=False)
    with pytest.raises(TypeError, match="derivative"):
        rollout_error(physics, {"m": 3.0}, n_states=2, n_steps=2, progress=False)


# ------------------------------------------------------------------ tiny runs of the figures


def _cli(*argv) -> int:
    return cli.main(["reproduce", *argv])


def test_fig3_writes_the_stream_plots(tmp_path):
    out = tmp_path / "fig3"
    assert _cli("fig3", "--size", "tiny", "--out", str(out)) == 0
    assert (out / "fig3.png").stat().st_size > 10_000
    # A second run does not overwrite the user's file by surprise.
    assert _cli("fig3", "--size", "tiny", "--out", str(out)) == 2
    assert _cli("fig3", "--size", "tiny", "--out", str(out), "--overwrite") == 0


def test_fig4_trains_and_writes_figure_and_checkpoint(tmp_path):
    out = tmp_path / "fig4"
    assert _cli("fig4", "--size", "tiny", "--out", str(out), "--no-progress") == 0
    assert (out / "fig4.png").stat().st_size > 10_000
    assert "mean squared error" in (out / "fig4.md").read_text()
    from lyagym.learned_models import StableDynamics

    model = StableDynamics.load(out / "fig4_model.pt")
    x = torch.zeros(1, 2, dtype=model.dtype)
    assert torch.equal(model.derivative(x), torch.zeros_like(x))  # the equilibrium is exact


def test_fig5_tiny_study_writes_table_csv_and_plot(tmp_path):
    out = tmp_path / "fig5"
    assert _cli("fig5", "--links", "1", "--size", "tiny", "--out", str(out), "--no-progress", "--threads", "1") == 0
    for name in ("fig5.png", "fig5.csv", "fig5.md", "fig5_per_step.csv"):
        assert (out / name).stat().st_size > 0
    rows = list(csv.DictReader((out / "fig5.csv").open()))
    assert {r["model"] for r in rows} == {"simple", "stable", "stable-certified-step", "equilibrium"}
    for r in rows:
        assert r["n_links"] == "1"
        assert math.isfinite(float(r["average_error"])) and float(r["average_error"]) >= 0
        assert r["train_pairs"] == rows[0]["train_pairs"]  # the same data budget for both
    per_step = list(csv.reader((out / "fig5_per_step.csv").open()))
    assert per_step[0] == ["step", "n1_simple", "n1_stable", "n1_stable-certified-step", "n1_equilibrium"]
    assert len(per_step) == 1 + 51  # header + steps 0..50 of the tiny preset
    assert abs(float(per_step[1][1])) < 1e-12  # same initial state (up to the float32 cast)
    # The reference "predict x = 0" row is the true trajectories' own squared norm: at step 0,
    # the mean squared norm of states uniform in [-pi/8, pi/8]^2, about 2 (pi/8)^2 / 3.
    assert float(per_step[1][4]) == pytest.approx(2 * (math.pi / 8) ** 2 / 3, rel=0.5)
    table = (out / "fig5.md").read_text()
    assert "| 1 |" in table and "lyagym reproduce fig5" in table


def test_fig5_rejects_bad_arguments(tmp_path):
    assert _cli("fig5", "--links", "0", "--size", "tiny", "--out", str(tmp_path)) == 2
    assert _cli("fig5", "--links", "1", "--size", "tiny", "--alpha", "-1", "--out", str(tmp_path)) == 2


def test_fig5_lyapunov_options_reach_the_model():
    import argparse

    from lyagym.agents.reproduce import fig5

    parser = argparse.ArgumentParser()
    fig5.add_arguments(parser)
    paper = fig5.config_from_args(parser.parse_args(["--size", "tiny", "--paper-v"]))
    assert (paper.lyap_shift, paper.lyap_quadratic, paper.d) == ("value", False, 0.1)  # the paper's V
    V = fig5.build_models(1, paper)["stable"].lyapunov
    assert V.shift == "value" and V.L is None
    tangent = fig5.config_from_args(parser.parse_args(["--size", "tiny", "--tangent-v"]))
    assert (tangent.lyap_shift, tangent.lyap_quadratic, tangent.d) == ("tangent", True, 1.0)
    V = fig5.build_models(1, tangent)["stable"].lyapunov
    assert V.shift == "tangent" and V.L is not None
    mixed = fig5.config_from_args(parser.parse_args(["--size", "tiny", "--training", "joint", "--lyap-shift", "tangent", "--no-lyap-quadratic"]))
    assert (mixed.lyap_shift, mixed.lyap_quadratic) == ("tangent", False)
