"""Control Lyapunov functions: the stabilisability certificate, its check, the MPC safeguard, the
kind chosen by the adapter.

The plant is the linear saddle ``xdot = [[0, 1], [1, 0]] x + [0, 1] u`` with ``|u| <= 2``:
open-loop unstable (eigenvalues +-1), stabilisable by LQR near the origin, and not from far
away (a bounded input cannot stop a state that runs off along the unstable direction
``(1, 1)`` fast enough), so a certified region must be a bounded set.
"""

from __future__ import annotations

import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from lyagym.learned_models import Certificate, integrate
from lyagym.learned_models.control_lyapunov import ControlLyapunov, drift_and_gain


class SaddlePlant(nn.Module):
    """``xdot = A x + B u`` with ``A = [[0, 1], [1, 0]]``, ``B = [0, 1]^T``; RK4 steps of ``dt``."""

    state_dim, action_dim, integrator = 2, 1, "rk4"

    def __init__(self, dt: float = 0.05, gain: float = 1.0) -> None:
        super().__init__()
        self.dt = dt
        self.register_buffer("A", torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        self.register_buffer("B", torch.tensor([[0.0], [gain]]))

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device

    def derivative(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        return x @ self.A.T + (0 if u is None else u @ self.B.T)

    def step(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        return integrate(lambda y: self.derivative(y, u), x, self.dt, "rk4")


def certified(box: float = 3.0, hidden=(8,), time_domain: str = "discrete") -> tuple[SaddlePlant, ControlLyapunov]:
    plant = SaddlePlant()
    V = ControlLyapunov(2, 1, box=[[-box, box], [-box, box]], u_low=[-2.0], u_high=[2.0], hidden=hidden, time_domain=time_domain)
    V.initialise(plant)
    V.certify_region(plant, samples=4000)
    return plant, V


def test_drift_and_gain_of_a_linear_plant():
    plant = SaddlePlant()
    x = torch.randn(5, 2)
    a, B = drift_and_gain([plant], x)
    assert torch.allclose(a[0], x @ plant.A.T) and torch.allclose(B[0], plant.B.expand(5, 2, 1))


def test_lqr_initialised_V_solves_the_riccati_equations():
    # Bryson's weights on the box [-3, 3]^2 and |u| <= 2: Q = I / 9, R = 1 / 4
    Q, R = torch.eye(2, dtype=torch.float64) / 9, torch.tensor([[0.25]], dtype=torch.float64)
    plant, V = certified(time_domain="continuous")
    A, B, P = plant.A.double(), plant.B.double(), V.P.double()
    assert torch.allclose(A.T @ P + P @ A - P @ B @ torch.linalg.inv(R) @ B.T @ P + Q, torch.zeros(2, 2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(V.gain.double(), torch.linalg.inv(R) @ B.T @ P, atol=1e-5)  # K = R^-1 B^T P
    assert float(V.rho) > 0 and V.certificate(plant).time_domain == "continuous"
    # discrete: the step map's Riccati equation, weights per unit time
    plant, V = certified()
    dt, P = plant.dt, V.P.double()
    Ad = torch.linalg.matrix_exp(A * dt)  # RK4 of a linear system is exp(A dt) to O(dt^5)
    Bd = torch.linalg.solve(A, (Ad - torch.eye(2, dtype=torch.float64)) @ B)
    G = Ad.T @ P @ Bd
    residual = Ad.T @ P @ Ad - P - G @ torch.linalg.inv(dt * R + Bd.T @ P @ Bd) @ G.T + dt * Q
    assert residual.abs().max() < 1e-4 * P.abs().max()
    K = torch.linalg.solve(dt * R + Bd.T @ P @ Bd, G.T)  # the discrete LQR gain
    assert torch.allclose(V.gain.double(), K, rtol=1e-3, atol=1e-4)


def test_lqr_initialised_V_certifies_a_region_and_the_fallback_converges():
    plant, V = certified()
    rho = float(V.rho)
    assert 0 < rho <= V.max_level() * (1 + 1e-6)
    assert 0 < V.box_fraction(samples=4000) < 1
    # the closed loop under u_fb from states of the region: V decays at the certified rate, the state goes to 0
    x = V.sample(256, rho, torch.Generator().manual_seed(1), dtype=torch.float32)
    v0 = V(x)
    steps = 200
    with torch.no_grad():
        for _ in range(steps):
            u = V.fallback(plant, x)
            assert ((u >= -2) & (u <= 2)).all()
            x = plant.step(x, u)
    bound = v0 * math.exp(-float(V.alpha) * plant.dt * steps)
    assert (V(x) <= bound * 1.01 + 1e-7).all()
    assert float(x.norm(dim=-1).max()) < 1e-2


def test_certificate_states_the_claim_and_check_passes():
    plant, V = certified()
    cert = V.certificate(plant)
    assert cert.claim == "stabilisability" and cert.time_domain == "discrete" and cert.h == plant.dt
    assert cert.details["rho"] == pytest.approx(float(V.rho)) and cert.evidence == ["falsification"]
    assert "u_fb" in cert.summary()
    report = cert.check(plant, lyapunov=V, n_samples=4000, rollouts=16, rollout_steps=60)
    assert report.passed and report.n_checked > 4000 and report.n_violations == 0
    # JSON round trip keeps the claim
    assert Certificate.from_json(cert.to_json()).claim == "stabilisability"
    # time_to from the region's radius is finite and positive
    radius = math.sqrt(float(V.rho) / cert.c1)
    assert 0 < cert.time_to(1e-2, radius) < math.inf


def test_planted_violation_is_caught():
    # V certified on the plant, then claimed for a plant whose input is 20x weaker (a
    # certificate issued for it without certify_region): the fallback cannot hold the saddle
    plant, V = certified(hidden=())
    weak = SaddlePlant(gain=0.05)
    report = V.certificate(weak).check(weak, lyapunov=V, n_samples=4000, rollouts=16, rollout_steps=60)
    assert report.applies and not report.passed and report.n_violations > 0 and report.worst_violation > 0
    # a rate the input cannot achieve
    plant, V = certified()
    V.alpha.mul_(20)
    report = V.certificate(plant).check(plant, lyapunov=V, n_samples=2000, rollouts=8, rollout_steps=20)
    assert not report.passed and report.per_test["region"]["violations"] > 0
    # and a certificate of another plant does not apply
    _, V2 = certified()
    other = SaddlePlant(gain=0.5)
    report = V2.certificate(plant).check(other, lyapunov=V2, n_samples=500, rollouts=0)
    assert not report.applies and not report.passed


class TwinSaddleWithBump(SaddlePlant):
    """Two uncoupled saddles (4 states, 2 inputs) plus an outward push ``k g(x) x`` with ``g`` a
    Gaussian of width 0.15 around ``c``: a violation of the fallback's decrease confined to a
    set of ~1e-5 of the region's volume, which uniform samples miss, while the violation rises
    smoothly towards it."""

    state_dim, action_dim = 4, 2

    def __init__(self, k: float = 0.0, c: torch.Tensor | None = None, dt: float = 0.05) -> None:
        super().__init__(dt)
        self.A, self.B = torch.block_diag(self.A, self.A), torch.block_diag(self.B, self.B)  # buffers stay buffers
        self.k = k
        self.register_buffer("c", torch.zeros(4) if c is None else c.clone())

    def derivative(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        bump = torch.exp(-((x - self.c) ** 2).sum(-1, keepdim=True) / (2 * 0.15 ** 2))
        return super().derivative(x, u) + self.k * bump * x


def test_gradient_ascent_finds_a_thin_violation_that_samples_miss():
    def lyapunov() -> ControlLyapunov:
        return ControlLyapunov(4, 2, box=[[-3.0, 3.0]] * 4, u_low=[-2.0, -2.0], u_high=[2.0, 2.0], hidden=())

    clean = TwinSaddleWithBump()
    V = lyapunov()
    V.initialise(clean)
    rho = V.certify_region(clean, samples=4000)
    # plant the bump at a state halfway up the certified set, just strong enough to break the decrease there
    x = V.sample(100, rho, torch.Generator().manual_seed(3))
    c = x[int((V(x.float()) / rho - 0.5).abs().argmin())].float()
    lo, hi = 0.0, 50.0
    for _ in range(40):
        k = (lo + hi) / 2
        lo, hi = (lo, k) if float(V.violation(TwinSaddleWithBump(k, c), c[None])[0]) > 0.02 else (k, hi)
    bumped = TwinSaddleWithBump(hi, c)
    inside = V.sample(100_000, rho, torch.Generator().manual_seed(9))
    assert float((V.violation(bumped, inside.float()) > 1e-6).double().mean()) < 1e-4  # a thin violating set

    W = lyapunov()
    W.initialise(bumped)
    v_c = float(W(c[None]))
    assert float(W.violation(bumped, c[None])[0]) > 0
    assert W.certify_region(bumped, samples=4000, ascent_steps=0) > v_c  # uniform samples alone claim the violation
    wrong = W.certificate(bumped)
    found = []
    for seed in range(4):
        assert wrong.check(bumped, lyapunov=W, n_samples=4000, ascent_steps=0, rollouts=0, seed=seed).passed
        report = wrong.check(bumped, lyapunov=W, n_samples=4000, rollouts=0, seed=seed)
        assert report.per_test["region"]["violations"] == 0
        found += [report.counterexamples] if report.per_test["gradient"]["violations"] else []
    assert found, "the ascent found the planted violation on none of 4 seeds"
    assert float((torch.cat(found) - c).norm(dim=-1).min()) < 0.05  # where it was planted
    # with the ascent, certify_region keeps the violation out of the claimed set, and the check passes
    assert W.certify_region(bumped, samples=4000) < v_c
    assert W.certificate(bumped).check(bumped, lyapunov=W, n_samples=4000, rollouts=16, rollout_steps=60).passed


def test_min_over_the_box_is_the_closed_form():
    plant, V = certified()
    x = V.sample(64, float(V.rho), torch.Generator().manual_seed(2), dtype=torch.float32)
    best = V.decrease_bound(plant, x)[0]
    us = torch.linspace(-2, 2, 401).reshape(-1, 1)
    v, g = V.value_and_grad(x)
    brute = torch.stack([(g * plant.derivative(x, u.expand(x.shape[0], 1))).sum(-1) for u in us]).amin(0) + V.alpha * v
    assert torch.allclose(best, brute, atol=1e-5)


def test_safeguard_replaces_a_bad_plan_by_the_fallback():
    from lyagym.agents.safeguard import CertifiedFallback
    from lyagym.agents.mpc import MPCController

    plant, V = certified()
    guard = CertifiedFallback(V, plant)
    x = V.sample(64, float(V.rho), torch.Generator().manual_seed(3), dtype=torch.float32)
    x = x[V(x) > 0.1 * float(V.rho)][:1]
    state = x[0].double().numpy()
    u_fb = V.fallback(plant, x)[0].numpy()
    bad = -np.sign(u_fb) * 2.0  # full input the wrong way
    assert np.allclose(guard(state, bad.astype(np.float32)), u_fb, atol=1e-6)
    assert guard.counts == {"steps": 1, "in_region": 1, "replaced": 1}
    assert np.allclose(guard(state, u_fb), u_fb)  # a plan that keeps the decrease stays
    assert guard.counts["replaced"] == 1
    far = np.array([2.9, 2.9])  # outside the certified region: no claim, the plan stands
    assert np.allclose(guard(far, bad.astype(np.float32)), bad)

    class WrongWay:  # a planner that always pushes the wrong way
        iterations = 1

        def plan(self, s):
            return torch.tensor([2.0 if s[0] + s[1] > 0 else -2.0])

        def reset(self):
            pass

    controller = MPCController(WrongWay(), safeguard=CertifiedFallback(V, plant))
    s = x.clone()
    with torch.no_grad():
        v0 = float(V(s))
        for _ in range(100):  # the closed loop converges whatever the planner does
            u = torch.as_tensor(controller(s[0].double().numpy())).reshape(1, 1)
            s = plant.step(s, u)
        assert float(V(s)) < 0.05 * v0


def test_terminal_cost_accepts_the_clf_and_refuses_another_V():
    from lyagym.agents.costs import LyapunovTerminalCost

    plant, V = certified()
    cert = V.certificate(plant)
    cost = LyapunovTerminalCost(V, certificate=cert, weight=2.0)
    x = torch.randn(4, 2)
    assert torch.allclose(cost(x), 2 * V(x))
    # capped at a level: V below it, the level above (no pull from where V is extrapolation)
    cap = V.max_level()
    capped = LyapunovTerminalCost(V, weight=2.0, cap=cap)
    far = torch.tensor([[2.9, 2.9], [0.01, 0.0]])
    with torch.no_grad():
        v = V(far)
        assert float(v[0]) > cap > float(v[1])
        assert torch.allclose(capped(far), 2 * torch.stack([torch.tensor(cap, dtype=v.dtype), v[1]]))
    for bad in (0.0, -1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="cap"):
            LyapunovTerminalCost(V, cap=bad)
    _, other = certified(hidden=(4,))
    with torch.no_grad():
        other.P.mul_(2)
    with pytest.raises(ValueError, match="lyapunov_hash"):
        LyapunovTerminalCost(other, certificate=cert)


def test_pickles_and_state_dict_round_trip():
    plant, V = certified()
    W = pickle.loads(pickle.dumps(V))
    x = torch.randn(8, 2)
    assert torch.equal(W(x), V(x)) and float(W.rho) == float(V.rho)
    from lyagym.learned_models import model_hash

    assert model_hash(W) == model_hash(V)


def test_bad_arguments_are_refused_before_work():
    with pytest.raises(ValueError, match="box"):
        ControlLyapunov(2, 1, box=[[1, -1], [-1, 1]], u_low=[-1], u_high=[1])
    with pytest.raises(ValueError, match="u_low"):
        ControlLyapunov(2, 1, box=[[-1, 1], [-1, 1]], u_low=[1], u_high=[-1])
    with pytest.raises(ValueError, match="x_eq"):
        ControlLyapunov(2, 1, box=[[-1, 1], [-1, 1]], u_low=[-1], u_high=[1], x_eq=[2, 0])

    class Quadratic(SaddlePlant):  # u enters squared: not control-affine
        def derivative(self, x, u=None):
            return x @ self.A.T + (u ** 2) @ self.B.T

    V = ControlLyapunov(2, 1, box=[[-1, 1], [-1, 1]], u_low=[-1], u_high=[1])
    with pytest.raises(ValueError, match="control-affine"):
        V.initialise(Quadratic())
    for name, bad in (("ascent_steps", -1), ("ascent_starts", 2.5), ("samples", True), ("shrink", 1.0), ("shrink", 0)):
        with pytest.raises(ValueError, match=name):
            V.certify_region(SaddlePlant(), **{name: bad})
    plant, W = certified()
    with pytest.raises(ValueError, match="ascent_steps"):
        W.certificate(plant).check(plant, lyapunov=W, ascent_steps=-3)


def test_adapter_picks_the_certificate_kind():
    from lyagym.agents.adapters import EnvAdapter
    from lyagym.agents.world_models import certified_kind, is_ensemble, world_model_for

    env = gym.make("Pendulum-v1")

    class Unstable(EnvAdapter):
        open_loop_stable = False

    stable = EnvAdapter(env, reward_fn=lambda x, u, y: -x[..., 0] ** 2, rest_state=[0.0, 0.0, 0.0])
    unstable = Unstable(env, reward_fn=lambda x, u, y: -x[..., 0] ** 2, rest_state=[1.0, 0.0, 0.0])
    assert certified_kind(stable) == "ensemble-stable" and certified_kind(unstable) == "ensemble-clf"
    assert certified_kind(unstable, ensemble=False) == "clf"
    model = world_model_for(unstable, "certified", hidden=(8,))
    assert not is_ensemble(model) and model.fhat.control_affine  # the clf kind: a control-affine simple model
    assert type(world_model_for(stable, "certified", hidden=(8,), lyap_hidden=(8,), sigma_hidden=(4,))).__name__ == "StableControlledDynamics"
    assert is_ensemble(world_model_for(unstable, "ensemble-certified", hidden=(8,), ensemble_size=2))


def test_pets_with_a_control_lyapunov_function_refits_it_and_commits_it(tmp_path):
    from lyagym.agents.adapters import make_adapter
    from lyagym.agents.mbrl import config_for, run_pets, world_model_for
    from lyagym.agents.run_log import RunFolder

    env = gym.make("Pendulum-v1")
    adapter = make_adapter(env)
    model = world_model_for(adapter, "clf", hidden=(16, 16))
    config = config_for(adapter, episodes=1, episode_steps=30, num_samples=16, horizon=5, iterations=1, warmup_iterations=1,
                        fit_epochs=2, fit_steps=0)
    rows = run_pets(env, model, config=config, out_dir=str(tmp_path / "run"), progress=False,
                    control_lyapunov={"fit_steps": 0, "hidden": ()})
    assert [r["policy"] for r in rows] == ["random", "mpc"]
    assert {"clf_rho", "clf_box_fraction", "clf_replaced"} <= set(rows[-1])
    run = RunFolder(str(tmp_path / "run"), algo="pets", settings={})
    state = torch.load(run.file(run.manifest(), "clf_weights.pt"), weights_only=True)
    assert {"P", "rho", "x_eq", "box"} <= set(state)
    # the committed model.pt holds the model and V together: the same weights, the same V
    from lyagym.learned_models import load_model
    from lyagym.learned_models.control_lyapunov import control_lyapunov_from_payload

    saved = load_model(run.file(run.manifest(), "model.pt"))
    V = control_lyapunov_from_payload(saved.checkpoint_metadata["control_lyapunov"])
    assert all(torch.equal(state[k], v) for k, v in V.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), model.state_dict().values()))


def test_control_lyapunov_payload_refuses_what_it_cannot_build():
    from lyagym.learned_models.control_lyapunov import control_lyapunov_from_payload, control_lyapunov_payload

    _, V = certified()
    payload = control_lyapunov_payload(V)
    W = control_lyapunov_from_payload(payload)
    x = torch.randn(32, 2)
    assert torch.equal(V(x), W(x)) and float(W.rho) == float(V.rho)
    with pytest.raises(ValueError, match="control_lyapunov"):
        control_lyapunov_from_payload({"config": {**payload["config"], "hidden": [3]}, "state_dict": payload["state_dict"]})
    with pytest.raises(ValueError, match="control_lyapunov"):
        control_lyapunov_from_payload({"state_dict": payload["state_dict"]})
    with pytest.raises(TypeError, match="ControlLyapunov"):
        control_lyapunov_payload(torch.nn.Linear(2, 2))
