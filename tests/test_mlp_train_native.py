"""Training stacked MLPs through the compiled kernel (``learned_models/mlp_train_native.py``):
the same function and the same gradients as torch's batched products on every shape the kernel
tiles differently, the same bits at every thread count, used by an ensemble's training only
where it applies, and the torch path elsewhere."""

import pytest
import torch
from torch import nn

from lyagym.learned_models import Ensemble, member_factory, mlp_train_native
from lyagym.learned_models.dynamics_net import mlp

pytestmark = pytest.mark.skipif(not mlp_train_native.available(), reason="no C compiler")


def _network(widths, activation="silu", bias=True, members=2, seed=0):
    """``dynamics_net.mlp``'s structure and stacked weights scaled so activations stay O(1)."""
    modules = mlp(widths[0], widths[1:-1], widths[-1], activation=activation)
    if not bias:
        modules = nn.Sequential(*[nn.Linear(m.in_features, m.out_features, bias=False) if isinstance(m, nn.Linear) else m
                                  for m in modules])
    g = torch.Generator().manual_seed(seed)
    params = []
    for inp, out in zip(widths[:-1], widths[1:]):
        params += [torch.randn(members, out, inp, generator=g) / inp ** 0.5, torch.randn(members, out, generator=g) if bias else None]
    return modules, params


def _forward_and_grads(run, modules, params, h, weight, input_grad=True):
    h = h.clone().requires_grad_(input_grad)
    leaves = [p.clone().requires_grad_() if p is not None else None for p in params]
    out = run(modules, leaves, h)
    (out * weight).sum().backward()
    return out.detach(), h.grad, [p.grad for p in leaves if p is not None]


def _assert_same(native, reference, tol=2e-5):
    out, h_grad, grads = native
    ref_out, ref_h_grad, ref_grads = reference
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    if ref_h_grad is None:
        assert h_grad is None
    else:
        torch.testing.assert_close(h_grad, ref_h_grad, rtol=tol, atol=tol)
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("widths", [[6, 100, 100, 12], [5, 7, 13, 3], [3, 4], [4, 8, 20, 8, 2]])
@pytest.mark.parametrize("rows", [1, 15, 64, 83, 256])
def test_forward_and_gradients_equal_torch(activation, widths, rows):
    """Full tiles of 64 rows, tails of one vector, a padded last vector; blocks of six outputs and
    narrower tails; one to three hidden layers and none."""
    modules, params = _network(widths, activation, members=3)
    g = torch.Generator().manual_seed(1)
    h, weight = torch.randn(3, rows, widths[0], generator=g), torch.randn(3, rows, widths[-1], generator=g)
    _assert_same(_forward_and_grads(mlp_train_native.stacked_mlp, modules, params, h, weight),
                 _forward_and_grads(mlp_train_native.batched_mlp, modules, params, h, weight))


def test_layers_without_bias_and_no_input_gradient():
    modules, params = _network([4, 30, 5], "relu", bias=False, members=1)
    g = torch.Generator().manual_seed(2)
    h, weight = torch.randn(1, 40, 4, generator=g), torch.randn(1, 40, 5, generator=g)
    native = _forward_and_grads(mlp_train_native.stacked_mlp, modules, params, h, weight, input_grad=False)
    assert native[1] is None
    _assert_same(native, _forward_and_grads(mlp_train_native.batched_mlp, modules, params, h, weight, input_grad=False))


def test_the_same_bits_at_every_thread_count():
    modules, params = _network([6, 100, 100, 12], members=5)
    g = torch.Generator().manual_seed(3)
    h, weight = torch.randn(5, 200, 6, generator=g), torch.randn(5, 200, 12, generator=g)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_forward_and_grads(mlp_train_native.stacked_mlp, modules, params, h, weight))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1])
        assert all(torch.equal(a, b) for a, b in zip(other[2], results[0][2]))


def test_an_empty_batch_gives_zero_gradients():
    modules, params = _network([3, 8, 2], members=2)
    out, h_grad, grads = _forward_and_grads(mlp_train_native.stacked_mlp, modules, params, torch.zeros(2, 0, 3), torch.zeros(2, 0, 2))
    assert out.shape == (2, 0, 2) and h_grad.shape == (2, 0, 3)
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_large_pre_activations_give_finite_gradients():
    """SiLU and its derivative at |z| ~ 1e3 (exp clamped in the kernel): the torch values, no NaN."""
    modules, params = _network([2, 16, 1], members=1)
    h = torch.tensor([[[1e3, -1e3], [-1e3, 1e3], [0.5, -0.5]]]) * 3
    weight = torch.ones(1, 3, 1)
    native = _forward_and_grads(mlp_train_native.stacked_mlp, modules, params, h, weight)
    assert all(torch.isfinite(t).all() for t in (native[0], native[1], *native[2]))
    _assert_same(native, _forward_and_grads(mlp_train_native.batched_mlp, modules, params, h, weight), tol=1e-4)


def test_supports_only_linear_layers_with_relu_or_silu_between():
    assert mlp_train_native.supports(mlp(3, (8, 8), 2, activation="relu"))
    assert mlp_train_native.supports(nn.Sequential(nn.Linear(3, 2)))
    assert not mlp_train_native.supports(mlp(3, (8,), 2, activation="tanh"))
    assert not mlp_train_native.supports(nn.Sequential(nn.Linear(3, 8), nn.SiLU()))  # an activation last
    assert not mlp_train_native.supports(nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2)))
    assert not mlp_train_native.supports(nn.Sequential())


def _ensemble(dtype=torch.float32):
    torch.manual_seed(0)
    factory = member_factory("simple", 4, 2, dt=0.05, angle_dims=2, control_affine=True, activation="silu", hidden=(32, 32),
                             integrator="euler")
    return Ensemble(factory, 3, propagation="tsinf").to(dtype)


def _count_calls(monkeypatch):
    calls = []
    original = mlp_train_native.stacked_mlp
    monkeypatch.setattr(mlp_train_native, "stacked_mlp", lambda *a: calls.append(1) or original(*a))
    return calls


def _loss_and_grads(ens, x, u, y):
    ens.zero_grad(set_to_none=True)
    loss, _ = ens._loss(x, u, y)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in ens.named_parameters() if p.grad is not None}


def test_an_ensembles_training_step_runs_the_kernel_and_equals_torch(monkeypatch):
    """The members' networks and variance heads through the kernel: the same loss and gradients
    as with the kernel switched off."""
    ens = _ensemble()
    g = torch.Generator().manual_seed(4)
    x, u = torch.randn(3, 50, 4, generator=g), torch.randn(3, 50, 2, generator=g)
    y = x + 0.05 * torch.randn(3, 50, 4, generator=g)
    calls = _count_calls(monkeypatch)
    loss, grads = _loss_and_grads(ens, x, u, y)
    assert len(calls) == 2  # fhat's network and the variance head
    monkeypatch.setattr(mlp_train_native, "usable", lambda *a: False)
    ref_loss, ref_grads = _loss_and_grads(ens, x, u, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) == len(list(ens.parameters()))
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5 * max(1.0, ref_grads[name].abs().max().item()))


def test_a_gradient_through_an_ensembles_step_equals_torch(monkeypatch):
    """Gradient planners differentiate ``step`` in the actions: the kernel gives the input's gradient."""
    ens = _ensemble()
    g = torch.Generator().manual_seed(5)
    x, u = torch.randn(20, 4, generator=g), torch.randn(20, 2, generator=g)
    ens.sample = False

    def action_grad():
        v = u.clone().requires_grad_()
        ens.step(x, v).square().sum().backward()
        return v.grad

    calls = _count_calls(monkeypatch)
    native = action_grad()
    assert calls
    monkeypatch.setattr(mlp_train_native, "usable", lambda *a: False)
    torch.testing.assert_close(native, action_grad(), rtol=1e-4, atol=1e-5)


def test_the_torch_path_without_autograd_in_float64_and_under_torch_func(monkeypatch):
    calls = _count_calls(monkeypatch)
    ens = _ensemble()
    x, u = torch.randn(3, 10, 4), torch.randn(3, 10, 2)
    with torch.no_grad():
        ens._loss(x, u, x)
    torch.func.grad(lambda v: ens._loss(x, v, x)[0])(u)
    assert not calls
    ens64 = _ensemble(torch.float64)
    ens64._loss(x.double(), u.double(), x.double())[0].backward()
    assert not calls
    ens._loss(x, u, x)[0].backward()
    assert calls  # and the kernel where it applies


def test_bad_shapes_and_dtypes_are_refused_before_any_work():
    modules, params = _network([3, 8, 2], members=2)
    h = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="features"):
        mlp_train_native.stacked_mlp(modules, params, torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"params\[2\]"):
        mlp_train_native.stacked_mlp(modules, [params[0], params[1], params[2][:1], params[3]], h)
    with pytest.raises(ValueError, match=r"params\[1\]"):
        mlp_train_native.stacked_mlp(modules, [params[0], params[1][:, :3], *params[2:]], h)
    with pytest.raises(ValueError, match="a weight and a bias"):
        mlp_train_native.stacked_mlp(modules, params[:3], h)
    with pytest.raises(ValueError, match="float32"):
        mlp_train_native.stacked_mlp(modules, [p.double() for p in params], h.double())
    with pytest.raises(ValueError, match="ReLU or SiLU"):
        mlp_train_native.stacked_mlp(mlp(3, (8,), 2, activation="tanh"), params, h)


def test_a_kernel_that_disagrees_with_torch_is_refused_with_a_warning(monkeypatch):
    reference = mlp_train_native.batched_mlp
    monkeypatch.setattr(mlp_train_native, "batched_mlp", lambda *a: reference(*a) * 1.001)  # 0.1% off: beyond the rounding
    with pytest.warns(RuntimeWarning, match="disagrees with torch"):
        assert not mlp_train_native.available.__wrapped__()
    monkeypatch.setattr(mlp_train_native, "batched_mlp", reference)
    assert mlp_train_native.available.__wrapped__()
