"""The optional compiled backend of the structured pendulum: ``assets/chain_kernel.c`` built
with the system C compiler and called through ``ctypes``.

Why C and not a JIT package: the kernel is one fixed ~100-line file (nothing is generated
per structure, the tables are passed as arrays), so a C compiler, which ``torch.compile``
on CPU needs anyway, is all it takes; no extra dependency, a build of ~0.3 s once per
machine. Where no compiler is found (``$CC``, else ``cc``/``gcc``/``clang``) or the build
fails, :func:`kernel` returns ``None`` and every caller uses the pure numpy/torch path
(same results to round-off). ``LYAGYM_NATIVE=0`` switches the backend off.

The shared library is built and cached by :func:`lyagym.learned_models.native.build_library`,
under the derivation cache's rules: an owner-only directory, and a library in a file or
directory that is not the user's own or that others can write is never loaded.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
import warnings
from pathlib import Path

import numpy as np

__all__ = ["available", "kernel", "ChainKernel"]

_SOURCE = Path(__file__).with_name("assets") / "chain_kernel.c"
_DOUBLE_P = ctypes.POINTER(ctypes.c_double)


class _Tables(ctypes.Structure):
    """``lyagym_chain_tables`` of the C source."""

    _fields_ = [("n", ctypes.c_long), ("m", ctypes.c_long)] + [(k, _DOUBLE_P) for k in ("r", "mu", "dmu", "G_r", "Dlo_r", "Dd_r", "Dup_r", "E_r")]


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from lyagym.learned_models.native import build_library

    try:
        lib = build_library(_SOURCE, "chain_kernel", ["-O2"])
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"lyagym: compiled pendulum kernel unavailable ({exc}); using the numpy/torch path", RuntimeWarning, stacklevel=3)
        return None
    if lib is None:
        return None
    tables_p = ctypes.POINTER(_Tables)
    lib.lyagym_chain_step.restype = ctypes.c_int
    lib.lyagym_chain_step.argtypes = [tables_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
                                      ctypes.c_double, ctypes.c_long, ctypes.c_long]
    lib.lyagym_chain_rk4.restype = ctypes.c_int
    lib.lyagym_chain_rk4.argtypes = [tables_p, _DOUBLE_P, _DOUBLE_P, ctypes.c_double]
    return lib


class ChainKernel:
    """The compiled step for one :class:`~lyagym.envs.structured.ChainTables`.

    ``step_list(xs, us, h, steps, method)`` advances one state given as a list of floats (the
    single env's hot path: no numpy in the loop); ``step_batch(x, u, h, steps, method)``
    advances a ``(batch, 2n)`` float64 array (copied) under ``(batch, m)`` or ``(m,)``
    torques."""

    METHODS = {"rk4": 0, "euler": 1}

    def __init__(self, lib: ctypes.CDLL, tables) -> None:
        self.n, self.m = tables.n_links, tables.action_dim
        r = tables.r
        self._arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (
            r, tables.mu, tables.dmu, tables.G / r, tables.damping_bands[0] / r, tables.damping_bands[1] / r,
            tables.damping_bands[2] / r, (tables.E / r[:, None]).reshape(-1) if self.m else np.zeros(1))]
        self._tables = _Tables(self.n, self.m, *(a.ctypes.data_as(_DOUBLE_P) for a in self._arrays))
        self._tables_p = ctypes.pointer(self._tables)
        self._step = lib.lyagym_chain_step
        self._x = (ctypes.c_double * (2 * self.n))()
        self._u = (ctypes.c_double * max(self.m, 1))()
        # The one-state call without ``argtypes`` and with its arguments built once: ctypes'
        # per-call argument conversion cost more than the n = 1..8 step itself (1.1 vs 0.5 us)
        self._rk4 = lib["lyagym_chain_rk4"]
        self._rk4_args = (self._tables_p, ctypes.byref(self._x), ctypes.byref(self._u))
        self._h, self._h_c = None, ctypes.c_double(0.0)

    def step_list(self, xs: list, us, h: float, steps: int = 1, method: str = "rk4") -> list:
        self._x[:] = xs
        if self.m:
            self._u[:] = us
        if steps == 1 and method == "rk4":
            if h != self._h:
                self._h, self._h_c = h, ctypes.c_double(h)
            self._rk4(*self._rk4_args, self._h_c)
        else:
            self._step(self._tables_p, 1, ctypes.addressof(self._x), ctypes.addressof(self._u), 0, h, steps, self.METHODS[method])
        return self._x[:]

    def step_batch(self, x: np.ndarray, u: np.ndarray | None, h: float, steps: int = 1, method: str = "rk4") -> np.ndarray:
        out = np.array(x, dtype=np.float64, order="C", copy=True)
        if self.m and u is not None:
            u = np.ascontiguousarray(u, dtype=np.float64)
            stride, u_ptr = (0 if u.ndim == 1 else self.m), u.ctypes.data
        else:
            stride, u_ptr = 0, None
        self._step(self._tables_p, out.shape[0], out.ctypes.data, u_ptr, stride, h, steps, self.METHODS[method])
        return out

    def __getstate__(self):  # pragma: no cover - the owner rebuilds it instead
        raise TypeError("ChainKernel does not pickle; PendulumDynamics rebuilds it on load")


def available() -> bool:
    """Whether the compiled backend can be used (builds it on the first call, ~0.3 s)."""
    return _library() is not None


def kernel(tables) -> ChainKernel | None:
    """The compiled step for ``tables``, or ``None`` (no compiler, build failed, switched
    off, or ``n > 512``)."""
    lib = _library()
    if lib is None or tables.n_links > 512:
        return None
    return ChainKernel(lib, tables)
