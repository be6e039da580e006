"""Finite inputs never silently become NaN, and inputs outside the accepted range are refused
with an error naming the argument and the range (physics, envs, vector env)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lyagym.envs import NLinkPendulumEnv, PendulumDynamics
from lyagym.envs.dynamics import PARAMETER_RANGE
from lyagym.envs.n_link_pendulum import STATE_LIMIT
from lyagym.envs.vector_env import NLinkPendulumVectorEnv

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")


def _finite_or_overflow_error(fn):
    """``fn()`` either returns finite values or raises the overflow ``ValueError``: never NaN/inf."""
    try:
        out = fn()
    except ValueError as e:
        assert "overflowed" in str(e) and str(e).startswith("x:"), e
        return False
    values = out.detach().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    assert np.isfinite(values).all(), values
    return True


@pytest.mark.parametrize("n_links", [1, 2])
def test_huge_finite_states_step_or_raise_never_nan(n_links):
    rng = np.random.default_rng(0)
    dyn = PendulumDynamics(n_links)
    outcomes = set()
    for _ in range(40):
        x = rng.uniform(-1, 1, 2 * n_links) * 10.0 ** rng.uniform(0, 300)
        u = rng.uniform(-1, 1, n_links) * 10.0 ** rng.uniform(0, 300)
        outcomes.add(_finite_or_overflow_error(lambda: dyn.step(x, u)))
        _finite_or_overflow_error(lambda: dyn.step_single(x, u))
        _finite_or_overflow_error(lambda: dyn.step_single(x, u, method="euler", substeps=3))
        _finite_or_overflow_error(lambda: dyn.derivative(x, u))
        _finite_or_overflow_error(lambda: dyn.energy(x))
        _finite_or_overflow_error(lambda: dyn.simulate(x[None], 3, u=u))
        x32 = np.clip(x, -3e38, 3e38)
        for dtype in (torch.float32, torch.float64):
            t = torch.as_tensor(x32 if dtype == torch.float32 else x, dtype=dtype)[None]
            ut = torch.as_tensor(np.clip(u, -3e38, 3e38), dtype=dtype)[None]
            _finite_or_overflow_error(lambda: dyn.step(t, ut))
            _finite_or_overflow_error(lambda: dyn.rollout(t, ut[:, None].expand(1, 3, n_links)))
    if n_links == 2:  # one link has no squared velocities: it overflows only next to float64's max
        assert outcomes == {True, False}  # the sweep saw both sides of the boundary


def test_the_reported_overflows_are_named():
    dyn = PendulumDynamics(2)
    with pytest.raises(ValueError, match=r"x: the step overflowed float64 .*1e\+200"):
        dyn.step(np.array([0.0, 0.0, 1e200, 0.0]))
    with pytest.raises(ValueError, match="x: the step overflowed float32"):
        dyn.step(torch.tensor([[0.0, 0.0, 3e38, 0.0]]))
    with pytest.raises(ValueError, match="x: the rollout overflowed float32"):
        dyn.rollout(torch.tensor([[0.0, 0.0, 1e15, 0.0]]), torch.zeros(1, 3, 2))
    assert np.isfinite(dyn.step(np.array([0.0, 0.0, 1e3, 0.0]))).all()  # fast but representable


@pytest.mark.parametrize("name", ["masses", "lengths"])
def test_per_link_parameters_outside_the_range_are_refused(name):
    low, high = PARAMETER_RANGE
    rng = np.random.default_rng(1)
    for _ in range(30):
        values = 10.0 ** rng.uniform(-300, 300, 2)
        inside = bool(np.all((values >= low) & (values <= high)))
        if inside:
            PendulumDynamics(2, **{name: values.tolist()})
        else:
            with pytest.raises(ValueError, match=rf"{name} must lie in \[1e-06, 1e\+06\]"):
                PendulumDynamics(2, **{name: values.tolist()})
    for bad in (1e-200, [1e308, 1e-308], 0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=name):
            PendulumDynamics(2, **{name: bad})
    for bad in ("gravity", "damping"):
        with pytest.raises(ValueError, match=rf"{bad} must be a number in \[0, 1e\+06\]"):
            PendulumDynamics(2, **{bad: 1e300})


def test_parameters_inside_the_range_give_finite_steps():
    """Extreme corners of the accepted range (ratios up to 1e12) still step to finite states."""
    low, high = PARAMETER_RANGE
    rng = np.random.default_rng(2)
    for _ in range(25):
        masses, lengths = 10.0 ** rng.uniform(np.log10(low), np.log10(high), (2, 2))
        dyn = PendulumDynamics(2, masses=masses.tolist(), lengths=lengths.tolist(), gravity=float(rng.uniform(0, 20)))
        x = rng.uniform(-1, 1, 4)
        _finite_or_overflow_error(lambda: dyn.step(x, rng.uniform(-1, 1, 2)))
        assert np.isfinite(dyn.derivative(x)).all()


def test_actuated_takes_int_joint_indices_only():
    for bad in ((0.7,), (True,), ("0",), (1.0,)):
        with pytest.raises(ValueError, match="actuated must be None or a sequence of int joint indices"):
            PendulumDynamics(2, actuated=bad)
    assert PendulumDynamics(2, actuated=(np.int64(1),)).actuated == (1,)


def test_complex_states_and_torques_are_refused():
    dyn = PendulumDynamics(2)
    with pytest.raises(TypeError, match="x must be real"):
        dyn.step(np.array([0, 0, 1j, 0]))
    with pytest.raises(TypeError, match="u must be real"):
        dyn.step(np.zeros(4), np.array([1j, 0]))
    with pytest.raises(TypeError, match="u must be real"):
        dyn.step(torch.zeros(1, 4), torch.zeros(1, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        dyn.step(torch.zeros(1, 4, dtype=torch.complex64))


def test_env_reset_state_range_and_type():
    env = NLinkPendulumEnv(n_links=2)
    for bad in ([0, 0, 1e200, 0], [0, 0, STATE_LIMIT * 1.01, 0], [math.nan, 0, 0, 0]):
        with pytest.raises(ValueError, match=r"options\['state'\] must be finite with every \|q_i\| and \|qdot_i\| <= 1e\+06"):
            env.reset(options={"state": bad})
    with pytest.raises(TypeError, match=r"options\['state'\] must be real"):
        env.reset(options={"state": [0, 0, 1j, 0]})
    obs, _ = env.reset(options={"state": torch.tensor([0.1, 0, 0, 0], requires_grad=True)})
    assert np.isfinite(obs).all()


def test_env_step_takes_tensors_as_the_vector_env_and_refuses_complex():
    env = NLinkPendulumEnv(n_links=2)
    env.reset(seed=0)
    with_grad = env.step(torch.tensor([0.5, -0.25], requires_grad=True))
    env.reset(seed=0)
    plain = env.step(np.array([0.5, -0.25], dtype=np.float32))
    assert np.array_equal(with_grad[0], plain[0]) and with_grad[1] == plain[1]
    with pytest.raises(TypeError, match="action must be real"):
        env.step(np.array([1j, 0]))


def test_a_diverging_env_raises_before_any_nan():
    """A step far too long for stiff parameters (damping / (m l^2) = 1e18 per second at
    dt = 0.01): RK4 multiplies the velocity by ~1e60 per step until float64 overflows; the env
    raises then, and every observation before was finite."""
    env = NLinkPendulumEnv(n_links=1, masses=1e-6, lengths=1e-6, damping=1.0, task="regulate")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="overflowed|diverged"):
        for _ in range(200):
            obs, reward, *_ = env.step(np.zeros(1, dtype=np.float32))
            assert np.isfinite(obs).all() and math.isfinite(reward)


def test_vector_env_refuses_out_of_range_and_complex_input():
    env = NLinkPendulumVectorEnv(2, n_links=2)
    with pytest.raises(ValueError, match=r"<= 1e\+06"):
        env.reset(options={"state": [0, 0, 1e30, 0]})
    with pytest.raises(TypeError, match="real"):
        env.reset(options={"state": np.array([0, 0, 1j, 0])})
    env.reset(seed=0)
    with pytest.raises(TypeError, match="actions must be real"):
        env.step(np.zeros((2, 2)) + 1j)
    with pytest.raises(TypeError, match="actions must be real"):
        env.step(torch.zeros((2, 2), dtype=torch.complex64))
    stiff = NLinkPendulumVectorEnv(2, n_links=1, masses=1e-6, lengths=1e-6, damping=1.0, dtype=torch.float64)
    stiff.reset(seed=0)
    with pytest.raises(ValueError, match="overflowed"):
        for _ in range(200):
            obs, reward, *_ = stiff.step(np.zeros((2, 1)))
            assert np.isfinite(obs).all() and np.isfinite(reward).all()


# ----------------------------------------------------------------------------- planners


def _planner(name: str = "cem"):
    from lyagym.agents.costs import QuadraticCost
    from lyagym.agents.planners import make_planner

    return make_planner(name, PendulumDynamics(1), QuadraticCost(2, 1), horizon=3, num_samples=8, seed=0)


@pytest.mark.parametrize("name", ["cem", "mppi", "icem", "gradient"])
def test_planners_refuse_states_whose_plan_overflows(name):
    rng = np.random.default_rng(3)
    planner = _planner(name)
    for _ in range(12):
        state = rng.uniform(-1, 1, 2) * 10.0 ** rng.uniform(0, 38)
        try:
            action = planner.plan(state)
        except ValueError as e:
            assert str(e).startswith(("state:", "x:")) and ("overflowed" in str(e)), e
            continue
        assert torch.isfinite(action).all()
    with pytest.raises(ValueError, match=r"state: planning from state\(s\) \[0\] \(largest \|x\| = 1e\+30\)"):
        planner.plan(np.array([0.0, 1e30]))


def test_planners_refuse_complex_states():
    with pytest.raises(TypeError, match="state must be real"):
        _planner().plan(np.array([0.0, 1j]))
    with pytest.raises(TypeError, match="state must be real"):
        _planner().plan(torch.zeros(2, dtype=torch.complex64))


def test_lyapunov_terminal_cost_weight_must_be_finite():
    from lyagym.agents.costs import LyapunovTerminalCost

    V = lambda x: (x * x).sum(-1)  # noqa: E731
    for bad in (math.inf, math.nan, -1.0, "1", True):
        with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
            LyapunovTerminalCost(V, weight=bad)
    assert LyapunovTerminalCost(V, weight=np.float32(2.0)).weight == 2.0


# ----------------------------------------------------------------------------- stable models


def _stable_models(seed: int):
    from lyagym.learned_models import StableControlledDynamics, StableDynamics

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    small = {"hidden": (8,), "lyap_hidden": (8,)}
    for k in range(6):
        eps = float(10.0 ** rng.uniform(-3, 1))
        options = {"eps": eps, "lyap_quadratic": k % 3 == 1, "warp": "coupling" if k % 3 == 2 else None,
                   "x_eq": rng.uniform(-2, 2, 2).tolist()}
        yield StableDynamics(2, **small, **options)
        yield StableControlledDynamics(2, 1, **small, sigma_hidden=(4,), input_gain=float(10.0 ** rng.uniform(-1, 2)), **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stable_models_step_finite_up_to_the_accepted_range_and_refuse_beyond(dtype):
    from lyagym.learned_models.stable import max_offset

    limit = max_offset(dtype)
    rng = np.random.default_rng(4)
    for model in _stable_models(5):
        model = model.to(dtype)
        x_eq = model.x_eq
        m = model.action_dim
        with torch.no_grad():
            for _ in range(4):
                scale = limit * 10.0 ** rng.uniform(-12, 0)
                x = x_eq + torch.as_tensor(rng.choice([-1.0, 1.0], (3, 2)) * scale, dtype=dtype)
                u = torch.as_tensor(rng.uniform(-1, 1, (3, m)) * limit, dtype=dtype) if m else None
                assert torch.isfinite(model.step(x, u)).all()
                actions = u[:, None].expand(3, 2, m) if m else 2
                assert torch.isfinite(model.rollout(x, actions)).all()
            corner = x_eq + torch.full((1, 2), limit, dtype=dtype)
            assert torch.isfinite(model.step(corner, torch.full((1, m), limit, dtype=dtype) if m else None)).all()
            beyond = x_eq + torch.tensor([[limit * 1.01, 0.0]], dtype=dtype)
            with pytest.raises(ValueError, match=r"x: every \|x - x_eq\| must be <= "):
                model.step(beyond, torch.zeros(1, m, dtype=dtype) if m else None)
            if m:
                with pytest.raises(ValueError, match=r"u: every \|u\| must be <= "):
                    model.step(x_eq[None], torch.full((1, m), limit * 1.01, dtype=dtype))
            with pytest.raises(ValueError, match="contains NaN or inf|must be <="):
                model.step(torch.full((1, 2), math.nan, dtype=dtype), torch.zeros(1, m, dtype=dtype) if m else None)


def test_stable_models_step_an_empty_batch():
    for model in _stable_models(6):
        m = model.action_dim
        out = model.step(torch.zeros(0, 2), torch.zeros(0, m) if m else None)
        assert out.shape == (0, 2)


# ----------------------------------------------------------------------------- LyaNet world model


def _lyanet():
    from lyagym.learned_models import LyaNetWorldModel

    torch.manual_seed(0)
    return LyaNetWorldModel(2, 1, dt=0.05, width=8, depth=1)


def test_lyanet_step_names_the_bad_argument():
    model = _lyanet()
    x, u = torch.zeros(3, 2), torch.zeros(3, 1)
    with pytest.raises(ValueError, match="^u contains NaN or inf"):
        model.step(x, u + math.nan)
    with pytest.raises(ValueError, match="^x contains NaN or inf"):
        model.step(x + math.inf, u)
    with pytest.raises(ValueError, match="x is torch.float64 on cpu but the model is torch.float32"):
        model.step(x.double(), u)
    with pytest.raises(ValueError, match="u is torch.float64"):
        model.predict(x, u.double())
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model.step([[0.0, 0.0]], u)
    with pytest.raises(ValueError, match="u must have shape"):
        model.step(x, torch.zeros(2, 1))
    assert model.rollout(x, torch.zeros(3, 4, 1)).shape == (3, 5, 2)


def test_lyanet_load_refuses_damaged_files_in_one_clear_error(tmp_path):
    from lyagym.learned_models import LyaNetWorldModel

    good = tmp_path / "good.pt"
    _lyanet().save(good)
    payload = torch.load(good, weights_only=True)
    damaged = {
        "garbage": b"not a checkpoint",
        "no_state": {k: v for k, v in payload.items() if k != "state_dict"},
        "no_config": {k: v for k, v in payload.items() if k != "config"},
        "bad_config": {**payload, "config": {**payload["config"], "width": 9}},
        "nan_weights": {**payload, "state_dict": {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                                                  for k, v in payload["state_dict"].items()}},
    }
    for name, content in damaged.items():
        path = tmp_path / f"{name}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(ValueError, match="NaN or inf" if name == "nan_weights" else "LyaNetWorldModel checkpoint"):
            LyaNetWorldModel.load(path)
    assert LyaNetWorldModel.load(good).state_dim == 2


# ----------------------------------------------------------------------------- video env


def test_video_envs_refuse_complex_and_take_grad_tensors():
    from lyagym.envs import VideoTextureEnv
    from lyagym.envs.video_data import make_texture
    from lyagym.envs.video_texture import VideoTextureVectorEnv
    from lyagym.learned_models import VideoVAE

    torch.manual_seed(0)
    model = VideoVAE(16, 4, dynamics="stable", channels=(4,), dynamics_kwargs={"hidden": (8,), "lyap_hidden": (8,)})
    model.set_reference_frames(make_texture("clouds", n_frames=4, size=16, seed=0), [0] * 4)
    env = VideoTextureEnv(model)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="action must be real"):
        env.step(np.array([0.5j, 0, 0, 0]))
    with pytest.raises(TypeError, match=r"options\['latent'\] must be real"):
        env.reset(options={"latent": np.zeros(4) + 1j})
    env.reset(seed=0)
    with_grad = env.step(torch.full((4,), 0.5, requires_grad=True))[0]
    env.reset(seed=0)
    assert np.array_equal(with_grad, env.step(np.full(4, 0.5, dtype=np.float32))[0])
    vec = VideoTextureVectorEnv(2, model)
    vec.reset(seed=0)
    with pytest.raises(TypeError, match="actions must be real"):
        vec.step(np.zeros((2, 4)) + 1j)
    with pytest.raises(TypeError, match="actions must be real"):
        vec.step(torch.zeros((2, 4), dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"options\['latent'\] must be real"):
        vec.reset(options={"latent": torch.zeros((2, 4), dtype=torch.complex64)})


def test_ensembles_of_stable_members_refuse_what_a_member_refuses():
    from lyagym.learned_models import Ensemble, StableControlledDynamics
    from lyagym.learned_models.stable import max_offset

    torch.manual_seed(0)
    ens = Ensemble(lambda: StableControlledDynamics(2, 1, hidden=(8,), lyap_hidden=(8,), sigma_hidden=(4,)), 2)
    limit = max_offset(torch.float32)
    inside = torch.full((2, 2), limit / 2)
    assert torch.isfinite(ens.step(inside, torch.full((2, 1), limit / 2))).all()
    with pytest.raises(ValueError, match=r"x: every \|x - x_eq\| must be <= "):
        ens.step(torch.full((2, 2), 1e20), torch.zeros(2, 1))  # NaN before the check
    with pytest.raises(ValueError, match=r"u: every \|u\| must be <= "):
        ens.step(torch.zeros(2, 2), torch.full((2, 1), 1e20))


def test_learned_models_never_return_nan_from_accepted_finite_inputs():
    """Inside the stable models' accepted range a float32 control-affine model's RK4 stages can
    still overflow (|x| = |u| = 3e7); step and rollout then raise instead of returning NaN."""
    from lyagym.learned_models import SimpleDynamics, StableControlledDynamics

    torch.manual_seed(0)
    models = [StableControlledDynamics(4, 2, angle_dims=2, control_affine=True, activation="silu", dt=0.05),
              SimpleDynamics(4, 2, angle_dims=2, control_affine=True, activation="silu", dt=0.05)]
    g = torch.Generator().manual_seed(1)
    overflowed = 0
    for model in models:
        for norm in (1.0, 1e4, 3e7, 1e12, 1e15):
            x = torch.randn(64, 4, generator=g)
            u = torch.randn(64, 2, generator=g)
            x, u = norm * x / x.norm(dim=1, keepdim=True), norm * u / u.norm(dim=1, keepdim=True)
            for call in (lambda: model.step(x, u), lambda: model.rollout(x, u[:, None].expand(64, 3, 2))):
                try:
                    with torch.no_grad():
                        out = call()
                except ValueError as e:
                    assert "overflowed float32" in str(e)
                    overflowed += 1
                else:
                    assert torch.isfinite(out).all()
    assert overflowed > 0  # the sweep reaches the overflow (else it tests nothing)


def test_ensembles_refuse_nan_and_inf_but_take_finite_values_whose_sum_overflows():
    """The ensemble's boundary check sums first (one pass) and looks entry by entry only when
    the sum is not finite: a NaN or inf anywhere is refused, finite entries whose float32 sum
    overflows are not."""
    from lyagym.learned_models import Ensemble, member_factory

    torch.manual_seed(0)
    ens = Ensemble(member_factory("simple", 2, 1, hidden=(8,), dt=0.05, integrator="euler"), 2, propagation="tsinf", sample=False)
    x, u = torch.zeros(4, 2), torch.zeros(4, 1)
    actions = torch.zeros(4, 3, 1)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x_bad, u_bad, a_bad = x.clone(), u.clone(), actions.clone()
        x_bad[2, 1], u_bad[3, 0], a_bad[1, 2, 0] = bad, bad, bad
        with pytest.raises(ValueError, match="x contains NaN or inf"):
            ens.step(x_bad, u)
        with pytest.raises(ValueError, match="u contains NaN or inf"):
            ens.step(x, u_bad)
        with pytest.raises(ValueError, match="actions contains NaN or inf"):
            ens.rollout(x, a_bad)
    big = torch.full((4, 3, 1), 3e38)  # finite; their float32 sum is inf
    assert ens.rollout(x, big).shape == (4, 4, 2)


@pytest.mark.parametrize("propagation", ["tsinf", "ts1", "expectation"])
def test_ensembles_raise_instead_of_returning_nan_or_inf_from_finite_inputs(propagation):
    """Finite float32 inputs large enough to overflow the members' SiLU networks: step, rollout
    (lowered or stepped) and predict name the overflow instead of returning inf or NaN; inputs
    that do not overflow still pass."""
    from lyagym.learned_models import Ensemble, member_factory

    torch.manual_seed(0)
    factory = member_factory("simple", 2, 1, hidden=(8, 8), dt=0.05, integrator="euler", activation="silu", angle_dims=1,
                             control_affine=True)
    ens = Ensemble(factory, 2, propagation=propagation)
    small, huge = torch.full((4, 2), 3.0), torch.full((4, 2), 1e20)
    u, u_huge = torch.ones(4, 1), torch.full((4, 1), 1e20)
    assert torch.isfinite(ens.step(small, u)).all()
    assert torch.isfinite(ens.rollout(small, u.unsqueeze(1).expand(4, 3, 1))).all()
    match = r"x: the ensemble's {} overflowed float32 from finite inputs \(largest \|x\| 1e\+20, largest \|u\| 1e\+20\)"
    with pytest.raises(ValueError, match=match.format("step")):
        ens.step(huge, u_huge)
    with pytest.raises(ValueError, match=match.format("prediction")):
        ens.predict(huge, u_huge)
    for grad in (False, True):  # without autograd the lowered rollout (TS-infinity), with it the stepped one
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=match.format("rollout")):
            ens.rollout(huge, u_huge.unsqueeze(1).expand(4, 3, 1))
