"""Upright regulation of the pendulum (n = 1) with a certified control Lyapunov function.

Upright (``q = pi``) is open-loop unstable: a stable world model cannot represent it, a
*stabilisability* certificate can (``lyagym.learned_models.control_lyapunov``).

1. Data: random-torque episodes of ``lyagym/NLinkPendulum-v0`` (n = 1, control step 0.05 s,
   torque <= 5) started near upright; a control-affine ``SimpleDynamics`` (the mechanical
   priors) fitted to them.
2. ``ControlLyapunov`` at the model's equilibrium near ``(pi, 0)`` on the box
   ``[pi - 1, pi + 1] x [-4, 4]``: LQR on the step map, the certified level ``rho``, its share
   of the box, ``check`` (sampled states and the model's closed loop under ``u_fb``).
3. On the real env, from states sampled in the certified region: the fallback ``u_fb`` alone,
   and MPPI on the learned model with the swing-up cost with and without the safeguard
   (``CertifiedFallback``) and the CLF terminal cost: final angle error to upright, return.

Example (one thread; about 2-4 minutes on a 2-core CPU)::

    OMP_NUM_THREADS=1 python examples/clf_pendulum_upright.py --starts 8
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from lyagym.agents.adapters import NLinkPendulumAdapter, make_pendulum_env
from lyagym.agents.adapters.n_link_pendulum import angle_error
from lyagym.agents.costs import LyapunovTerminalCost
from lyagym.agents.data import TransitionBuffer, collect_episode
from lyagym.agents.mpc import AngleWrappedModel, MPCController
from lyagym.agents.planners import make_planner
from lyagym.agents.safeguard import CertifiedFallback
from lyagym.agents.world_models import fit_transitions, world_model_for
from lyagym.learned_models.control_lyapunov import ControlLyapunov


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--starts", type=int, default=8, help="real episodes per controller, from certified states")
    parser.add_argument("--steps", type=int, default=100, help="real steps per episode (0.05 s each)")
    parser.add_argument("--data-episodes", type=int, default=60)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    env = make_pendulum_env(1, task="swingup", dt=0.05, max_torque=5.0, episode_steps=args.steps)
    adapter = NLinkPendulumAdapter(env)
    t0 = time.perf_counter()
    buffer = TransitionBuffer(adapter.state_dim, adapter.action_dim, adapter.angle_dims)
    for k in range(args.data_episodes):  # random torques from near upright: the data a regulator sees
        start = np.array([math.pi + rng.uniform(-1.0, 1.0), rng.uniform(-3.0, 3.0)])
        ep = collect_episode(env, None, steps=20, seed=args.seed * 1000 + k, start_state=start, adapter=adapter)
        buffer.add_trajectory(ep["states"], ep["actions"], ep["rewards"], ep["terminated"])
    model = world_model_for(adapter, "clf", seed=args.seed, hidden=(64, 64))
    history = fit_transitions(model, buffer, epochs=300, seed=args.seed, progress=False)
    print(f"data: {len(buffer)} transitions; model fitted, validation MSE {min(history['val_loss']):.2e} "
          f"({time.perf_counter() - t0:.0f} s)")

    V = ControlLyapunov(2, 1, box=[[math.pi - 1, math.pi + 1], [-4.0, 4.0]], u_low=adapter.action_low,
                        u_high=adapter.action_high, x_eq=[math.pi, 0.0], angle_dims=(0,))
    info = V.initialise(model)
    info.update(V.fit(model, steps=200, seed=args.seed))
    cert = V.certificate(model)
    report = cert.check(model, lyapunov=V)
    radius = math.sqrt(float(V.rho) / cert.c1) if float(V.rho) > 0 else 0.0
    print(f"equilibrium {[round(v, 4) for v in V.x_eq.tolist()]} (residual {info['residual']:.1e}), alpha {cert.alpha:.3g}, "
          f"rho {float(V.rho):.4g}, inner level {cert.details['inner_level']:.3g}, share of the box {V.box_fraction():.1%}")
    print(report.summary())
    if float(V.rho) <= 0:
        print("nothing certified: no closed-loop comparison")
        return 1
    print(f"certified time to 1e-2 from the region's radius {radius:.3g}: {cert.time_to(1e-2, radius):.3g} s (on the model)")

    starts = V.sample(4 * args.starts, float(V.rho), torch.Generator().manual_seed(args.seed), dtype=torch.float32)
    starts = starts[: args.starts].double().numpy()

    def fallback(state, obs):
        x = torch.as_tensor(state, dtype=torch.float32).reshape(1, -1)
        return V.fallback(model, x)[0].numpy()

    def mpc(safe: bool):
        plan_model = AngleWrappedModel(model, adapter.angle_dims)
        planner = make_planner("mppi", plan_model, adapter.planning_cost(), horizon=20, num_samples=200, iterations=2,
                               action_low=adapter.action_low, action_high=adapter.action_high, seed=args.seed,
                               terminal_cost=LyapunovTerminalCost(V, certificate=cert) if safe else None)
        controller = MPCController(planner, adapter.angle_dims, warmup_iterations=10,
                                   safeguard=CertifiedFallback(V, model) if safe else None)
        return controller

    for name in ("u_fb alone", "MPPI", "MPPI + CLF terminal cost + safeguard"):
        errors, returns, replaced, t1 = [], [], 0, time.perf_counter()
        for i, start in enumerate(starts):
            if name == "u_fb alone":
                act = fallback
            else:
                controller = mpc(safe=name != "MPPI")
                act = lambda s, o, c=controller: c(s)  # noqa: E731
            ep = collect_episode(env, act, steps=args.steps, seed=args.seed * 1000 + 500 + i, start_state=start, adapter=adapter)
            errors.append(float(angle_error(ep["states"][-1:], 1, math.pi)[0]))
            returns.append(ep["return"])
            if name.endswith("safeguard"):
                replaced += controller.safeguard.counts["replaced"]
        extra = f", plans replaced by u_fb: {replaced} of {len(starts) * args.steps}" if name.endswith("safeguard") else ""
        print(f"{name:<38} final angle error to upright: median {np.median(errors):.2e} rad, max {max(errors):.2e}; "
              f"return {np.mean(returns):.1f} +- {np.std(returns):.1f}{extra} ({time.perf_counter() - t1:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
