"""Inference rollouts of an MLP vector field, lowered once per call to a few matrix products.

A learned model's ``rollout`` under a planner spends most of its time in the field
``fhat``: 1000 rows x 30 steps x 4 RK4 stages of a (100, 100) MLP are 120 evaluations,
each three matrix products with their bias copies, activations out of place, a
concatenation of ``[x, u]`` and the scaling of inputs and outputs. When no gradient is
wanted, ``MLPField`` evaluates the same function with less traffic through memory:

- activations are feature-major, ``(features, rows)``: the state is ``(state_dim, rows)``,
  so a stage input ``x + a k`` is written straight into the rows the first layer reads,
  and the thin first (``state_dim + action_dim`` inputs) and last (``state_dim`` outputs)
  layers are wide matrix products instead of narrow ones;
- each bias is the last column of its weight matrix and every activation buffer carries a
  row of ones, so a layer is one ``mm`` into a preallocated buffer (no bias copy, no
  ``beta = 1`` read of the output) and the activation runs in place;
- the input scales, output scales and the control-affine gain's input scale of a
  ``DynamicsNet`` are folded into the first and last weight matrices, once per call;
- rows run in equal blocks of at most ``BLOCK_ROWS`` on a CPU, each through the whole
  horizon, so a block's activations stay in the core's cache;
- a float32 ReLU or SiLU network on a CPU, while torch runs one thread, is one call of
  lyagym's compiled kernel (``mlp_native``: every 64-row tile through all layers in registers
  and L1, no per-layer setup), where a C compiler built it; the points below are the torch
  path, which runs everywhere else;
- a single float32 network on a CPU runs its hidden-to-hidden layers through oneDNN's linear
  (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor uses, weights packed once) with
  the activation fused in where that is faster than torch's in place after it, its hidden
  activations row-major, in blocks of at most ``FUSED_BLOCK_ROWS``. MKL, torch's BLAS, runs
  float32 products on AMD CPUs at about half of oneDNN's rate (here 98 against 191 GFLOP/s for
  (1000, 100) x (100, 100) at one thread). ``E`` stacked float32 networks (an ensemble's members)
  run each hidden-to-hidden layer as one oneDNN 1 x 1 convolution with ``E`` groups
  (``torch.ops.mkldnn._convolution_pointwise``) on row-major ``(rows, E, width)`` activations,
  where ``torch.bmm`` would run ``E`` MKL products. Where the build has no oneDNN, for float64
  and on GPUs the layers stay feature-major BLAS products.

Same function, different rounding: the results agree with the ordinary path to float
rounding (the tests compare rollouts and plans, on both kinds of layers). Measured at one
thread on a quiet 2-core AMD EPYC (AVX-512), CPU time of 1000 rows x 30 RK4 steps of
``SimpleDynamics(2, 1)`` (100-100 ReLU MLP): 32.5 ms through ``_step``, 26.1 ms as feature-major
MKL products, 16.2 ms with the oneDNN hidden layer (of which that layer takes 12.5 ms; the thin
first and last layers, whose products MKL runs at 12 and 11 us per 1000 rows, most of the rest).
``torch.compile`` (inductor) of the row-major RK4 step was slower than eager on the same
rollout (49.6 vs 42.5 ms; with freezing 67 vs 50, with its C++ GEMM template 60 vs 46, on a
loaded machine) and took 17-45 s to compile, so it is not used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from . import mlp_native
from .dynamics_net import DynamicsNet
from .native import native_enabled

__all__ = ["MLPField", "BLOCK_ROWS", "FUSED_BLOCK_ROWS", "AfterStep"]

#: ``after_step(t, rows, x, u, x_next)`` of ``MLPField.rollout``, ``after_step(t, rows, x, u,
#: x_next, head_out)`` when it is given a ``head`` (see there)
AfterStep = Callable[..., None]

#: most rows per block of a CPU rollout; the rows are split into equal blocks. A block's
#: (101, rows) float32 activation buffers (400 KB at 1000 rows) stay in a core's L2 cache over
#: the horizon. Measured on 64k rows x 30 RK4 steps of a 100-100 MLP at one thread (ms per 1000
#: rows): 34.2 / 33.7 / 34.1 / 35.0 / 39.3 in blocks of 512 / 640 / 768 / 1000 / 1024 (a
#: power-of-two row stride maps the buffers' rows onto the same cache sets), 44.4 through
#: ``_step`` in 4096-row blocks; and one block of 1000 rows (a 1000-sample plan) beat two of 500.
BLOCK_ROWS = 1000

#: most rows per block where the hidden layers run through oneDNN (``MLPField.onednn_hidden_layers``):
#: its row-major products gain from longer blocks (per-call overhead ~10 us) more than they lose
#: from leaving L2. Measured on 64k rows x 30 RK4 steps of a 100-100 MLP at one thread (ms per
#: 1000 rows): 16.2 / 14.1 / 13.9 / 14.8 / 18.8 in blocks of 1000 / 4000 / 8000 / 16000 / 32000;
#: for E stacked networks the rows of all E together: a PETS ensemble's rollout (5 members, 64k
#: rows, 30 Euler steps) 8.71 / 7.65 / 7.05 / 6.84 / 7.54 in blocks of 1000 / 2000 / 4000 / 8000 / 16000.
FUSED_BLOCK_ROWS = 4000


def _softplus_(module: nn.Softplus) -> Callable[[torch.Tensor], None]:
    def apply(h: torch.Tensor) -> None:
        h.copy_(nn.functional.softplus(h, module.beta, module.threshold))

    return apply


#: activations oneDNN runs slower fused into its linear or grouped convolution than torch does in
#: place after it (SiLU: 124.7 against 96.6 + 21 us for a (1000, 100) x (100, 100) linear, 137
#: against 104 + 21 us for five (100, 100) layers on 200 rows each as a grouped convolution)
_UNFUSED = {"swish"}

#: oneDNN's name for an activation it can apply inside its linear (``torch.ops.mkldnn._linear_pointwise``).
_ONEDNN_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.SiLU: "swish"}


#: padding, stride and dilation of a 1 x 1 convolution: a linear layer per position
_CONV_GEOMETRY = ([0, 0], [1, 1], [1, 1])


def _as_image(rows: torch.Tensor) -> torch.Tensor:
    """``(rows, channels)`` row-major as a channels-last ``(1, channels, rows, 1)`` image (a view)."""
    return rows.reshape(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)


def _image_rows(image: torch.Tensor, groups: int) -> torch.Tensor:
    """A channels-last ``(1, groups * width, rows, 1)`` image as ``(groups, width, rows)``
    feature-major (a view, no copy)."""
    rows = image.shape[2]
    return image.permute(0, 2, 3, 1).view(rows, groups, -1).permute(1, 2, 0)


@functools.cache
def _onednn_linear_works() -> bool:
    """True where this torch build runs oneDNN's fused linear + activation on CPU float32 and it
    agrees with ``F.linear`` (checked once, on a small product)."""
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=g) for shape in ((5, 7), (3, 7), (3,)))
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 5)
        fused = torch.ops.mkldnn._linear_pointwise(x, packed, b, "relu", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):  # an op this build lacks, or will not run
        return False
    return torch.allclose(fused, torch.relu(nn.functional.linear(x, w, b)), rtol=1e-5, atol=1e-6)


@functools.cache
def _onednn_grouped_works() -> bool:
    """True where this torch build runs oneDNN's 1 x 1 grouped convolution on CPU float32
    channels-last input (``E`` stacked linear layers at once) and it agrees with ``torch.bmm``
    (checked once, on a small product)."""
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=g) for shape in ((5, 2, 7), (2, 3, 7), (2, 3)))  # rows, groups, features
    try:
        packed = torch.ops.mkldnn._reorder_convolution_weight(w.reshape(6, 7, 1, 1), *_CONV_GEOMETRY, 2, [1, 14, 5, 1])
        y = torch.ops.mkldnn._convolution_pointwise(_as_image(x.reshape(5, 14)), packed, b.reshape(6), *_CONV_GEOMETRY, 2,
                                                    "relu", [], "")
        y = _image_rows(y, 2)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    expected = torch.relu(torch.bmm(w, x.permute(1, 2, 0)) + b.unsqueeze(-1))  # (groups, out, rows)
    return y.shape == (2, 3, 5) and torch.allclose(y, expected, rtol=1e-5, atol=1e-6)


def _in_place(module: nn.Module) -> Callable[[torch.Tensor], None] | None:
    """The activation of ``module`` applied in place, or ``None`` for one we do not know."""
    if type(module) is nn.ReLU:
        return torch.relu_
    if type(module) is nn.SiLU:
        return lambda h: nn.functional.silu(h, inplace=True)
    if type(module) is nn.Tanh:
        return torch.tanh_
    if type(module) is nn.Softplus:
        return _softplus_(module)
    return None


class MLPField:
    """``fhat`` of a ``SimpleDynamics`` (a plain ``Linear``/activation ``nn.Sequential`` on
    ``[x, u]``, or a ``DynamicsNet``) as feature-major matrices, for rollouts without autograd.

    Build with ``MLPField.lower(fhat, state_dim, action_dim)``, which returns ``None`` for a
    network it does not recognise (the caller keeps its ordinary path). The matrices are
    detached copies of the weights as they are at that call: lower again after training.

    Attributes:
        weights: per layer ``(out, in + 1)``, the bias as last column; the first layer's
            columns are the input features ``[sin q, cos q, x[k:], u, 1]`` (``q = x[:k]``,
            ``k = angle_dims``; no ``u`` for a control-affine net; ``[x, u, 1]`` for a plain
            MLP), the last layer's rows the derivative (and the gains ``B(x)``, row-major
            ``(state_dim, action_dim)``, for a control-affine net).
        activations: in-place activation after each layer but the last.
        onednn_activations: oneDNN's name for each of them (``"relu"``, ``"tanh"``, ``"swish"``),
            or ``"none"`` for one it cannot fuse into its linear (then applied in place after).
    """

    def __init__(self, weights: list[torch.Tensor], activations: list[Callable[[torch.Tensor], None]], state_dim: int,
                 action_dim: int, *, angle_dims: int = 0, control_affine: bool = False,
                 onednn_activations: list[str] | None = None) -> None:
        self.weights, self.activations = weights, activations
        self.onednn_activations = onednn_activations or ["none"] * len(activations)
        self._packed_hidden: list | None = None  # the hidden layers' weights in oneDNN's layout, made on first use
        self._native: mlp_native.NativeWeights | None | bool = None  # packed for the compiled kernel (False: not usable)
        self.state_dim, self.action_dim = state_dim, action_dim
        self.angle_dims, self.control_affine = angle_dims, control_affine

    @classmethod
    def lower(cls, fhat: nn.Module, state_dim: int, action_dim: int,
              tensors: Callable[[str], torch.Tensor] | None = None) -> "MLPField | None":
        """``fhat: (batch, state_dim + action_dim) -> (batch, state_dim)`` as an ``MLPField``, or ``None``.

        ``tensors(name)`` gives the tensor of ``fhat``'s parameter or buffer ``name`` (its own by
        default). Stacked tensors of ``E`` networks of ``fhat``'s structure (``(E, out, in)``
        weights, as an ``Ensemble`` holds its members') lower all ``E`` at once: the field's
        weights are then ``(E, out, in + 1)`` and it rolls out ``E`` groups of rows, one per
        network, with batched matrix products (``rollout``'s ``x0: (E, rows, state_dim)``)."""
        # Exact types only: a subclass may compute something else in its forward.
        net, prefix, angle_dims, control_affine = fhat, "", 0, False
        if type(fhat) is DynamicsNet:
            net, prefix, angle_dims, control_affine = fhat.net, "net.", fhat.angle_dims, fhat.control_affine
        if type(net) is not nn.Sequential or len(net) % 2 != 1:
            return None
        if any(m._forward_hooks or m._forward_pre_hooks for m in fhat.modules()):
            return None  # hooks expect the modules to be called
        linears, activations = list(net[0::2]), [_in_place(m) for m in net[1::2]]
        if not all(type(m) is nn.Linear for m in linears) or any(a is None for a in activations):
            return None
        if tensors is None:
            own = dict(fhat.named_parameters())
            own.update(dict(fhat.named_buffers()))
            tensors = own.__getitem__
        with torch.no_grad():
            weights = []
            for i, lin in enumerate(linears):
                w = tensors(f"{prefix}{2 * i}.weight")
                bias = tensors(f"{prefix}{2 * i}.bias").unsqueeze(-1) if lin.bias is not None else w.new_zeros(*w.shape[:-1], 1)
                weights.append(torch.cat([w, bias], -1))
            if type(fhat) is DynamicsNet:
                n, k = state_dim, angle_dims
                input_scale, output_scale = tensors("input_scale"), tensors("output_scale")
                # The net sees [sin q, cos q, x[k:] / s_x, (u / s_u)]: fold 1 / s into those columns.
                scaled_in = weights[0].shape[-1] - 1 - 2 * k
                weights[0][..., 2 * k:2 * k + scaled_in] /= input_scale[..., None, :scaled_in]
                # It returns (drift + B (u / s_u)) * s_out: fold s_out into the drift rows, s_out / s_u into the gains.
                rows = output_scale
                if control_affine:
                    gain_scale = output_scale[..., :, None] / input_scale[..., None, n - k:]  # (..., n, m)
                    rows = torch.cat([rows, gain_scale.flatten(-2)], -1)
                weights[-1] *= rows[..., None]
            weights = [w.contiguous() for w in weights]
        onednn = [_ONEDNN_ACTIVATIONS.get(type(m), "none") for m in net[1::2]]
        return cls(weights, activations, state_dim, action_dim, angle_dims=angle_dims, control_affine=control_affine,
                   onednn_activations=onednn)

    @property
    def members(self) -> int | None:
        """``E`` for a field of ``E`` stacked networks, ``None`` for one network."""
        return self.weights[0].shape[0] if self.weights[0].ndim == 3 else None

    # ----------------------------------------------------------------------------- rollout
    def rollout(self, x0: torch.Tensor, actions: torch.Tensor | None, horizon: int, dt: float, method: str,
                after_step: AfterStep | None = None, head: "MLPField | None" = None) -> torch.Tensor:
        """States of ``horizon`` steps of ``method`` (``"euler"`` or ``"rk4"``), no autograd.

        Args:
            x0: ``(batch, state_dim)`` initial states (validated by the caller); for ``E``
                stacked networks ``(E, rows, state_dim)``, group ``e`` on network ``e``.
            actions: ``(batch, horizon, action_dim)`` (stacked: ``(E, rows, horizon,
                action_dim)``), or ``None`` for an autonomous model.
            horizon: number of steps; dt: step length.
            after_step: called as ``after_step(t, rows, x, u, x_next)`` after each step with
                feature-major views (``x, x_next: (..., state_dim, block rows)``, ``u: (...,
                action_dim, block rows)`` or ``None``) of the block of rows ``rows`` (a
                ``slice``); it may change ``x_next`` in place (an ensemble adds its noise there).
            head: a second network of the same stacking that reads this field's first-layer
                input at each step's state ``x`` (its rows ``[sin q, cos q, x[k:], u, 1]``,
                ``x`` in place of the first three for a plain MLP; a control-affine net's own
                layer reads no ``u``: for the head the rollout writes it after the ones),
                evaluated once per step and its output (``(..., out, block rows)``) handed to
                ``after_step`` as a sixth argument: an ensemble's variance head shares the
                field's features instead of computing them again.

        Returns:
            ``(batch, horizon + 1, state_dim)`` states, ``x0`` first (a new contiguous tensor);
            stacked: ``(E, rows, horizon + 1, state_dim)``.
        """
        stacked = self.members is not None
        rows = x0.shape[-2]
        groups = self.members or 1
        out = x0.new_empty(*x0.shape[:-1], horizon + 1, self.state_dim)
        fused = self._fuses(x0)
        # A block's buffers hold all groups' rows: at most BLOCK_ROWS (FUSED_BLOCK_ROWS) rows in all.
        limit = FUSED_BLOCK_ROWS if fused or self.native_weights(x0) is not None else BLOCK_ROWS
        blocks = -(-rows * groups // limit) if x0.device.type == "cpu" else 1
        block = max(-(-rows // max(blocks, 1)), 1)
        for i in range(0, rows, block):
            part = None if actions is None else actions[..., i:i + block, :, :]
            traj = self._rollout_block(x0[..., i:i + block, :], part, horizon, dt, method, after_step, slice(i, i + block),
                                       fused, head)
            out[..., i:i + block, :, :] = traj.permute(1, 3, 0, 2) if stacked else traj.permute(2, 0, 1)
        return out

    def native_weights(self, x0: torch.Tensor) -> "mlp_native.NativeWeights | None":
        """The weights packed for the compiled kernel (``mlp_native``), made once per field, where
        it runs this network on ``x0``'s kind of tensor: float32 on a CPU while torch runs one
        thread (the kernel has one; with more, torch's layers share the work), ReLU or SiLU
        hidden activations, a kernel built and checked on this machine, not switched off
        (``LYAGYM_NATIVE=0``; both read at each rollout); else ``None``."""
        if not (x0.device.type == "cpu" and x0.dtype == torch.float32 and native_enabled() and torch.get_num_threads() == 1):
            return None
        if self._native is None:
            usable = mlp_native.supports(self.onednn_activations) and mlp_native.available()
            self._native = mlp_native.NativeWeights(self.weights, self.onednn_activations) if usable else False
        return self._native or None

    def _fuses(self, x0: torch.Tensor) -> bool:
        """Whether a block of ``x0``'s rows runs its hidden layers through oneDNN: float32 on a
        CPU, at least one hidden-to-hidden layer, a torch build where it works
        (``torch.backends.mkldnn`` enabled); one network through its fused linear, stacked
        networks through its grouped convolution."""
        if not (x0.device.type == "cpu" and x0.dtype == torch.float32 and len(self.weights) > 2 and torch.backends.mkldnn.enabled):
            return False
        return _onednn_linear_works() if self.members is None else _onednn_grouped_works()

    def onednn_hidden_layers(self, rows: int) -> list[tuple]:
        """The hidden-to-hidden layers as oneDNN runs them, made once per field for all its blocks:
        ``(packed weights, bias, oneDNN activation, the in-place activation it leaves or None)``;
        ``rows`` is the block size (per network) the packing is tuned for. Stacked networks: the
        weights of a 1 x 1 convolution with one group per network, the bias ``(E * out,)``."""
        if self._packed_hidden is None:
            E = self.members
            layers = []
            for w, name, act in zip(self.weights[1:-1], self.onednn_activations[1:], self.activations[1:]):
                name = "none" if name in _UNFUSED else name
                if E is None:
                    packed = torch.ops.mkldnn._reorder_linear_weight(w[:, :-1].contiguous(), rows)
                else:
                    width = w.shape[-1] - 1
                    packed = torch.ops.mkldnn._reorder_convolution_weight(
                        w[..., :-1].reshape(-1, width, 1, 1).contiguous(), *_CONV_GEOMETRY, E, [1, E * width, rows, 1])
                layers.append((packed, w[..., -1].reshape(-1).contiguous(), name, act if name == "none" else None))
            self._packed_hidden = layers
        return self._packed_hidden

    def _network(self, first: torch.Tensor, raw: torch.Tensor, fused: bool) -> Callable[[], None]:
        """A function that writes the network's output for the first-layer input ``first``
        (``([E,] in + 1, rows)``, feature-major, its last row ones) into ``raw`` (``([E,] out,
        rows)``), through buffers allocated here once. ``fused``: the hidden-to-hidden layers
        through oneDNN (``_fuses``): its linear for one network, its grouped convolution for
        stacked ones (``_grouped_network``)."""
        native = self.native_weights(first)
        if native is not None:
            return native.bind(first, raw)
        rows = first.shape[-1]
        if fused and self.members is None:
            # Hidden activations row-major, each hidden-to-hidden layer one oneDNN linear with its
            # activation (fused in, or in place after it where that is faster, ``_UNFUSED``), its
            # weights packed once per field: on a CPU where MKL runs these
            # float32 products at half of oneDNN's rate (AMD), this halves the (100, 100) layer of
            # a plain MLP (106 against 203 us for 1000 rows). The thin first and last layers stay
            # BLAS products on the feature-major input and output.
            linear = torch.ops.mkldnn._linear_pointwise
            w0, last = self.weights[0], self.weights[-1]
            hidden = self.onednn_hidden_layers(rows)
            last_weights, last_bias = last[:, :-1].contiguous(), last[:, -1:].contiguous()
            if self.onednn_activations[0] == "tanh":
                # torch's float32 tanh takes ~2 ns a value on a CPU (200 us per 1000 x 100, ten times
                # its SiLU); fused into oneDNN's first layer it costs ~20 us. (ReLU and SiLU passes
                # in place are as cheap as oneDNN's fused ones: that layer stays a BLAS product.)
                first_rows, first_w, first_b = first[:-1].t(), w0[:, :-1].contiguous(), w0[:, -1].contiguous()

                def first_layer() -> torch.Tensor:
                    return linear(first_rows, first_w, first_b, "tanh", [], "")
            else:
                # The first layer reads the feature-major input transposed, its ones row times the bias row.
                first_in, first_weights = first.t(), w0.t().contiguous()
                first_out, first_act = first.new_empty(rows, w0.shape[0]), self.activations[0]

                def first_layer() -> torch.Tensor:
                    first_act(torch.mm(first_in, first_weights, out=first_out))
                    return first_out

            def fused_network() -> None:
                h = first_layer()
                for weights, bias, activation, unfused in hidden:
                    h = linear(h, weights, bias, activation, [], "")
                    if unfused is not None:
                        unfused(h)
                torch.addmm(last_bias, last_weights, h.t(), out=raw)

            return fused_network

        if fused:  # stacked networks
            return self._grouped_network(first, raw)
        mm = torch.bmm if first.ndim == 3 else torch.mm
        layers = []  # (weights, activation, its output rows, the buffer the next layer reads)
        for w, act in zip(self.weights, self.activations):
            buf = first.new_empty(*first.shape[:-2], w.shape[-2] + 1, rows)
            buf[..., -1, :].fill_(1.0)
            layers.append((w, act, buf[..., :-1, :], buf))

        def network() -> None:
            h = first
            for w, act, out, buf in layers:
                act(mm(w, h, out=out))
                h = buf
            mm(self.weights[-1], h, out=raw)

        return network

    def _grouped_network(self, first: torch.Tensor, raw: torch.Tensor) -> Callable[[], None]:
        """``_network`` of ``E`` stacked networks with the hidden-to-hidden layers as one 1 x 1
        convolution with ``E`` groups (oneDNN's, weights packed once per field): torch's CPU
        ``bmm`` runs each member's product through MKL, at half of oneDNN's rate on AMD (five
        (100, 100) layers on 200 rows each: 181 against 104 us). The hidden activations are
        row-major ``(rows, E, width)``, a channels-last image to the convolution; the thin first
        layer writes there from the feature-major input (a ``bmm`` into a transposed view) and
        the last reads it transposed into the feature-major output."""
        E, rows = self.members, first.shape[-1]
        w0, last = self.weights[0], self.weights[-1]
        first_in, first_weights = first.transpose(1, 2), w0.transpose(1, 2).contiguous()  # (E, rows, in + 1), (E, in + 1, width)
        first_rows = first.new_empty(rows, E, w0.shape[-2])
        first_out, first_image, first_act = first_rows.transpose(0, 1), _as_image(first_rows.view(rows, -1)), self.activations[0]
        hidden = self.onednn_hidden_layers(rows)
        last_weights, last_bias = last[..., :-1].contiguous(), last[..., -1:].contiguous()
        convolution = torch.ops.mkldnn._convolution_pointwise

        def grouped_network() -> None:
            torch.bmm(first_in, first_weights, out=first_out)
            first_act(first_rows)
            h = first_image
            for weights, bias, activation, unfused in hidden:
                h = convolution(h, weights, bias, *_CONV_GEOMETRY, E, activation, [], "")
                if unfused is not None:
                    unfused(h)
            torch.baddbmm(last_bias, last_weights, _image_rows(h, E), out=raw)

        return grouped_network

    def _rollout_block(self, x0: torch.Tensor, actions: torch.Tensor | None, horizon: int, dt: float, method: str,
                       after_step: AfterStep | None = None, block_rows: slice | None = None,
                       fused: bool = False, head: "MLPField | None" = None) -> torch.Tensor:
        """``(horizon + 1, [E,] state_dim, rows)``: the trajectory of one block, feature-major."""
        n, k, rows, m = self.state_dim, self.angle_dims, x0.shape[-2], self.action_dim
        lead = x0.shape[:-2]  # (E,) for stacked networks, () for one
        # Input rows of the first layer: [sin q, cos q] (angle nets), the state or its
        # non-angle part, u (unless control-affine), and the ones that multiply the bias column;
        # for a head of a control-affine net, u after them (the field's own layer reads the rows before).
        width = self.weights[0].shape[-1]
        extra = m if head is not None and self.control_affine and actions is not None else 0
        all_rows = x0.new_empty(*lead, width + extra, rows)
        all_rows[..., width - 1, :].fill_(1.0)
        first = all_rows[..., :width, :] if extra else all_rows
        u_rows = u_all = None
        if actions is not None and m:
            # (horizon, [E,] action_dim, rows)
            u_all = (actions.permute(2, 0, 3, 1) if lead else actions.permute(1, 2, 0)).contiguous()
            if not self.control_affine:
                u_rows = first[..., -1 - m:-1, :]
            elif extra:
                u_rows = all_rows[..., width:, :]
        # The stage state y = x + a k_i: a plain MLP reads it directly as its first rows.
        y = first[..., :n, :] if k == 0 else x0.new_empty(*lead, n, rows)
        last = self.weights[-1]
        raw = x0.new_empty(*lead, last.shape[-2], rows)
        drift = raw[..., :n, :]
        gains = raw[..., n:, :].unflatten(-2, (n, self.action_dim)) if self.control_affine else None
        gain0 = gains.select(-2, 0) if gains is not None and self.action_dim == 1 else None
        deriv = x0.new_empty(*lead, n, rows) if self.control_affine else raw
        # Views made once: slicing inside the loop costs more than the small ops it feeds.
        angles, sines, cosines = y[..., :k, :], first[..., :k, :], first[..., k:2 * k, :]
        rest, rest_in = y[..., k:, :], first[..., 2 * k:n + k, :]
        traj = x0.new_empty(horizon + 1, *lead, n, rows)
        traj[0].copy_(x0.transpose(-1, -2))
        states = traj.unbind(0)
        acc = x0.new_empty(*lead, n, rows)
        gain_u = None
        network = self._network(first, raw, fused)
        head_network, head_out = None, ()  # after_step's extra argument: the head's output
        if head is not None:
            head_out = (x0.new_empty(*lead, head.weights[-1].shape[-2], rows),)
            head_network = head._network(all_rows, head_out[0], fused=False)
        block = block_rows if block_rows is not None else slice(0, rows)

        def field() -> torch.Tensor:
            if k:
                torch.sin(angles, out=sines)
                torch.cos(angles, out=cosines)
                rest_in.copy_(rest)
            network()
            if not self.control_affine:
                return raw
            if gain0 is not None:
                return torch.addcmul(drift, gain0, gain_u, out=deriv)
            # B(x) u with B row-major (n, m): (..., n, m, rows) * (..., 1, m, rows), summed over m.
            return torch.add(drift, (gains * gain_u.unsqueeze(-3)).sum(-2), out=deriv)

        for t in range(horizon):
            x, x_next = states[t], states[t + 1]
            u_t = None if u_all is None else u_all[t]
            if u_rows is not None:
                u_rows.copy_(u_t)
            if self.control_affine:
                gain_u = u_t
            y.copy_(x)
            k1 = field()
            if head_network is not None:  # the first stage's input holds x's features
                head_network()
            if method == "euler":
                torch.add(x, k1, alpha=dt, out=x_next)
            else:
                # Classical RK4 with the operations of ``integrators.rk4`` in its order; each
                # stage's derivative is read before the next stage overwrites its buffer.
                acc.copy_(k1)
                torch.add(x, k1, alpha=0.5 * dt, out=y)
                k2 = field()
                acc.add_(k2, alpha=2.0)
                torch.add(x, k2, alpha=0.5 * dt, out=y)
                k3 = field()
                acc.add_(k3, alpha=2.0)
                torch.add(x, k3, alpha=dt, out=y)
                acc.add_(field())
                torch.add(x, acc, alpha=dt / 6.0, out=x_next)
            if after_step is not None:
                after_step(t, block, x, u_t, x_next, *head_out)
        return traj
