"""A world model's whole rollout as one compiled call (``lyagym_model_rollout`` in
``assets/mlp_kernel.c``, the library ``mlp_native`` builds and checks): certified models
(``StableDynamics`` / ``StableControlledDynamics``, alone or as ensemble members) and, while
torch runs several threads, ``SimpleDynamics`` models and members, whose field is ``fhat`` alone.

A planner's rollout of certified members is, per row and step, a handful of small networks and
a few dozen elementwise operations: ``fhat`` at the state and (for centering) at ``x_eq``, the
ICNN's forward pass in difference form against ``x_eq`` and its reverse pass for ``grad V``,
eq. 12's outer smoothed ReLU, the input's slack ``sigma(x, u)``, eq. 10's projection with its
rounding guard, the integrator, the rescale that keeps ``V`` decreasing in discrete time (a
second ICNN pass), and for an ensemble the variance head and its noise. Through torch each of
those is a library call on a ``(members, rows, width)`` tensor: ~150 calls a step, whose fixed
costs and memory traffic are most of a plan (1,000 rows x 30 Euler steps of 5 members: ~55 ms
through the stacked torch step). The kernel runs a tile of 64 rows (AVX-512; 16 at a tail)
through every step of the horizon with everything in registers and L1, and computes what
depends only on ``x_eq`` (the ICNN's reference pre-activations, ``fhat(x_eq, 0)``,
``grad g(x_eq)``, the rate's decay factors) once per lowering here.

The same function as the models' ``step`` to float rounding: the ICNN runs in difference form
at every integrator stage (torch: at the first, the later ones absolute then subtracted),
SiLU, the sigmoid and the sampling's exp and log come from Cephes' polynomials, sums run in
another order. Each lowering is checked once against the torch step on the rows it is first
asked to roll out (``CompiledRollout.check``); the caller keeps the torch path if they
disagree. Float32 on a CPU, ReLU or SiLU networks, the library of ``mlp_native`` built and
checked. Unlike that MLP kernel (many short calls between torch's own operations, used only
at one torch thread) a rollout is one long call, and it shares its tiles between as many
threads as torch runs, torch's own OpenMP workers where the library is built with OpenMP (see
the C source). One-off, two threads on a 2-core CPU, 1,000 rows x 30 steps: the certified
ensemble 9.1 ms against 41.5 ms through torch's two threads (5.8 ms on torch's workers instead
of threads of our own); the unconstrained PETS ensemble 4.5 ms against 8.9 ms through
``MLPField`` on torch's two (at one thread ``MLPField`` with the MLP kernel, 6.4-6.9 ms, keeps
that case).
"""

from __future__ import annotations

import ctypes
import math
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from . import mlp_native
from .native import native_enabled

__all__ = ["CompiledRollout", "compiled_rollout"]

_LONG, _PTR = ctypes.c_long, ctypes.c_void_p
_FHAT_MLP, _FHAT_DYNAMICS, _FHAT_CONTROL_AFFINE = 0, 1, 2
_CODES = {nn.ReLU: 1, nn.SiLU: 2}


def _function(lib: ctypes.CDLL):
    fn = lib.lyagym_model_rollout
    if fn.argtypes is None:
        fn.restype = ctypes.c_int
        fn.argtypes = [_PTR, _PTR, _PTR, _LONG, _LONG, _LONG, _LONG, _PTR, _LONG, _LONG, _PTR, _LONG, _LONG, _LONG,
                       _PTR, _LONG, _LONG, _LONG, _PTR, _LONG, _LONG, _LONG, _LONG]
    return fn


def _layers(net: nn.Module) -> list[tuple[int, int]] | None:
    """``[(index of a Linear, activation code after it), ...]`` (code 0 after the last), or ``None``
    where ``net`` is not ``Linear (activation Linear)*`` with activations the kernel runs."""
    if type(net) is not nn.Sequential or len(net) % 2 != 1:
        return None
    out = []
    for i in range(0, len(net), 2):
        if type(net[i]) is not nn.Linear:
            return None
        code = 0 if i == len(net) - 1 else _CODES.get(type(net[i + 1]))
        if code is None:
            return None
        out.append((i, code))
    return out


class _Packer:
    """Per-member float blocks, laid out once: ``add`` returns a piece's offset (in floats)."""

    def __init__(self, members: int) -> None:
        self.members, self.pieces, self.size = members, [], 0

    def add(self, piece: torch.Tensor) -> int:
        piece = piece.detach().to("cpu", torch.float32).reshape(self.members, -1)
        offset = self.size
        self.pieces.append(piece)
        self.size += piece.shape[1]
        return offset

    def net(self, net: nn.Sequential, tensors: Callable[[str], torch.Tensor], layers: list[tuple[int, int]]) -> list[int]:
        """The ``net`` words of the spec: layers, widths, activations, packed layer offsets."""
        widths = [net[layers[0][0]].in_features] + [net[i].out_features for i, _ in layers]
        offsets = []
        for i, _ in layers:
            w, b = tensors(f"{i}.weight"), tensors(f"{i}.bias") if net[i].bias is not None else None
            offsets.append(self.add(mlp_native.pack_layer(w, b)))
        return [len(layers), *widths, *[code for _, code in layers], *offsets]

    def block(self) -> torch.Tensor:
        return torch.cat(self.pieces, 1).contiguous()


def _certified_words(pack: _Packer, model: nn.Module, tensors: Callable[[str], torch.Tensor], E: int,
                     sigma_layers: list[tuple[int, int]]) -> list[int]:
    """The spec words of a certified model after ``fhat``'s: ``fhat(x_eq, 0)``, ``sigma``'s net,
    the ICNN (``W``, ``b``, ``U / d`` as the members' ``_split_theta``, ``_unflatten``; eq. 11's
    reference pass at ``x_eq``; the reverse pass's and the gradient's packed layers), ``x_eq``,
    ``grad g(x_eq)`` and the rate, everything packed into ``pack``."""
    from .icnn import _split_theta, _unflatten, _value_and_grad_plain, _z_shapes

    n, m, fhat, lyapunov = model.state_dim, model.action_dim, model.fhat, model.lyapunov
    x_eq = tensors("lyapunov.x_eq").reshape(E, 1, n)
    # fhat(x_eq, 0), as the members' step computes it on its extra row (once per lowering)
    names = [name for name, _ in fhat.named_parameters()] + [name for name, _ in fhat.named_buffers()]
    at_eq = torch.cat([x_eq, x_eq.new_zeros(E, 1, m)], -1)
    stacked = {name: tensors("fhat." + name) for name in names}
    fhat_eq = torch.func.vmap(lambda weights, xu: torch.func.functional_call(fhat, weights, (xu,)))(stacked, at_eq)
    words = [pack.add(fhat_eq)]
    words += pack.net(model.sigma_net, lambda name: tensors("sigma_net." + name), sigma_layers) if m else [0, 0]
    g = lyapunov.g
    W, b, U_raw = _split_theta(tensors("lyapunov.g.theta"), g.widths, g.in_dim)
    Ud = _unflatten(F.softplus(U_raw) * (1.0 / g.d), _z_shapes(g.widths))
    widths, H = list(g.widths), len(g.widths) - 1
    starts = [sum(widths[:i]) for i in range(H + 2)]
    fwd = [pack.add(mlp_native.pack_layer(W[:, :widths[0]], None))]
    for i in range(1, H + 1):
        fwd.append(pack.add(mlp_native.pack_layer(torch.cat([W[:, starts[i]:starts[i + 1]], Ud[i - 1]], -1), None)))
    pre = torch.baddbmm(b.unsqueeze(1), x_eq, W.transpose(1, 2)).squeeze(1)  # (E, sum widths)
    refs, zh = [], None
    for i in range(H):
        p = pre[:, starts[i]:starts[i + 1]]
        if i:
            p = p + torch.bmm(zh.unsqueeze(1), Ud[i - 1].transpose(1, 2)).squeeze(1)
        P = p.clamp(0.0, g.d)
        zh = (p - 0.5 * P) * P
        refs.append(p)
    words += [H, *widths, *fwd, pack.add(torch.cat(refs, -1)), pack.add(Ud[H - 1][:, 0])]
    words += [pack.add(mlp_native.pack_layer(Ud[i].transpose(-1, -2), None)) for i in range(H - 1)]
    rows = starts[H]
    words.append(pack.add(mlp_native.pack_layer(W[:, :rows].transpose(-1, -2), W[:, rows])))
    _, dg_eq = _value_and_grad_plain(x_eq, W, b, Ud, widths, g.d, True, False)
    words += [pack.add(x_eq), pack.add(dg_eq)]
    # The rate as the members' step computes it (StableDynamics._rate, lyapunov_rescale), in float32.
    h = float(model.dt)
    if model.alpha_bounds is None:
        alpha = model._alpha_init
        rate = torch.tensor([alpha, math.exp(-alpha * h), -math.expm1(-alpha * h) / alpha if alpha > 0 else h]).expand(E, 3)
    else:
        lo, hi = model.alpha_bounds
        alpha = torch.sigmoid(tensors("alpha_raw").reshape(E)).mul(hi - lo).add(lo)
        rate = torch.stack([alpha, torch.exp(alpha * -h), torch.expm1(alpha * -h).neg() / alpha], -1)
    words.append(pack.add(rate))
    return words


class CompiledRollout:
    """``E`` members (their stacked tensors; one for a single model) packed for the compiled rollout.

    Build with :meth:`lower`; call with feature-major rows. Holds no reference to the model:
    lower again when its weights change.
    """

    def __init__(self, spec: list[int], consts: list[float], weights: torch.Tensor) -> None:
        self._spec, self.weights = spec, weights  # weights: (members, floats), one block per member
        self._consts = (ctypes.c_double * len(consts))(*consts)
        #: whether the caller found it equal to the torch step (``None``: not checked yet)
        self.agrees: bool | None = None

    @staticmethod
    def usable(x0: torch.Tensor) -> bool:
        """Whether the kernel runs on ``x0``'s kind of tensor now: float32 on a CPU, kernels not
        switched off (``LYAGYM_NATIVE=0``), the library built and checked on this machine. At
        any torch thread count: the rollout shares its tiles between as many threads."""
        return x0.device.type == "cpu" and x0.dtype == torch.float32 and native_enabled() and mlp_native.available()

    @classmethod
    @torch.no_grad()
    def lower(cls, model: nn.Module, tensors: Callable[[str], torch.Tensor], members: int, *, head: nn.Sequential | None = None,
              head_tensors: Callable[[str], torch.Tensor] | None = None, feature_shift: torch.Tensor | None = None,
              feature_scale: torch.Tensor | None = None, max_logvar: torch.Tensor | None = None,
              min_logvar: torch.Tensor | None = None) -> "CompiledRollout | None":
        """Pack ``members`` copies of ``model``'s structure (a certified ``StableDynamics`` /
        ``StableControlledDynamics``, or a ``SimpleDynamics``, whose field is ``fhat`` alone;
        possibly on the meta device) whose tensors ``tensors(name)`` gives stacked, ``(members,
        ...)`` under the model's own names; with an ensemble's variance ``head`` (its tensors
        likewise) and its normalisation and log-variance bounds. ``None`` where the kernel does
        not run this structure (a warp or a learned quadratic in ``V``, an integrator other than
        Euler or RK4, a network other than ``Linear`` layers between ReLU or SiLU)."""
        from .dynamics_net import DynamicsNet

        fhat, certified = model.fhat, hasattr(model, "lyapunov")
        n, m = model.state_dim, model.action_dim
        if model.integrator not in ("euler", "rk4"):
            return None
        if certified and (model.lyapunov.warp is not None or model.lyapunov.L is not None
                          or not 1 <= len(model.lyapunov.g.widths) - 1 <= 63):
            return None
        dynamics = type(fhat) is DynamicsNet
        fhat_net = fhat.net if dynamics else fhat
        fhat_layers = _layers(fhat_net)
        sigma_layers = _layers(model.sigma_net) if certified and m else []
        head_layers = _layers(head) if head is not None else []
        if fhat_layers is None or sigma_layers is None or head_layers is None:
            return None
        E = members
        pack = _Packer(E)
        k = fhat.angle_dims if dynamics else 0
        kind = (_FHAT_CONTROL_AFFINE if fhat.control_affine else _FHAT_DYNAMICS) if dynamics else _FHAT_MLP
        prefix = "fhat.net." if dynamics else "fhat."
        spec = [n, m, k, kind, int(model.integrator == "rk4"), int(certified and model.keep_guarantee),
                int(certified and model.lyapunov.shift == "tangent"), int(not certified)]
        spec += pack.net(fhat_net, lambda name: tensors(prefix + name), fhat_layers)
        spec += [pack.add(tensors("fhat.input_scale")), pack.add(tensors("fhat.output_scale"))] if dynamics else [0, 0]
        if certified:
            spec += _certified_words(pack, model, tensors, E, sigma_layers)
        else:  # fhat(x_eq, 0), no sigma, no ICNN (one width), no references, no rate: the field is fhat alone
            spec += [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        if head is not None:
            # The head reads the raw features [sin q, cos q, x[k:], u]: (f - shift) / scale folded
            # into its first layer, and its output turned into (max_logvar - raw) / 2.
            first, last = head_layers[0][0], head_layers[-1][0]

            def folded(name: str) -> torch.Tensor:
                t = head_tensors(name).detach().to(torch.float32)
                index, kind_ = name.split(".")
                if int(index) == first:
                    if kind_ == "weight":
                        t = t / feature_scale
                    else:
                        t = t - ((head_tensors(f"{first}.weight") / feature_scale) * feature_shift).sum(-1)
                if int(index) == last:
                    t = -0.5 * t if kind_ == "weight" else -0.5 * (t - max_logvar.reshape(-1))
                return t

            spec += pack.net(head, folded, head_layers)
            spec.append(pack.add((0.5 * (max_logvar - min_logvar)).reshape(1, n).expand(E, n)))
        else:
            spec += [0, 0, 0]
        if certified:
            lyapunov = model.lyapunov
            consts = [float(model.dt), float(lyapunov.g.d), float(lyapunov.d), float(lyapunov.eps), float(getattr(model, "input_gain", 0.0))]
        else:
            consts = [float(model.dt), 0.0, 0.0, 0.0, 0.0]
        return cls(spec, consts, pack.block())

    def check(self, reference: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], x0: torch.Tensor,
              actions: torch.Tensor | None) -> bool:
        """Whether one step of the kernel equals ``reference(x0, actions)`` (the members' torch
        step: ``x0: (E, rows, n)``, ``actions: (E, rows, m)`` or ``None`` -> ``(E, rows, n)``) to
        float rounding; computed on the first call only. Warns where it does not (the caller
        then keeps its torch path)."""
        if self.agrees is None:
            expected = reference(x0, actions)
            got = self(x0, None if actions is None else actions.unsqueeze(2), 1)[:, :, 1]
            scale = max(1.0, float(expected.abs().max()))
            self.agrees = bool(torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale))
            if not self.agrees:
                warnings.warn("lyagym: the compiled rollout disagrees with the model's torch step here; rollouts use the torch path",
                              RuntimeWarning, stacklevel=4)
        return self.agrees

    def __call__(self, x0: torch.Tensor, actions: torch.Tensor | None, horizon: int, noise: torch.Tensor | None = None,
                 wrap: list[int] = ()) -> torch.Tensor:
        """Row ``j`` of member ``e`` through ``horizon`` of its steps.

        Args:
            x0: ``(E, rows, n)``; actions: ``(E, rows, horizon, m)`` or ``None`` (no input).
            noise: ``(horizon, E, n, rows)``, the standard normal draws already multiplied by
                ``target_scale * exp(min_logvar / 2)``, or ``None`` (no sampling).
            wrap: state entries wrapped to ``[-pi, pi)`` after every step (after the noise).

        Returns:
            ``(E, rows, horizon + 1, n)``, ``x0`` first.
        """
        E, rows, n = x0.shape
        lib = mlp_native._library()
        call = _function(lib)
        xs = x0.transpose(1, 2).contiguous()  # (E, n, rows)
        us = None if actions is None else actions.permute(0, 2, 3, 1).contiguous()  # (E, horizon, m, rows)
        if noise is not None:
            noise = noise.contiguous()
        out = x0.new_empty(E, horizon + 1, n, rows)
        spec = self._spec + [len(wrap), *wrap]
        words = (ctypes.c_long * len(spec))(*spec)
        u_strides = (0, 0, 0) if us is None else (us.stride(0), us.stride(1), us.stride(2))
        noise_strides = (0, 0, 0) if noise is None else (noise.stride(1), noise.stride(0), noise.stride(2))
        status = call(words, self._consts, self.weights.data_ptr(), self.weights.stride(0), E, rows, horizon,
                      xs.data_ptr(), xs.stride(0), xs.stride(1), None if us is None else us.data_ptr(), *u_strides,
                      None if noise is None else noise.data_ptr(), *noise_strides,
                      out.data_ptr(), out.stride(0), out.stride(1), out.stride(2), torch.get_num_threads())
        if status == -2:
            raise ValueError("the compiled rollout takes at most 63 hidden ICNN layers")
        if status != 0:
            raise MemoryError("the compiled rollout could not allocate its buffers")
        return out.permute(0, 3, 1, 2)


def compiled_rollout(model: nn.Module, x0: torch.Tensor, controls: torch.Tensor | None, horizon: int, wrap: list[int],
                     settings: tuple) -> torch.Tensor | None:
    """A single model's rollout through the kernel (``ODEWorldModel._inference_rollout``):
    ``x0: (batch, n)``, ``controls: (batch, horizon, m)`` or ``None`` -> ``(batch, horizon + 1, n)``,
    or ``None`` where it does not run (nothing to roll out, a tensor it does not take, a
    structure it does not run, a kernel that disagreed with the model's ``_step``). The packing
    is kept in the model's ``_kernel_cache`` while its tensors and ``settings`` (what the
    lowering bakes in besides them) stay equal."""
    if not (horizon and len(x0)) or not CompiledRollout.usable(x0):
        return None
    def lower() -> CompiledRollout | None:
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        return CompiledRollout.lower(model, lambda name: tensors[name].unsqueeze(0), 1)

    kernel = model._cached_lowering("_kernel_cache", lower, settings)
    if kernel is None:
        return None
    first = x0[:16].unsqueeze(0)
    step_u = None if controls is None else controls[:16, 0].unsqueeze(0)
    if not kernel.check(lambda x, u: model._step(x[0], None if u is None else u[0]).unsqueeze(0), first, step_u):
        return None
    return kernel(x0.unsqueeze(0), None if controls is None else controls.unsqueeze(0), horizon, wrap=wrap)[0]
