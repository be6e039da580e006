"""True physics of the planar n-link pendulum: ``PendulumDynamics``.

A pure function of state and action, separate from any environment shell. The equations come
from :mod:`lyagym.envs.symbolic` (Kane's method, compiled once per structure and cached on
disk); this module adds parameters, validation, integrators and the three backends:

- numpy float64, batched (``derivative``/``step``/``energy`` on ``(..., 2n)`` arrays,
  ``simulate`` for whole trajectories -- the evaluation reference);
- torch, batched, any device and dtype, differentiable (also the ``WorldModel`` interface:
  ``step``/``rollout`` on ``(batch, 2n)`` tensors);
- plain Python floats for one state (``step_single``), the single environment's fast path.

Example::

    >>> import numpy as np
    >>> from lyagym.envs import PendulumDynamics
    >>> dyn = PendulumDynamics(n_links=2, damping=0.0)
    >>> x0 = np.array([1.0, 0.5, 0.0, 0.0])
    >>> traj = dyn.simulate(x0[None], 100)          # (1, 101, 4), RK4 at dt = 0.01
    >>> bool(abs(dyn.energy(traj[0, -1]) - dyn.energy(x0)) < 1e-6)
    True
"""

from __future__ import annotations

import dis
import math
import operator
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import native
from .structured import ChainTables, StructureError, load_structure
from .symbolic import DAMPING_MODES, compile_pendulum

__all__ = ["PendulumDynamics", "INTEGRATORS"]


# ----------------------------------------------------------------------------- integrators
# Each takes ``f`` (state -> time derivative), a state ``x`` (numpy array or tensor of any
# layout ``f`` understands) and a step ``h``; one registry for every backend.


def _axpy(x, h: float, k):
    """``x + h * k`` in one pass for tensors (``torch.add(alpha=)``), two for arrays."""
    if isinstance(x, torch.Tensor):
        return torch.add(x, k, alpha=h)
    return x + h * k


def _euler(f: Callable, x, h: float):
    return _axpy(x, h, f(x))


def _rk4(f: Callable, x, h: float):
    k1 = f(x)
    k2 = f(_axpy(x, 0.5 * h, k1))
    k3 = f(_axpy(x, 0.5 * h, k2))
    k4 = f(_axpy(x, h, k3))
    return _axpy(x, h / 6.0, k1 + 2.0 * (k2 + k3) + k4)


INTEGRATORS: dict[str, Callable] = {"euler": _euler, "rk4": _rk4}


def _all_finite(a) -> bool:
    """NaN/inf anywhere makes the sum non-finite; one reduction is much cheaper than an
    elementwise ``isfinite`` mask. A finite array whose sum overflows gets the exact test."""
    if isinstance(a, torch.Tensor):
        return bool(torch.isfinite(a.sum())) or bool(torch.isfinite(a).all())
    with np.errstate(over="ignore", invalid="ignore"):
        total = a.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(a).all())


def _used_arguments(fn: Callable, n: int) -> dict[str, bool]:
    """Which trig inputs a generated ``accel(s.., c.., w.., u.., K)`` reads: one link never
    needs ``cos q`` (its ``M`` is constant), so the fused rollout skips computing it."""
    names = set()
    for ins in dis.get_instructions(fn):
        if ins.opname.startswith("LOAD_FAST"):
            names.update(ins.argval if isinstance(ins.argval, tuple) else (ins.argval,))
    return {"cos": any(f"c{i + 1}" in names for i in range(n))}


def _largest(a) -> float:
    """``max |a|`` of an array, tensor, sequence of floats or ``None`` (0), for error messages."""
    if a is None:
        return 0.0
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    a = np.abs(np.asarray(a, dtype=np.float64))
    return float(a.max()) if a.size else 0.0


#: Chains up to this many links use the expanded form (every entry of ``M^{-1} f`` printed as
#: straight-line code) for the torch/numpy paths; longer ones the structured form (tables and
#: an O(n) sweep), whose cost and derivation time grow like the physics instead of like the
#: expanded expressions (n^2.3 per step, 824 KB of source at n = 32). One state and CPU
#: batches without gradients use the compiled sweep (:mod:`lyagym.envs.native`) at every n
#: when a C compiler is available.
EXPANDED_MAX_LINKS = 4
#: From this many states on, a CPU batch of the expanded form runs in vectorised torch
#: rather than in the compiled per-state loop (see ``_native_ok``).
TORCH_BATCH_MIN = 8192


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _compiling() -> bool:
    """Inside ``torch.compile`` tracing: skip data-dependent checks (they would break the graph)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


#: Accepted range of every mass (kg) and rod length (m), and the upper end of ``gravity`` and
#: ``damping``: twelve orders of magnitude around a unit pendulum. Outside it the parameter
#: constants (products of up to four masses and lengths) leave float64's range or lose the
#: mass matrix to rounding (``masses=[1e308, 1e-308]``), and the physics returns NaN.
PARAMETER_RANGE = (1e-6, 1e6)


def _real_array(value, name: str) -> np.ndarray:
    """``value`` as float64, refusing complex input (``np.asarray(.., float64)`` would drop the
    imaginary part with only a warning)."""
    if np.iscomplexobj(value) or isinstance(value, complex):
        raise TypeError(f"{name} must be real, got a complex value")
    try:
        return np.asarray(value, dtype=np.float64)
    except TypeError:
        raise TypeError(f"{name} must be an array of real numbers, got {type(value).__name__}") from None


def _joint_index(j) -> int:
    """An int or numpy integer (``operator.index``); a float such as 0.7, or a bool, is refused
    rather than truncated to a joint."""
    if isinstance(j, (bool, np.bool_)):
        raise TypeError(f"{j!r} is not a joint index")
    return operator.index(j)


def _per_link(value, n: int, name: str) -> np.ndarray:
    try:
        arr = _real_array(value, name)
    except ValueError:  # ragged or non-numeric
        raise ValueError(f"{name} must be a scalar or a sequence of n_links={n} numbers, got {value!r}") from None
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or a sequence of n_links={n} values, got shape {arr.shape}")
    low, high = PARAMETER_RANGE
    if not np.all((arr >= low) & (arr <= high)):  # also false for NaN
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {arr.tolist()}")
    arr = arr.copy()
    arr.setflags(write=False)  # the compiled coefficients were computed from these values
    return arr


class PendulumDynamics:
    """Planar n-link pendulum (point masses on massless rods), absolute angles from the
    downward vertical; state ``x = (q_1..q_n, qdot_1..qdot_n)``, action ``u`` = torques of
    the actuated joints (joint 0 is the pivot; a torque at joint ``j`` acts ``+u`` on link
    ``j`` and ``-u`` on link ``j - 1``).

    Args:
        n_links: number of links ``n >= 1``.
        masses: bob masses, scalar or ``(n,)``; default 1.
        lengths: rod lengths, scalar or ``(n,)``; default ``1 / n`` each (total length 1).
        gravity: ``g`` (m/s^2), ``>= 0``.
        damping: friction coefficient ``b >= 0``.
        damping_mode: ``"absolute"`` (``-b qdot_i`` on every link, the paper's data) or
            ``"joint"`` (``-b (qdot_i - qdot_{i-1})`` at every joint, with reaction).
        actuated: joint indices with motors; ``None`` = all, ``()`` = autonomous,
            ``(1,)`` on two links = acrobot.
        dt: time step of ``step``/``rollout``/``simulate`` (seconds).

    Torch calls follow the input tensor's device and dtype; ``device``/``dtype`` (default
    cpu/float32, changed with :meth:`to`) are what :func:`check_world_model` and callers
    creating fresh tensors should use.
    """

    def __init__(
        self,
        n_links: int = 2,
        masses: float | Sequence[float] | None = None,
        lengths: float | Sequence[float] | None = None,
        gravity: float = 9.81,
        damping: float = 0.3,
        damping_mode: str = "absolute",
        actuated: Sequence[int] | None = None,
        dt: float = 0.01,
    ) -> None:
        if isinstance(n_links, bool) or not isinstance(n_links, (int, np.integer)) or n_links < 1:
            raise ValueError(f"n_links must be an int >= 1, got {n_links!r}")
        n = int(n_links)
        self.n_links = n
        self.masses = _per_link(1.0 if masses is None else masses, n, "masses")
        self.lengths = _per_link(1.0 / n if lengths is None else lengths, n, "lengths")
        for name, value in (("gravity", gravity), ("damping", damping)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not 0 <= value <= PARAMETER_RANGE[1]:
                raise ValueError(f"{name} must be a number in [0, {PARAMETER_RANGE[1]:g}], got {value!r}")
        self.gravity = float(gravity)
        self.damping = float(damping)
        if damping_mode not in DAMPING_MODES:
            raise ValueError(f"damping_mode must be one of {DAMPING_MODES}, got {damping_mode!r}")
        self.damping_mode = damping_mode
        if actuated is None:
            actuated = tuple(range(n))
        try:
            act = tuple(_joint_index(j) for j in actuated)
        except TypeError:
            raise ValueError(f"actuated must be None or a sequence of int joint indices, got {actuated!r}") from None
        if any(j < 0 or j >= n for j in act) or len(set(act)) != len(act):
            raise ValueError(f"actuated must hold distinct joint indices in [0, {n - 1}], got {act}")
        self.actuated = tuple(sorted(act))
        if not isinstance(dt, (int, float, np.floating)) or not math.isfinite(dt) or dt <= 0:
            raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
        self.dt = float(dt)
        self.state_dim = 2 * n
        self.action_dim = len(self.actuated)
        self._device = torch.device("cpu")
        self._dtype = torch.float32

        self._zero_u = (0.0,) * self.action_dim
        self._K_tensors: dict = {}
        self._tables: ChainTables | None = None
        self._kernel: native.ChainKernel | None = None
        #: ``"expanded"`` or ``"structured"``: which form the numpy/torch paths evaluate.
        self.form = "expanded" if n <= EXPANDED_MAX_LINKS else "structured"
        self._kernel_pending = native.available()
        if self.form == "structured":
            try:
                self._load_tables()
                self._K = ()  # the expanded form's coefficients; the tables hold the parameters here
                self._native()  # now, not first inside a torch.compile trace
            except StructureError:  # not expected for this model; the expanded form always works
                self.form = "expanded"
        if self.form == "expanded":
            compiled = compile_pendulum(n, damping_mode, self.actuated)
            self._K = compiled.constants(self.masses, self.lengths, self.gravity, self.damping)
            self._np_accel = compiled.numpy["accel"]
            self._np_energy = compiled.numpy["energy"]
            self._th_accel = compiled.torch["accel"]
            self._th_energy = compiled.torch["energy"]
            self._th_accel_d = compiled.torch["accel_d"]
            self._py_accel = compiled.scalar["accel_f"]
            self._py_steps = {"rk4": compiled.scalar["step_rk4"], "euler": compiled.scalar["step_euler"]}
            self._accel_uses = _used_arguments(self._th_accel_d, n)
        # the compiled sweep for the expanded form is loaded on the first call that can use it
        # (its tables cost one more derivation when not cached)

    def _load_tables(self) -> ChainTables:
        if self._tables is None:
            data = load_structure(self.n_links, self.damping_mode, self.actuated)
            self._tables = ChainTables(data, self.masses, self.lengths, self.gravity, self.damping)
        return self._tables

    def _native(self) -> native.ChainKernel | None:
        """The compiled sweep, or ``None`` (no compiler, ``LYAGYM_NATIVE=0``, not a chain)."""
        if self._kernel_pending:
            self._kernel_pending = False
            try:
                self._kernel = native.kernel(self._load_tables())
            except StructureError:
                self._kernel = None
        return self._kernel

    def _native_ok(self, x, u) -> bool:
        """Whether a torch batch takes the compiled sweep: CPU, float32/64, no autograd, and
        not where vectorised torch is faster (the expanded form of one link, or of up to
        EXPANDED_MAX_LINKS links from TORCH_BATCH_MIN states on: SIMD sin/cos across the
        batch beat the per-state C loop, e.g. 0.40 vs 0.71 us per state-step at n = 4, 64k).
        Under ``torch.compile`` the expanded form is traced and fused; the structured form
        calls the sweep outside the graph, so compile time stays that of reward and
        observation at any n."""
        if x.device.type != "cpu" or x.dtype not in _NUMPY_DTYPES:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or (u is not None and u.requires_grad)):
            return False
        if self.form == "expanded" and (_compiling() or self.n_links == 1 or x.numel() >= TORCH_BATCH_MIN * self.state_dim):
            return False
        return self._native() is not None

    @torch.compiler.disable
    def _native_tensor_step(self, x: torch.Tensor, u: torch.Tensor | None, h: float, substeps: int, method: str) -> torch.Tensor:
        out = self._native_batch(x.detach().numpy(), None if u is None else u.detach().numpy(), h, substeps, method)
        # the same (..., 2n) view of a (2n, ...) buffer as the torch path returns; the
        # transpose and the cast back to x's dtype in one pass
        X = torch.from_numpy(np.ascontiguousarray(np.moveaxis(out, -1, 0), dtype=_NUMPY_DTYPES[x.dtype]))
        return X.movedim(0, -1)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "PendulumDynamics":
        """Set the default torch device/dtype (the physics itself has no tensors); returns self."""
        if device is not None:
            self._device = torch.device(device)
        if dtype is not None:
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
            self._dtype = dtype
        if self._tables is not None:  # the tables' tensors now, not first inside a torch.compile trace
            self._tables._arrays(torch.empty(0, dtype=self._dtype, device=self._device))
        return self

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments reproducing this model (JSON-serialisable)."""
        return {
            "n_links": self.n_links,
            "masses": self.masses.tolist(),
            "lengths": self.lengths.tolist(),
            "gravity": self.gravity,
            "damping": self.damping,
            "damping_mode": self.damping_mode,
            "actuated": list(self.actuated),
            "dt": self.dt,
        }

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the constructor arguments and the default device/dtype only: the compiled
        equations are generated functions without an importable module, so they are rebuilt
        on load (from the in-process memo or the derivation cache, no sympy when cached)."""
        return {"config": self.config(), "device": str(self._device), "dtype": self._dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        PendulumDynamics.__init__(self, **state["config"])
        self.to(state["device"], state["dtype"])

    def __repr__(self) -> str:
        return (
            f"PendulumDynamics(n_links={self.n_links}, masses={self.masses.tolist()}, lengths={self.lengths.tolist()}, "
            f"gravity={self.gravity}, damping={self.damping}, damping_mode={self.damping_mode!r}, "
            f"actuated={self.actuated}, dt={self.dt})"
        )

    # ------------------------------------------------------------------ validation
    def _check_x(self, x, name: str = "x"):
        if isinstance(x, torch.Tensor):
            if x.ndim < 1 or x.shape[-1] != self.state_dim:
                raise ValueError(f"{name} must have shape (..., state_dim={self.state_dim}), got {tuple(x.shape)}")
            if not x.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
            # a finiteness check on an accelerator would sync the host every step
            if x.device.type == "cpu" and not _compiling() and not _all_finite(x):
                raise ValueError(f"{name} contains NaN or inf")
            return x
        arr = _real_array(x, name)
        if arr.ndim < 1 or arr.shape[-1] != self.state_dim:
            raise ValueError(f"{name} must have shape (..., state_dim={self.state_dim}), got {arr.shape}")
        if not _all_finite(arr):
            raise ValueError(f"{name} contains NaN or inf")
        return arr

    def _check_u(self, u, x, name: str = "u"):
        """``None`` -> zero torques; otherwise ``(..., action_dim)`` broadcastable to ``x``'s batch."""
        if u is None:
            return None
        is_torch = isinstance(x, torch.Tensor)
        if u.is_complex() if isinstance(u, torch.Tensor) else np.iscomplexobj(u):
            raise TypeError(f"{name} must be real, got a complex value")
        if is_torch:
            u = torch.as_tensor(u, dtype=x.dtype, device=x.device)
        else:
            u = _real_array(u, name)
        if self.action_dim == 0:
            if u.numel() if is_torch else u.size:
                raise ValueError(f"{name} must be None (or empty): this model has no actuated joints, got shape {tuple(u.shape)}")
            return None
        if u.ndim < 1 or u.shape[-1] != self.action_dim:
            raise ValueError(f"{name} must have shape (..., action_dim={self.action_dim}), got {tuple(u.shape)}")
        try:
            (torch.broadcast_shapes if is_torch else np.broadcast_shapes)(tuple(u.shape[:-1]), tuple(x.shape[:-1]))
        except (ValueError, RuntimeError):
            raise ValueError(f"{name} batch shape {tuple(u.shape[:-1])} does not broadcast with x batch shape {tuple(x.shape[:-1])}") from None
        if is_torch:
            if u.device.type == "cpu" and not _compiling() and not _all_finite(u):
                raise ValueError(f"{name} contains NaN or inf")
        elif not _all_finite(u):
            raise ValueError(f"{name} contains NaN or inf")
        return u

    def _check_method(self, method: str, dt, substeps: int) -> float:
        if method not in INTEGRATORS:
            raise ValueError(f"method must be one of {sorted(INTEGRATORS)}, got {method!r}")
        if isinstance(substeps, bool) or not isinstance(substeps, (int, np.integer)) or substeps < 1:
            raise ValueError(f"substeps must be an int >= 1, got {substeps!r}")
        h = self.dt if dt is None else dt
        if not isinstance(h, (int, float, np.floating)) or not math.isfinite(h) or h <= 0:
            raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
        return float(h) / int(substeps)

    def _check_result(self, out, x, u, what: str = "step"):
        """``out`` if finite, else the error that names the overflow: every input was finite
        (checked on the way in), so a NaN or inf here means the dynamics left the dtype's range.
        Skipped where the input check is (accelerator tensors, ``torch.compile`` tracing)."""
        if isinstance(out, torch.Tensor):
            if out.device.type != "cpu" or _compiling() or _all_finite(out):
                return out
        elif _all_finite(out):
            return out
        self._overflow(x, u, what)

    def _overflow(self, x, u, what: str):
        dtype = str(x.dtype).replace("torch.", "")
        raise ValueError(
            f"x: the {what} overflowed {dtype} from finite inputs (largest |x| = {_largest(x):.3g}, |u| = {_largest(u):.3g}): "
            f"the state is outside what {dtype} can integrate; use smaller states, float64, or a smaller dt / more "
            "substeps if the motion diverged"
        )

    # ------------------------------------------------------------------ right-hand sides
    def _rhs_numpy_T(self, X: np.ndarray, U: tuple) -> np.ndarray:
        """``X: (2n, *batch)`` -> ``(2n, *batch)``; ``U``: per-joint arrays or floats."""
        n = self.n_links
        q = X[:n]
        if self.form == "structured":
            acc = self._tables.accel(np.sin(q), np.cos(q), X[n:], None if U is self._zero_u else np.stack(np.broadcast_arrays(*U)))
        else:
            acc = self._np_accel(*np.sin(q), *np.cos(q), *X[n:], *U, self._K)
        out = np.empty_like(X)
        out[:n] = X[n:]
        for i, a in enumerate(acc):
            out[n + i] = a
        return out

    def _u_rows_numpy(self, u, batch_shape) -> tuple:
        if u is None:
            return self._zero_u
        u = np.broadcast_to(u, (*batch_shape, self.action_dim))
        return tuple(np.moveaxis(u, -1, 0))

    def _rhs_torch_T(self, X: torch.Tensor, U: tuple) -> torch.Tensor:
        """``X: (2n, *batch)`` contiguous -> ``(2n, *batch)``. Rows of a transposed state are
        contiguous, which makes every elementwise kernel several times faster than on the
        strided columns of a ``(batch, 2n)`` tensor."""
        n = self.n_links
        q, w = X[:n], X[n:]
        if self.form == "structured":
            acc = self._tables.accel(torch.sin(q), torch.cos(q), w, None if U is self._zero_u else torch.stack(U, 0))
            return torch.cat((w, acc), 0)
        acc = self._th_accel(*torch.sin(q).unbind(0), *torch.cos(q).unbind(0), *w.unbind(0), *U, self._K)
        return torch.stack((*w.unbind(0), *acc), dim=0)

    def _u_rows_torch(self, u, batch_shape) -> tuple:
        if u is None:
            return self._zero_u
        return tuple(u.expand(*batch_shape, self.action_dim).movedim(-1, 0).contiguous().unbind(0))

    # ------------------------------------------------------------------ public physics
    def derivative(self, x, u=None):
        """Time derivative ``xdot = (qdot, qddot)``.

        Args:
            x: ``(..., 2n)`` numpy array or torch tensor.
            u: ``(..., action_dim)`` torques (broadcast over the batch) or ``None`` (zero).

        Returns:
            ``(..., 2n)``, same type (and for torch same device/dtype) as ``x``.
        """
        x = self._check_x(x)
        u = self._check_u(u, x)
        if isinstance(x, torch.Tensor):
            X = x.movedim(-1, 0).contiguous()
            return self._check_result(self._rhs_torch_T(X, self._u_rows_torch(u, x.shape[:-1])).movedim(0, -1), x, u, "derivative")
        X = np.ascontiguousarray(np.moveaxis(x, -1, 0))
        return self._check_result(np.moveaxis(self._rhs_numpy_T(X, self._u_rows_numpy(u, x.shape[:-1])), 0, -1), x, u, "derivative")

    def step(self, x, u=None, dt: float | None = None, method: str = "rk4", substeps: int = 1):
        """Advance ``x`` by ``dt`` (default ``self.dt``) with zero-order-hold torques ``u``.

        Args:
            x: ``(..., 2n)`` numpy array or torch tensor (``(batch, 2n)`` for ``WorldModel`` use).
            u: ``(..., action_dim)`` or ``None``.
            dt: step length; ``None`` means ``self.dt``.
            method: ``"rk4"`` or ``"euler"`` (see :data:`INTEGRATORS`).
            substeps: integrator steps of ``dt / substeps`` each.

        Returns:
            the next state, same shape and type as ``x``; differentiable for torch. For
            torch the result is a ``(..., 2n)`` view of a ``(2n, ...)`` buffer (stride 1
            along the batch): passing it back into ``step`` costs no copy, and under
            ``torch.compile`` this layout vectorises (the n = 2, 64k-batch RK4 step runs
            ~10x faster than from a row-major ``(batch, 2n)`` input). Call
            ``.contiguous()`` if you need row-major memory.
        """
        h = self._check_method(method, dt, substeps)
        x = self._check_x(x)
        u = self._check_u(u, x)
        integrate = INTEGRATORS[method]
        if isinstance(x, torch.Tensor) and self._native_ok(x, u):
            return self._check_result(self._native_tensor_step(x, u, h, substeps, method), x, u)
        if not isinstance(x, torch.Tensor) and self._native() is not None:
            return self._check_result(self._native_batch(x, u, h, substeps, method), x, u)
        if isinstance(x, torch.Tensor):
            U = self._u_rows_torch(u, x.shape[:-1])
            f = lambda s: self._rhs_torch_T(s, U)  # noqa: E731
            X = x.movedim(-1, 0).contiguous()  # free when x is itself a transposed view
            for _ in range(substeps):
                X = integrate(f, X, h)
            # a (..., 2n) view of the (2n, ...) result: feeding it back into step() costs no
            # copy, so loops (rollouts, vector envs) stay in the fast layout
            return self._check_result(X.movedim(0, -1), x, u)
        X = np.ascontiguousarray(np.moveaxis(x, -1, 0))
        U = self._u_rows_numpy(u, x.shape[:-1])
        f = lambda s: self._rhs_numpy_T(s, U)  # noqa: E731
        for _ in range(substeps):
            X = integrate(f, X, h)
        return self._check_result(np.ascontiguousarray(np.moveaxis(X, 0, -1)), x, u)

    def _native_batch(self, x: np.ndarray, u: np.ndarray | None, h: float, substeps: int, method: str) -> np.ndarray:
        """``x: (..., 2n)`` float64 stepped by the compiled sweep (one C loop over the batch)."""
        batch_shape = x.shape[:-1]
        flat = x.reshape(-1, self.state_dim)
        if u is not None:
            u = np.broadcast_to(u, (*batch_shape, self.action_dim)).reshape(-1, self.action_dim)
        return self._kernel.step_batch(flat, u, h, substeps, method).reshape(x.shape)

    def rollout(self, x0: torch.Tensor, actions: torch.Tensor | int) -> torch.Tensor:
        """``WorldModel.rollout``: RK4 at ``self.dt`` under zero-order-hold torques.

        Args:
            x0: ``(batch, 2n)`` initial states.
            actions: ``(batch, horizon, action_dim)`` torques, or an int horizon when
                ``action_dim == 0``.

        Returns:
            ``(batch, horizon + 1, 2n)`` states, ``x0`` first; differentiable with respect to
            ``x0`` and ``actions``. Equal to ``horizon`` calls of :meth:`step`, but the inputs
            are validated once here and the loop runs on the transposed ``(2n, batch)``
            layout with no per-step checks, copies or layout changes (the planners' hot loop).
        """
        if not isinstance(x0, torch.Tensor):
            raise ValueError(f"x0 must be a torch.Tensor of shape (batch, {self.state_dim}), got {type(x0).__name__}")
        if x0.ndim != 2:
            raise ValueError(f"x0 must have shape (batch, state_dim={self.state_dim}), got {tuple(x0.shape)}")
        self._check_x(x0, "x0")
        batch, m = x0.shape[0], self.action_dim
        if isinstance(actions, torch.Tensor):
            if actions.ndim != 3 or actions.shape[0] != batch or actions.shape[2] != m:
                raise ValueError(f"actions must have shape (batch={batch}, horizon, action_dim={m}), got {tuple(actions.shape)}")
            actions = self._check_u(actions, x0[:, None, :], "actions")
            horizon = actions.shape[1] if actions is not None else 0
        elif isinstance(actions, (int, np.integer)) and not isinstance(actions, bool):
            if actions < 0:
                raise ValueError(f"horizon must be >= 0, got {actions}")
            if m != 0:
                raise ValueError(f"an int horizon is only valid for autonomous models; this model has action_dim={m}, "
                                 f"pass actions of shape (batch, horizon, {m})")
            horizon, actions = int(actions), None
        else:
            raise ValueError(f"actions must be a torch.Tensor of shape (batch, horizon, {m}) or an int horizon, got {type(actions).__name__}")
        if self._native_ok(x0, actions):
            states = [x0.detach().cpu().double().numpy()]
            steps = [None] * horizon if actions is None else actions.detach().cpu().double().numpy().transpose(1, 0, 2)
            for u in steps:
                states.append(self._kernel.step_batch(states[-1], u, self.dt))
            out = torch.from_numpy(np.stack(states, 1)).to(x0.dtype)
            return self._check_result(out, x0, actions, "rollout")
        if actions is None:  # autonomous (an int horizon, or an empty action tensor)
            U = [()] * horizon
        else:  # (horizon, action_dim, batch): each step's torques are contiguous rows
            U = [step.unbind(0) for step in actions.permute(1, 2, 0).contiguous().unbind(0)]
        # one check of the whole trajectory, after the loop: the loop itself stays sync-free
        return self._check_result(self._rollout_T(x0.t().contiguous(), U), x0, actions, "rollout")

    def _rollout_T(self, X: torch.Tensor, U: list) -> torch.Tensor:
        """The fused RK4 loop from ``X: (2n, batch)`` with ``U[k]``: the ``action_dim`` torque
        rows of step ``k``; returns ``(batch, len(U) + 1, 2n)``. Inputs are trusted (validated
        by :meth:`rollout`): no checks, no host sync, one output buffer.

        Angles ``Q`` and rates ``W`` are kept as separate ``(n, batch)`` blocks, so a stage's
        derivative ``(W_s, A_s)`` is never concatenated: the next stage state is
        ``(Q + c h W_s, W + c h A_s)``. At this size every tensor op costs mostly dispatch, so
        the loop is written to issue as few as possible."""
        n, h = self.n_links, self.dt
        if self.form == "structured":
            tables = self._tables

            def acceleration(Qs, Ws, u):  # (n, batch) blocks -> (n, batch) angular accelerations
                return tables.accel(torch.sin(Qs), torch.cos(Qs), Ws, torch.stack(u, 0) if len(u) else None)
        else:
            accel = self._th_accel_d
            K = self._torch_constants(X.dtype, X.device)
            # sin/cos of the angles and of all their differences q_i - q_j (``accel_d``'s pair
            # order: offset d = j - i, then i), two transcendental calls per stage for any n
            offsets = range(1, n)
            want_cos = self._accel_uses["cos"] or n > 1  # one link needs no cosine at all

            def acceleration(Qs, Ws, u):  # (n, batch) blocks -> (n, batch) angular accelerations
                angles = torch.cat((Qs, *(Qs[: n - d] - Qs[d:] for d in offsets)), 0) if n > 1 else Qs
                sin = torch.sin(angles).unbind(0)
                cos = torch.cos(angles).unbind(0) if want_cos else (None,) * n
                pairs = len(sin) - n
                acc = accel(*sin[:n], *cos[:n], *sin[n:], *cos[n:n + pairs], *Ws.unbind(0), *u, K)
                return acc[0].unsqueeze(0) if n == 1 else torch.stack(acc, 0)

        grad = torch.is_grad_enabled() and (X.requires_grad or any(r.requires_grad for u in U[:1] for r in u))
        if grad:
            states = [X]
        else:
            out = torch.empty((len(U) + 1, *X.shape), dtype=X.dtype, device=X.device)
            out[0] = X
        Q, W = X[:n], X[n:]
        h2, h6 = 0.5 * h, h / 6.0
        for k, u in enumerate(U):
            A1 = acceleration(Q, W, u)  # stage velocities are the stage states' rates: W_1 = W
            W2 = torch.add(W, A1, alpha=h2)
            A2 = acceleration(torch.add(Q, W, alpha=h2), W2, u)
            W3 = torch.add(W, A2, alpha=h2)
            A3 = acceleration(torch.add(Q, W2, alpha=h2), W3, u)
            W4 = torch.add(W, A3, alpha=h)
            A4 = acceleration(torch.add(Q, W3, alpha=h), W4, u)
            # x + h/6 (k1 + 2 k2 + 2 k3 + k4), per block; written straight into the output
            # buffer unless autograd needs every state as a tensor of its own
            dQ = torch.add(W, torch.add(W2, W3), alpha=2.0).add_(W4)
            dW = torch.add(A1, torch.add(A2, A3), alpha=2.0).add_(A4)
            if grad:
                Q, W = torch.add(Q, dQ, alpha=h6), torch.add(W, dW, alpha=h6)
                states.append(torch.cat((Q, W), 0))
            else:
                Q = torch.add(Q, dQ, alpha=h6, out=out[k + 1, :n])
                W = torch.add(W, dW, alpha=h6, out=out[k + 1, n:])
        if grad:
            out = torch.stack(states, 0)
        return out.permute(2, 0, 1)

    def _torch_constants(self, dtype: torch.dtype, device: torch.device) -> tuple:
        """``K`` as 0-dim tensors of the state's dtype/device: multiplying by one costs about
        half of multiplying by a Python float (no scalar wrapping and casting per op)."""
        key = (dtype, device)
        cached = self._K_tensors.get(key)
        if cached is None:
            with torch.inference_mode(False):  # plain tensors: usable with and without autograd
                cached = tuple(torch.tensor(k, dtype=dtype, device=device) for k in self._K)
            self._K_tensors[key] = cached
        return cached

    def step_single(self, x, u=None, dt: float | None = None, method: str = "rk4", substeps: int = 1) -> np.ndarray:
        """Fast path for ONE state (the single environment): the compiled sweep when a C
        compiler is available, else the expanded plain-float code (up to
        ``EXPANDED_MAX_LINKS`` links) or the numpy sweep.

        Args:
            x: ``(2n,)`` array or sequence.
            u: ``(action_dim,)`` array or sequence, or ``None``.

        Returns:
            ``(2n,)`` float64 array.
        """
        xs = x.tolist() if isinstance(x, np.ndarray) else list(x)
        if len(xs) != self.state_dim or (xs and isinstance(xs[0], list)):
            raise ValueError(f"x must have shape ({self.state_dim},), got {np.shape(x)}")
        if u is None:
            us = self._zero_u
        else:
            us = u.tolist() if isinstance(u, np.ndarray) else list(u)
            if len(us) != self.action_dim or (us and isinstance(us[0], list)):
                raise ValueError(f"u must have shape ({self.action_dim},), got {np.shape(u)}")
            if not math.isfinite(sum(us)) and not all(map(math.isfinite, us)):
                raise ValueError(f"u contains NaN or inf: {us}")
        if not math.isfinite(sum(xs)) and not all(map(math.isfinite, xs)):
            raise ValueError(f"x contains NaN or inf: {xs}")
        try:
            kernel = self._native()
            if kernel is not None:
                fast = dt is None and substeps == 1 and method == "rk4"
                h = self.dt if fast else self._check_method(method, dt, substeps)
                xs = kernel.step_list(xs, us, h, substeps, method)
            elif self.form == "structured":
                h = self._check_method(method, dt, substeps)
                X = np.array(xs)[:, None]
                U = tuple(np.array([v]) for v in us) if u is not None else self._zero_u
                for _ in range(substeps):
                    X = INTEGRATORS[method](lambda s: self._rhs_numpy_T(s, U), X, h)
                xs = X[:, 0].tolist()
            elif dt is None and substeps == 1 and method == "rk4":
                xs = self._py_steps["rk4"](xs, us, self.dt, self._K)
            else:
                h = self._check_method(method, dt, substeps)
                stepper = self._py_steps[method]
                for _ in range(substeps):
                    xs = stepper(xs, us, h, self._K)
            finite = math.isfinite(sum(xs)) or all(map(math.isfinite, xs))
        except (OverflowError, ValueError) as e:  # float ** overflow, math.sin(inf) in a later stage
            if "dt" in str(e) or "substeps" in str(e) or "method" in str(e):
                raise
            finite = False
        if not finite:
            self._overflow(np.array(x, dtype=np.float64), us, "step")
        return np.array(xs)

    def _step_floats(self, xs: list, us: list) -> list:
        """One default step (RK4, ``dt``) of a list of finite floats under finite torques, as
        a list: the single env's hot path, whose inputs are already checked (``reset``
        validated the state, every step checks the result, actions are clipped and finite)."""
        kernel = self._native()
        if kernel is not None:
            out = kernel.step_list(xs, us, self.dt)
        elif self.form == "expanded":
            try:
                out = list(self._py_steps["rk4"](xs, us, self.dt, self._K))
            except (OverflowError, ValueError):  # float ** overflow, math.sin(inf) in a later stage
                out = [math.nan]
        else:
            return self.step_single(xs, us).tolist()
        if not math.isfinite(sum(out)) and not all(map(math.isfinite, out)):
            self._overflow(np.array(xs), us, "step")
        return out

    def energy(self, x):
        """Total energy, kinetic + potential (potential zero at the pivot's height, so the
        pendulum hanging at rest has ``-g * sum_i m_i * (l_1 + .. + l_i)``).

        Args:
            x: ``(..., 2n)`` numpy array or torch tensor.

        Returns:
            ``(...)`` of the same type.
        """
        x = self._check_x(x)
        if self.form == "structured":
            X = x.movedim(-1, 0) if isinstance(x, torch.Tensor) else np.moveaxis(x, -1, 0)
            q = X[: self.n_links]
            sin, cos = (torch.sin, torch.cos) if isinstance(x, torch.Tensor) else (np.sin, np.cos)
            e = self._tables.energy(sin(q), cos(q), X[self.n_links :])
            return self._check_result(e if isinstance(x, torch.Tensor) or np.ndim(e) else np.asarray(e, dtype=np.float64), x, None, "energy")
        if isinstance(x, torch.Tensor):
            q, w = x[..., : self.n_links], x[..., self.n_links :]
            return self._check_result(self._th_energy(*torch.sin(q).unbind(-1), *torch.cos(q).unbind(-1), *w.unbind(-1), self._K), x, None, "energy")
        X = np.moveaxis(x, -1, 0)
        q = X[: self.n_links]
        e = self._np_energy(*np.sin(q), *np.cos(q), *X[self.n_links :], self._K)
        return self._check_result(np.asarray(e, dtype=np.float64) if np.ndim(e) == 0 else e, x, None, "energy")

    def positions(self, x):
        """Positions of the link ends (the bobs), pivot at the origin, ``x`` right, ``y`` up.

        Args:
            x: ``(..., 2n)`` numpy array or torch tensor.

        Returns:
            ``(..., n, 2)`` of the same type.
        """
        x = self._check_x(x)
        n = self.n_links
        q = x[..., :n]
        if isinstance(x, torch.Tensor):
            lengths = torch.tensor(self.lengths.tolist(), dtype=x.dtype, device=x.device)
            return torch.stack((torch.cumsum(lengths * torch.sin(q), -1), torch.cumsum(-lengths * torch.cos(q), -1)), -1)
        return np.stack((np.cumsum(self.lengths * np.sin(q), -1), np.cumsum(-self.lengths * np.cos(q), -1)), -1)

    # ------------------------------------------------------------------ evaluation
    def simulate(self, x0, n_steps: int, dt: float | None = None, method: str = "rk4", u=None) -> np.ndarray:
        """Batched numpy float64 trajectories with constant torques (the evaluation reference:
        the paper uses 1000 initial states, 999 RK4 steps of ``h = 0.01``).

        Args:
            x0: ``(batch, 2n)`` (or ``(2n,)``) initial states.
            n_steps: number of steps.
            dt: step length, default ``self.dt``.
            method: ``"rk4"`` or ``"euler"``.
            u: ``(batch, action_dim)``/``(action_dim,)`` torques held constant, or ``None``.

        Returns:
            ``(batch, n_steps + 1, 2n)`` (``(n_steps + 1, 2n)`` for a single ``x0``), ``x0`` first.
        """
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 0:
            raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
        h = self._check_method(method, dt, 1)
        if isinstance(x0, torch.Tensor):
            x0 = x0.detach().cpu().numpy()
        x0 = self._check_x(x0, "x0")
        single = x0.ndim == 1
        X0 = np.atleast_2d(x0)
        if X0.ndim != 2:
            raise ValueError(f"x0 must have shape (batch, {self.state_dim}) or ({self.state_dim},), got {x0.shape}")
        u = self._check_u(u, X0)
        U = tuple(np.ascontiguousarray(r) for r in self._u_rows_numpy(u, X0.shape[:-1])) if u is not None else self._zero_u
        integrate = INTEGRATORS[method]
        traj = np.empty((X0.shape[0], n_steps + 1, self.state_dim))
        traj[:, 0] = X0
        kernel = self._native()
        if kernel is not None:
            u_rows = None if u is None else np.broadcast_to(u, (X0.shape[0], self.action_dim))
            for k in range(n_steps):
                traj[:, k + 1] = kernel.step_batch(traj[:, k], u_rows, h, 1, method)
            self._check_result(traj, X0, u, "simulation")
            return traj[0] if single else traj
        X = np.ascontiguousarray(X0.T)  # (2n, batch): contiguous rows for the generated code
        f = lambda s: self._rhs_numpy_T(s, U)  # noqa: E731
        for k in range(n_steps):
            X = integrate(f, X, h)
            traj[:, k + 1] = X.T
        self._check_result(traj, X0, u, "simulation")
        return traj[0] if single else traj

    def reference_solve(self, x0, times, u=None, *, rtol: float = 1e-10, atol: float = 1e-10) -> np.ndarray:
        """High-accuracy reference by ``scipy.integrate.solve_ivp`` (DOP853), one state at a time.

        Args:
            x0: ``(2n,)`` or ``(batch, 2n)`` initial states.
            times: an int ``n_steps`` (times ``0, dt, .., n_steps * dt``) or an increasing
                1-D array of output times starting at 0.
            u: constant torques ``(action_dim,)`` or ``(batch, action_dim)``, or ``None``.

        Returns:
            ``(len(times), 2n)`` or ``(batch, len(times), 2n)``.
        """
        from scipy.integrate import solve_ivp

        if isinstance(times, (int, np.integer)) and not isinstance(times, bool):
            if times < 0:
                raise ValueError(f"times (n_steps) must be >= 0, got {times}")
            t_eval = self.dt * np.arange(int(times) + 1)
        else:
            t_eval = np.asarray(times, dtype=np.float64)
            if t_eval.ndim != 1 or t_eval.size == 0 or not np.all(np.isfinite(t_eval)) or np.any(np.diff(t_eval) <= 0) or t_eval[0] < 0:
                raise ValueError("times must be an int n_steps or a finite, strictly increasing 1-D array of times >= 0")
        x0 = self._check_x(x0, "x0")
        single = x0.ndim == 1
        X0 = np.atleast_2d(x0)
        u = self._check_u(u, X0)
        U = np.zeros((X0.shape[0], self.action_dim)) if u is None else np.broadcast_to(u, (X0.shape[0], self.action_dim))
        n = self.n_links
        if self.form == "structured":
            tables = self._tables

            def accel(*args):  # q.., w.., u.., K -> qddot, through the (n, 1) numpy sweep
                y = np.array(args[: 2 * n])[:, None]
                uu = np.array(args[2 * n : 2 * n + self.action_dim])[:, None] if self.action_dim else None
                return tables.accel(np.sin(y[:n]), np.cos(y[:n]), y[n:], uu)[:, 0].tolist()
        else:
            accel = self._py_accel
        out = np.empty((X0.shape[0], t_eval.size, self.state_dim))
        for b, (x_init, ub) in enumerate(zip(X0, U)):
            us = ub.tolist()

            def f(t, y, us=us):
                ys = y.tolist()
                return np.array(ys[n:] + list(accel(*ys, *us, self._K)))

            sol = solve_ivp(f, (0.0, float(t_eval[-1])), x_init, method="DOP853", t_eval=t_eval, rtol=rtol, atol=atol)
            if not sol.success:
                raise RuntimeError(f"reference_solve failed for initial state {b}: {sol.message}")
            out[b] = sol.y.T
        return out[0] if single else out
