"""Rollouts without autograd run an MLP field as feature-major matrix products
(``mlp_rollout.MLPField``): the same function as the ordinary path up to float rounding,
taken only when no gradient is asked for, and the same plans."""

import pytest
import torch

from lyagym.agents import CEMPlanner, GradientPlanner, ICEMPlanner, MPPIPlanner, PendulumCost
from lyagym.learned_models import SimpleDynamics, mlp_native, mlp_rollout
from lyagym.learned_models.integrators import functorch_safe

CONFIGS = [
    dict(action_dim=1),
    dict(action_dim=2, integrator="euler"),
    dict(action_dim=1, angle_dims=1, control_affine=True, activation="silu"),
    dict(action_dim=2, angle_dims=2, control_affine=True, activation="silu"),
    dict(action_dim=1, angle_dims=1, activation="tanh"),
    dict(action_dim=2, control_affine=True, activation="softplus"),
    dict(action_dim=0),
]


def _model(action_dim, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = SimpleDynamics(3, action_dim, hidden=(16, 16), dt=0.05, **kw).to(dtype)
    if hasattr(model.fhat, "calibrate"):  # scales other than 1, so their folding is exercised
        g = torch.Generator().manual_seed(1)
        model.fhat.calibrate(2 * torch.randn(50, 3, generator=g, dtype=dtype), 3 * torch.randn(50, action_dim, generator=g, dtype=dtype),
                             5 * torch.randn(50, 3, generator=g, dtype=dtype))
    return model


def _count_calls(monkeypatch, owner, name: str) -> list:
    """A list that grows by one at every call of ``owner.name`` (a method), which still runs."""
    calls = []
    original = getattr(owner, name)

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.fixture
def lowered_calls(monkeypatch):
    """Counts rollouts that took the lowered path."""
    return _count_calls(monkeypatch, mlp_rollout.MLPField, "rollout")


@pytest.fixture
def networks_built(monkeypatch):
    """The ``fused`` flag of every block network the lowered rollouts build."""
    flags = []
    original = mlp_rollout.MLPField._network

    def spy(self, first, raw, fused):
        flags.append(fused)
        return original(self, first, raw, fused)

    monkeypatch.setattr(mlp_rollout.MLPField, "_network", spy)
    return flags


@pytest.fixture
def native_binds(monkeypatch):
    """Counts the block networks that run through the compiled kernel."""
    return _count_calls(monkeypatch, mlp_native.NativeWeights, "bind")


ONEDNN = mlp_rollout._onednn_linear_works()
NATIVE = mlp_native.available()
PATHS = [pytest.param("native", id="native", marks=pytest.mark.skipif(not NATIVE, reason="no C compiler")),
         pytest.param("onednn", id="onednn", marks=pytest.mark.skipif(not ONEDNN, reason="no oneDNN linear in this torch build")),
         pytest.param("blas", id="blas")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's note when mkldnn.flags() is entered
def test_lowered_rollout_equals_autograd_rollout(config, dtype, path, lowered_calls, networks_built, native_binds, monkeypatch):
    model = _model(dtype=dtype, **config)
    m = config["action_dim"]
    if path != "native":
        monkeypatch.setenv("LYAGYM_NATIVE", "0")
    # The compiled kernel runs float32 ReLU and SiLU networks; oneDNN's fused layers float32
    # single networks; others take the feature-major products.
    native = path == "native" and dtype == torch.float32 and config.get("activation", "relu") in ("relu", "silu")
    fused = path != "blas" and dtype == torch.float32
    limit = mlp_rollout.FUSED_BLOCK_ROWS if fused or native else mlp_rollout.BLOCK_ROWS
    rows = limit + 37  # two blocks of unequal size
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(rows, 3, generator=g, dtype=dtype)
    actions = 2 * torch.randn(rows, 6, m, generator=g, dtype=dtype) if m else 6
    reference = model.rollout(x0, actions)  # parameters require grad: the ordinary path
    assert reference.requires_grad and not lowered_calls
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=path != "blas"):
        lowered = model.rollout(x0, actions)
    assert len(lowered_calls) == 1 and networks_built == [fused, fused] and len(native_binds) == 2 * native
    assert lowered.shape == (rows, 7, 3) and lowered.is_contiguous()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(lowered, reference.detach(), rtol=tol, atol=tol)
    assert torch.equal(lowered[:, 0], x0)


@pytest.mark.parametrize("hidden", [(16,), (8, 12, 8)])
def test_lowered_rollout_of_other_depths(hidden, networks_built):
    """No hidden-to-hidden layer (BLAS only) and two of them (both fused into oneDNN, with the
    tanh first layer)."""
    torch.manual_seed(5)
    model = SimpleDynamics(3, 1, hidden=hidden, dt=0.05, activation="tanh")
    x0, actions = torch.randn(40, 3), torch.randn(40, 5, 1)
    reference = model.rollout(x0, actions).detach()
    with torch.inference_mode():
        lowered = model.rollout(x0, actions)
    torch.testing.assert_close(lowered, reference, rtol=1e-5, atol=1e-5)
    assert networks_built == [ONEDNN and len(hidden) > 1]


def test_frozen_model_takes_lowered_path_outside_inference_mode(lowered_calls):
    model = _model(1).requires_grad_(False)
    out = model.rollout(torch.zeros(4, 3), torch.zeros(4, 2, 1))
    assert len(lowered_calls) == 1 and not out.requires_grad


def test_gradients_keep_the_autograd_path(lowered_calls):
    model = _model(1).requires_grad_(False)
    actions = torch.zeros(5, 3, 1, requires_grad=True)
    model.rollout(torch.ones(5, 3), actions)[:, -1].sum().backward()
    assert not lowered_calls
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    # torch.func transforms also keep it: their gradient equals autograd's.
    func_grad = torch.func.grad(lambda a: model.rollout(torch.ones(5, 3), a)[:, -1].sum())(torch.zeros(5, 3, 1))
    torch.testing.assert_close(func_grad, actions.grad)
    assert not lowered_calls
    with torch.no_grad(), functorch_safe():
        model.rollout(torch.ones(5, 3), torch.zeros(5, 3, 1))
    assert not lowered_calls


def test_unknown_network_is_not_lowered(lowered_calls):
    model = _model(1)
    hooked = _model(1).fhat
    hooked[0].register_forward_hook(lambda module, inputs, output: None)
    assert mlp_rollout.MLPField.lower(hooked, 3, 1) is None
    model.fhat = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    assert mlp_rollout.MLPField.lower(model.fhat, 3, 1) is None
    with torch.no_grad():
        out = model.rollout(torch.zeros(2, 3), torch.zeros(2, 4, 1))
    assert out.shape == (2, 5, 3) and not lowered_calls


def test_subclass_with_its_own_field_is_not_lowered(lowered_calls):
    class Damped(SimpleDynamics):
        def _derivative(self, x, u):
            return super()._derivative(x, u) - x

    torch.manual_seed(0)
    model = Damped(3, 1, hidden=(16, 16), dt=0.05)
    x0, actions = torch.randn(4, 3), torch.randn(4, 5, 1)
    reference = model.rollout(x0, actions).detach()
    with torch.inference_mode():
        torch.testing.assert_close(model.rollout(x0, actions), reference)
    assert not lowered_calls


def test_the_lowered_field_is_kept_while_the_weights_stay_equal(monkeypatch):
    """Rollouts reuse the lowered field (and its packed weights) until any parameter or buffer
    changes, however it changes (an optimiser step, a write through ``.data``,
    ``load_state_dict``, a calibration), or a forward hook is added; each rollout equals the
    ordinary path with the weights of that moment; copies and pickles start without it."""
    import copy
    import pickle

    model = _model(1, angle_dims=1, control_affine=True, activation="silu")
    lowerings = []
    original = SimpleDynamics._inference_field
    monkeypatch.setattr(SimpleDynamics, "_inference_field", lambda self: lowerings.append(1) or original(self))
    x0, actions = torch.randn(6, 3), torch.randn(6, 4, 1)

    def check(expected_lowerings):
        with torch.no_grad():
            lowered = model.rollout(x0, actions)
            reference = torch.stack([x0, *_stepped_states(model, x0, actions)], 1)
        torch.testing.assert_close(lowered, reference, rtol=1e-5, atol=1e-5)
        assert len(lowerings) == expected_lowerings

    check(1)
    check(1)  # unchanged: the same field
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.rollout(x0, actions)[:, -1].sum().backward()  # with autograd: the ordinary path, no lowering
    opt.step()
    check(2)
    model.fhat.net[0].weight.data[0, 0] += 1.0  # no version bump: found by the comparison
    check(3)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    check(3)  # loaded the values it held: still equal, no lowering
    model.load_state_dict(_model(1, angle_dims=1, control_affine=True, activation="silu").state_dict())
    check(4)
    model.fhat.calibrate(torch.randn(20, 3), torch.randn(20, 1), torch.randn(20, 3))  # buffers (scales) change
    check(5)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone._lowered_field.__self__ is clone and clone.__dict__["_field_cache"].field is None
        with torch.no_grad():
            torch.testing.assert_close(clone.rollout(x0, actions), model.rollout(x0, actions))
    calls = []
    model.fhat.net[0].register_forward_hook(lambda module, inputs, output: calls.append(1))
    with torch.no_grad():
        model.rollout(x0, actions)
    assert calls  # the hook ran: the ordinary path, not the kept field


def _stepped_states(model, x0, actions):
    x = x0
    for t in range(actions.shape[1]):
        x = model._step(x, actions[:, t])
        yield x


def test_finite_check_accepts_large_finite_inputs():
    # The one-pass check sums the entries; a sum that overflows must fall back, not reject.
    model = _model(1)
    model._check_x(torch.full((2, 3), 3e38))
    with pytest.raises(ValueError, match="NaN or inf"):
        model._check_x(torch.tensor([[1.0, float("nan"), 3e38]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        model._check_u(torch.tensor([[float("-inf")]]), 1)


@pytest.mark.parametrize("planner_cls", [MPPIPlanner, CEMPlanner, ICEMPlanner])
def test_plans_equal_with_and_without_lowering(planner_cls, lowered_calls):
    """A planner on the lowered rollout plans the same actions (to rounding) as on ``_step``."""
    torch.manual_seed(3)
    model = SimpleDynamics(2, 1, hidden=(32, 32), dt=0.05, angle_dims=1, control_affine=True, activation="silu").requires_grad_(False)
    states = torch.tensor([[3.0, 0.0], [0.5, -1.0], [-2.0, 2.0]])
    plans = []
    for lowered in (True, False):
        if not lowered:
            model._lowered_field = lambda: None  # the ordinary path, same model and seed
        planner = planner_cls(model, PendulumCost(1, "swingup"), horizon=8, num_samples=64, action_low=-2.0, action_high=2.0, seed=0)
        plans.append(torch.stack([planner.plan_sequence(states) for _ in range(3)]))  # warm starts included
    assert lowered_calls
    torch.testing.assert_close(plans[0], plans[1], rtol=1e-4, atol=1e-5)


def test_gradient_planner_still_differentiates(lowered_calls):
    """The gradient planner asks for gradients: its rollouts keep autograd, and it improves its plan."""
    torch.manual_seed(4)
    model = SimpleDynamics(2, 1, hidden=(16, 16), dt=0.05).requires_grad_(False)
    cost = PendulumCost(1, "swingup")
    planner = GradientPlanner(model, cost, horizon=8, num_samples=4, action_low=-2.0, action_high=2.0, seed=0)
    state = torch.tensor([[3.0, 0.0]])
    start = planner.initial_mean(1).clone()
    sequence = planner.plan_sequence(state)
    assert len(lowered_calls) == 1  # 20 Adam steps through autograd, the final scoring without
    with torch.no_grad():
        before, after = (planner.sequence_cost(state, s.unsqueeze(1))[0, 0] for s in (start, sequence))
    assert after < before


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_single_models_wrap_angles_inside_their_lowered_rollout(path, lowered_calls, monkeypatch):
    """``AngleWrappedModel`` (what MPC plans on for an env with angles) hands its angles to the
    model's own rollout: lowered, the same states as stepping and wrapping one step at a time."""
    from lyagym.agents.mpc import AngleWrappedModel
    from lyagym.learned_models import rollout

    model = SimpleDynamics(2, 1, hidden=(16, 16), dt=0.05, angle_dims=1, control_affine=True, activation="silu").requires_grad_(False)
    wrapped = AngleWrappedModel(model, 1)
    x0, actions = torch.tensor([[3.0, 8.0], [-3.0, -8.0], [0.5, 0.0]]), 2.0 * torch.randn(3, 12, 1)
    if path != "native":
        monkeypatch.setenv("LYAGYM_NATIVE", "0")
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=path != "blas"):
        fast = wrapped.rollout(x0, actions)
        assert lowered_calls
        slow = rollout(wrapped, x0, actions)  # step by step: model.step, then wrap
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert bool((fast[:, 1:, 0] >= -torch.pi).all() and (fast[:, 1:, 0] < torch.pi).all())
    assert float(slow[:2, :, 0].abs().max()) > 2.0  # fast spins: the wrap is exercised
