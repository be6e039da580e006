"""World models for the model-based loops, built for an env adapter, and their fitting on real transitions.

Kinds (``WORLD_MODELS``):

- ``"simple"``: ``SimpleDynamics``, an unconstrained network (no guarantee);
- ``"stable"``: ``StableControlledDynamics``: exponentially stable to the adapter's rest
  state without input and input-to-state stable with it, by construction;
- ``"ensemble"`` / ``"ensemble-simple"``: a probabilistic ensemble of simple members
  (PETS, Chua et al. 2018);
- ``"ensemble-stable"``: the same with ``StableControlledDynamics`` members, each keeping
  its own certificate;
- ``"clf"`` / ``"ensemble-clf"``: the simple model / ensemble (control-affine with the priors)
  for a plant that is not open-loop stable, certified instead by a learned control Lyapunov
  function fitted to it after every fit (``fit_control_lyapunov``; ``run_pets(...,
  control_lyapunov=True)``): a *stabilisability* certificate, for an ensemble about its
  members' mean map (``CLF_ENSEMBLE_CLAIM``);
- ``"certified"`` / ``"ensemble-certified"``: whichever certified kind the adapter calls for
  (``certified_kind``): the stable kinds where ``adapter.open_loop_stable``, the clf kinds
  otherwise.

With ``priors`` (default) the networks get the mechanical priors of ``DynamicsNet``
(sin/cos of the adapter's angles, affine in the action, SiLU).

Ensemble members step with the Euler integrator unless ``integrator=`` says otherwise:
``x' = x + dt f(x, u)`` is PETS' own model (a network that predicts the change of state),
and planning on it costs 0.23-0.25 CPU-s per MPPI plan on ``Pendulum-v1`` (K 300, 5
particles, H 30, 3 iterations, E 5) against 0.59-0.62 s with RK4's four evaluations of ``f``
(one thread). Single models keep RK4, with which the pendulum studies were measured.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from .adapters import EnvAdapter
from .data import TransitionBuffer

__all__ = ["WORLD_MODELS", "make_world_model", "world_model_for", "model_priors", "is_ensemble", "fit_transitions", "fit_model", "fit_rollouts",
           "certified_kind", "is_stabilisable_kind", "fit_control_lyapunov"]

_BASE_KINDS = ("simple", "stable", "clf")
#: world-model kinds by name (see the module docstring)
WORLD_MODELS = ("simple", "stable", "ensemble", "ensemble-simple", "ensemble-stable", "clf", "ensemble-clf", "certified",
                "ensemble-certified")


def _member_factory(kind: str, state_dim: int, action_dim: int, dt: float, kwargs: dict[str, Any]) -> Callable[[], torch.nn.Module]:
    from lyagym.learned_models import SimpleDynamics, StableControlledDynamics

    if kind in ("simple", "clf"):  # a clf model is a simple one; its certificate is fitted beside it
        kwargs = {k: v for k, v in kwargs.items() if k != "x_eq"}
        return lambda: SimpleDynamics(state_dim, action_dim, dt=dt, **kwargs)
    return lambda: StableControlledDynamics(state_dim, action_dim, dt=dt, **kwargs)


def make_world_model(kind: str, state_dim: int, action_dim: int, dt: float, *, seed: int = 0,
                     device: str | torch.device = "cpu", ensemble_size: int = 5, propagation: str = "tsinf",
                     **kwargs: Any):
    """A fresh controlled world model ``kind`` (one of ``WORLD_MODELS``), seeded, on ``device``.

    ``kwargs`` go to the (member) model class: ``hidden``, the priors ``angle_dims``,
    ``control_affine``, ``activation``, ``integrator`` (ensembles: ``"euler"`` unless given,
    single models: the class default ``"rk4"``); ``x_eq`` for the stable kinds.
    """
    if kind not in WORLD_MODELS:
        raise ValueError(f"unknown world model {kind!r}; choose one of {list(WORLD_MODELS)}")
    if kind in ("certified", "ensemble-certified"):
        raise ValueError(f"world model {kind!r} is chosen by the env's adapter: use world_model_for(adapter, {kind!r})")
    torch.manual_seed(seed)
    if kind in _BASE_KINDS:
        return _member_factory(kind, state_dim, action_dim, dt, kwargs)().to(device)
    from lyagym.learned_models import Ensemble

    member = "stable" if kind == "ensemble-stable" else ("clf" if kind == "ensemble-clf" else "simple")
    kwargs = {"integrator": "euler", **kwargs}
    return Ensemble(_member_factory(member, state_dim, action_dim, dt, kwargs), size=ensemble_size,
                    propagation=propagation, seed=seed).to(device)


def model_priors(source: EnvAdapter | int, enabled: bool = True) -> dict[str, Any]:
    """Options of ``make_world_model``: the mechanical priors of its networks
    (``lyagym.learned_models.DynamicsNet``: sin/cos of the angles, affine in the actions,
    SiLU) when ``enabled`` (the default), else none (the paper's plain MLP).

    ``source``: an adapter (its leading angle entries), or a number of leading angles.

    Measured on the pendulum swing-up (``lyagym reproduce mbrl-swingup`` docstring): on the
    double pendulum the plain MLP's one-step validation error stays near 1e-2 and PETS with
    2,400 real steps never swings up, with the priors it does after 600-1,800 (9 of 10 runs).
    On the single pendulum PETS reaches SAC's return after 400 real steps on 9 of 10 runs
    with the priors, 600-800 with the plain MLP.
    """
    if not enabled:
        return {}
    angles = source.leading_angles if isinstance(source, EnvAdapter) else int(source)
    return {"angle_dims": int(angles), "control_affine": True, "activation": "silu"}


def world_model_for(adapter: EnvAdapter, kind: str, *, priors: bool = True, seed: int = 0, device: str | torch.device = "cpu",
                    **kwargs: Any):
    """``make_world_model`` for ``adapter``'s state, action and ``dt``; the stable kinds are
    certified towards ``adapter.rest_state`` (the plant's rest state, not the origin of
    whatever coordinates the env uses)."""
    if kind in ("certified", "ensemble-certified"):
        kind = certified_kind(adapter, ensemble=kind.startswith("ensemble"))
    options = {**model_priors(adapter, priors), **kwargs}
    if is_stabilisable_kind(kind) and not options.get("control_affine"):
        raise ValueError(f"world model {kind!r} needs a control-affine network (the priors, or control_affine=True)")
    if "stable" in kind and "x_eq" not in options and adapter.rest_state is not None:
        options["x_eq"] = [float(v) for v in adapter.rest_state]
    return make_world_model(kind, adapter.state_dim, adapter.action_dim, adapter.dt, seed=seed, device=device, **options)


def certified_kind(adapter: EnvAdapter, *, ensemble: bool = True) -> str:
    """The certified world-model kind for ``adapter``'s plant: ``"ensemble-stable"`` /
    ``"stable"`` (stable without input, ISS with it) where it is ``open_loop_stable``, else
    ``"ensemble-clf"`` / ``"clf"`` (a stabilisability certificate: a stable model cannot
    represent an open-loop unstable plant)."""
    base = "stable" if adapter.open_loop_stable else "clf"
    return f"ensemble-{base}" if ensemble else base


def is_stabilisable_kind(kind: str) -> bool:
    """Whether world-model ``kind`` is certified by a control Lyapunov function."""
    return kind in ("clf", "ensemble-clf")


def data_box(adapter: EnvAdapter, buffer: TransitionBuffer, *, quantile: float = 0.01, margin: float = 0.05) -> np.ndarray:
    """``(n, 2)``: the box of the real states seen (per entry the ``quantile`` to ``1 - quantile``
    range, widened by ``margin`` of its width), made to hold the rest state: a learned model is
    trusted only near its data, so a control Lyapunov function is certified there."""
    x = buffer.tensors("cpu", torch.float64)[0].numpy()
    lo, hi = np.quantile(x, quantile, axis=0), np.quantile(x, 1 - quantile, axis=0)
    rest = adapter.rest_state if adapter.rest_state is not None else (lo + hi) / 2
    width = np.maximum(hi - lo, 1e-3)
    lo, hi = np.minimum(lo, rest) - margin * width, np.maximum(hi, rest) + margin * width
    return np.stack([lo, hi], -1)


#: what a clf ensemble's certificate is about: the members' mean map (``"every"`` member certified
#: nothing on ``InvertedPendulum-v5``: their equilibria differ; see ``control_lyapunov``)
CLF_ENSEMBLE_CLAIM = "mean"


def fit_control_lyapunov(clf, model, buffer: TransitionBuffer, adapter: EnvAdapter, *, fit_steps: int = 100, seed: int = 0,
                         hidden: tuple[int, ...] = (32, 32), ensemble: str = CLF_ENSEMBLE_CLAIM):
    """Fit a control Lyapunov function to ``model`` (control-affine; an ensemble: one ``V`` for
    every member) on the box of the data (``data_box``) towards ``adapter.rest_state``, with the
    adapter's action bounds as the input box: the model's equilibrium near the rest state, LQR
    ``P``, ``fit_steps`` steps of the correction, the certified level ``rho``.

    ``clf``: the ``ControlLyapunov`` to refit in place (a planner's terminal cost keeps pointing
    at it), or ``None`` for a new one. Returns ``(clf, info)`` with ``info`` the certified
    ``rho``, the share of the box it covers and the linearisation's LQR rate. ``ensemble``: see
    ``ControlLyapunov`` (default: the claim is about an ensemble's mean map).
    """
    from lyagym.learned_models.control_lyapunov import ControlLyapunov

    box = data_box(adapter, buffer)
    rest = adapter.rest_state if adapter.rest_state is not None else box.mean(1)
    with torch.random.fork_rng(devices=[]):  # the correction's init draws from its own seed, not the loop's stream
        torch.manual_seed(seed)
        fresh = ControlLyapunov(adapter.state_dim, adapter.action_dim, box=box, u_low=adapter.action_low, u_high=adapter.action_high,
                                x_eq=rest, angle_dims=adapter.angle_dims, hidden=hidden, ensemble=ensemble)
    fresh = fresh.to(model.device, model.dtype)
    if clf is None:
        clf = fresh
    else:
        clf.load_state_dict(fresh.state_dict())
    info = clf.initialise(model)
    if info["stabilisable"]:
        info.update(clf.fit(model, steps=fit_steps, seed=seed))
    info["rho"] = float(clf.rho)
    info["box_fraction"] = clf.box_fraction()
    return clf, info


def is_ensemble(model) -> bool:
    """Whether ``model`` is a ``lyagym.learned_models.Ensemble``."""
    try:
        from lyagym.learned_models import Ensemble
    except ImportError:
        return False
    return isinstance(model, Ensemble)


def fit_transitions(model: torch.nn.Module, buffer: TransitionBuffer, *, epochs: int = 60, batch_size: int = 256,
                    lr: float = 1e-3, val_fraction: float = 0.1, patience: int = 15, seed: int = 0,
                    progress: bool = True, nll_beta: float = 0.0) -> dict[str, Any]:
    """Fit a controlled world model to real transitions.

    A single model: ``lyagym.learned_models.fit`` with each transition as a one-step
    trajectory, so the loss is ``||model.step(x, u) - x'||^2`` through the model's own
    integrator at the env's ``dt``. An ensemble: ``fit_ensemble`` (Gaussian NLL, a
    bootstrap resample per member, all members in one batched computation; ``nll_beta``:
    its beta-NLL weighting). Returns the
    history (validation split, early stopping, best weights restored).
    """
    if len(buffer) < 2:
        raise ValueError(f"need at least 2 transitions to fit, got {len(buffer)}")
    x, u, y = buffer.tensors(model.device, model.dtype)
    if is_ensemble(model):
        from lyagym.learned_models import fit_ensemble

        return fit_ensemble(model, x, u, y, epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
                            patience=patience, seed=seed, progress=progress, nll_beta=nll_beta)
    from lyagym.learned_models import fit

    states = torch.stack([x, y], dim=1)  # (N, 2, n)
    return fit(model, (states, u.unsqueeze(1)), epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
               patience=patience, seed=seed, progress=progress)


def fit_model(model, buffer: TransitionBuffer, config, progress: bool) -> float:
    """Fit ``model`` with ``config``'s settings (``MBRLConfig``); returns the best validation loss.

    With little data an epoch is one or two batches, so epochs (and patience) are scaled up
    until ``fit_epochs`` epochs make at least ``fit_steps`` Adam steps.
    """
    batches = math.ceil(len(buffer) * (1 - config.val_fraction) / config.batch_size) if config.batch_size else 1
    scale = max(1, math.ceil(config.fit_steps / (max(1, batches) * config.fit_epochs)))
    lr = config.ensemble_lr if is_ensemble(model) and config.ensemble_lr is not None else config.lr
    history = fit_transitions(model, buffer, epochs=config.fit_epochs * scale, batch_size=config.batch_size, lr=lr,
                              val_fraction=config.val_fraction, patience=config.patience * scale, seed=config.seed,
                              progress=progress, nll_beta=config.ensemble_nll_beta)
    if config.rollout_fit_steps and is_ensemble(model):
        fit_rollouts(model, buffer, steps=config.rollout_fit_steps, horizon=config.horizon, lr=config.rollout_fit_lr,
                     val_fraction=config.val_fraction, seed=config.seed, progress=progress)
    losses = history.get("val_loss") or history.get("train_loss")
    return float(np.min(losses)) if losses else float("nan")


def fit_rollouts(model, buffer: TransitionBuffer, *, steps: int, horizon: int, lr: float = 3e-3, val_fraction: float = 0.1,
                 seed: int = 0, progress: bool = True) -> dict[str, Any] | None:
    """Fine-tune an ensemble (fitted one step at a time) on the buffer's windows of ``horizon``
    real steps (``TransitionBuffer.windows``, one starting at every transition), each member
    rolling its own mean with the buffer's angles wrapped as a planner's rollouts do
    (``fit_ensemble_rollouts``); ``None`` where the buffer holds fewer than 2 windows."""
    from lyagym.learned_models import fit_ensemble_rollouts

    x0, u, targets = buffer.windows(horizon)
    if len(x0) < 2:
        return None
    as_tensor = partial(torch.as_tensor, device=model.device, dtype=model.dtype)
    return fit_ensemble_rollouts(model, as_tensor(x0), as_tensor(u) if buffer.action_dim else None, as_tensor(targets), steps=steps,
                                 lr=lr, wrap_angles=buffer.angle_dims, val_fraction=val_fraction, seed=seed, progress=progress)
