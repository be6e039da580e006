"""Probabilistic ensembles of world models (PETS, Chua et al. 2018) as ONE batched computation.

``Ensemble`` holds ``E`` members of one ``ODEWorldModel`` class (``SimpleDynamics``, with or
without the ``DynamicsNet`` priors, or ``StableDynamics`` / ``StableControlledDynamics``, each
keeping its own certificate). Their parameters are stacked along a leading member dimension
(as ``torch.func.stack_module_state`` does) and every member is evaluated at once, with no
Python loop over members in ``step``, ``rollout`` or ``fit_ensemble``: ``SimpleDynamics``
members as batched matrix products over the stacked weights (``_raw_stacked``; with autograd
through the training kernel of ``mlp_train_native``, without it lowered to
``mlp_rollout.MLPField``), other members with ``torch.func.vmap`` over
``functional_call``, inside which they run their ``functorch_safe`` path (plain tensor ops; see
``integrators.functorch_safe``); certified members without autograd run those same plain ops
on the stacked weights directly (``_raw_stacked_stable``), without ``vmap``'s per-op batching,
and their TS-infinity rollouts through the compiled kernel of ``rollout_native`` where it runs.

Each member predicts a Gaussian over the next state (PETS, Section 4.1, "probabilistic
ensembles"):

    mean_e(x, u)   = member_e.step(x, u)         (its integrator; for stable members the
                                                  guarantee-keeping step)
    logvar_e(x, u) = var_e(features(x, u))        (a small stacked MLP, angles as sin/cos)

in units of ``target_scale`` (the spread of ``x_next - x`` in the first fit's data). The
log-variance is bounded softly by learned ``max_logvar`` and ``min_logvar`` (PETS appendix,
as in the authors' code and mbrl-lib):

    lv = max_logvar - softplus(max_logvar - lv)
    lv = min_logvar + softplus(lv - min_logvar)

and trained with the Gaussian negative log-likelihood plus ``0.01 (sum max_logvar - sum min_logvar)``.

Propagation of particles (PETS Section 5; ``step`` on ``(batch, state_dim)`` rows):

- ``"tsinf"`` (TS-infinity): row ``i`` always uses member ``i % E``, so a particle stays on
  one member (one bootstrap, one "belief" about the dynamics) along a rollout. The rows are
  regrouped into ``(E, ceil(batch / E), n)`` (padded), so each member computes only its own
  rows: the cost is about that of one member on the whole batch.
- ``"ts1"`` (TS-1): a fresh member per row per step: a random permutation of the rows (from
  the ensemble's own ``torch.Generator``, ``reset_generator(seed)``), the same grouped
  evaluation, then the inverse permutation; every member gets ``batch / E`` random rows.
- ``"expectation"``: the mean of the members' means (every member on every row; no sampling).

In the TS modes the next state is sampled, ``mean + std * eps``, when the ensemble is
``probabilistic`` and ``sample`` is on; otherwise it is the member's mean.

Cost (``examples/benchmarks/bench_ensemble.py``, double-pendulum sizes: state 4, action 2,
``fhat`` widths (100, 100), 256 rows per member, Euler members as in the MBRL loops, medians
of interleaved repeats on a quiet 2-core AMD EPYC; see the README for every run): one training
step of E = 5 members costs 1.7x one member batched the same way with both cores
(``--threads 2``; simple members with the mechanical priors and certified stable members
alike) and ~2.2x at one thread. Simple members' networks and variance heads train through
the compiled kernel of ``mlp_train_native`` (``_stacked_mlp``), whose products run at this
CPU's vector width where torch's batched products run MKL's at AVX2's rate on AMD; what is
left of E = 1 is mostly fixed per-operation cost (~0.6 ms). Certified members train under
``vmap``. A TS-infinity step of 30,000 rows through ``step`` costs 1.3x (simple members) and
1.0x (certified) one member stepping those rows at one thread, 1.5-1.6x and 1.1-1.3x with both
cores; rollouts without autograd run lowered (``rollout``).

Certificates: ``Ensemble.certificate()`` lists each member's own ``Certificate`` (issued by
``member(i).certificate()``, with member ``i``'s weights hash) and states what they cover:
each member's mean map, not the sampled noise (see ``EnsembleCertificate``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from .certificate import Certificate, model_hash
from .checkpoint import MODEL_CLASSES, register_model
from . import mlp_train_native
from .dynamics_net import DynamicsNet, mlp
from .files import atomic_write
from .integrators import (INTEGRATORS, ODEWorldModel, _all_finite, _equal_tensors, _FunctorchState, _overflow_error, _wrap_rows_,
                          functorch_safe)
from .mlp_rollout import MLPField
from .rollout_native import CompiledRollout

__all__ = ["Ensemble", "EnsembleCertificate", "EnsembleCheck", "PROPAGATIONS", "ensemble_optimizer", "fit_ensemble", "fit_ensemble_rollouts", "member_factory"]

#: most rows per member in one pass of ``Ensemble._raw_stacked_stable`` on a CPU: the certified
#: field's dozens of intermediate ``(E, rows, width)`` tensors stay in cache (a PETS plan of 64
#: states, 12,800 rows per member, planned 0.84x as fast as 64 single-state plans in one pass)
STABLE_BLOCK_ROWS = 1024

#: Propagation methods of ``Ensemble.step`` by name (PETS Section 5).
PROPAGATIONS = ("ts1", "tsinf", "expectation")

_LOG_2PI = math.log(2.0 * math.pi)


def member_factory(kind: str, state_dim: int, action_dim: int = 0, **kwargs: Any) -> Callable[[], ODEWorldModel]:
    """A function that builds one fresh member of ``kind`` per call, for ``Ensemble(factory, E)``.

    Args:
        kind: ``"simple"`` (``SimpleDynamics``) or ``"stable"`` (``StableControlledDynamics``
            with ``action_dim >= 1``, ``StableDynamics`` for an autonomous model).
        state_dim, action_dim: the members' dimensions.
        kwargs: passed to the member's constructor (``hidden``, ``dt``, ``angle_dims``,
            ``control_affine``, ``activation``, ``alpha``, ...).
    """
    from .simple import SimpleDynamics
    from .stable import StableControlledDynamics, StableDynamics

    if kind == "simple":
        return lambda: SimpleDynamics(state_dim, action_dim, **kwargs)
    if kind == "stable":
        if action_dim:
            return lambda: StableControlledDynamics(state_dim, action_dim, **kwargs)
        return lambda: StableDynamics(state_dim, **kwargs)
    raise ValueError(f"kind must be 'simple' or 'stable', got {kind!r}")


class _Member(nn.Module):
    """One member as ``vmap`` sees it: the world model (the mean) and its log-variance head."""

    def __init__(self, model: ODEWorldModel, logvar_net: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.logvar_net = logvar_net

    def forward(self, x: torch.Tensor, u: torch.Tensor | None, features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        mean = self.model._step(x, u)
        return mean, (None if self.logvar_net is None else self.logvar_net(features))


class _Stacked(nn.Module):
    """The members' parameters and buffers stacked along dim 0, under the member's own names."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __repr__(self) -> str:
        per_member = sum(p[0].numel() for p in self.parameters())
        return f"_Stacked(members={self.size}, tensors={len(list(self.parameters())) + len(list(self.buffers()))}, parameters_per_member={per_member})"


def _module_tree(named: dict[str, torch.Tensor], *, parameters: bool, root: nn.Module) -> None:
    """Register ``named`` (dotted names) on empty submodules of ``root`` mirroring the member's
    layout, so that the stacked tensors keep readable state-dict keys (``model.fhat.net.0.weight``)."""
    for name, tensor in named.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        if parameters:
            node.register_parameter(leaf, nn.Parameter(tensor))
        else:
            node.register_buffer(leaf, tensor)


def _storage_key(tensors: list[torch.Tensor]) -> tuple:
    return tuple((t.device, t.data_ptr(), t._version) for t in tensors)


def _weights_snapshot(tensors: list[torch.Tensor]) -> list[torch.Tensor] | tuple:
    """What a cached lowering is checked against: on a CPU a copy of the tensors (compared
    exactly, so a write through ``.data``, which bumps no version counter, is seen too);
    elsewhere, where comparing values would sync the device, their storage and versions."""
    if all(t.device.type == "cpu" for t in tensors):
        return [t.detach().clone() for t in tensors]
    return _storage_key(tensors)


def _weights_unchanged(snapshot: list[torch.Tensor] | tuple, tensors: list[torch.Tensor]) -> bool:
    if isinstance(snapshot, list):
        return _equal_tensors(snapshot, tensors)
    return snapshot == _storage_key(tensors)


def _spread(t: torch.Tensor) -> torch.Tensor:
    """Per-column standard deviation, 1 where a column does not vary (as ``DynamicsNet.calibrate``)."""
    std = t.std(0) if t.shape[0] > 1 else torch.ones_like(t[0])
    return torch.where(std > 1e-6, std, torch.ones_like(std))


def _check_stable_range(t: torch.Tensor, x_eq: torch.Tensor | None, name: str) -> None:
    """Stable members refuse ``|x - x_eq|`` (or ``|u|``) beyond ``stable.max_offset`` (V would
    overflow into NaN); under ``vmap`` they cannot check it themselves. ``max|x| + max|x_eq|``
    bounds every member's offset: one reduction, no ``(members, batch, n)`` temporary."""
    from .stable import max_offset

    limit = max_offset(t.dtype)
    largest = t.abs().amax() + (0.0 if x_eq is None else x_eq.abs().amax())
    if not bool(largest <= limit):
        what = name if x_eq is None else f"{name} - x_eq"
        raise ValueError(f"{name}: every |{what}| must be <= {limit:.2g} in {str(t.dtype).replace('torch.', '')} for "
                         f"the ensemble's stable members, got up to {float(largest):.3g}")


@register_model
class Ensemble(nn.Module):
    """``E`` members of one world-model class evaluated as one batched computation (PETS).

    Args:
        members: a factory called ``size`` times (each call builds one fresh member, e.g.
            ``member_factory("stable", 4, 1, angle_dims=2)`` or a ``lambda``), or a list of
            ``E`` built models of one class and one configuration (their weights are taken
            as they are), or (the checkpoint form) ``{"class": name, "config": {...}}``.
            Members are ``ODEWorldModel`` subclasses with a fixed-step integrator
            (``"euler"``/``"rk4"``): an adaptive solver's step-size control cannot run under
            ``vmap``.
        size: ``E >= 1`` (default 5 with a factory; the list's length with a list).
        propagation: ``"ts1"`` (default), ``"tsinf"`` or ``"expectation"`` (PETS Section 5);
            the attribute may be changed at run time.
        probabilistic: members predict a Gaussian (mean and log-variance); ``False``: the
            members are deterministic (no variance head, trained on the squared error).
        sample: in the TS modes, ``step`` samples ``mean + std * eps`` (needs
            ``probabilistic``); ``False`` returns the assigned member's mean.
        var_hidden: widths of the log-variance MLP (SiLU; default (32, 32): it runs beside every
            member evaluation, so a wide head would cost as much as a narrow member).
        seed: seed of the ensemble's ``torch.Generator`` (TS-1 assignments, the noise).

    Attributes:
        size, propagation, probabilistic, sample, state_dim, action_dim, dt, device, dtype,
        member_class (the members' class), max_logvar / min_logvar ``(1, state_dim)``,
        target_scale ``(state_dim,)``, validate_finite.

    Shapes: ``x: (batch, state_dim)``, ``u: (batch, action_dim)`` (``None`` when autonomous);
    ``step`` returns ``(batch, state_dim)``; ``predict`` returns every member's mean and
    log-variance, ``(E, batch, state_dim)`` each.

    Example::

        ens = Ensemble(member_factory("stable", 4, 1, dt=0.05, angle_dims=2, control_affine=True), 5)
        history = fit_ensemble(ens, x, u, x_next, epochs=50)
        ens.propagation = "tsinf"
        traj = ens.rollout(x0, actions)           # (batch, horizon + 1, 4)
        cert = ens.certificate()                  # one Certificate per member
    """

    #: check inputs for NaN/inf in ``step``/``rollout``/``predict``, and results for an overflow
    #: from finite inputs (one host sync per call), as ``ODEWorldModel.validate_finite``;
    #: planners in tight GPU loops may turn it off.
    validate_finite: bool = True
    #: with ``validate_finite``, raise on a non-finite result (default); ``False`` returns it, for
    #: a caller that ends such rows itself (``world_model.overflowing_rows_returned``)
    raise_on_overflow: bool = True
    #: config keys that choose how ``step`` samples, not what the members compute: the
    #: certificate's ``model_hash`` leaves them out (see ``EnsembleCertificate``).
    runtime_config_keys = ("propagation", "sample", "seed")

    def __init__(
        self,
        members: Callable[[], ODEWorldModel] | Sequence[ODEWorldModel] | dict[str, Any],
        size: int | None = None,
        *,
        propagation: str = "ts1",
        probabilistic: bool = True,
        sample: bool = True,
        var_hidden: Sequence[int] = (32, 32),
        seed: int = 0,
    ) -> None:
        super().__init__()
        models = self._build_members(members, size)
        first = models[0]
        self.size = len(models)
        self.member_class = type(first)
        self._member_config = first.config()
        self.state_dim, self.action_dim, self.dt = first.state_dim, first.action_dim, first.dt
        self.probabilistic = bool(probabilistic)
        self.sample = bool(sample)
        self.var_hidden = tuple(int(h) for h in var_hidden)
        fhat = getattr(first, "fhat", None)
        self._angle_dims = fhat.angle_dims if isinstance(fhat, DynamicsNet) else 0
        n, m, k = self.state_dim, self.action_dim, self._angle_dims
        features = n + k + m  # sin q, cos q, the other state entries, u
        dtype = first.dtype
        wrapped = []
        for model in models:
            head = mlp(features, self.var_hidden, n, activation="silu").to(dtype) if self.probabilistic else None
            wrapped.append(_Member(model, head))
        # As torch.func.stack_module_state, but keeping tensors shared under two names (the
        # coupling warp's masks): functional_call must replace every name of the meta base.
        params = {name: torch.stack([dict(w.named_parameters(remove_duplicate=False))[name].detach() for w in wrapped])
                  for name, _ in wrapped[0].named_parameters(remove_duplicate=False)}
        buffers = {name: torch.stack([dict(w.named_buffers(remove_duplicate=False))[name] for w in wrapped])
                   for name, _ in wrapped[0].named_buffers(remove_duplicate=False)}
        # The stacked tensors live in `stacked` (parameters of shape (E, ...)); `_base` is one
        # member on the meta device that functional_call runs with the stacked slices. It is
        # not a submodule, so .to(), state_dict and parameters() see only the stacked tensors.
        self.stacked = _Stacked(self.size)
        _module_tree({k_: v.detach() for k_, v in params.items()}, parameters=True, root=self.stacked)
        _module_tree(buffers, parameters=False, root=self.stacked)
        object.__setattr__(self, "_base", copy.deepcopy(wrapped[0]).to("meta"))
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        # PETS's soft log-variance bounds (shared by the members, as in mbrl-lib's GaussianMLP).
        self.max_logvar = nn.Parameter(torch.full((1, n), 0.5, dtype=dtype)) if self.probabilistic else None
        self.min_logvar = nn.Parameter(torch.full((1, n), -10.0, dtype=dtype)) if self.probabilistic else None
        # Normalisation from the first fit's data: targets (next state residuals) and the
        # variance head's features.
        self.register_buffer("target_scale", torch.ones(n, dtype=dtype))
        self.register_buffer("feature_shift", torch.zeros(features, dtype=dtype))
        self.register_buffer("feature_scale", torch.ones(features, dtype=dtype))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.to(first.device)
        self.propagation = propagation
        self._seed = int(seed)
        self._gen: torch.Generator | None = None
        self._lowered_cache: dict[bool, tuple] | None = None  # compiled? -> (weights snapshot, lowering)

    # -- construction ----------------------------------------------------------------------
    @staticmethod
    def _build_members(members: Any, size: int | None) -> list[ODEWorldModel]:
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError(f"size must be an int >= 1 (the number of members E), got {size!r}")
        if isinstance(members, dict):
            name, config = members.get("class"), members.get("config")
            if name not in MODEL_CLASSES or not isinstance(config, dict):
                raise ValueError(f"members as a dict must be {{'class': a registered model class, 'config': {{...}}}}, got {members!r}")
            cls = MODEL_CLASSES[name]
            models = [cls(**config) for _ in range(5 if size is None else size)]
        elif callable(members) and not isinstance(members, nn.Module):
            models = [members() for _ in range(5 if size is None else size)]
        elif isinstance(members, (list, tuple)):
            models = list(members)
            if not models:
                raise ValueError("members is an empty list; give E >= 1 models or a factory")
            if size is not None and size != len(models):
                raise ValueError(f"size={size} but {len(models)} member models were given")
        else:
            raise TypeError(f"members must be a factory (callable returning a model), a list of models or a checkpoint dict, got {type(members).__name__}")
        first = models[0]
        for i, model in enumerate(models):
            if not isinstance(model, ODEWorldModel):
                raise TypeError(f"member {i} is a {type(model).__name__}, not an ODEWorldModel (SimpleDynamics, StableDynamics, ...)")
            if type(model) is not type(first):
                raise TypeError(f"members must share one class: member 0 is {type(first).__name__}, member {i} is {type(model).__name__}")
            if model.config() != first.config():
                raise ValueError(f"members must share one configuration: member {i} has {model.config()}, member 0 {first.config()}")
            if model.dtype != first.dtype or model.device != first.device:
                raise ValueError(f"members must share dtype and device: member {i} is {model.dtype} on {model.device}, member 0 {first.dtype} on {first.device}")
        if first.integrator not in INTEGRATORS:
            raise ValueError(
                f"ensemble members need a fixed-step integrator {sorted(INTEGRATORS)} (an adaptive solver's step control "
                f"cannot run under vmap), got {first.integrator!r}"
            )
        return models

    # -- attributes ------------------------------------------------------------------------
    @property
    def propagation(self) -> str:
        """``"ts1"``, ``"tsinf"`` or ``"expectation"`` (settable)."""
        return self._propagation

    @propagation.setter
    def propagation(self, value: str) -> None:
        if value not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {value!r}")
        self._propagation = value

    @property
    def device(self) -> torch.device:
        return self.target_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.target_scale.dtype

    def _stacked_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = dict(self.stacked.named_parameters())
        buffers = dict(self.stacked.named_buffers())
        return {k: params[k] for k in self._param_names}, {k: buffers[k] for k in self._buffer_names}

    def _generator(self) -> torch.Generator:
        if self._gen is None or self._gen.device != self.device:
            self._gen = torch.Generator(device=self.device).manual_seed(self._seed)
        return self._gen

    @property
    def generator(self) -> torch.Generator:
        """The generator of the TS-1 assignments and the sampled noise, on the model's device
        (its state is what a checkpoint of a run saves to continue the same draws)."""
        return self._generator()

    def reset_generator(self, seed: int) -> None:
        """Re-seed the generator of the TS-1 assignments and the sampled noise."""
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self._seed = seed
        self._gen = torch.Generator(device=self.device).manual_seed(seed)

    def __getstate__(self) -> dict[str, Any]:
        # A torch.Generator does not pickle; a copy restarts it from the stored seed.
        state = self.__dict__.copy()
        state["_gen"] = None
        state["_lowered_cache"] = None  # rebuilt from the weights on the next rollout
        return state

    # -- members and their certificates -----------------------------------------------------
    def member(self, i: int) -> ODEWorldModel:
        """A standalone model of the members' class with member ``i``'s current weights."""
        if not isinstance(i, int) or not -self.size <= i < self.size:
            raise IndexError(f"member index must be an int in [0, {self.size}), got {i!r}")
        i %= self.size
        with torch.random.fork_rng(devices=[]):  # the constructor's random init is overwritten: leave the global RNG as it was
            model = self.member_class(**self._member_config)
        model = model.to(self.device, self.dtype)
        params, buffers = self._stacked_tensors()
        with torch.no_grad():
            own = dict(model.named_parameters(remove_duplicate=False))
            own.update(dict(model.named_buffers(remove_duplicate=False)))
            for name, stacked in {**params, **buffers}.items():
                if name.startswith("model."):
                    own[name[len("model."):]].copy_(stacked[i])
        model.eval()
        return model

    def certificate(self) -> "EnsembleCertificate":
        """Every member's ``Certificate`` (``member(i).certificate()``) and what they cover.

        For ``SimpleDynamics`` members (their certificates claim nothing) the object has no
        member certificates and ``evidence == "none"``, and its ``check`` passes with nothing
        to check; see ``EnsembleCertificate``.
        """
        certs = [self.member(i).certificate() for i in range(self.size)]
        if all(c.claim == "none" for c in certs):  # unconstrained members: the ensemble claims nothing either
            certs = []
        return EnsembleCertificate.issue(self, certs)

    # -- boundary validation ---------------------------------------------------------------
    def _check_x(self, x: Any, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {self.state_dim}), got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.state_dim:
            raise ValueError(f"{name} must have shape (batch, state_dim={self.state_dim}), got {tuple(x.shape)}")
        if x.dtype != self.dtype or x.device != self.device:
            raise ValueError(f"{name} is {x.dtype} on {x.device} but the ensemble is {self.dtype} on {self.device}; convert with {name}.to(ens.device, ens.dtype)")
        if x.shape[0] == 0:
            raise ValueError(f"{name} has an empty batch")
        if self.validate_finite and not _all_finite(x):
            raise ValueError(f"{name} contains NaN or inf")
        x_eq = self._stacked_tensors()[1].get("model.lyapunov.x_eq") if self.validate_finite else None
        if x_eq is not None:  # stable members: their accepted range, as each member checks it alone
            _check_stable_range(x, x_eq, name)

    def _check_u(self, u: Any, batch: int, name: str = "u") -> torch.Tensor | None:
        if self.action_dim == 0:
            if u is not None and (not isinstance(u, torch.Tensor) or u.ndim != 2 or u.shape[1] != 0):
                shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
                raise ValueError(f"the members are autonomous (action_dim=0): {name} must be None or (batch, 0), got {shape}")
            return None
        if u is None:
            return torch.zeros(batch, self.action_dim, device=self.device, dtype=self.dtype)
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape ({batch}, {self.action_dim}), got {type(u).__name__}")
        if u.shape != (batch, self.action_dim):
            raise ValueError(f"{name} must have shape (batch={batch}, action_dim={self.action_dim}), got {tuple(u.shape)}")
        if u.dtype != self.dtype or u.device != self.device:
            raise ValueError(f"{name} is {u.dtype} on {u.device} but the ensemble is {self.dtype} on {self.device}")
        if self.validate_finite and not _all_finite(u):
            raise ValueError(f"{name} contains NaN or inf")
        if self.validate_finite and "model.lyapunov.x_eq" in self._buffer_names:
            _check_stable_range(u, None, name)
        return u

    def _check_result(self, y: torch.Tensor, x: torch.Tensor, u: torch.Tensor | None, what: str) -> torch.Tensor:
        """With ``validate_finite``: a non-finite result from the finite inputs just checked is an
        overflow inside the members (huge float32 states through their networks); say so instead
        of returning NaN or inf. One reduction per call, as the input checks."""
        if self.validate_finite and self.raise_on_overflow and not _all_finite(y):
            raise _overflow_error(f"the ensemble's {what}", y, x, u)
        return y

    # -- the batched members -----------------------------------------------------------------
    def _features(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """The variance head's input: ``[sin q, cos q, x_rest, u]``, normalised (``(..., features)``)."""
        k = self._angle_dims
        q = x[..., :k].contiguous()  # sin and cos of a strided slice take ~8x longer
        parts = [torch.sin(q), torch.cos(q), x[..., k:]] if k else [x]
        if u is not None:
            parts.append(u)
        return (torch.cat(parts, dim=-1) - self.feature_shift) / self.feature_scale

    def _raw(self, x: torch.Tensor, u: torch.Tensor | None, shared: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All members at once: ``x: (E, b, n)`` (or ``(b, n)`` for every member with ``shared``)
        -> means ``(E, b, n)`` and unbounded normalised log-variances ``(E, b, n)`` or ``None``."""
        functorch = _FunctorchState.depth or torch._C._are_functorch_transforms_active()
        if self._stacked_mlp_members() and not functorch:
            return self._raw_stacked(x, u, shared)
        if not torch.is_grad_enabled() and not functorch and self._stacked_stable_members():
            return self._raw_stacked_stable(x, u, shared)  # no autograd: the members' own custom nodes are not needed
        params, buffers = self._stacked_tensors()
        base = self._base
        features = self._features(x, u) if self.probabilistic else None

        def one(p, b, xe, ue, fe):
            return functional_call(base, (p, b), (xe, ue, fe))

        dim = None if shared else 0
        in_dims = (0, 0, dim, None if u is None else dim, None if features is None else dim)
        with functorch_safe():
            return vmap(one, in_dims=in_dims, out_dims=(0, 0 if self.probabilistic else None))(params, buffers, x, u, features)

    def _stacked_mlp_members(self) -> bool:
        """Do the members compute ``x + integrator step of fhat([x, u])`` with ``fhat`` a plain
        MLP or a ``DynamicsNet`` (``SimpleDynamics``), which ``_raw_stacked`` runs without vmap?"""
        known = getattr(self, "_mlp_members", None)
        if known is None:
            base = self._base.model
            known = base.integrator in INTEGRATORS and base._inference_field() is not None  # on the meta base: structure only
            object.__setattr__(self, "_mlp_members", known)
        return known

    def _raw_stacked(self, x: torch.Tensor, u: torch.Tensor | None, shared: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``_raw`` for MLP members as batched matrix products over the stacked weights (the same
        function as the vmapped ``functional_call``, differentiable by ordinary autograd): one
        ``baddbmm`` per layer for all members instead of ``vmap``'s per-op batching, which at
        training sizes (256 rows per member) costs more than the products themselves."""
        params, buffers = self._stacked_tensors()
        if shared:
            x, u = self._shared_rows(x, u)
        fhat = self._stacked_fhat(params, buffers)
        mean = INTEGRATORS[self._base.model.integrator](lambda y: fhat(y, u), x, self.dt)
        return mean, self._stacked_logvar(params, x, u)

    def _stacked_stable_members(self) -> bool:
        """Are the members ``StableDynamics`` / ``StableControlledDynamics`` with the default
        ``V`` (a convex ICNN: no warp, no learned quadratic) and a ``DynamicsNet`` or MLP
        ``fhat``, which ``_raw_stacked_stable`` steps without ``vmap``?"""
        known = getattr(self, "_stable_members", None)
        if known is None:
            from .stable import StableControlledDynamics, StableDynamics

            base = self._base.model
            lyapunov = getattr(base, "lyapunov", None)
            fhat = getattr(base, "fhat", None)
            nets = [fhat.net if type(fhat) is DynamicsNet else fhat, getattr(base, "sigma_net", nn.Sequential())]
            # _stacked_mlp runs Linear layers on the stacked weights and anything else as is: only parameter-free modules
            plain = all(type(net) is nn.Sequential and all(type(m) is nn.Linear or next(m.parameters(), None) is None for m in net)
                        for net in nets)
            known = (type(base) in (StableDynamics, StableControlledDynamics) and base.integrator in INTEGRATORS
                     and lyapunov is not None and lyapunov.warp is None and lyapunov.L is None and plain)
            object.__setattr__(self, "_stable_members", known)
        return known

    def _raw_stacked_stable(self, x: torch.Tensor, u: torch.Tensor | None, shared: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``_raw`` for certified members without autograd: each member's ``step`` (eq. 10 at
        every stage, ``V`` and its gradient from the ICNN's centered pass, the input's slack
        ``sigma``, the guarantee-keeping rescale) computed for all members at once on their
        stacked weights with the same plain operations the members run under ``vmap``
        (``_value_and_grad_plain``, ``_outer``, ``_project_plain``, ``lyapunov_rescale``), so
        the same function to float rounding without ``vmap``'s per-operation batching."""
        from .icnn import _split_theta, _unflatten, _value_and_grad_plain, smooth_relu
        from .integrators import lyapunov_rescale
        from .lyapunov import _outer
        from .stable import _project_plain

        if shared:
            x, u = self._shared_rows(x, u)
        rows = x.shape[1]
        if x.device.type == "cpu" and rows > STABLE_BLOCK_ROWS:  # rows are independent: blocks that stay in cache
            parts = [self._raw_stacked_stable(x[:, i:i + STABLE_BLOCK_ROWS], None if u is None else u[:, i:i + STABLE_BLOCK_ROWS], False)
                     for i in range(0, rows, STABLE_BLOCK_ROWS)]
            return torch.cat([p[0] for p in parts], 1), None if parts[0][1] is None else torch.cat([p[1] for p in parts], 1)
        params, buffers = self._stacked_tensors()
        base = self._base.model
        lyapunov, g = base.lyapunov, base.lyapunov.g
        x_eq = buffers["model.lyapunov.x_eq"].unsqueeze(1)  # (E, 1, n)
        if base.alpha_bounds is None:
            alpha = base._alpha_init
        else:  # StableDynamics._rate, each member's own: (E, 1) against (E, rows)
            lo, hi = base.alpha_bounds
            alpha = torch.sigmoid(params["model.alpha_raw"]).mul(hi - lo).add(lo).unsqueeze(-1)
        W, b, U_raw = _split_theta(params["model.lyapunov.g.theta"], g.widths, g.in_dim)
        Ud = _unflatten(F.softplus(U_raw) * (1.0 / g.d), g._z_shapes)
        fhat = self._stacked_fhat(params, buffers)
        tangent = lyapunov.shift == "tangent"
        u_sq = None if u is None else (u * u).sum(-1)
        u_with_eq = None if u is None else torch.cat([u, u.new_zeros(u.shape[0], 1, u.shape[-1])], dim=1)  # fhat's (x_eq, 0) row

        def slack(z: torch.Tensor) -> torch.Tensor | None:  # sigma(z, u) = gamma sigmoid(s(z, u)) ||u||^2
            if u is None:
                return None
            gate = torch.sigmoid(self._stacked_mlp(params, "model.sigma_net.", base.sigma_net, torch.cat([z, u], -1))).squeeze(-1)
            return base.input_gain * gate * u_sq

        at_x: list[torch.Tensor | None] = []  # V(x) and sigma(x, u) from the first stage, for the rescale

        def field(z: torch.Tensor) -> torch.Tensor:  # StableDynamics._field_and_V
            precise = z is x
            z_with_eq = torch.cat([z, x_eq], dim=1)
            dx = z - x_eq
            dx_sq = (dx * dx).sum(-1)
            fhat_out = fhat(z_with_eq, u_with_eq)
            keep = torch.sign(dx_sq if u is None else dx_sq + u_sq)
            gx, dg = _value_and_grad_plain(z_with_eq, W, b, Ud, g.widths, g.d, True, precise)
            if not precise:
                gx = torch.cat([gx[:, :-1] - gx[:, -1:], gx[:, -1:]], dim=1)
            V, grad_V = _outer(gx, dg, dx, dx_sq, lyapunov.eps, lyapunov.d, tangent)[:2]
            sigma = slack(z)
            if precise and not at_x:
                at_x.extend([V, sigma])
            return _project_plain(fhat_out[:, :-1] - fhat_out[:, -1:], V, grad_V, alpha, sigma, keep)

        def V_of(y: torch.Tensor) -> torch.Tensor:  # LyapunovFunction.forward
            gy, dgy = _value_and_grad_plain(torch.cat([y, x_eq], dim=1), W, b, Ud, g.widths, g.d, tangent, True)
            dy = y - x_eq
            dy_sq = (dy * dy).sum(-1)
            shifted = gy[:, :-1]
            if tangent:
                shifted = shifted - (dy * dgy[:, -1:]).sum(-1)
            return torch.add(smooth_relu(shifted.masked_fill(dy_sq == 0, 0.0), lyapunov.d), dy_sq, alpha=lyapunov.eps)

        mean = INTEGRATORS[base.integrator](field, x, self.dt)
        if base.keep_guarantee:
            Vx, sigma_x = at_x if at_x else (None, slack(x))
            mean = lyapunov_rescale(x, mean, V_of, alpha, self.dt, x_eq, slack=sigma_x, Vx=Vx)
        return mean, self._stacked_logvar(params, x, u)

    def _shared_rows(self, x: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(batch, ...)`` rows as every member's: ``(E, batch, ...)`` views."""
        E = self.size
        return x.unsqueeze(0).expand(E, *x.shape), None if u is None else u.unsqueeze(0).expand(E, *u.shape)

    @staticmethod
    def _stacked_mlp(params: dict[str, torch.Tensor], prefix: str, modules: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        """``E`` stacked copies of the ``nn.Sequential`` ``modules`` on ``h: (E, rows, in)``:
        through the compiled training kernel where autograd records it (``mlp_train_native``),
        else one batched product per layer."""
        linear = [i for i, module in enumerate(modules) if isinstance(module, nn.Linear)]
        weights = [p for i in linear for p in (params[f"{prefix}{i}.weight"], params.get(f"{prefix}{i}.bias"))]
        if torch.is_grad_enabled() and mlp_train_native.usable(modules, h, weights):
            return mlp_train_native.stacked_mlp(modules, weights, h)
        return mlp_train_native.batched_mlp(modules, weights, h)  # activations: no parameters, so the meta modules run on real tensors

    def _stacked_logvar(self, params: dict[str, torch.Tensor], x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor | None:
        """The variance heads' unbounded output, every member at once (``None`` if not probabilistic)."""
        return self._stacked_mlp(params, "logvar_net.", self._base.logvar_net, self._features(x, u)) if self.probabilistic else None

    def _stacked_fhat(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]):
        """The members' ``fhat`` as one function ``(y: (E, rows, n), u: (E, rows, m) or None) ->
        (E, rows, n)`` over their stacked weights (a ``DynamicsNet`` or a plain MLP on ``[x, u]``)."""
        n, m = self.state_dim, self.action_dim
        fhat = self._base.model.fhat
        mlp = self._stacked_mlp
        if not isinstance(fhat, DynamicsNet):  # the paper's plain MLP on [x, u]
            return lambda y, u: mlp(params, "model.fhat.", fhat, y if u is None else torch.cat([y, u], -1))
        # DynamicsNet.forward, every member at once
        k = fhat.angle_dims
        input_scale, output_scale = buffers["model.fhat.input_scale"].unsqueeze(1), buffers["model.fhat.output_scale"].unsqueeze(1)

        def field(y: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
            scaled = (y[..., k:] if u is None else torch.cat([y[..., k:], u], -1)) / input_scale
            q = y[..., :k].contiguous()  # sin and cos of a strided slice take ~8x longer
            parts = [torch.sin(q), torch.cos(q)] if k else []
            parts.append(scaled[..., : n - k] if fhat.control_affine else scaled)
            out = mlp(params, "model.fhat.net.", fhat.net, torch.cat(parts, -1))
            if fhat.control_affine:
                drift, gain = out[..., :n], out[..., n:].unflatten(-1, (n, m))
                out = drift + (gain @ scaled[..., n - k:].unsqueeze(-1)).squeeze(-1)
            return out * output_scale

        return field

    def _bounded_logvar(self, raw: torch.Tensor) -> torch.Tensor:
        # PETS appendix A.1 (the authors' code): soft, differentiable bounds.
        lv = self.max_logvar - F.softplus(self.max_logvar - raw)
        return self.min_logvar + F.softplus(lv - self.min_logvar)

    def predict(self, x: torch.Tensor, u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every member on every row: means ``(E, batch, state_dim)`` and log-variances
        ``(E, batch, state_dim)`` of the next state (``None`` when not ``probabilistic``)."""
        self._check_x(x)
        u = self._check_u(u, x.shape[0])
        mean, raw = self._raw(x, u, shared=True)
        logvar = None if raw is None else self._bounded_logvar(raw) + 2.0 * self.target_scale.log()
        self._check_result(mean, x, u, "prediction")
        if logvar is not None:
            self._check_result(logvar, x, u, "prediction")
        return mean, logvar

    def _grouped(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """Row ``i`` of ``x: (batch, n)`` on member ``i % E``, each member on its own rows only."""
        E, B, n = self.size, x.shape[0], self.state_dim
        pad = -B % E
        if pad:  # repeat the last row (a valid state) to fill the last group; dropped below
            x = torch.cat([x, x[-1:].expand(pad, n)])
            u = None if u is None else torch.cat([u, u[-1:].expand(pad, u.shape[1])])
        xs = x.reshape(-1, E, n).transpose(0, 1).contiguous()  # (E, ceil(B / E), n)
        us = None if u is None else u.reshape(-1, E, u.shape[1]).transpose(0, 1).contiguous()
        mean, raw = self._raw(xs, us, shared=False)
        y = mean
        if raw is not None and self.sample:
            std = torch.exp(0.5 * self._bounded_logvar(raw)) * self.target_scale
            y = torch.addcmul(mean, std, torch.randn(mean.shape, generator=self._generator(), device=self.device, dtype=self.dtype))
        return y.transpose(0, 1).reshape(-1, n)[:B]

    def _step(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        if self._propagation == "expectation":
            return self._raw(x, u, shared=True)[0].mean(0)
        if self._propagation == "tsinf":
            return self._grouped(x, u)
        perm = torch.randperm(x.shape[0], generator=self._generator(), device=self.device)
        y = self._grouped(x[perm], None if u is None else u[perm])
        return torch.empty_like(y).index_copy(0, perm, y)  # row perm[j] gets y[j]

    def step(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """The next state under ``propagation``: ``x: (batch, state_dim)``, ``u: (batch,
        action_dim)`` -> ``(batch, state_dim)``. Differentiable in ``x`` and ``u``."""
        self._check_x(x)
        u = self._check_u(u, x.shape[0])
        return self._check_result(self._step(x, u), x, u, "step")

    def forward(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """Same as ``step``."""
        return self.step(x, u)

    #: ``rollout`` takes ``wrap_angles`` (``AngleWrappedModel`` passes its angles to it)
    rollout_wraps_angles = True

    def rollout(self, x0: torch.Tensor, actions: torch.Tensor | int, *, wrap_angles: Sequence[int] = ()) -> torch.Tensor:
        """``x0: (batch, state_dim)``, ``actions: (batch, horizon, action_dim)`` (or an int
        horizon when autonomous) -> ``(batch, horizon + 1, state_dim)``, ``x0`` first.

        Under ``"tsinf"`` row ``i`` stays on member ``i % E`` for the whole rollout; under
        ``"ts1"`` it gets a fresh random member at every step. ``wrap_angles``: state entries
        wrapped to ``[-pi, pi)`` after every step (``x0`` as given), as a planner over angle
        states wants (``AngleWrappedModel``). Without autograd, TS-infinity rollouts of
        members with an MLP field (``SimpleDynamics``) run lowered (``_inference_rollout``:
        on a CPU the members' networks and the variance head through the compiled kernel of
        ``mlp_native``, else batched matrix products with oneDNN's grouped convolution for
        the hidden layers): the same numbers to float rounding; a PETS plan's 1000 rows x 30
        Euler steps of 5 members of 100-100 SiLU nets, with sampling, take 6.5-6.6 ms against
        15.5-15.8 ms through ``_step`` (one thread, three runs of
        ``examples/benchmarks/bench_planners.py --repeats 9 --sections 4``). Certified members
        (``StableControlledDynamics``) run the whole rollout in the compiled kernel of
        ``rollout_native`` (float32 on a CPU, on torch's thread count), checked against their torch
        step once per lowering: 11.2 ms against 52.7 ms for the same plan's rollout."""
        self._check_x(x0, "x0")
        if isinstance(actions, int) and not isinstance(actions, bool):
            if actions < 0:
                raise ValueError(f"horizon must be >= 0, got {actions}")
            if self.action_dim:
                raise ValueError(f"an int horizon is only valid for autonomous members; pass actions of shape (batch, horizon, {self.action_dim})")
            horizon = actions
        else:
            if not isinstance(actions, torch.Tensor) or actions.ndim != 3 or actions.shape[0] != x0.shape[0] or actions.shape[2] != self.action_dim:
                shape = tuple(actions.shape) if isinstance(actions, torch.Tensor) else type(actions).__name__
                raise ValueError(f"actions must have shape (batch={x0.shape[0]}, horizon, action_dim={self.action_dim}), got {shape}")
            if self.action_dim and actions.shape[1]:
                self._check_u(actions.reshape(-1, self.action_dim), actions.shape[0] * actions.shape[1], "actions")
            horizon = actions.shape[1]
        wrap = sorted({int(i) % self.state_dim for i in wrap_angles})
        controls = actions if self.action_dim else None
        fast = self._inference_rollout(x0, controls, horizon, wrap)
        if fast is not None:
            return self._check_result(fast, x0, controls, "rollout")
        inputs = list(actions.unbind(1)) if self.action_dim else [None] * horizon
        states = [x0]
        x = x0
        for u in inputs:
            x = self._step(x, u)
            if wrap:
                x = x.clone()
                _wrap_rows_(x, wrap, dim=1)
            states.append(x)
        return self._check_result(torch.stack(states, dim=1), x0, controls, "rollout")

    # -- rollouts without autograd -----------------------------------------------------------
    def _lowered(self, compiled: bool = False) -> tuple[MLPField, MLPField | None] | CompiledRollout | None:
        """The members' fields and variance heads as stacked ``MLPField``s (``(E, out, in + 1)``
        weights; the heads' feature normalisation folded into their first layer, whose columns
        follow the field's first-layer input, which they read; their output ``(max_logvar -
        raw) / 2`` instead of ``raw``); with ``compiled``, and always for certified members, a
        ``CompiledRollout`` for the compiled whole rollout (the packed weights and, for certified
        members, everything that depends only on ``x_eq``; the variance head folded the same
        way); ``None`` where it does not apply. Rebuilt only when a weight changed since the
        last call."""
        params, buffers = self._stacked_tensors()
        tensors = {**params, **buffers}
        owned = (self.target_scale, self.feature_shift, self.feature_scale) + ((self.max_logvar, self.min_logvar) if self.probabilistic else ())
        sources = [*tensors.values(), *owned]
        compiled = compiled or not self._stacked_mlp_members()
        cache = self._lowered_cache or {}
        if compiled in cache and _weights_unchanged(cache[compiled][0], sources):
            return cache[compiled][1]
        base = self._base.model
        lowered = None
        if compiled and (self._stacked_mlp_members() or self._stacked_stable_members()):
            head = self._base.logvar_net if self.probabilistic else None
            lowered = CompiledRollout.lower(base, lambda name: tensors["model." + name], self.size, head=head,
                                          head_tensors=lambda name: tensors["logvar_net." + name], feature_shift=self.feature_shift,
                                          feature_scale=self.feature_scale, max_logvar=self.max_logvar, min_logvar=self.min_logvar)
        elif self._stacked_mlp_members():
            field = MLPField.lower(base.fhat, self.state_dim, self.action_dim, tensors=lambda name: tensors["model.fhat." + name])
            head = None
            if self.probabilistic:
                features = self.feature_shift.shape[0]
                head = MLPField.lower(self._base.logvar_net, features, 0, tensors=lambda name: tensors["logvar_net." + name])
                with torch.no_grad():  # (f - shift) / scale into the first layer: W' = W / scale, b' = b - W' shift
                    w0 = head.weights[0]
                    w0[..., :features] /= self.feature_scale
                    w0[..., features] -= (w0[..., :features] * self.feature_shift).sum(-1)
                    # and (max_logvar - raw) / 2 out of the last, as the sampling reads it
                    last = head.weights[-1]
                    last[..., -1] -= self.max_logvar
                    last.mul_(-0.5)
                    # The head reads the field's first-layer input (MLPField.rollout's head): its
                    # columns [sin q, cos q, x[k:], u, bias] are that input's rows, but for a
                    # control-affine field, after whose ones the rollout writes u.
                    if field is not None and field.control_affine and self.action_dim:
                        m = self.action_dim
                        head.weights[0] = torch.cat([w0[..., :-1 - m], w0[..., -1:], w0[..., -1 - m:-1]], -1).contiguous()
            lowered = None if field is None or (self.probabilistic and head is None) else (field, head)
        cache[compiled] = (_weights_snapshot(sources), lowered)
        self._lowered_cache = cache
        return lowered

    def _inference_rollout(self, x0: torch.Tensor, actions: torch.Tensor | None, horizon: int, wrap: list[int]) -> torch.Tensor | None:
        """TS-infinity rollout as a few batched matrix products per step (``MLPField`` with the
        members stacked) or, for certified members, one call of the compiled kernel
        (``CompiledRollout``, where it runs and agreed with the torch step), or ``None`` where
        only ``_step`` applies (TS-1 or expectation, a gradient wanted, a ``torch.func``
        transform active, members without a lowered form).

        Same function as stepping ``_grouped``: row ``i`` on member ``i % E`` (the rows padded
        with the last one to a multiple of ``E``), and with ``sample`` the same noise (one
        ``randn`` of shape ``(E, ceil(batch / E), state_dim)`` per step from the ensemble's
        generator, in step order), so results agree with ``_step``'s to float rounding."""
        if self._propagation != "tsinf" or _FunctorchState.depth or torch._C._are_functorch_transforms_active():
            return None
        if torch.is_grad_enabled() and (x0.requires_grad or (actions is not None and actions.requires_grad)
                                        or any(p.requires_grad for p in self.parameters())):
            return None
        mlp_members = self._stacked_mlp_members()
        if not (mlp_members or self._stacked_stable_members()):
            return None
        # The compiled whole rollout: always for certified members; for MLP members while torch
        # runs several threads (at one, MLPField runs their networks through the MLP kernel).
        # Decided before lowering: no packing for a device or dtype the kernel does not run.
        lowered = None
        if (not mlp_members or torch.get_num_threads() > 1) and horizon and len(x0) and CompiledRollout.usable(x0):
            lowered = self._lowered(compiled=True)
            if lowered is not None and not self._kernel_agrees(lowered, x0, actions):
                lowered = None
        compiled = lowered is not None
        if not compiled:
            lowered = self._lowered() if mlp_members else None
            if lowered is None:
                return None
        field, head = (None, None) if compiled else lowered
        E, B, n = self.size, x0.shape[0], self.state_dim
        pad = -B % E
        if pad:  # as _grouped: repeat the last row (a valid state) to fill the last group; dropped below
            x0 = torch.cat([x0, x0[-1:].expand(pad, n)])
            actions = None if actions is None else torch.cat([actions, actions[-1:].expand(pad, *actions.shape[1:])])
        b = x0.shape[0] // E
        xs = x0.reshape(b, E, n).transpose(0, 1).contiguous()  # (E, b, n): row j * E + e is (e, j)
        us = None if actions is None else actions.reshape(b, E, horizon, self.action_dim).transpose(0, 1).contiguous()
        add_noise = None
        if compiled:
            noise = self._scaled_noise(x0, horizon, b) if self.sample and self.probabilistic else None
            out = lowered(xs, us, horizon, noise, wrap)  # (E, b, horizon + 1, n)
            return out.transpose(0, 1).reshape(b * E, horizon + 1, n)[:B]
        if self.sample and head is not None:
            # The sample mean + std * eps with PETS's soft bounds (_bounded_logvar), in half
            # log-variance units so that each step is five small operations:
            #   std = scale * exp(lv / 2),  lv = min + softplus(max - min - softplus(max - raw)),
            #   lv / 2 = min / 2 + softplus(z / 2, beta=2) where softplus(z) / 2 = softplus(z / 2, beta=2)
            # (the same branch at softplus's threshold). The head's last layer is folded to give
            # (max - raw) / 2, and scale * exp(min / 2) into the noise (_scaled_noise).
            noise = self._scaled_noise(x0, horizon, b)
            half_range = (0.5 * (self.max_logvar - self.min_logvar)).reshape(n, 1)
            blocks: dict[int, torch.Tensor] = {}  # first row -> the block's noise

            def add_noise(t: int, rows: slice, x: torch.Tensor, u: torch.Tensor | None, x_next: torch.Tensor,
                          half_gap: torch.Tensor) -> None:
                # half_gap = (max - raw) / 2: the variance head on [sin q, cos q, x[k:], u, 1] of
                # the state before the step, evaluated by the field's rollout on its own
                # first-layer input (MLPField.rollout's head).
                if rows.start not in blocks:
                    blocks[rows.start] = noise[..., rows]
                half_lv = F.softplus(torch.sub(half_range, F.softplus(half_gap, 2.0)), 2.0)  # (lv - min) / 2
                x_next.addcmul_(half_lv.exp_(), blocks[rows.start][t])

        after_step = add_noise
        if wrap:
            def after_step(t: int, rows: slice, x: torch.Tensor, u: torch.Tensor | None, x_next: torch.Tensor, *head_out) -> None:
                if add_noise is not None:
                    add_noise(t, rows, x, u, x_next, *head_out)
                _wrap_rows_(x_next, wrap, dim=1)  # feature-major: (E, n, rows)

        out = field.rollout(xs, us, horizon, self.dt, self._base.model.integrator, after_step, head if add_noise else None)  # (E, b, horizon + 1, n)
        return out.transpose(0, 1).reshape(b * E, horizon + 1, n)[:B]

    def _scaled_noise(self, x0: torch.Tensor, horizon: int, b: int) -> torch.Tensor:
        """A lowered rollout's sampling noise, all of it drawn at once: one ``randn`` of shape
        ``(E, b, n)`` per step from the ensemble's generator, in step order (the draws of
        ``_grouped``), times ``target_scale * exp(min_logvar / 2)``; ``(horizon, E, n, b)``,
        feature-major as the lowered rollouts' states."""
        E, n = self.size, self.state_dim
        gen = self._generator()
        noise = x0.new_empty(horizon, E, b, n)
        for t in range(horizon):
            torch.randn((E, b, n), generator=gen, out=noise[t])
        return noise.mul_(self.target_scale * torch.exp(0.5 * self.min_logvar)).transpose(2, 3)

    def _kernel_agrees(self, kernel: CompiledRollout, x0: torch.Tensor, actions: torch.Tensor | None) -> bool:
        """``kernel.check`` against the members' torch step without autograd (stacked) on ``x0``'s
        first rows (every member, ``actions``' first step), once per lowering."""
        xs = x0[:16].unsqueeze(0).expand(self.size, -1, -1)
        us = None if actions is None else actions[:16, 0].unsqueeze(0).expand(self.size, -1, -1)

        def reference(x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
            with torch.no_grad():
                return self._raw(x, u, False)[0]

        return kernel.check(reference, xs, us)

    # -- training objective ------------------------------------------------------------------
    def _loss(self, x: torch.Tensor, u: torch.Tensor | None, x_next: torch.Tensor,
              nll_beta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, per-member loss (E,))`` on member-wise batches ``x, x_next: (E, b, n)``.

        Probabilistic: the Gaussian NLL per entry of the normalised residual
        ``r = (mean - x_next) / target_scale``, ``0.5 (r^2 exp(-lv) + lv + log 2 pi)``
        (PETS eq. 3), averaged over rows and entries, summed over members, plus
        ``0.01 (sum max_logvar - sum min_logvar)``. With ``nll_beta`` > 0 each entry's term is
        weighted by ``stop_grad(exp(lv))^beta`` (beta-NLL, Seitzer et al. 2022): the NLL's
        gradient on the mean is ``r / variance``, so the entries the variance head calls
        noisy stop teaching the mean; beta = 1 gives the mean the squared error's gradient,
        beta = 0 is the plain NLL. Deterministic: the mean of ``r^2``.
        """
        mean, raw = self._raw(x, u, shared=False)
        r = (mean - x_next) / self.target_scale
        if raw is None:
            per_member = (r * r).mean(dim=(1, 2))
            return per_member.sum(), per_member
        lv = self._bounded_logvar(raw)
        terms = 0.5 * (r * r * torch.exp(-lv) + lv + _LOG_2PI)
        if nll_beta:
            terms = terms * torch.exp(nll_beta * lv.detach())
        per_member = terms.mean(dim=(1, 2))
        return per_member.sum() + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum()), per_member

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, u: torch.Tensor | None, x_next: torch.Tensor) -> None:
        """Set the normalisations from data ``x, x_next: (N, state_dim)``, ``u: (N, action_dim)``:
        the members' ``DynamicsNet`` input/output scales (the same for every member, from
        ``(x_next - x) / dt``; kept if they are already calibrated), the residual scale
        ``target_scale`` and the variance head's feature statistics."""
        if x.shape[0] < 2:
            raise ValueError(f"calibrate needs at least 2 samples, got {x.shape[0]}")
        _, buffers = self._stacked_tensors()
        flag = buffers.get("model.fhat.calibrated")  # members whose fhat is a DynamicsNet
        if flag is not None and not bool(flag.all()):
            fhat = self.member(0).fhat
            fhat.calibrate(x, u, (x_next - x) / self.dt)
            for name, value in fhat.named_buffers():
                buffers[f"model.fhat.{name}"].copy_(value.unsqueeze(0).expand_as(buffers[f"model.fhat.{name}"]))
        self.target_scale.copy_(_spread(x_next - x))
        k = self._angle_dims
        raw = torch.cat([torch.sin(x[:, :k]), torch.cos(x[:, :k]), x[:, k:]] + ([u] if u is not None else []), dim=-1)
        self.feature_shift.copy_(raw.mean(0))
        self.feature_scale.copy_(_spread(raw))
        self.calibrated.fill_(True)

    # -- checkpoints -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-safe) that rebuild this architecture (``checkpoint.save_model``)."""
        return {
            "members": {"class": self.member_class.__name__, "config": self._member_config},
            "size": self.size,
            "propagation": self._propagation,
            "probabilistic": self.probabilistic,
            "sample": self.sample,
            "var_hidden": list(self.var_hidden),
            "seed": self._seed,
        }

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Write config, stacked weights and ``metadata`` to one file, atomically (``checkpoint.save_model``)."""
        from .checkpoint import save_model

        save_model(self, path, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> "Ensemble":
        """Rebuild an ensemble saved with ``save``."""
        from .checkpoint import load_model

        return load_model(path, map_location=map_location, expected_class=cls)

    def extra_repr(self) -> str:
        return (f"size={self.size}, member_class={self.member_class.__name__}, propagation={self._propagation!r}, "
                f"probabilistic={self.probabilistic}, sample={self.sample}, state_dim={self.state_dim}, action_dim={self.action_dim}")


# ----------------------------------------------------------------------------------------------
# certificates


_COVERAGE = (
    "Each member certificate covers that member's mean map x -> member(i).step(x, u) (and its ODE), "
    "for the weights hashed in it. Not covered: the Gaussian noise sampled in 'ts1'/'tsinf' propagation "
    "(sampled transitions carry no guarantee); 'ts1' switching between members (each step decreases its own "
    "member's V_i, but there is no common Lyapunov function across steps); the 'expectation' average of the "
    "members' steps. With sampling off (sample=False or probabilistic=False), a 'tsinf' rollout row is a "
    "trajectory of one member and is covered by that member's certificate."
)
_NO_GUARANTEE = (
    "The members ({cls}) are unconstrained networks: they carry no stability certificate, and neither "
    "does the ensemble. Build it from stable members (member_factory('stable', ...)) for one."
)


@dataclass
class EnsembleCheck:
    """Outcome of ``EnsembleCertificate.check``: one falsification report per member."""

    passed: bool
    reports: list[Any] = field(default_factory=list)
    applies: list[bool] = field(default_factory=list)
    reason: str = ""

    def summary(self) -> str:
        if not self.reports:
            return f"{'PASSED' if self.passed else 'FAILED'} -- nothing to check: {self.reason}"
        lines = [f"ensemble of {len(self.reports)}: {'PASSED' if self.passed else 'FAILED'}"]
        for i, (report, ok) in enumerate(zip(self.reports, self.applies)):
            lines.append(f"member {i}: " + report.summary().replace("\n", "\n  ") + ("" if ok else "  (weights changed since issue)"))
        return "\n".join(lines)


@dataclass
class EnsembleCertificate:
    """What an ``Ensemble`` guarantees: its members' own certificates, and their scope.

    Attributes:
        members: one ``Certificate`` per member (``member(i).certificate()``, each with member
            ``i``'s ``weights_hash``); empty when the members carry none.
        member_class: the members' class name.
        evidence: ``"per_member"`` (see each member's ``evidence``) or ``"none"``.
        covers: what the member certificates cover and what they do not (the sampled noise).
        weights_hash: ``model_hash`` of the whole ensemble at issue (class, config, dtype, weights).
        size: ``E``.
    """

    members: list[Certificate]
    member_class: str
    evidence: str
    covers: str
    weights_hash: str
    size: int

    @classmethod
    def issue(cls, ensemble: Ensemble, members: list[Certificate]) -> "EnsembleCertificate":
        name = ensemble.member_class.__name__
        return cls(
            members=list(members),
            member_class=name,
            evidence="per_member" if members else "none",
            covers=_COVERAGE if members else _NO_GUARANTEE.format(cls=name),
            weights_hash=model_hash(ensemble),
            size=ensemble.size,
        )

    @property
    def certified(self) -> bool:
        """True when every member carries a certificate."""
        return bool(self.members) and len(self.members) == self.size

    def applies_to(self, ensemble: Ensemble) -> bool:
        """True if ``ensemble`` is exactly the one this certificate was issued for (config, dtype, weights)."""
        return model_hash(ensemble) == self.weights_hash

    def summary(self) -> str:
        """A few readable lines: each member's claim and evidence (``members[i].summary()`` has the
        rest), what the member certificates leave uncovered, and for which weights."""
        if self.certified:
            head = f"Ensemble certificate: {self.size} members of {self.member_class}, each with its own certificate"
        elif self.members:
            head = f"Ensemble certificate: {len(self.members)} of {self.size} members of {self.member_class} certified"
        else:
            head = f"Ensemble certificate: {self.size} members of {self.member_class}, claims nothing"
        lines = [head]
        for i, cert in enumerate(self.members):
            claim = cert.summary().splitlines()[0].removeprefix("Certificate: ")
            evidence = ", ".join(cert.evidence) if cert.evidence else "none yet"
            rate = "unknown" if cert.alpha is None else f"{cert.alpha:.4g}"
            lines.append(f"  member {i}:  {claim}; alpha {rate}; evidence {evidence}")
        label = "covers:   " if self.members else "why:      "
        lines.append(textwrap.fill(self.covers, 100, initial_indent=f"  {label} ", subsequent_indent=" " * 13))
        lines.append(f"  model:     sha256 {self.weights_hash[:12] or '(none)'}... of the whole ensemble "
                     "(cert.applies_to(ensemble) checks it)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def check(self, ensemble: Ensemble, **falsify_kwargs: Any) -> EnsembleCheck:
        """Run every member's ``Certificate.check`` on ``ensemble.member(i)`` (``falsify`` with
        ``falsify_kwargs``); passed when each member's passes and applies to its weights."""
        if not isinstance(ensemble, Ensemble):
            raise TypeError(f"check needs the Ensemble the certificate is about, got {type(ensemble).__name__}")
        if not self.members:  # claims nothing: passes, saying there was nothing to check
            return EnsembleCheck(passed=self.applies_to(ensemble), reason=self.covers)
        if ensemble.size != len(self.members):
            raise ValueError(f"the certificate lists {len(self.members)} members, the ensemble has {ensemble.size}")
        reports, applies = [], []
        for i, cert in enumerate(self.members):  # one standalone model per member: a loop is fine here
            model = ensemble.member(i)
            applies.append(cert.applies_to(model))
            reports.append(cert.check(model, **falsify_kwargs))
        return EnsembleCheck(passed=all(applies) and all(r.passed for r in reports), reports=reports, applies=applies)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["members"] = [c.to_dict() for c in self.members]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EnsembleCertificate":
        d = dict(d)
        d["members"] = [Certificate.from_dict(c) for c in d.get("members", [])]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "EnsembleCertificate":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically."""
        text = self.to_json()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EnsembleCertificate":
        with open(path) as f:
            return cls.from_json(f.read())


# ----------------------------------------------------------------------------------------------
# training


def _as_data(t: Any, name: str, shape: tuple) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != len(shape) or any(s is not None and t.shape[i] != s for i, s in enumerate(shape)):
        want = ", ".join("N" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape ({want}), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _check_fit_options(batch_size: Any, lr: Any, val_fraction: Any, all_rows: str) -> None:
    """The options ``fit_ensemble`` and ``fit_ensemble_rollouts`` share (``all_rows``: what
    ``batch_size = 0`` takes)."""
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be an int >= 0 (0 = {all_rows}), got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def ensemble_optimizer(ensemble: Ensemble, *, lr: float = 1e-3, weight_decay: float = 0.0, rate_lr: float = 0.02) -> torch.optim.Optimizer:
    """``fit_ensemble``'s Adam over the stacked parameters (stable members' learned rates in a
    group of their own with step ``rate_lr``), fused where this torch has a fused Adam for the
    parameters' device: the per-parameter passes of the default implementation were a fifth
    of a training step of 5 members (1 thread, 256 rows each); fused, a fiftieth."""
    rate = dict(ensemble.named_parameters()).get("stacked.model.alpha_raw")  # stable members with a learned rate
    if rate is None:
        groups: list[dict[str, Any]] = [{"params": list(ensemble.parameters())}]
    else:
        groups = [{"params": [p for p in ensemble.parameters() if p is not rate]},
                  {"params": [rate], "lr": rate_lr, "weight_decay": 0.0}]
    try:
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused Adam for this device / dtype / torch version
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


def fit_ensemble(
    ensemble: Ensemble,
    x: torch.Tensor,
    u: torch.Tensor | None,
    x_next: torch.Tensor,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val_fraction: float = 0.1,
    patience: int | None = 20,
    seed: int = 0,
    progress: bool = True,
    bootstrap: bool = True,
    rate_lr: float = 0.02,
    nll_beta: float = 0.0,
) -> dict[str, Any]:
    """Train all members at once on transitions ``(x, u) -> x_next``; return the history.

    Every member gets its own bootstrap resample (with replacement) of the training split
    (PETS Section 4.1: the disagreement of the members is the epistemic uncertainty); each
    Adam step draws ``(E, batch_size)`` indices, one per member from its own resample, and
    does ONE vmapped forward/backward for all members, with one Adam over the stacked
    parameters. Loss: ``Ensemble._loss`` (the Gaussian NLL, or the squared error when not
    ``probabilistic``).

    Args:
        ensemble: the ``Ensemble`` (trained in place).
        x, x_next: ``(N, state_dim)`` states and next states; ``u: (N, action_dim)`` or
            ``None`` for autonomous members. Moved to the ensemble's device and dtype.
        epochs: passes over the training split.
        batch_size: rows per member per Adam step (``0`` = the whole split).
        lr, weight_decay: Adam's.
        val_fraction: held-out share; validation loss = mean squared error of the members'
            means on it (averaged over members); ``0`` uses the training loss.
        patience: stop after this many epochs without a better validation loss (``None``:
            never); the best weights are restored at the end either way.
        seed: seeds the split, the bootstraps and the shuffling.
        progress: a tqdm bar "fit ensemble" (it says at the end whether it stopped early).
        bootstrap: resample per member (default); ``False`` gives every member the whole
            training split (members then differ only by initialisation and shuffling).
        rate_lr: Adam's step for stable members' learned decay rates (their logits
            ``alpha_raw``, one per member), as ``fit``'s: at ``lr`` the rate would barely leave
            its start.
        nll_beta: beta of the beta-NLL (``Ensemble._loss``): 0 the plain Gaussian NLL, 0.5
            the usual choice, 1 the mean learns as under the squared error.

    Returns:
        ``{"train_loss": [...] (mean member loss per epoch), "val_loss": [...], "best_epoch",
        "best_val_loss", "epochs_run", "stopped_early", "n_train", "n_val", "seconds"}``.

    On the first fit (``ensemble.calibrated`` false) the normalisations are set from this
    data (``Ensemble.calibrate``), the same for every member.
    """
    if not isinstance(ensemble, Ensemble):
        raise TypeError(f"fit_ensemble trains an Ensemble, got {type(ensemble).__name__}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    _check_fit_options(batch_size, lr, val_fraction, "the whole split")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be an int >= 1 or None, got {patience!r}")
    if not (isinstance(rate_lr, (int, float)) and rate_lr > 0 and math.isfinite(rate_lr)):
        raise ValueError(f"rate_lr must be a finite number > 0, got {rate_lr!r}")
    if not (isinstance(nll_beta, (int, float)) and 0.0 <= nll_beta <= 1.0):
        raise ValueError(f"nll_beta must be a number in [0, 1], got {nll_beta!r}")
    n, m, E = ensemble.state_dim, ensemble.action_dim, ensemble.size
    x = _as_data(x, "x", (None, n))
    x_next = _as_data(x_next, "x_next", (x.shape[0], n))
    if m:
        if u is None:
            raise ValueError(f"the members have action_dim={m}: pass u of shape (N, {m})")
        u = _as_data(u, "u", (x.shape[0], m))
    elif u is not None and u.numel():
        raise ValueError("u given but the members are autonomous (action_dim=0); pass None")
    else:
        u = None
    N = x.shape[0]
    if N < 2:
        raise ValueError(f"need at least 2 transitions, got {N}")
    device, dtype = ensemble.device, ensemble.dtype
    x, x_next = x.to(device, dtype), x_next.to(device, dtype)
    u = None if u is None else u.to(device, dtype)
    if not bool(ensemble.calibrated):
        ensemble.calibrate(x, u, x_next)

    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(N, generator=gen)
    n_val = min(max(int(round(val_fraction * N)), 1), N - 1) if val_fraction > 0 else 0
    val_idx, train_idx = perm[:n_val].to(device), perm[n_val:]
    n_train = len(train_idx)
    if bootstrap:  # (E, n_train): member e's resample of the training split, with replacement
        members_idx = train_idx[torch.randint(n_train, (E, n_train), generator=gen)]
    else:
        members_idx = train_idx.unsqueeze(0).expand(E, n_train)
    bs = n_train if batch_size == 0 else min(batch_size, n_train)

    opt = ensemble_optimizer(ensemble, lr=lr, weight_decay=weight_decay, rate_lr=rate_lr)

    def validate() -> float:
        total = 0.0
        with torch.no_grad():
            for i in range(0, n_val, 4096):
                part = val_idx[i : i + 4096]
                xb, ub = x[part], None if u is None else u[part]
                mean = ensemble._raw(xb, ub, shared=True)[0]  # (E, b, n)
                total += float(((mean - x_next[part]) ** 2).mean()) * len(part)
        return total / n_val

    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "n_train": n_train, "n_val": n_val}
    best = (math.inf, -1, copy.deepcopy(ensemble.state_dict()))
    since_best, stopped_early = 0, False
    start = time.perf_counter()
    bar: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="fit ensemble", unit="epoch", leave=True)
    ensemble.train()
    for epoch in bar:
        # Each member walks its own resample in its own order: (E, n_train) row-wise shuffles.
        order = members_idx.gather(1, torch.rand(E, n_train, generator=gen).argsort(dim=1)).to(device)
        running = torch.zeros(E, device=device, dtype=dtype)
        steps = 0
        for i in range(0, n_train, bs):
            idx = order[:, i : i + bs]  # (E, b)
            objective, per_member = ensemble._loss(x[idx], None if u is None else u[idx], x_next[idx], nll_beta)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            running += per_member.detach() * idx.shape[1]
            steps += idx.shape[1]
        train_loss = float(running.mean()) / steps
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"ensemble training diverged at epoch {epoch} (loss {train_loss}); lower lr")
        val_loss = validate() if n_val else train_loss
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        if val_loss < best[0]:
            best, since_best = (val_loss, epoch, copy.deepcopy(ensemble.state_dict())), 0
        else:
            since_best += 1
        if progress:
            bar.set_postfix(train=f"{train_loss:.3g}", val=f"{val_loss:.3g}", best=f"{best[0]:.3g}")
        if patience is not None and since_best >= patience:
            stopped_early = True
            break
    if progress:
        runs = len(history["train_loss"])
        bar.set_description_str(f"fit ensemble: stopped early after {runs} epochs (best {best[1]})" if stopped_early
                                else f"fit ensemble: {runs} epochs (best {best[1]})")
        bar.close()
    ensemble.load_state_dict(best[2])
    ensemble.eval()
    history.update(best_epoch=best[1], best_val_loss=best[0], epochs_run=len(history["train_loss"]), stopped_early=stopped_early,
                   seconds=time.perf_counter() - start)
    return history


def _rollout_means(ensemble: Ensemble, x0: torch.Tensor, u: torch.Tensor | None, horizon: int, wrap: list[int]) -> torch.Tensor:
    """Every member rolls its own mean map from its own rows: ``x0: (E, b, n)``, ``u: (E, b, H,
    m)`` or ``None`` -> ``(E, b, H, n)``. The angles in ``wrap`` enter each step wrapped to
    ``[-pi, pi)`` (where the one-step data lie) and the predicted change is added to the
    unwrapped state, so the result compares with the unwrapped targets without a jump at pi."""
    x, states = x0, []
    for t in range(horizon):
        inp = x
        if wrap:
            inp = x.clone()
            _wrap_rows_(inp, wrap, dim=2)
        mean = ensemble._raw(inp, None if u is None else u[:, :, t], shared=False)[0]
        x = x + (mean - inp)
        states.append(x)
    return torch.stack(states, dim=2)


def fit_ensemble_rollouts(
    ensemble: Ensemble,
    x0: torch.Tensor,
    u: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 3e-3,
    wrap_angles: Sequence[int] = (),
    val_fraction: float = 0.1,
    evaluations: int = 10,
    seed: int = 0,
    progress: bool = True,
    bootstrap: bool = True,
) -> dict[str, Any]:
    """Fine-tune the members' means on multi-step windows of real trajectories; return the history.

    A one-step fit (``fit_ensemble``) leaves errors that compound over a planner's horizon; here
    each member rolls its own mean map (no sampling) ``H`` steps from a window's first state
    under the window's actions, and the loss is the squared error of all ``H`` predicted states
    against the real ones, normalised per entry by the one-step residual scale
    (``target_scale``, so at ``H = 1`` it is the one-step squared error), averaged over rows,
    steps and entries, summed over members. Each member draws from its own bootstrap resample
    of the windows; one batched forward/backward per Adam step for all members. The variance
    heads are not trained here (the loss does not involve them).

    Args:
        ensemble: a calibrated ``Ensemble`` (fitted first with ``fit_ensemble``), trained in place.
        x0: ``(W, state_dim)`` first states of ``W`` windows; ``u: (W, H, action_dim)`` their
            actions (``None`` for autonomous members); ``targets: (W, H, state_dim)`` the real
            states after each action, with angles unwrapped along the window (continuous).
        steps: Adam steps; ``batch_size``: windows per member per step (``0``: all).
        lr: Adam's step (stable members' decay rates use it too).
        wrap_angles: state entries that are angles: wrapped to ``[-pi, pi)`` before each model
            step, as the planner's rollouts do.
        val_fraction: held-out windows; the weights with the lowest held-out rollout error are
            kept, those before the fine-tune included (it can only improve the held-out error).
            Windows that start a step apart share most of their states, so this check guards
            against a fine-tune that diverges more than it measures generalisation.
            ``0``: the training windows are the check.
        evaluations: held-out checks over the run (at the start and every ``steps /
            evaluations`` steps).
        seed: seeds the split, the bootstraps and the batches.
        progress: a tqdm bar "fit rollouts".
        bootstrap: a resample of the windows per member (default).

    Returns:
        ``{"train_loss": [...] (per check, mean over members), "val_loss": [...] (at the checks,
        the first before any step), "best_step", "best_val_loss", "n_train", "n_val", "seconds"}``.
    """
    if not isinstance(ensemble, Ensemble):
        raise TypeError(f"fit_ensemble_rollouts trains an Ensemble, got {type(ensemble).__name__}")
    if not bool(ensemble.calibrated):
        raise ValueError("the ensemble is not calibrated: fit it with fit_ensemble first (it sets the normalisations)")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    _check_fit_options(batch_size, lr, val_fraction, "all windows")
    if not isinstance(evaluations, int) or evaluations < 1:
        raise ValueError(f"evaluations must be an int >= 1, got {evaluations!r}")
    n, m, E = ensemble.state_dim, ensemble.action_dim, ensemble.size
    x0 = _as_data(x0, "x0", (None, n))
    W = x0.shape[0]
    targets = _as_data(targets, "targets", (W, None, n))
    H = targets.shape[1]
    if H < 1:
        raise ValueError("targets must hold at least one step per window, got shape (W, 0, n)")
    if m:
        if u is None:
            raise ValueError(f"the members have action_dim={m}: pass u of shape (W, H, {m})")
        u = _as_data(u, "u", (W, H, m))
    elif u is not None and u.numel():
        raise ValueError("u given but the members are autonomous (action_dim=0); pass None")
    else:
        u = None
    if W < 2:
        raise ValueError(f"need at least 2 windows, got {W}")
    wrap = sorted({int(i) % n for i in wrap_angles})
    device, dtype = ensemble.device, ensemble.dtype
    x0, targets = x0.to(device, dtype), targets.to(device, dtype)
    u = None if u is None else u.to(device, dtype)

    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(W, generator=gen)
    n_val = min(max(int(round(val_fraction * W)), 1), W - 1) if val_fraction > 0 else 0
    val_idx, train_idx = perm[:n_val].to(device), perm[n_val:]
    n_train = len(train_idx)
    members_idx = train_idx[torch.randint(n_train, (E, n_train), generator=gen)] if bootstrap else train_idx.unsqueeze(0).expand(E, n_train)
    bs = n_train if batch_size == 0 else min(batch_size, n_train)
    check_idx = val_idx if n_val else train_idx.to(device)
    scale = ensemble.target_scale

    def member_losses(idx: torch.Tensor) -> torch.Tensor:  # idx: (E, b) -> (E,)
        predicted = _rollout_means(ensemble, x0[idx], None if u is None else u[idx], H, wrap)
        return (((predicted - targets[idx]) / scale) ** 2).mean(dim=(1, 2, 3))

    def held_out() -> float:
        with torch.no_grad():
            return float(member_losses(check_idx.unsqueeze(0).expand(E, -1)).mean())

    opt = ensemble_optimizer(ensemble, lr=lr, rate_lr=lr)
    history: dict[str, Any] = {"train_loss": [], "val_loss": [held_out()], "n_train": n_train, "n_val": n_val}
    best = (history["val_loss"][0], 0, copy.deepcopy(ensemble.state_dict()))
    every = max(1, steps // evaluations)
    start = time.perf_counter()
    bar: Any = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="fit rollouts", unit="step", leave=True)
    ensemble.train()
    running, since_check = torch.zeros((), device=device, dtype=dtype), 0
    for step in bar:
        columns = torch.randint(n_train, (E, bs), generator=gen)
        per_member = member_losses(members_idx.gather(1, columns).to(device))
        opt.zero_grad(set_to_none=True)
        per_member.sum().backward()
        opt.step()
        running += per_member.detach().mean()
        since_check += 1
        if step % every == 0 or step == steps:
            train_loss = float(running) / since_check
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"the rollout fine-tune diverged at step {step} (loss {train_loss}); lower lr")
            running, since_check = torch.zeros((), device=device, dtype=dtype), 0
            val_loss = held_out()
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            if val_loss < best[0]:
                best = (val_loss, step, copy.deepcopy(ensemble.state_dict()))
            if progress:
                bar.set_postfix(train=f"{train_loss:.3g}", val=f"{val_loss:.3g}", best=f"{best[0]:.3g}")
    if progress:
        bar.close()
    ensemble.load_state_dict(best[2])
    ensemble.eval()
    history.update(best_step=best[1], best_val_loss=best[0], seconds=time.perf_counter() - start)
    return history
