"""A world model whose every prediction is a LyaNet inference (Rodriguez et al. 2022).

``LyaNetWorldModel`` regresses the next state (or the state derivative) of a system from
``(state, action)``. Each prediction solves the inference ODE of ``neural_ode.py``

    eta(0) = 0,   deta/dt = f_theta(eta, [x, u], t),   y_hat = eta(t_exit)

in normalised target units, trained with the Lyapunov loss on the regression potential
``V_y(eta) = ||eta - y||^2`` (eq. 11-12) so that ``V_y(eta(t)) <= V_y(0) exp(-kappa t)``: the
inference converges exponentially to its prediction, and a planner may stop it early
(``early_exit_t < 1``) for a cheaper, slightly less accurate step.

The guarantee is about *inference* (the ODE inside one prediction), not about the
stability of the predicted state dynamics. It is measured, never proven:
``certificate()`` reports the convergence rate observed on held-out inputs, the share of
inference-path points where the decrease condition (eq. 10) holds -- the premise of
Theorem 3 -- and the Theorem-3 radius (with a sampled Lipschitz estimate), saying
explicitly when the premise fails and the radius is only indicative; evidence ``"empirical"``.

Fig. 5 protocol (``lyagym reproduce lyanet-pendulum``, seeds 0 / 1): average rollout error
7.4e-7 / 2.1e-6 at n = 1 (``SimpleDynamics`` 4.8e-5 / 1.3e-5) with a measured inference rate
on held-out inputs of min 13.2 / 9.9, p5 13.8 / 12.5 (kappa = 12); 8.9e-4 / 3.0e-4 at n = 2
(``SimpleDynamics`` 7.7e-4 / 3.5e-4), where inference converges more slowly than trained
(rate min 3.9 / 3.2, p5 7.1 / 6.6, median 11.0 / 10.1; only 29% / 14% of inputs reach kappa).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from .certificate import Certificate, model_hash
from .files import atomic_write
from .lyanet import FitHistory, convergence_rates, decrease_along_paths, fit, lipschitz_estimate, regression_box, robustness_radius
from .lyapunov_loss import _check_kappa
from .neural_ode import NeuralODE
from .world_model import rollout as _rollout

__all__ = ["LyaNetWorldModel"]

_TARGETS = ("next_state", "derivative")
_INTEGRATORS = ("euler", "rk4")


class LyaNetWorldModel(nn.Module):
    """``x_{k+1} = step(x_k, u_k)`` predicted by a LyaNet inference ODE; a ``WorldModel``.

    Args:
        state_dim: dimension of the state ``x`` (>= 1).
        action_dim: dimension of the action ``u`` (0 for an autonomous system).
        dt: time step of ``step`` (seconds, > 0).
        target: ``"next_state"`` (learn ``(x_{k+1} - x_k) / dt``, a residual, from transition
            data) or ``"derivative"`` (learn ``xdot = g(x, u)`` and integrate it over ``dt``
            with ``integrator``).
        integrator: ``"euler"`` or ``"rk4"`` (derivative target only; ``u`` held constant).
        width, depth: the MLP of the inference dynamics ``f_theta``.
        kappa: convergence rate of the Lyapunov loss (> 0). It sets the precision: at best
            ``||eta(1) - y||^2 = exp(-kappa) ||y||^2`` (the Lyapunov loss is zero as soon as
            the rate is reached), so ``kappa = 12`` allows a relative squared error of ~6e-6;
            the paper's classification setting ``kappa = 4`` stops at ~2e-2.
        method, step_size: fixed-step solver of the inference ODE; with rate ``kappa`` the
            ODE contracts at about ``kappa / 2``, and rk4 needs ``step_size * kappa / 2 <~ 1``
            to follow it.
        early_exit_t: inference time ``t in (0, 1]`` used by ``step``; ``< 1`` is early
            termination (fewer solver steps).
        time_dependent: feed ``t`` to ``f_theta`` (eq. 2).
        dtype, device: of the parameters.

    Training (``fit``) defaults to our two extensions of Alg. 1 for regression, without
    which the fixed point -- the prediction -- is barely trained (measured on the 1-link
    pendulum, Fig. 5 protocol: rollout error 1.7e-2 with the paper's cube and weighting vs
    about 2e-5 with these): ``sampler="targets"`` draws ``eta`` around each target at every
    scale (``lyanet.sample_around_targets``) and ``weighting="sqrt"`` divides eq. 12 by
    ``sqrt(V)`` so every scale pulls on ``f`` equally (``lyanet.WEIGHTINGS``).
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int = 0,
        *,
        dt: float = 0.01,
        target: str = "next_state",
        integrator: str = "rk4",
        width: int = 128,
        depth: int = 2,
        kappa: float = 12.0,
        method: str = "rk4",
        step_size: float = 0.1,
        early_exit_t: float = 1.0,
        time_dependent: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(state_dim, int) or state_dim < 1:
            raise ValueError(f"state_dim must be a positive int, got {state_dim!r}")
        if not isinstance(action_dim, int) or action_dim < 0:
            raise ValueError(f"action_dim must be an int >= 0, got {action_dim!r}")
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
        if target not in _TARGETS:
            raise ValueError(f"target must be one of {_TARGETS}, got {target!r}")
        if integrator not in _INTEGRATORS:
            raise ValueError(f"integrator must be one of {_INTEGRATORS}, got {integrator!r}")
        self.state_dim, self.action_dim, self.dt = state_dim, action_dim, float(dt)
        self.target, self.integrator = target, integrator
        self.kappa = _check_kappa(kappa)
        self.early_exit_t = self._check_t(early_exit_t)
        self.config = dict(
            state_dim=state_dim, action_dim=action_dim, dt=float(dt), target=target, integrator=integrator, width=width,
            depth=depth, kappa=float(kappa), method=method, step_size=float(step_size), early_exit_t=float(early_exit_t),
            time_dependent=bool(time_dependent),
        )
        in_dim = state_dim + action_dim
        self.ode = NeuralODE.mlp(in_dim, state_dim, width=width, depth=depth, method=method, step_size=step_size,
                                 time_dependent=time_dependent)
        # Normalisation of inputs and targets, set by ``fit`` from the training data.
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.register_buffer("out_mean", torch.zeros(state_dim))
        self.register_buffer("out_std", torch.ones(state_dim))
        self.half_width: float | None = None
        self.history: FitHistory | None = None
        self.finetune_history: FitHistory | None = None
        self._heldout: tuple[torch.Tensor, torch.Tensor] | None = None
        self.to(device=device, dtype=dtype)

    @staticmethod
    def _check_t(t: float) -> float:
        if not (isinstance(t, (int, float)) and 0.0 < float(t) <= 1.0):
            raise ValueError(f"early_exit_t must be in (0, 1], got {t!r}")
        return float(t)

    @property
    def device(self) -> torch.device:
        return self.in_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.in_mean.dtype

    # ---- prediction -------------------------------------------------------------------

    def _check_inputs(self, x: torch.Tensor, u: torch.Tensor | None) -> None:
        """Type, shape, dtype/device and finiteness of ``x: (batch, state_dim)`` and ``u``, each
        named in its error; the finiteness of both costs one host sync."""
        tensors = [("x", x, self.state_dim)] + ([("u", u, self.action_dim)] if self.action_dim else [])
        for name, t, dim in tensors:
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {dim}), got {type(t).__name__}")
        if x.ndim != 2 or x.shape[1] != self.state_dim:
            raise ValueError(f"x must have shape (batch, state_dim={self.state_dim}), got {tuple(x.shape)}")
        if self.action_dim == 0:
            if u is not None and u.numel() != 0:
                raise ValueError(f"this model is autonomous (action_dim=0); got u of shape {tuple(u.shape)}")
        elif u is None or u.shape != (x.shape[0], self.action_dim):
            raise ValueError(f"u must have shape (batch={x.shape[0]}, action_dim={self.action_dim}), got {None if u is None else tuple(u.shape)}")
        for name, t, _ in tensors:
            if t.dtype != self.dtype or t.device != self.device:
                raise ValueError(f"{name} is {t.dtype} on {t.device} but the model is {self.dtype} on {self.device}; "
                                 f"convert with {name}.to(model.device, model.dtype) or call model.to(...)")
        finite = torch.stack([torch.isfinite(t).all() for _, t, _ in tensors]).tolist()
        for (name, _, _), ok in zip(tensors, finite):
            if not ok:
                raise ValueError(f"{name} contains NaN or inf")

    def _predict(self, x: torch.Tensor, u: torch.Tensor | None, t: float) -> torch.Tensor:
        """``predict`` on validated inputs (the integrator's stages: no check, no host sync)."""
        z = x if self.action_dim == 0 else torch.cat([x, u], dim=-1)
        return self.ode((z - self.in_mean) / self.in_std, t) * self.out_std + self.out_mean

    def predict(self, x: torch.Tensor, u: torch.Tensor | None = None, *, t: float | None = None) -> torch.Tensor:
        """The learned target at ``(x, u)``, ``(batch, state_dim)``: ``(x_{k+1} - x_k) / dt``
        or ``xdot``. ``t`` overrides ``early_exit_t`` (inference stopped at time ``t``)."""
        t = self.early_exit_t if t is None else self._check_t(t)
        self._check_inputs(x, u)
        return self._predict(x, u, t)

    def derivative(self, x: torch.Tensor, u: torch.Tensor | None = None, *, t: float | None = None) -> torch.Tensor:
        """``xdot = g(x, u)``, ``(batch, state_dim)``; only for ``target="derivative"``."""
        if self.target != "derivative":
            raise RuntimeError("derivative() needs a model fitted with target='derivative'; this one predicts next states")
        return self.predict(x, u, t=t)

    def step(self, x: torch.Tensor, u: torch.Tensor | None = None, *, t: float | None = None) -> torch.Tensor:
        """State one ``dt`` later, ``(batch, state_dim)``; differentiable in ``x`` and ``u``.

        ``x``, ``u`` must be tensors of the model's dtype and device, finite (``ValueError``
        naming the argument otherwise)."""
        t = self.early_exit_t if t is None else self._check_t(t)
        self._check_inputs(x, u)
        if self.target == "next_state":
            return x + self.dt * self._predict(x, u, t)
        g = lambda s: self._predict(s, u, t)  # noqa: E731 -- u is held over the step
        if self.integrator == "euler":
            return x + self.dt * g(x)
        h = self.dt
        k1 = g(x)
        k2 = g(x + 0.5 * h * k1)
        k3 = g(x + 0.5 * h * k2)
        k4 = g(x + h * k3)
        return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    def rollout(self, x0: torch.Tensor, actions: torch.Tensor | int) -> torch.Tensor:
        """``(batch, horizon + 1, state_dim)`` states from ``x0`` under ``actions``."""
        return _rollout(self, x0, actions)

    forward = step

    # ---- training ---------------------------------------------------------------------

    def fit(
        self,
        x: torch.Tensor,
        u: torch.Tensor | None,
        target: torch.Tensor,
        *,
        method: str = "monte_carlo",
        epochs: int = 50,
        batch_size: int = 256,
        lr: float = 1e-3,
        n_samples: int = 16,
        sampler: str = "targets",
        weighting: str = "sqrt",
        kappa_max: float | None = None,
        finetune_epochs: int | None = None,
        finetune_weighting: str = "relative",
        heldout_fraction: float = 0.1,
        seed: int = 0,
        progress: bool = True,
    ) -> FitHistory:
        """Fit from transitions.

        Args:
            x: ``(n, state_dim)`` states; u: ``(n, action_dim)`` actions (``None`` if autonomous).
            target: ``(n, state_dim)``: the next states ``x_{k+1}`` for ``target="next_state"``,
                the derivatives ``xdot`` for ``target="derivative"``.
            method: ``"monte_carlo"`` (Alg. 1), ``"path_integral"`` (Alg. 2), or the
                baselines ``"backprop"`` / ``"adjoint"`` (plain regression through the solver).
            sampler, weighting, kappa_max: of the Monte Carlo loss (``lyanet.fit``);
                ``"hypercube"`` / ``"absolute"`` are the paper's choices.
            finetune_epochs: a second phase of this many epochs at ``lr / 10`` with
                ``finetune_weighting`` (default ``"relative"``: it sharpens the fixed point once
                ``"sqrt"`` has shaped the field; 1-link pendulum: rate p5 13.8 >= kappa 12).
                ``None``: ``epochs // 4``; ``0``: none. Lyapunov methods only.
            Calling ``fit`` again continues from the current weights (normalisation and the
            held-out split are recomputed from the data given). Returns the first phase's
            record; the second's is ``finetune_history``.
            heldout_fraction: share of the data kept out of training, used by
                ``certificate()`` to measure convergence on unseen inputs.
        """
        if not isinstance(target, torch.Tensor) or target.ndim != 2 or target.shape[1] != self.state_dim or target.shape[0] != x.shape[0]:
            raise ValueError(f"target must have shape (n={x.shape[0]}, state_dim={self.state_dim}), got {getattr(target, 'shape', type(target))}")
        if x.shape[0] < 2:
            raise ValueError(f"need at least 2 transitions to fit, got {x.shape[0]}")
        if not (0.0 <= heldout_fraction < 1.0):
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
        x, target = x.to(self.device, self.dtype), target.to(self.device, self.dtype)
        u = None if u is None else u.to(self.device, self.dtype)
        raw_in = x if self.action_dim == 0 else torch.cat([x, self._check_u(u, x)], dim=-1)
        if not bool(torch.isfinite(raw_in).all()) or not bool(torch.isfinite(target).all()):
            raise ValueError("x/u/target contain NaN or inf")
        y = (target - x) / self.dt if self.target == "next_state" else target
        with torch.no_grad():
            self.in_mean.copy_(raw_in.mean(0))
            self.in_std.copy_(raw_in.std(0).clamp_min(1e-6))
            self.out_mean.copy_(y.mean(0))
            self.out_std.copy_(y.std(0).clamp_min(1e-6))
        z = (raw_in - self.in_mean) / self.in_std
        yn = (y - self.out_mean) / self.out_std
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(x.shape[0], generator=gen).to(self.device)
        n_held = int(round(heldout_fraction * x.shape[0]))
        held, train = order[:n_held], order[n_held:]
        self._heldout = (z[held], yn[held]) if n_held > 0 else None
        self.half_width = regression_box(yn[train])
        common = dict(method=method, potential="squared_error", kappa=self.kappa, half_width=self.half_width, sampler=sampler,
                      kappa_max=kappa_max, n_samples=n_samples, batch_size=batch_size, seed=seed, progress=progress)
        name = type(self).__name__
        self.history = fit(self.ode, z[train], yn[train], weighting=weighting, epochs=epochs, lr=lr,
                           desc=f"{name} fit ({method}, {weighting} weighting)", **common)
        if finetune_epochs is None:
            finetune_epochs = epochs // 4
        if finetune_epochs > 0 and method in ("monte_carlo", "path_integral"):
            # A separate record: its objective (another weighting) is not comparable with phase 1's.
            self.finetune_history = fit(self.ode, z[train], yn[train], weighting=finetune_weighting, epochs=finetune_epochs,
                                        lr=lr / 10, desc=f"{name} fine-tune ({method}, {finetune_weighting} weighting, lr/10)",
                                        **common)
        return self.history

    def _check_u(self, u: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        if u is None or u.shape != (x.shape[0], self.action_dim):
            raise ValueError(f"u must have shape (n={x.shape[0]}, action_dim={self.action_dim}), got {None if u is None else tuple(u.shape)}")
        return u

    # ---- certificate ------------------------------------------------------------------

    def certificate(self, *, tolerance: float = 0.05, n_steps: int = 20, n_lipschitz_samples: int = 2048) -> Certificate:
        """An ``empirical`` certificate of ``lyapunov_convergence`` of the inference ODE.

        Measured on the held-out transitions of ``fit`` (never proven; evidence ``empirical``):

        - ``alpha``: the smallest per-input convergence rate
          ``min_j -log(V(t_j) / V(0)) / t_j`` (eq. 14) on an ``n_steps``-step path over the
          held-out inputs, so *every* held-out inference converged at least this fast (the
          claim holds on all the data it was measured on, as ``"empirical"`` evidence
          requires elsewhere in the package); ``details`` has the 5th percentile, the median,
          the share reaching the trained ``kappa``, and the same rate on the solver grid the
          predictions actually use (``step_size``).
        - The premise of Theorem 3 -- eq. 10 at every point of the inference path --
          measured by ``decrease_along_paths``: the share of path points and of whole
          paths where it holds.
        - Theorem 3 adapted to regression: with ``delta = max(V(1), exp(-kappa) V(0))`` and a
          sampled Lipschitz estimate ``L`` of ``dV/dt`` in the (normalised) input, an input
          perturbation of l2 norm ``<= (tolerance - delta) kappa / (L (1 - exp(-kappa)))``
          keeps the final squared error (normalised units) below ``tolerance`` -- for the
          paths where the premise holds; ``theorem3_radius_status`` says whether it does.
        """
        if self._heldout is None:
            raise RuntimeError("certificate() needs held-out data: call fit(..., heldout_fraction > 0) first")
        z, yn = self._heldout
        grid_steps = max(1, math.ceil(1.0 / self.ode.step_size - 1e-9))
        with torch.no_grad():
            rates = convergence_rates(self.ode, z, yn, potential="squared_error", n_steps=n_steps)
            grid_rates = convergence_rates(self.ode, z, yn, potential="squared_error", n_steps=grid_steps)
            v0 = (yn**2).sum(-1)
            v1 = ((self.ode(z, 1.0) - yn) ** 2).sum(-1)
        along = decrease_along_paths(self.ode, z, yn, kappa=self.kappa, potential="squared_error", n_steps=n_steps)
        premise = along["holds"]
        point_share = float(premise.to(z.dtype).mean())
        # Once V has reached the model's error floor it cannot keep falling at rate kappa
        # (f vanishes a little off the target); the share before the t = 1 level is reached:
        above = along["values"] > math.exp(-self.kappa) * along["values"][:1]
        share_above = float(premise[above].to(z.dtype).mean()) if bool(above.any()) else float("nan")
        path_share = float(premise.all(0).to(z.dtype).mean())
        delta = torch.maximum(v1, math.exp(-self.kappa) * v0)
        lip = lipschitz_estimate(
            self.ode, norm="l2", method="sampled", x=z, y=yn, half_width=self.half_width, potential="squared_error",
            n_samples=n_lipschitz_samples,
        )
        radius = robustness_radius(self.kappa, delta, max(lip, 1e-12), threshold=tolerance)
        rate_p5 = max(0.0, float(torch.quantile(rates, 0.05)))
        alpha = max(0.0, float(rates.min()))
        if path_share == 1.0:
            status = ("premise measured to hold on every held-out nominal path; the radius is an estimate (sampled L "
                      "is a lower bound of the Lipschitz constant), not a bound")
        else:
            status = (f"premise does NOT hold: eq. 10 fails on {100 * (1 - point_share):.1f}% of path points "
                      f"({100 * (1 - path_share):.1f}% of paths); the radius is indicative only, not a bound")
        return Certificate(
            claim="lyapunov_convergence",
            alpha=alpha,
            time_domain="continuous",
            evidence=["empirical"],
            weights_hash=model_hash(self),
            model_class=type(self).__name__,
            details={
                "about": "the inference ODE inside each prediction converges to the target: ||eta(t) - y||^2 <= ||y||^2 "
                         "exp(-alpha t) on every held-out input (alpha = the smallest measured rate)",
                "kappa_trained": self.kappa,
                "rate_min": alpha,
                "rate_median": float(rates.median()),
                "rate_p5": rate_p5,
                "rate_over_kappa_p5": rate_p5 / self.kappa,
                "share_rate_at_least_kappa": float((rates >= self.kappa).to(rates.dtype).mean()),
                "rate_p5_solver_grid": max(0.0, float(torch.quantile(grid_rates, 0.05))),
                "rate_measured_on": f"{n_steps} rk4 steps of [0, 1] (solver grid: {grid_steps} steps of {self.ode.step_size})",
                "heldout_inputs": int(z.shape[0]),
                "heldout_mse_normalised": float(v1.mean() / self.state_dim),
                "eq10_share_of_path_points": point_share,
                "eq10_share_of_whole_paths": path_share,
                "eq10_share_of_path_points_above_exp(-kappa)V0": share_above,
                "theorem3_radius_status": status,
                "theorem3_tolerance": tolerance,
                "theorem3_radius_median": float(radius.median()),
                "theorem3_radius_norm": "l2, normalised (state, action) inputs",
                "lipschitz_estimate": lip,
                "lipschitz_method": "sampled max ||d/dz (dV/deta . f)||_2 over held-out z, eta uniform in the state box, t ~ U(0, 1)",
                "early_exit_t": self.early_exit_t,
            },
        )

    # ---- persistence ------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write config, weights and normalisation atomically; refuses to overwrite unless asked."""
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path!r} exists; pass overwrite=True to replace it")
        payload: dict[str, Any] = {
            "format": "lyagym.LyaNetWorldModel",
            "version": 1,
            "config": self.config,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "half_width": self.half_width,
            "heldout": None if self._heldout is None else tuple(t.detach().cpu() for t in self._heldout),
        }
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str | None = None) -> "LyaNetWorldModel":
        """Rebuild a model written by ``save``."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no LyaNetWorldModel checkpoint at {path!r}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several kinds for truncated or foreign files
            raise ValueError(f"{path!r} is not a readable LyaNetWorldModel checkpoint: {e}") from None
        if not isinstance(payload, dict) or payload.get("format") != "lyagym.LyaNetWorldModel":
            raise ValueError(f"{path!r} is not a LyaNetWorldModel checkpoint")
        try:
            state = payload["state_dict"]
            dtype = state["in_mean"].dtype
            config = {"time_dependent": True, **payload["config"]}  # checkpoints from before the option
            model = cls(**config, dtype=dtype)
            model.load_state_dict(state)
            model.half_width = payload["half_width"]
            heldout = payload["heldout"]
        except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as e:  # a missing, foreign or mismatched entry
            raise ValueError(f"{path!r} is a damaged LyaNetWorldModel checkpoint ({type(e).__name__}: {e})") from None
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f"{path!r} holds NaN or inf in {bad}; refusing a model that would predict NaN")
        if heldout is not None:
            model._heldout = tuple(heldout)
        if device is not None:
            model.to(device)
            if model._heldout is not None:
                model._heldout = tuple(t.to(device) for t in model._heldout)
        return model
