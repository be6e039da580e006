"""An ``MLPField``'s network as one compiled call: ``assets/mlp_kernel.c``, built with the system
C compiler for this CPU (``-march=native``) and called through ``ctypes``.

Why a kernel of our own beside MKL and oneDNN: a planner's learned model is a small MLP
(a (100, 100) hidden layer between a first layer of a few inputs and a last of a few outputs)
evaluated 120 times a plan on 1,000 rows. Through torch every layer is a library call that
sets itself up (oneDNN's linear ~11 us a call), writes its (rows, 100) activations out to
memory and reads them back for the activation and the next layer, and the thin layers run far
below the machine's rate (MKL: 12-15 us for a 1000 x 3 x 100 product). The kernel runs each
tile of 64 rows through the whole network with its activations in registers and L1, so only
the hidden products' arithmetic is left. Measured at one thread on a quiet 2-core AMD EPYC
(Zen 5, AVX-512), one-off, a 100-100 network on 1,000 rows: 95-99 us (ReLU, 5 inputs, 7 outputs)
against ~135 us through oneDNN and MKL; SiLU 126-134 against ~175 us.

The results are the same function to float rounding (products summed in another order, SiLU's
exp from Cephes' polynomial: within a few float32 ulps of torch's); ``_library`` checks the
built kernel once against torch and refuses it if they disagree. Where no compiler is found,
the build fails, the check fails, the CPU has neither AVX2 with FMA nor AVX-512 (the vectors
the kernel is written for; ``_MIN_VECTOR_FLOATS``), or ``LYAGYM_NATIVE=0``, ``MLPField`` keeps
its torch path.
The kernel runs on one thread, and ``MLPField`` uses it only while torch runs one
(``torch.get_num_threads() == 1``, as the benchmarks and most MBRL runs with parallel
environments do): with more, torch's own layers split each product between its threads, which
a single-threaded kernel would lose to at large batches, and threads of ours would compete with
the spinning workers of torch's OpenMP pool (measured at two threads, one-off: B = 64 plans 20-30%
slower through a one-thread kernel, some B = 1 plans 2-3x slower with two kernel threads).

The same library holds the whole-rollout kernel of ``rollout_native`` and the training passes of
``mlp_train_native``. It is built with ``-fopenmp`` where the compiler has OpenMP: it then links
``libgomp`` by its soname, which in a process where torch has loaded its own is torch's, so those
kernels' threads are torch's OpenMP workers rather than threads competing with them.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .native import build_library

__all__ = ["NativeWeights", "available", "supports", "pack_layer"]

_SOURCE = Path(__file__).with_name("assets") / "mlp_kernel.c"

#: outputs per register tile (``JB`` in the C source): the weights are packed by blocks of it
_BLOCK = 6

#: the kernel's codes for the activations it runs (oneDNN's names, as ``MLPField`` keeps them)
_ACTIVATIONS = {"relu": 1, "swish": 2}

_LONG, _PTR = ctypes.c_long, ctypes.c_void_p


#: fewest floats per vector of a build worth using (AVX2 with FMA: 8; AVX-512: 16). One-off, a
#: rollout of 1000 rows x 30 RK4 steps of a 100-100 ReLU / SiLU model at one thread on this
#: machine: AVX-512 build 12.3 / 17.7 ms against torch's 17.8 / 23.5; an AVX2 build 23.6 / 32.9
#: against torch limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``) 28.0 / 34.1; an SSE2 build
#: 75 / 102 ms, slower than torch, whose layers pick their instructions at run time.
_MIN_VECTOR_FLOATS = 8


def _build() -> ctypes.CDLL | None:
    flags = ["-O3", "-march=native", "-pthread"]
    try:  # the training passes share torch's OpenMP threads (assets/mlp_kernel.c); without OpenMP they run on one
        lib = build_library(_SOURCE, "mlp_kernel", [*flags, "-fopenmp"], native_cpu=True)
    except subprocess.SubprocessError:  # a compiler without OpenMP (an untrusted cache is an OSError: not retried)
        lib = None
    if lib is None:
        lib = build_library(_SOURCE, "mlp_kernel", flags, native_cpu=True)
    if lib is not None:
        lib.lyagym_mlp_vector_floats.restype = ctypes.c_int
        lib.lyagym_mlp.restype = ctypes.c_int
        lib.lyagym_mlp.argtypes = [_LONG, _PTR, _PTR, _PTR, _LONG, _PTR, _LONG, _LONG, _PTR, _LONG, _LONG, _LONG]
        lib.lyagym_mlp_train_forward.restype = ctypes.c_int
        lib.lyagym_mlp_train_forward.argtypes = [_LONG, _PTR, _PTR, _PTR, _LONG, _LONG, _PTR, _PTR, _PTR, _PTR, _LONG]
        lib.lyagym_mlp_train_backward.restype = ctypes.c_int
        lib.lyagym_mlp_train_backward.argtypes = [_LONG, _PTR, _PTR, _PTR, _LONG, _LONG, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR,
                                                  _LONG]
    return lib


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built kernel, checked once against torch on a small network, or ``None``."""
    try:
        lib = _build()
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"lyagym: compiled MLP kernel unavailable ({exc}); learned models use the torch path",
                      RuntimeWarning, stacklevel=3)
        return None
    if lib is None or lib.lyagym_mlp_vector_floats() < _MIN_VECTOR_FLOATS:
        return None  # no compiler, switched off, or a CPU without AVX2 and FMA: torch's layers are faster
    g = torch.Generator().manual_seed(0)
    # Two members, a partial tile and a full one, a narrow last block: every branch of the kernel.
    weights = [torch.randn(2, 13, 4, generator=g), torch.randn(2, 9, 14, generator=g) / 4, torch.randn(2, 3, 10, generator=g) / 3]
    x = torch.randn(2, 4, 83, generator=g)
    for activation, reference in (("relu", torch.relu), ("swish", torch.nn.functional.silu)):
        expected = x
        for i, w in enumerate(weights):
            h = torch.bmm(w[..., :-1], expected) + w[..., -1:] if i else torch.bmm(w, expected)
            expected = reference(h) if i < len(weights) - 1 else h
        out = torch.empty(2, 3, 83)
        NativeWeights(weights, [activation, activation], library=lib).bind(x, out)()
        if not torch.allclose(out, expected, rtol=1e-5, atol=1e-5):
            warnings.warn("lyagym: compiled MLP kernel disagrees with torch on this machine; learned models use the torch path",
                          RuntimeWarning, stacklevel=3)
            return None
    return lib


def library() -> ctypes.CDLL:
    """The checked kernel (``available`` must be true)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the compiled MLP kernel is not available")
    return lib


@functools.cache
def vector_floats() -> int:
    """Floats per vector of the built kernel (16 with AVX-512, 8 with AVX2; asked once, as the
    library is built once: the training passes pad to it on every call)."""
    return library().lyagym_mlp_vector_floats()


def available() -> bool:
    """Whether the compiled MLP kernel can be used (builds it on the first call, ~1 s)."""
    return _library() is not None


def supports(activations: list[str]) -> bool:
    """Whether the kernel runs these hidden activations (oneDNN's names: ReLU and SiLU)."""
    return all(a in _ACTIVATIONS for a in activations)


def pack_layer(weights: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``weights: (..., out, in)`` and ``bias: (..., out)`` (``None``: zero) in the kernel's
    layout: for each block of ``_BLOCK`` outputs (the last may be narrower) its ``(in, block)``
    transposed weights, then its biases; ``(..., packed)``, stacked networks' leading dimensions
    kept."""
    *lead, J, K = weights.shape
    if bias is None:
        bias = weights.new_zeros(*lead, J)
    full = J - J % _BLOCK
    blocks = torch.cat([weights[..., :full, :].reshape(*lead, -1, _BLOCK, K).transpose(-1, -2),
                        bias[..., :full].reshape(*lead, -1, 1, _BLOCK)], -2)
    tail = torch.cat([weights[..., full:, :].transpose(-1, -2), bias[..., full:].unsqueeze(-2)], -2)
    return torch.cat([blocks.reshape(*lead, -1), tail.reshape(*lead, -1)], -1).contiguous()


class NativeWeights:
    """A network's weights packed for the kernel, once; ``bind(x, out)`` gives the call.

    Args:
        weights: per layer ``([E,] out, in + 1)``, the bias as last column (``MLPField``'s
            layout); the first layer's ``in + 1`` columns all multiply input rows (its ones row
            among them), so its last column is taken as a weight, not a bias.
        activations: oneDNN's name of each activation after a layer but the last (``supports``).
    """

    def __init__(self, weights: list[torch.Tensor], activations: list[str], library: ctypes.CDLL | None = None) -> None:
        lib = library or _library()
        if lib is None:
            raise RuntimeError("the compiled MLP kernel is not available")
        for i in range(1, len(weights)):
            if weights[i].shape[-1] != weights[i - 1].shape[-2] + 1:
                raise ValueError(f"layer {i} takes {weights[i].shape[-1] - 1} inputs (its last column the bias), "
                                 f"layer {i - 1} gives {weights[i - 1].shape[-2]}")
        if len(activations) != len(weights) - 1 or not supports(activations):
            raise ValueError(f"activations must name one of {sorted(_ACTIVATIONS)} per layer but the last, got {activations}")
        self.members = weights[0].shape[0] if weights[0].ndim == 3 else None
        per_member = [[w[e] for w in weights] for e in range(self.members)] if self.members else [weights]
        flat = []
        for layers in per_member:
            layers = [w.detach().to("cpu", torch.float32) for w in layers]  # the kernel reads host float32
            flat.append(pack_layer(layers[0], None))
            flat += [pack_layer(w[:, :-1], w[:, -1]) for w in layers[1:]]
        self._packed = flat  # kept alive: the kernel reads them through the pointers below
        self._pointers = (ctypes.c_void_p * len(flat))(*[p.data_ptr() for p in flat])
        self.widths = [weights[0].shape[-1]] + [w.shape[-2] for w in weights]
        self._widths = (ctypes.c_long * len(self.widths))(*self.widths)
        self._acts = (ctypes.c_int * len(weights))(*[_ACTIVATIONS[a] for a in activations], 0)
        self._call = lib.lyagym_mlp

    def bind(self, x: torch.Tensor, out: torch.Tensor) -> Callable[[], None]:
        """A function of no arguments that writes the network's output for ``x: ([E,] in + 1,
        rows)`` into ``out: ([E,] out, rows)`` (both float32 on the CPU, unit stride along rows,
        kept alive by the function)."""
        rows, members = x.shape[-1], self.members or 1
        lead = (self.members,) if self.members else ()
        if x.device.type != "cpu" or x.dtype != torch.float32 or out.device.type != "cpu" or out.dtype != torch.float32:
            raise ValueError("x and out must be float32 tensors on the CPU")
        if x.shape != (*lead, self.widths[0], rows) or out.shape != (*lead, self.widths[-1], rows):
            raise ValueError(f"x must be {(*lead, self.widths[0], 'rows')} and out {(*lead, self.widths[-1], 'rows')}, "
                             f"got {tuple(x.shape)} and {tuple(out.shape)}")
        if x.stride(-1) != 1 or out.stride(-1) != 1:
            raise ValueError("x and out must have unit stride along rows")
        args = (len(self._acts), ctypes.addressof(self._widths), ctypes.addressof(self._acts), ctypes.addressof(self._pointers),
                members, x.data_ptr(), x.stride(0) if self.members else 0, x.stride(-2),
                out.data_ptr(), out.stride(0) if self.members else 0, out.stride(-2), rows)
        call = self._call

        def network() -> None:
            if call(*args) != 0:
                raise MemoryError("the compiled MLP kernel could not allocate its buffers")

        network.keep_alive = (self, x, out)  # the kernel reads and writes through their pointers
        return network
