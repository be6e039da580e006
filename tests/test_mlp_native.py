"""The compiled MLP kernel (``learned_models/mlp_native.py``): the same function as torch's
layers to float rounding on every shape it tiles differently, used only while torch runs one
thread, no NaN from finite input, and a fallback (with a warning where something went wrong)
when it cannot be built or must not be loaded."""

import os

import pytest
import torch

from lyagym.learned_models import mlp_native

pytestmark = pytest.mark.skipif(not mlp_native.available(), reason="no C compiler")

_TORCH = {"relu": torch.relu, "swish": torch.nn.functional.silu}


def _weights(widths, members=None, seed=0):
    """``MLPField``-style weights: the first layer ``([E,] widths[1], widths[0])`` (``widths[0]``
    input rows, the ones row among them), the others ``([E,] out, in + 1)`` with the bias last;
    scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    lead = () if members is None else (members,)
    first = torch.randn(*lead, widths[1], widths[0], generator=g) / widths[0] ** 0.5
    return [first] + [torch.randn(*lead, out, inp + 1, generator=g) / (inp + 1) ** 0.5 for inp, out in zip(widths[1:-1], widths[2:])]


def _reference(weights, activation, x):
    """The network in torch: the first layer's last column multiplies the input's last row (the
    rollout's ones row), later layers' last column is their bias."""
    h = torch.matmul(weights[0], x)
    for w in weights[1:]:
        h = torch.matmul(w[..., :-1], _TORCH[activation](h)) + w[..., -1:]
    return h


def _run(weights, activation, x):
    out = torch.empty(*x.shape[:-2], weights[-1].shape[-2], x.shape[-1])
    mlp_native.NativeWeights(weights, [activation] * (len(weights) - 1)).bind(x, out)()
    return out


@pytest.mark.parametrize("activation", ["relu", "swish"])
@pytest.mark.parametrize("rows", [1, 15, 16, 64, 83, 200, 1000])
@pytest.mark.parametrize("members", [None, 3])
def test_kernel_equals_torch(activation, rows, members):
    """Full 64-row tiles, 16-row tail tiles and a partial last tile; output blocks of six and a
    narrower last one (13 = 2 x 6 + 1 hidden, 7 outputs); one network or stacked members."""
    weights = _weights([4, 13, 20, 7], members)
    x = torch.randn(*(() if members is None else (members,)), 4, rows, generator=torch.Generator().manual_seed(rows))
    x[..., -1, :] = 1.0
    torch.testing.assert_close(_run(weights, activation, x), _reference(weights, activation, x), rtol=1e-5, atol=1e-5)


def test_strided_input_rows_and_a_single_layer():
    """The input may be a slice of a taller buffer (the rollout's first-layer rows with the
    head's extra rows below); a network of one layer is a plain product."""
    buffer = torch.randn(6, 70)
    x = buffer[:4]
    weights = _weights([4, 5])
    out = torch.empty(5, 70)
    mlp_native.NativeWeights(weights, []).bind(x, out)()
    torch.testing.assert_close(out, weights[0] @ x, rtol=1e-5, atol=1e-5)


def test_the_kernel_runs_only_while_torch_runs_one_thread():
    """With more threads torch's own layers share each product between them (conftest sets one)."""
    from lyagym.learned_models import SimpleDynamics
    from lyagym.learned_models.mlp_rollout import MLPField

    model = SimpleDynamics(3, 1, hidden=(16, 16), dt=0.05)
    field = MLPField.lower(model.fhat, 3, 1)
    x0 = torch.zeros(5, 3)
    assert isinstance(field.native_weights(x0), mlp_native.NativeWeights)
    assert field.native_weights(x0.double()) is None
    torch.set_num_threads(2)
    try:
        assert field.native_weights(x0) is None
    finally:
        torch.set_num_threads(1)


def test_silu_of_large_inputs_is_finite_and_right():
    """SiLU's exp is clamped: pre-activations of +-1e4 give x and -0, never inf / inf or NaN."""
    values = torch.tensor([-1e4, -300.0, -88.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.0, 300.0, 1e4])
    rows = len(values)
    first = torch.tensor([[[1.0, 0.0]]])  # the value into one hidden unit, which the last layer reads out
    weights = [first, torch.tensor([[[1.0, 0.0]]])]
    x = torch.stack([values, torch.ones(rows)]).unsqueeze(0)
    out = _run(weights, "swish", x)[0, 0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.nn.functional.silu(values), rtol=1e-5, atol=1e-30)  # -1e4: -4e-35 against -0


def test_nan_input_stays_nan():
    weights = _weights([3, 8, 2])
    x = torch.ones(3, 20)
    x[0, 5] = float("nan")
    for activation in ("relu", "swish"):
        out = _run(weights, activation, x)
        assert out[:, 5].isnan().all() and torch.isfinite(out[:, :5]).all()


def test_bad_weights_and_buffers_are_refused():
    with pytest.raises(ValueError, match="layer 1"):
        mlp_native.NativeWeights([torch.zeros(8, 3), torch.zeros(2, 8)], ["relu"])  # 7 inputs + bias, not 8
    with pytest.raises(ValueError, match="activations"):
        mlp_native.NativeWeights(_weights([3, 8, 2]), [])
    native = mlp_native.NativeWeights(_weights([3, 8, 2]), ["relu"])
    with pytest.raises(ValueError, match="x must be"):
        native.bind(torch.zeros(4, 10), torch.zeros(2, 10))
    with pytest.raises(ValueError, match="float32"):
        native.bind(torch.zeros(3, 10, dtype=torch.float64), torch.zeros(2, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="unit stride"):
        native.bind(torch.zeros(10, 3).t(), torch.zeros(2, 10))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LYAGYM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_switched_off_or_no_compiler_means_no_kernel(fresh_cache, monkeypatch):
    monkeypatch.setenv("LYAGYM_NATIVE", "0")
    assert mlp_native._library.__wrapped__() is None
    monkeypatch.delenv("LYAGYM_NATIVE")
    monkeypatch.setenv("PATH", str(fresh_cache))  # no cc, gcc or clang there
    monkeypatch.delenv("CC", raising=False)
    assert mlp_native._library.__wrapped__() is None


def test_a_failing_build_warns_and_falls_back(fresh_cache, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.warns(RuntimeWarning, match="compiled MLP kernel unavailable"):
        assert mlp_native._library.__wrapped__() is None


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_kernel_others_can_write_is_not_loaded(fresh_cache):
    assert mlp_native._library.__wrapped__() is not None
    (lib,) = fresh_cache.glob("mlp_kernel_*.so")
    assert lib.stat().st_mode & 0o077 == 0
    lib.chmod(0o777)
    with pytest.warns(RuntimeWarning, match="refusing to load"):
        assert mlp_native._library.__wrapped__() is None


def test_a_lowered_rollout_without_the_kernel_is_the_same_function(monkeypatch):
    """``LYAGYM_NATIVE=0`` at rollout time: the same model's rollout through torch's layers."""
    from lyagym.learned_models import SimpleDynamics

    torch.manual_seed(0)
    model = SimpleDynamics(3, 1, hidden=(32, 32), dt=0.05, angle_dims=1, control_affine=True, activation="silu")
    x0, actions = torch.randn(300, 3), torch.randn(300, 10, 1)
    with torch.inference_mode():
        native = model.rollout(x0, actions)
        monkeypatch.setenv("LYAGYM_NATIVE", "0")
        plain = model.rollout(x0, actions)
    torch.testing.assert_close(native, plain, rtol=1e-5, atol=1e-5)


def test_a_build_without_wide_vectors_is_not_used(fresh_cache, monkeypatch, tmp_path):
    """A compiler that ignores -march=native builds 4-float vectors (SSE2, NEON): slower than
    torch's layers, so the kernel is not used (no warning: nothing went wrong)."""
    import warnings

    from lyagym.learned_models.native import compiler

    wrapper = tmp_path / "cc-baseline"
    wrapper.write_text("#!/bin/sh\n"
                       "args=''\n"
                       "for a in \"$@\"; do [ \"$a\" = -march=native ] || args=\"$args '$a'\"; done\n"
                       f"eval exec {compiler()} $args\n")
    wrapper.chmod(0o700)
    monkeypatch.setenv("CC", str(wrapper))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mlp_native._library.__wrapped__() is None
    (lib,) = fresh_cache.glob("mlp_kernel_*.so")  # it was built, then left unused
    assert lib.exists()


@pytest.mark.parametrize("outputs", [12, 7, 4])
def test_pack_layer_of_stacked_networks_is_each_networks_packing(outputs):
    """Stacked weights ``(E, out, in)`` pack as each network's own packing, stacked: whole blocks
    of six outputs, then the narrower rest, each block's transposed weights before its biases."""
    w, b = torch.randn(3, outputs, 5), torch.randn(3, outputs)
    packed = mlp_native.pack_layer(w, b)
    assert packed.shape == (3, outputs * 6)
    for e in range(3):
        assert torch.equal(packed[e], mlp_native.pack_layer(w[e], b[e]))
    single = mlp_native.pack_layer(w[0], b[0])
    full = outputs - outputs % 6
    if full:  # the first block: (in, 6) transposed weights, then six biases
        assert torch.equal(single[:30], w[0, :6].t().reshape(-1)) and torch.equal(single[30:36], b[0, :6])
    last = outputs - full or 6  # the last block's width; its biases close the packing
    assert torch.equal(single[-last:], b[0, -last:])
    assert torch.equal(mlp_native.pack_layer(w, None)[:, -last:], torch.zeros(3, last))
