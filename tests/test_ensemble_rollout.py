"""MLP members run without ``vmap``, as batched matrix products over their stacked weights:
rollouts without autograd compute the same function as stepping the members one step at a
time (same rows on the same members, the same sampled noise, the same angle wrapping, fresh
weights after every optimiser step), and the training loss and its gradients equal those of
the vmapped members."""

import pickle

import pytest
import torch

from lyagym.agents.adapters.base import wrap_angles
from lyagym.agents.mpc import AngleWrappedModel
from lyagym.learned_models import Ensemble, member_factory, mlp_native, mlp_rollout
from lyagym.learned_models.integrators import functorch_safe

GROUPED = mlp_rollout._onednn_grouped_works()
#: the networks through the compiled kernel (float32 ReLU/SiLU networks where a C compiler is
#: found), the hidden layers as oneDNN's grouped convolution (float32 on a CPU where it works), or
#: everything as torch.bmm
PATHS = [pytest.param("native", id="native", marks=pytest.mark.skipif(not mlp_native.available(), reason="no C compiler")),
         pytest.param("onednn", id="onednn", marks=pytest.mark.skipif(not GROUPED, reason="no oneDNN grouped convolution in this torch build")),
         pytest.param("bmm", id="bmm")]


@pytest.fixture
def path(request, monkeypatch):
    """The parametrised path, with the compiled kernel switched off for the others."""
    if request.param != "native":
        monkeypatch.setenv("LYAGYM_NATIVE", "0")
    return request.param


class _Built(list):
    """``(E, kind)`` of every block network built, in order (kind ``"native"``, ``"onednn"`` or
    ``"bmm"``); ``inputs``: the first-layer input each reads."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []


@pytest.fixture
def networks_built(monkeypatch):
    """``(E, kind)`` of every block network the lowered rollouts build (and ``.inputs``)."""
    built = _Built()
    original = mlp_rollout.MLPField._network

    def spy(self, first, raw, fused):
        kind = "native" if self.native_weights(first) is not None else "onednn" if fused else "bmm"
        built.append((self.members, kind))
        built.inputs.append(first)
        return original(self, first, raw, fused)

    monkeypatch.setattr(mlp_rollout.MLPField, "_network", spy)
    return built


def _ensemble(n=4, m=2, k=2, integrator="euler", probabilistic=True, sample=True, control_affine=True, activation="silu", seed=0,
              hidden=(16, 16)):
    torch.manual_seed(seed)
    factory = member_factory("simple", n, m, dt=0.05, angle_dims=k, control_affine=control_affine, activation=activation,
                             hidden=hidden, integrator=integrator)
    return perturb(Ensemble(factory, 5, propagation="tsinf", probabilistic=probabilistic, sample=sample, seed=3))


@torch.no_grad()
def perturb(ens):
    """Members that differ, scales other than 1 to fold and, when probabilistic, normalisations
    to fold and log-variance bounds that bite (``ens``, changed in place)."""
    for p in ens.parameters():
        p.add_(0.1 * torch.randn_like(p))
    for name, buffer in ens.stacked.named_buffers():
        if name.endswith("_scale"):
            buffer.uniform_(0.5, 2.0)
    if ens.probabilistic:
        ens.feature_shift.normal_()
        ens.feature_scale.uniform_(0.5, 2.0)
        ens.target_scale.uniform_(0.5, 2.0)
        ens.max_logvar.fill_(-1.0)
        ens.min_logvar.fill_(-6.0)
    return ens


def _stepped(ens, x0, actions, horizon, wrap=()):
    """The reference: ``_step`` once per step (the vmapped members), then the wrap."""
    xs, x = [x0], x0
    with torch.no_grad():
        for t in range(horizon):
            x = ens._step(x, None if actions is None else actions[:, t])
            if wrap:
                x = wrap_angles(x, wrap)
            xs.append(x)
    return torch.stack(xs, 1)


@pytest.mark.parametrize("case", [
    dict(),
    dict(integrator="rk4"),
    dict(k=0, m=1),
    dict(k=1, m=1, integrator="rk4"),
    dict(m=0, k=0, control_affine=False),
    dict(n=3, k=0, control_affine=False, activation="relu"),
    dict(probabilistic=False, sample=False),
    dict(sample=False),
    dict(hidden=(8, 12, 8), activation="tanh"),  # two hidden-to-hidden layers, the activation fused into oneDNN's
])
@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's note when mkldnn.flags() is entered
def test_batched_rollout_equals_stepping_the_members(case, path, networks_built):
    ens = _ensemble(**case)
    m = ens.action_dim
    x0 = torch.randn(23, ens.state_dim)  # not a multiple of E = 5: the last group is padded
    actions = torch.randn(23, 7, m) if m else None
    calls = []
    original = ens._raw
    ens._raw = lambda *a, **kw: calls.append(1) or original(*a, **kw)
    ens.reset_generator(7)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=path != "bmm"):
        fast = ens.rollout(x0, actions if m else 7)
    assert not calls, "the rollout without autograd should not step the vmapped members"
    # The members' fields through the kernel (tanh members: oneDNN's grouped convolution) or the
    # grouped convolution where oneDNN is on; the variance head (SiLU, when sampled) through the
    # kernel or as torch.bmm.
    members = "onednn" if path == "native" and case.get("activation") == "tanh" else path
    assert networks_built[0] == (5, members)
    assert all(kind == ("native" if path == "native" else "bmm") for _, kind in networks_built[1:])
    ens.reset_generator(7)
    slow = _stepped(ens, x0, actions, 7)
    assert fast.shape == (23, 8, ens.state_dim)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    if ens.sample:  # the noise is really there: the means alone differ
        ens.sample = False
        with torch.no_grad():
            means = ens.rollout(x0, actions if m else 7)
        assert (means - fast).abs().max() > 1e-3


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_sampled_rollout_in_unequal_blocks_repeats_and_equals_stepping(path, networks_built):
    """Rows in blocks of unequal size (each block's head buffers and noise columns its own), and
    a second rollout from the same seed equal to the first (the cached lowered weights, with the
    sampling's folding, are not changed by a rollout)."""
    ens = _ensemble(n=2, m=1, k=1)
    limit = mlp_rollout.BLOCK_ROWS if path == "bmm" else mlp_rollout.FUSED_BLOCK_ROWS
    rows = limit + 2 * 5 + 3  # 5 groups of rows; more than one block, the last one shorter
    x0, actions = torch.randn(rows, 2), torch.randn(rows, 4, 1)
    runs = []
    for _ in range(2):
        ens.reset_generator(11)
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=path != "bmm"):
            runs.append(ens.rollout(x0, actions))
    # 2 rollouts x 2 blocks, each block's members' field, then its head (the kernel, or bmm)
    assert networks_built == [(5, path), (5, "native" if path == "native" else "bmm")] * 4
    assert torch.equal(runs[0], runs[1])
    ens.reset_generator(11)
    torch.testing.assert_close(runs[0], _stepped(ens, x0, actions, 4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [dict(), dict(k=0, m=1), dict(k=1, m=1, integrator="rk4"),
                                  dict(n=3, k=0, control_affine=False, activation="relu"), dict(m=0, k=0, control_affine=False)])
def test_the_variance_head_reads_the_fields_first_layer_input(case, networks_built):
    """A sampled rollout evaluates the variance head on the buffer the members' first layer
    reads ([sin q, cos q, x[k:], u, 1] of the state before the step; a control-affine field's
    layer reads no u, so the head's rows have u after the ones), not on features of its own;
    the rollout still equals stepping (its columns follow that order)."""
    ens = _ensemble(**case)
    m = ens.action_dim
    x0, actions = torch.randn(10, ens.state_dim), torch.randn(10, 3, m) if m else None
    ens.reset_generator(5)
    with torch.no_grad():
        fast = ens.rollout(x0, actions if m else 3)
    field_input, head_input = networks_built.inputs
    assert head_input.data_ptr() == field_input.data_ptr()  # the same buffer, from its first row
    control_affine = case.get("control_affine", True)
    assert head_input.shape[-2] == field_input.shape[-2] + (m if control_affine else 0)
    ens.reset_generator(5)
    torch.testing.assert_close(fast, _stepped(ens, x0, actions, 3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", [p for p in PATHS if p.values[0] != "onednn"], indirect=True)
def test_members_without_a_hidden_to_hidden_layer(path, networks_built):
    """One hidden layer: nothing for oneDNN's grouped convolution, so bmm layers, or the kernel."""
    ens = _ensemble(hidden=(16,), sample=False)
    x0, actions = torch.randn(12, 4), torch.randn(12, 3, 2)
    with torch.no_grad():
        fast = ens.rollout(x0, actions)
    assert networks_built == [(5, path)]
    torch.testing.assert_close(fast, _stepped(ens, x0, actions, 3), rtol=1e-5, atol=1e-5)


def test_wrapped_rollout_equals_wrapping_each_step():
    ens = _ensemble(integrator="rk4")
    model = AngleWrappedModel(ens, 2)
    x0, actions = torch.randn(31, 4) * 2, torch.randn(31, 9, 2) * 2
    ens.reset_generator(5)
    with torch.no_grad():
        fast = model.rollout(x0, actions)
    ens.reset_generator(5)
    slow = _stepped(ens, x0, actions, 9, wrap=(0, 1))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    angles = fast[:, 1:, :2]
    assert bool((angles >= -torch.pi).all() and (angles < torch.pi).all())


def test_gradients_still_flow_and_fresh_weights_are_used():
    ens = _ensemble()
    x0, actions = torch.randn(10, 4), torch.randn(10, 5, 2, requires_grad=True)
    ens.sample = False
    states = ens.rollout(x0, actions)  # autograd on: the vmapped path, differentiable
    states[:, -1].square().sum().backward()
    assert actions.grad is not None and bool(actions.grad.abs().sum() > 0)
    with torch.no_grad():
        before = ens.rollout(x0, actions)
    opt = torch.optim.SGD(ens.parameters(), lr=0.1)
    opt.zero_grad()
    ens.rollout(x0, actions)[:, -1].square().sum().backward()
    opt.step()  # in place: the lowered weights must be rebuilt
    with torch.no_grad():
        after = ens.rollout(x0, actions)
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(after, _stepped(ens, x0, actions.detach(), 5), rtol=1e-5, atol=1e-5)
    lowered = ens._lowered()
    with torch.no_grad():
        ens.rollout(x0, actions)
    assert ens._lowered() is lowered  # unchanged weights: the same lowering
    dict(ens.stacked.named_parameters())["model.fhat.net.0.weight"].data[0, 0, 0] += 1.0  # bumps no version counter
    with torch.no_grad():
        written = ens.rollout(x0, actions)
    assert ens._lowered() is not lowered
    torch.testing.assert_close(written, _stepped(ens, x0, actions.detach(), 5), rtol=1e-5, atol=1e-5)


def test_ensemble_pickles_after_a_batched_rollout():
    ens = _ensemble()
    x0, actions = torch.randn(6, 4), torch.randn(6, 3, 2)
    ens.sample = False
    with torch.no_grad():
        first = ens.rollout(x0, actions)
    copy = pickle.loads(pickle.dumps(ens))
    with torch.no_grad():
        torch.testing.assert_close(copy.rollout(x0, actions), first)


def test_stable_members_keep_the_stepped_path():
    torch.manual_seed(0)
    ens = Ensemble(member_factory("stable", 2, 1, dt=0.05, hidden=(8, 8), lyap_hidden=(8, 8)), 3, propagation="tsinf", sample=False)
    x0, actions = torch.randn(7, 2), torch.randn(7, 4, 1)
    with torch.no_grad():
        torch.testing.assert_close(ens.rollout(x0, actions), _stepped(ens, x0, actions, 4))


@pytest.mark.parametrize("case", [dict(), dict(integrator="rk4"), dict(k=0, m=0, control_affine=False, activation="relu")])
def test_stacked_training_loss_and_gradients_equal_the_vmapped_members(case):
    ens = _ensemble(**case)
    n, m = ens.state_dim, ens.action_dim
    x = torch.randn(5, 33, n)
    u = torch.randn(5, 33, m) if m else None
    target = x + 0.1 * torch.randn_like(x)
    results = []
    for vmapped in (False, True):
        ens.zero_grad()
        if vmapped:
            with functorch_safe():  # inside it the members run under vmap, as before the stacked path
                loss, _ = ens._loss(x, u, target)
        else:
            loss, _ = ens._loss(x, u, target)
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in ens.named_parameters()}))
    (loss_stacked, grads_stacked), (loss_vmapped, grads_vmapped) = results
    torch.testing.assert_close(loss_stacked, loss_vmapped)
    for name, grad in grads_vmapped.items():
        assert bool(grad.abs().sum() > 0), name
        torch.testing.assert_close(grads_stacked[name], grad, rtol=1e-5, atol=1e-7)


PRIORS = dict(angle_dims=1, control_affine=True, activation="silu")


#: certified member structures (``member_factory("stable", n, m, ...)`` options, ``n``, ``m`` among them)
CERTIFIED_CASES = [
    PRIORS,
    dict(PRIORS, integrator="rk4"),
    dict(n=4, m=2, activation="relu"),  # fhat a plain MLP on [x, u]
    dict(n=3, m=0),  # StableDynamics: no input, no sigma
    dict(PRIORS, lyap_shift="tangent"),
    dict(PRIORS, keep_guarantee=False),
]


@pytest.mark.parametrize("case", CERTIFIED_CASES)
def test_certified_members_step_without_vmap_as_each_member_does(case):
    """Without autograd certified members step as one stacked computation (``_raw_stacked_stable``):
    the same function as each member's own ``step`` to float rounding, as the vmapped members'
    (checked by switching the stacked path off), and each member's certified decrease holds
    for its rows."""
    import math

    from lyagym.learned_models import ensemble as ensemble_module
    from lyagym.learned_models.ensemble import Ensemble as EnsembleClass

    options = dict(case)
    n, m = options.pop("n", 2), options.pop("m", 1)
    torch.manual_seed(0)
    ens = Ensemble(member_factory("stable", n, m, dt=0.05, hidden=(16, 16), lyap_hidden=(8, 8), **options), 3,
                   propagation="tsinf", seed=1)
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert ens._stacked_stable_members()
    x, u = 1.5 * torch.randn(3, 40, n), (torch.randn(3, 40, m) if m else None)
    x[:, 0] = 0.0  # a row at x_eq (every member's: the default rest state)
    calls = []
    stacked = EnsembleClass._raw_stacked_stable
    with torch.no_grad():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(EnsembleClass, "_raw_stacked_stable", lambda self, *a: calls.append(1) or stacked(self, *a))
            fast, _ = ens._raw(x, u, shared=False)
        assert calls == [1]
        with pytest.MonkeyPatch.context() as patch:  # large batches go in blocks of rows: the same rows
            patch.setattr(ensemble_module, "STABLE_BLOCK_ROWS", 16)
            torch.testing.assert_close(ens._raw(x, u, shared=False)[0], fast, rtol=1e-6, atol=1e-6)
        object.__setattr__(ens, "_stable_members", False)  # the vmapped members
        slow, _ = ens._raw(x, u, shared=False)
        object.__setattr__(ens, "_stable_members", None)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)
    for e in range(3):
        member = ens.member(e).requires_grad_(False)
        with torch.no_grad():
            own = member.step(x[e], None if u is None else u[e])
            torch.testing.assert_close(fast[e], own, rtol=1e-5, atol=1e-5)
            if member.keep_guarantee:  # V(x') <= exp(-alpha h) V(x) (+ the input's share of sigma)
                alpha, h = member.alpha, member.dt
                bound = math.exp(-alpha * h) * member.lyapunov(x[e])
                if u is not None:
                    bound = bound + -math.expm1(-alpha * h) / alpha * member.sigma(x[e], u[e])
                assert bool((member.lyapunov(fast[e]) <= bound * (1 + 1e-5) + 1e-7).all())
