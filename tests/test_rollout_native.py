"""Certified members' rollouts through the compiled kernel (``rollout_native``): the same states
as stepping the members (the torch path) for every structure the kernel runs, the certified
decrease held at every step of every row, the same sampled noise and angle wrapping, the torch
path wherever the kernel does not apply, and a kernel that disagrees refused with a warning."""

import math
import pickle

import pytest
import torch

from lyagym.learned_models import Ensemble, member_factory, mlp_native
from lyagym.learned_models.rollout_native import CompiledRollout
from test_ensemble_rollout import CERTIFIED_CASES, PRIORS, _stepped, perturb  # the torch path (_step once per step, then the wrap); varied weights

pytestmark = pytest.mark.skipif(not mlp_native.available(), reason="no C compiler (or a CPU without AVX2 and FMA)")



def _ensemble(n=2, m=1, size=3, probabilistic=True, sample=True, **options):
    torch.manual_seed(0)
    options = {"hidden": (16, 16), "lyap_hidden": (8, 8), **options}
    ens = perturb(Ensemble(member_factory("stable", n, m, dt=0.05, **options), size,
                           propagation="tsinf", probabilistic=probabilistic, sample=sample, seed=1))
    with torch.no_grad():
        ens.stacked.model.lyapunov.x_eq.normal_(0.0, 0.3)  # each member its own rest state
    return ens.requires_grad_(False)


def _kernel_calls(monkeypatch):
    calls = []
    original = CompiledRollout.__call__
    monkeypatch.setattr(CompiledRollout, "__call__", lambda self, *a, **kw: calls.append(a[2]) or original(self, *a, **kw))
    return calls


CASES = [
    *CERTIFIED_CASES,
    dict(PRIORS, alpha=0.5, alpha_bounds=None),  # a fixed rate
    dict(n=3, m=2, angle_dims=2, control_affine=False, activation="silu"),  # DynamicsNet with u among its inputs
    dict(PRIORS, lyap_hidden=(8,), hidden=(16,)),  # one hidden layer in V and in fhat
    dict(PRIORS, lyap_hidden=(8, 12, 8), hidden=(16, 12, 16)),  # three
]


@pytest.mark.parametrize("case", CASES)
def test_compiled_rollout_equals_stepping_the_members(case, monkeypatch):
    options = dict(case)
    n, m = options.pop("n", 2), options.pop("m", 1)
    ens = _ensemble(n, m, **options)
    assert ens._stacked_stable_members()
    calls = _kernel_calls(monkeypatch)
    x0 = 1.5 * torch.randn(83, n)  # not a multiple of E = 3 nor of a tile
    x0[0] = ens.stacked.model.lyapunov.x_eq[0]  # a row at its member's x_eq
    actions = torch.randn(83, 6, m) if m else None
    ens.reset_generator(5)
    with torch.no_grad():
        fast = ens.rollout(x0, actions if m else 6)
    assert calls[-1] == 6, "the rollout should run through the compiled kernel"
    ens.reset_generator(5)
    slow = _stepped(ens, x0, actions, 6)
    assert fast.shape == (83, 7, n)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", [PRIORS, dict(PRIORS, integrator="rk4"), dict(n=3, m=0)])
def test_compiled_rollout_keeps_every_members_certified_decrease(case):
    """``V(x_{t+1}) <= exp(-alpha h) V(x_t) + (1 - exp(-alpha h)) / alpha sigma(x_t, u_t)`` for every
    row and step of a noiseless rollout, each row against its own member's ``V`` and ``sigma``."""
    options = dict(case)
    n, m = options.pop("n", 2), options.pop("m", 1)
    ens = _ensemble(n, m, sample=False, **options)
    E, B, H = ens.size, 60, 8
    x0, actions = 3.0 * torch.randn(B, n), (2.0 * torch.randn(B, H, m) if m else None)
    with torch.no_grad():
        states = ens.rollout(x0, actions if m else H)
        assert ens._lowered().agrees
        for e in range(E):
            member = ens.member(e).requires_grad_(False)
            rows = states[e::E]
            alpha, h = member.alpha, member.dt
            for t in range(H):
                x, y = rows[:, t], rows[:, t + 1]
                bound = math.exp(-alpha * h) * member.lyapunov(x)
                if m:
                    bound = bound + -math.expm1(-alpha * h) / alpha * member.sigma(x, actions[e::E, t])
                assert bool((member.lyapunov(y) <= bound * (1 + 1e-5) + 1e-7).all())


def test_compiled_rollout_samples_and_wraps_as_the_members_step(monkeypatch):
    ens = _ensemble(**PRIORS)
    calls = _kernel_calls(monkeypatch)
    x0, actions = 3.0 * torch.randn(50, 2), torch.randn(50, 9, 1)
    ens.reset_generator(2)
    with torch.no_grad():
        fast = ens.rollout(x0, actions, wrap_angles=[0])
    assert calls
    ens.reset_generator(2)
    torch.testing.assert_close(fast, _stepped(ens, x0, actions, 9, wrap=[0]), rtol=1e-4, atol=1e-5)
    assert bool((fast[:, 1:, 0] >= -math.pi).all() and (fast[:, 1:, 0] < math.pi).all())
    ens.sample = False  # the noise is really there: the means alone differ
    with torch.no_grad():
        means = ens.rollout(x0, actions, wrap_angles=[0])
    assert float((means - fast).abs().max()) > 1e-3


def test_torch_path_where_the_kernel_does_not_apply(monkeypatch):
    """A gradient wanted, TS-1 propagation, float64, kernels switched off: the members step in
    torch (and give the same rollout where it is deterministic). Two torch threads: the kernel,
    its tiles shared by two threads, the same rows."""
    ens = _ensemble(**PRIORS, sample=False)
    calls = _kernel_calls(monkeypatch)
    x0, actions = torch.randn(20, 2), torch.randn(20, 4, 1)
    with torch.no_grad():
        reference = ens.rollout(x0, actions)
    assert calls.count(4) == 1  # (and one step on the first rows: the check of a new lowering)
    ens.rollout(x0, actions.requires_grad_(True))  # autograd: the torch step
    actions = actions.detach()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            threaded = ens.rollout(x0, actions)
    finally:
        torch.set_num_threads(1)
    assert calls.count(4) == 2
    monkeypatch.setenv("LYAGYM_NATIVE", "0")
    with torch.no_grad():
        switched_off = ens.rollout(x0, actions)
    monkeypatch.delenv("LYAGYM_NATIVE")
    ens.propagation = "ts1"
    with torch.no_grad():
        ens.rollout(x0, actions)
    ens.propagation = "tsinf"
    lowerings = []
    lower = CompiledRollout.lower.__func__
    monkeypatch.setattr(CompiledRollout, "lower", classmethod(lambda cls, *a, **kw: lowerings.append(1) or lower(cls, *a, **kw)))
    with torch.no_grad():
        ens.double().rollout(x0.double(), actions.double())
    assert calls.count(4) == 2
    assert not lowerings  # nothing packed for a dtype the kernel does not run
    torch.testing.assert_close(threaded, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(switched_off, reference, rtol=1e-4, atol=1e-5)


def test_a_disagreeing_kernel_is_refused_with_a_warning(monkeypatch):
    ens = _ensemble(**PRIORS, sample=False)
    x0, actions = torch.randn(20, 2), torch.randn(20, 4, 1)
    with torch.no_grad():
        ens.rollout(x0, actions)
    kernel = ens._lowered()
    assert kernel.agrees
    with torch.no_grad():
        getattr(ens.stacked.model.fhat.net, "0").weight.add_(0.5)  # new weights: lowered and checked again
    broken = CompiledRollout.__call__
    monkeypatch.setattr(CompiledRollout, "__call__", lambda self, *a, **kw: broken(self, *a, **kw) + 1.0)
    with pytest.warns(RuntimeWarning, match="disagrees"), torch.no_grad():
        got = ens.rollout(x0, actions)
    assert ens._lowered() is not kernel and ens._lowered().agrees is False
    monkeypatch.setattr(CompiledRollout, "__call__", broken)
    torch.testing.assert_close(got, _stepped(ens, x0, actions, 4), rtol=1e-5, atol=1e-6)


def test_structures_the_kernel_does_not_run_are_not_lowered():
    for options in (dict(PRIORS, activation="tanh"), dict(PRIORS, lyap_quadratic=True)):
        ens = _ensemble(**options)
        assert ens._lowered() is None


@pytest.mark.parametrize("case", [PRIORS, dict(n=3, m=0, integrator="euler"), dict(n=4, m=2, activation="relu", lyap_shift="tangent")])
def test_a_single_certified_models_compiled_rollout_equals_its_steps(case, monkeypatch):
    """``StableDynamics`` / ``StableControlledDynamics`` alone (RK4 by default): the same states as
    its own ``_step``, one step after another, and every step's certified decrease."""
    options = dict(case)
    n, m = options.pop("n", 2), options.pop("m", 1)
    torch.manual_seed(0)
    model = member_factory("stable", n, m, dt=0.05, hidden=(16, 16), lyap_hidden=(8, 8), **options)()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.lyapunov.x_eq.normal_(0.0, 0.3)
    model.requires_grad_(False)
    calls = _kernel_calls(monkeypatch)
    x0, actions = 2.0 * torch.randn(70, n), (torch.randn(70, 5, m) if m else None)
    with torch.no_grad():
        fast = model.rollout(x0, actions if m else 5)
        slow = model._rollout_rows(x0, list(actions.unbind(1)) if m else [None] * 5)
    assert calls.count(5) == 1
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    alpha, h = model.alpha, model.dt
    with torch.no_grad():
        for t in range(5):
            bound = math.exp(-alpha * h) * model.lyapunov(fast[:, t])
            if m:
                bound = bound + -math.expm1(-alpha * h) / alpha * model.sigma(fast[:, t], actions[:, t])
            assert bool((model.lyapunov(fast[:, t + 1]) <= bound * (1 + 1e-5) + 1e-7).all())
    clone = pickle.loads(pickle.dumps(model))  # the packed kernel is a cache: it does not travel
    assert "_kernel_cache" not in clone.__dict__ or clone.__dict__["_kernel_cache"].field is None
    with torch.no_grad():
        torch.testing.assert_close(clone.rollout(x0, actions if m else 5), fast)


def test_empty_batches_and_zero_horizons_roll_out():
    """Nothing for the kernel to do: the torch path's answer."""
    ens = _ensemble(**PRIORS)
    single = member_factory("stable", 2, 1, dt=0.05, hidden=(16, 16), lyap_hidden=(8, 8), **PRIORS)().requires_grad_(False)
    with torch.no_grad():
        assert single.rollout(torch.zeros(0, 2), torch.zeros(0, 4, 1)).shape == (0, 5, 2)  # (an ensemble refuses them)
    for model in (ens, single):
        with torch.no_grad():
            x0 = torch.randn(3, 2)
            torch.testing.assert_close(model.rollout(x0, torch.zeros(3, 0, 1)), x0.unsqueeze(1))


def test_a_single_certified_model_wraps_angles_inside_its_compiled_rollout(monkeypatch):
    from lyagym.agents.mpc import AngleWrappedModel
    from lyagym.learned_models import rollout

    torch.manual_seed(0)
    model = member_factory("stable", 2, 1, dt=0.05, hidden=(16, 16), lyap_hidden=(8, 8), **PRIORS)().requires_grad_(False)
    calls = _kernel_calls(monkeypatch)
    wrapped = AngleWrappedModel(model, [0])
    x0, actions = torch.tensor([[3.1, 9.0], [-3.1, -9.0], [0.5, 0.0]]), 2.0 * torch.randn(3, 12, 1)
    with torch.no_grad():
        fast = wrapped.rollout(x0, actions)
        assert calls.count(12) == 1
        slow = rollout(wrapped, x0, actions)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    assert bool((fast[:, 1:, 0] >= -math.pi).all() and (fast[:, 1:, 0] < math.pi).all())


def test_threads_share_the_tiles_and_give_the_same_states(monkeypatch):
    """The kernel's threads split the tiles between them: the states are the very same bits
    whatever the torch thread count (each tile is computed alone, the same way)."""
    ens = _ensemble(**PRIORS)
    calls = _kernel_calls(monkeypatch)
    x0, actions = 2.0 * torch.randn(700, 2), torch.randn(700, 5, 1)
    results = []
    for threads in (1, 3, 8):
        torch.set_num_threads(threads)
        try:
            ens.reset_generator(4)
            with torch.no_grad():
                results.append(ens.rollout(x0, actions))
        finally:
            torch.set_num_threads(1)
    assert calls.count(5) == 3
    assert all(torch.equal(r, results[0]) for r in results[1:])


def test_a_single_models_kernel_follows_its_settings(monkeypatch):
    """What the kernel bakes in besides the weights (a fixed rate, the integrator, the rescale,
    the input gain) is lowered again when it changes: the rollout stays the model's steps."""
    torch.manual_seed(0)
    model = member_factory("stable", 2, 1, dt=0.05, hidden=(16, 16), lyap_hidden=(8, 8), alpha=0.5, alpha_bounds=None,
                           **PRIORS)().requires_grad_(False)
    calls = _kernel_calls(monkeypatch)
    x0, actions = 2.0 * torch.randn(40, 2), torch.randn(40, 5, 1)
    changes = [lambda: setattr(model, "alpha", 3.0), lambda: setattr(model, "integrator", "euler"),
               lambda: setattr(model, "keep_guarantee", False), lambda: setattr(model, "input_gain", 2.0)]
    for change in [lambda: None, *changes]:
        change()
        with torch.no_grad():
            fast = model.rollout(x0, actions)
            slow = model._rollout_rows(x0, list(actions.unbind(1)))
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    assert calls.count(5) == 5


@pytest.fixture
def two_threads():
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


@pytest.mark.parametrize("case", [dict(k=1, m=1), dict(k=1, m=1, integrator="rk4"), dict(n=3, k=0, m=2, control_affine=False, activation="relu"),
                                  dict(m=0, k=0, control_affine=False), dict(sample=False)])
def test_simple_members_roll_out_compiled_while_torch_runs_threads(case, two_threads, monkeypatch):
    """``SimpleDynamics`` members (the field is ``fhat`` alone) take the compiled whole rollout
    at several torch threads (at one, ``MLPField``'s path): the same states, noise and wrapping
    as stepping them."""
    from test_ensemble_rollout import _ensemble as simple_ensemble

    ens = simple_ensemble(**case).requires_grad_(False)
    calls = _kernel_calls(monkeypatch)
    m = ens.action_dim
    x0, actions = 2.0 * torch.randn(23, ens.state_dim), (torch.randn(23, 7, m) if m else None)
    wrap = [0] if ens._angle_dims else []
    ens.reset_generator(3)
    with torch.no_grad():
        fast = ens.rollout(x0, actions if m else 7, wrap_angles=wrap)
    assert calls.count(7) == 1
    ens.reset_generator(3)
    torch.testing.assert_close(fast, _stepped(ens, x0, actions, 7, wrap=wrap), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("integrator", ["rk4", "euler"])
def test_a_single_simple_model_rolls_out_compiled_while_torch_runs_threads(integrator, two_threads, monkeypatch):
    from lyagym.agents.mpc import AngleWrappedModel
    from lyagym.learned_models import SimpleDynamics, rollout

    torch.manual_seed(0)
    model = SimpleDynamics(2, 1, hidden=(16, 16), dt=0.05, integrator=integrator, **PRIORS).requires_grad_(False)
    calls = _kernel_calls(monkeypatch)
    wrapped = AngleWrappedModel(model, 1)
    x0, actions = torch.tensor([[3.0, 8.0], [-3.0, -8.0], [0.5, 0.0]]), 2.0 * torch.randn(3, 9, 1)
    with torch.no_grad():
        fast = wrapped.rollout(x0, actions)
        assert calls.count(9) == 1
        torch.testing.assert_close(fast, rollout(wrapped, x0, actions), rtol=1e-4, atol=1e-5)
        model.integrator = "rk4" if integrator == "euler" else "euler"  # a setting the lowering bakes in
        torch.testing.assert_close(model.rollout(x0, actions), model._rollout_rows(x0, list(actions.unbind(1))), rtol=1e-4, atol=1e-5)
    assert calls.count(9) == 2
