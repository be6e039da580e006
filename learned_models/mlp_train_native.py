"""Training E stacked MLPs through the compiled kernel: ``stacked_mlp(modules, weights, h)``.

An ensemble's members train as one computation on stacked weights; through torch every layer
is a batched matrix product that torch sends to MKL, which on AMD CPUs runs float32 products at
AVX2's rate (here ~96 GFLOP/s for a member's 256 x 100 x 100 product, forward or backward),
and every activation and its derivative is an operation of its own over the (E, rows, width)
activations. ``assets/mlp_kernel.c`` (``lyagym_mlp_train_forward`` / ``_backward``) runs the
whole network's forward pass, keeping each hidden layer's pre-activation and activation, and its
backward pass (every weight's and bias's gradient, the input's where asked) with the vectors
this CPU has (AVX-512 here: a 256 x 100 x 100 forward product near 250 GFLOP/s in a one-off
test; a weight gradient is the same product on the layer's input transposed, so no horizontal
sums), the activations and their derivatives fused into the products' stores, on
torch's own OpenMP threads (see the C source). The result is the same function as the
torch layers to float rounding: products summed in another order, SiLU's exp from the kernel's
polynomial (a few float32 ulps).

``stacked_mlp`` is an autograd function (once differentiable): float32 on a CPU, an
``nn.Sequential`` of ``nn.Linear`` layers with ReLU or SiLU between them (``supports``), where
the kernel is built and its passes agree with torch's (checked once); elsewhere callers keep torch's
batched products (``Ensemble._stacked_mlp`` decides, before any work).
"""

from __future__ import annotations

import ctypes
import functools
import warnings

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import mlp_native

__all__ = ["available", "supports", "usable", "stacked_mlp", "batched_mlp"]

_KERNEL_ACTIVATIONS = {nn.ReLU: 1, nn.SiLU: 2}


def supports(modules: nn.Sequential) -> bool:
    """Whether the kernel runs this network: ``Linear`` layers with ReLU or SiLU modules between
    them and a ``Linear`` last, as ``dynamics_net.mlp`` builds them."""
    items = list(modules)
    if not items or len(items) % 2 == 0:
        return False
    linear = all(type(m) is nn.Linear for m in items[::2])
    return linear and all(type(m) in _KERNEL_ACTIVATIONS for m in items[1::2])


def _padded(count: int) -> int:
    """``count`` rounded up to whole vectors of the kernel (rows, and columns of its scratch)."""
    vector = mlp_native.vector_floats()
    return -(-count // vector) * vector


def _cpu_float32(tensors: list[torch.Tensor | None]) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors if t is not None)


class _StackedMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, acts: tuple[int, ...], h: torch.Tensor, *params: torch.Tensor | None) -> torch.Tensor:
        E, rows, _ = h.shape
        weights = [p.detach().contiguous() if p is not None else None for p in params]
        widths = [weights[0].shape[-1]] + [w.shape[-2] for w in weights[::2]]
        padded, hidden = _padded(rows), sum(widths[1:-1])
        x = h.new_zeros(E, widths[0], padded)
        x[..., :rows] = h.detach().transpose(1, 2)
        z, a = h.new_empty(E, hidden, padded), h.new_empty(E, hidden, padded)
        out = h.new_empty(E, widths[-1], padded)
        lib = mlp_native.library()
        spec = _Spec(widths, acts, weights)
        lib.lyagym_mlp_train_forward(spec.layers, spec.widths, spec.acts, spec.params, E, padded, x.data_ptr(), z.data_ptr(),
                                     a.data_ptr(), out.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(x, z, a, *[w for w in weights if w is not None])
        ctx.spec, ctx.rows, ctx.present = spec, rows, [w is not None for w in weights]
        return out[..., :rows].transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, z, a, *kept = ctx.saved_tensors
        spec, rows = ctx.spec, ctx.rows
        E, _, padded = x.shape
        g = grad.new_zeros(E, spec.width_list[-1], padded)
        g[..., :rows] = grad.transpose(1, 2)
        d = torch.empty_like(z)
        grad_in = x.new_empty(x.shape) if ctx.needs_input_grad[1] else None
        it = iter(kept)
        weights = [next(it) if present else None for present in ctx.present]
        grads = [torch.empty_like(w) if w is not None else None for w in weights]
        pointers = (ctypes.c_void_p * len(grads))(*[0 if t is None else t.data_ptr() for t in grads])
        # scratch: every layer's input row-major and its weight gradient, both padded to whole vectors
        widths = spec.width_list
        columns = [_padded(w) for w in widths[:-1]]
        at = x.new_empty(E, padded * sum(columns))
        pad = x.new_empty(E, sum(w * c for w, c in zip(widths[1:], columns)))
        mlp_native.library().lyagym_mlp_train_backward(
            spec.layers, spec.widths, spec.acts, spec.params, E, padded, x.data_ptr(), z.data_ptr(), a.data_ptr(), g.data_ptr(),
            d.data_ptr(), None if grad_in is None else grad_in.data_ptr(), pointers, at.data_ptr(), pad.data_ptr(),
            torch.get_num_threads())
        dh = None if grad_in is None else grad_in[..., :rows].transpose(1, 2)
        return (None, dh, *[gr if need else None for gr, need in zip(grads, ctx.needs_input_grad[2:])])


class _Spec:
    """A network's structure and weight pointers as the kernel reads them."""

    def __init__(self, widths: list[int], acts: tuple[int, ...], weights: list[torch.Tensor | None]) -> None:
        self.width_list = widths
        self.layers = len(widths) - 1
        self.widths = (ctypes.c_long * len(widths))(*widths)
        self.acts = (ctypes.c_int * max(len(acts), 1))(*acts)
        self.params = (ctypes.c_void_p * len(weights))(*[0 if w is None else w.data_ptr() for w in weights])
        self.keep_alive = weights


def batched_mlp(modules: nn.Sequential, params: list[torch.Tensor | None], h: torch.Tensor) -> torch.Tensor:
    """``stacked_mlp``'s function through torch: one batched product per ``Linear`` (any network
    of ``Linear`` layers and parameter-free modules, any dtype and device, ordinary autograd)."""
    weights = iter(params)
    for module in modules:
        if isinstance(module, nn.Linear):
            w, b = next(weights), next(weights)
            h = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        else:
            h = module(h)
    return h


@functools.cache
def available() -> bool:
    """Whether the kernel is built and its training passes agree with torch on a small network
    (checked once: two members, a partial tile, blocks narrower than the register tile, ReLU and
    SiLU, a layer without bias); warns where they disagree."""
    if not mlp_native.available():
        return False
    g = torch.Generator().manual_seed(0)
    modules = nn.Sequential(nn.Linear(3, 9), nn.SiLU(), nn.Linear(9, 14, bias=False), nn.ReLU(), nn.Linear(14, 2))
    params = [torch.randn(2, 9, 3, generator=g), torch.randn(2, 9, generator=g), torch.randn(2, 14, 9, generator=g) / 3, None,
              torch.randn(2, 2, 14, generator=g) / 4, torch.randn(2, 2, generator=g)]
    h = torch.randn(2, 83, 3, generator=g)
    weight = torch.randn(2, 83, 2, generator=g)
    results = []
    for run in (stacked_mlp, batched_mlp):
        leaves = [h.clone().requires_grad_()] + [p.clone().requires_grad_() if p is not None else None for p in params]
        with torch.enable_grad():
            out = run(modules, leaves[1:], leaves[0])
            grads = torch.autograd.grad((out * weight).sum(), [t for t in leaves if t is not None])
        results.append([out.detach(), *grads])
    if all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(*results)):
        return True
    warnings.warn("lyagym: the compiled MLP training kernel disagrees with torch on this machine; ensembles train "
                  "through torch's layers", RuntimeWarning, stacklevel=3)
    return False


def usable(modules: nn.Sequential, h: torch.Tensor, params: list[torch.Tensor | None]) -> bool:
    """Whether ``stacked_mlp`` runs ``modules`` on ``h`` with ``params`` (decided before any work):
    float32 tensors on a CPU, no ``torch.func`` transform active, a network ``supports`` accepts
    and the kernel built and checked."""
    return (_cpu_float32([h, *params]) and not torch._C._are_functorch_transforms_active() and supports(modules)
            and available())


def stacked_mlp(modules: nn.Sequential, params: list[torch.Tensor | None], h: torch.Tensor) -> torch.Tensor:
    """``E`` stacked copies of ``modules`` (``usable``) on ``h: (E, rows, in)`` -> ``(E, rows,
    out)``; ``params``: each ``Linear``'s stacked weight ``(E, out, in)`` and bias ``(E, out)``
    (or ``None``), in order. Differentiable in ``h`` and ``params`` (once)."""
    if not supports(modules):
        raise ValueError(f"modules must be Linear layers with ReLU or SiLU between them, got {modules}")
    linear = list(modules)[::2]
    if len(params) != 2 * len(linear):
        raise ValueError(f"params must hold a weight and a bias (or None) per Linear layer: {2 * len(linear)}, got {len(params)}")
    if h.ndim != 3:
        raise ValueError(f"h must be (members, rows, in), got shape {tuple(h.shape)}")
    members = h.shape[0]
    for i, layer in enumerate(linear):
        w, b = params[2 * i], params[2 * i + 1]
        if w is None or w.shape != (members, layer.out_features, layer.in_features):
            raise ValueError(f"params[{2 * i}] must be layer {i}'s stacked weight {(members, layer.out_features, layer.in_features)}, "
                             f"got {None if w is None else tuple(w.shape)}")
        if b is not None and b.shape != (members, layer.out_features):
            raise ValueError(f"params[{2 * i + 1}] must be layer {i}'s stacked bias {(members, layer.out_features)} or None, "
                             f"got {tuple(b.shape)}")
    if h.shape[-1] != linear[0].in_features:
        raise ValueError(f"h must have {linear[0].in_features} features, got {h.shape[-1]}")
    if not _cpu_float32([h, *params]):
        raise ValueError("h and params must be float32 tensors on the CPU (see usable)")
    acts = tuple(_KERNEL_ACTIVATIONS[type(m)] for m in list(modules)[1::2])
    return _StackedMLP.apply(acts, h, *params)
