"""Planner speed: lyagym's MPPI against ``pytorch_mppi``, planner overhead on a learned model,
and batched planning rates.

Run:  python examples/benchmarks/bench_planners.py [--threads 1] [--repeats 7] [--sections 1 2 3 4]

1. MPPI, K = 1000 samples, H = 30 steps, one state, on the true pendulum dynamics
   (``PendulumDynamics``, RK4), same cost, noise and temperature: plans/s of
   ``lyagym.agents.MPPIPlanner`` vs ``pytorch_mppi.MPPI`` in this run, and their ratio
   (target >= 2x). ``pytorch_mppi`` is an optional dependency (``pip install pytorch_mppi``).
2. Planner overhead on a learned model (``SimpleDynamics``): time of one MPPI plan vs the
   raw batched rollout of the same K x H action sequences through the same model
   (target <= 10% overhead).
3. Batched planning: plans/s (states planned per second) for B = 1, 64, 1024 states at once,
   on CPU and on CUDA when present.
4. MPPI on learned models (the plain ``SimpleDynamics`` MLP, the PETS loop's default
   single model for ``Pendulum-v1``, ``world_model_for(adapter, "simple")``, and its ensemble of
   5 probabilistic members, ``world_model_for(adapter, "ensemble")``, TS-infinity, and the same with
   certified members, ``"ensemble-stable"``, and the single certified model, ``"stable"`` (RK4),
   whose rollouts run through the compiled kernel of ``rollout_native``): states planned per
   second by ``MPPIPlanner`` with B = 1 and B = 64 states per call vs a Python loop of
   ``pytorch_mppi`` single-state plans on the same model (target >= 2x at both). Beside them,
   at B = 1, for the single MLP models: the network alone (K rows x H steps x 4 RK4 stages, in the
   rollout's own blocks, layout and kernels: the compiled kernel of ``mlp_native`` where the
   rollout uses it), the work every planner of this model does at this rate; pytorch_mppi's
   time over it is the highest ratio a planner could reach with this network evaluation. And
   for every model the rollout of K rows x H steps without autograd (``mlp_rollout.MLPField``
   or the certified models' kernel: what ``plan`` runs) against the same rollout through the
   model's ``_step`` (the autograd-capable path, which pytorch_mppi's ``model.step`` runs).

All figures are medians over ``--repeats`` timed runs after a warm-up run; contenders are
timed in alternation so that changes in machine load affect both alike. Section 4 also
gives the ratio of CPU times (``time.thread_time``, a second interleaved series), which a
loaded machine disturbs less than wall-clock time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lyagym.agents import MPPIPlanner, PendulumCost
from lyagym.envs import PendulumDynamics


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns, repeats: int, clock=time.perf_counter) -> list[float]:
    """Median time of each function, timed in alternation (A, B, A, B, ...) after a warm-up
    call each, so a change in machine load hits every contender alike. ``clock``:
    ``time.perf_counter`` (wall) or ``time.thread_time`` (this thread's CPU time: on a loaded
    machine, the time spent waiting for a core is left out)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            t0 = clock()
            fn()
            bucket.append(clock() - t0)
    return [statistics.median(b) for b in times]


def bench_against_pytorch_mppi(n_links: int, K: int, H: int, repeats: int) -> None:
    dynamics = PendulumDynamics(n_links=n_links, dt=0.05)
    cost = PendulumCost(n_links, "swingup")
    sigma, temperature, max_torque = 1.0, 1.0, 2.0
    ours = MPPIPlanner(dynamics, cost, horizon=H, num_samples=K, noise_std=sigma, temperature=temperature,
                       action_low=-max_torque, action_high=max_torque, seed=0)
    x = torch.zeros(1, 2 * n_links, dtype=dynamics.dtype)
    x[:, 0] = 0.3

    try:
        from pytorch_mppi import MPPI
    except ImportError:
        t_ours = median_time(lambda: ours.plan(x), repeats)
        print(f"  n={n_links}: lyagym MPPI {1 / t_ours:8.1f} plans/s   (pytorch_mppi not installed: pip install pytorch_mppi)")
        return
    m = dynamics.action_dim
    theirs = MPPI(
        lambda s, a: dynamics.step(s, a),
        lambda s, a: cost.step_cost(s, a),
        2 * n_links,
        sigma**2 * torch.eye(m, dtype=dynamics.dtype),
        num_samples=K,
        horizon=H,
        lambda_=temperature,
        u_min=torch.full((m,), -max_torque, dtype=dynamics.dtype),
        u_max=torch.full((m,), max_torque, dtype=dynamics.dtype),
        terminal_state_cost=lambda s, a: cost.step_cost(s[0, :, -1]),
    )
    t_ours, t_theirs = interleaved_medians([lambda: ours.plan(x), lambda: theirs.command(x[0])], repeats)
    print(f"  n={n_links}: lyagym MPPI {1 / t_ours:8.1f} plans/s   pytorch_mppi {1 / t_theirs:8.1f} plans/s   "
          f"ratio {t_theirs / t_ours:5.2f}x  (target >= 2x)")


class GymPendulum:
    """Gymnasium ``Pendulum-v1``'s closed-form dynamics (``th = 0`` upright, semi-implicit
    Euler, dt = 0.05), batched in torch: the cheap dynamics of pytorch_mppi's own pendulum
    example, where the planner's own overhead shows."""

    state_dim, action_dim, dt = 2, 1, 0.05
    device, dtype = torch.device("cpu"), torch.float32

    def step(self, x, u=None):
        th, thdot = x[:, 0:1], x[:, 1:2]
        thdot = (thdot + (15.0 * torch.sin(th) + 3.0 * u) * self.dt).clamp(-8.0, 8.0)
        return torch.cat([th + thdot * self.dt, thdot], dim=1)

    def rollout(self, x0, actions):
        from lyagym.learned_models import rollout

        return rollout(self, x0, actions)


def gym_pendulum_step_cost(x, u):
    th = (x[..., 0] + torch.pi) % (2 * torch.pi) - torch.pi
    return th**2 + 0.1 * x[..., 1] ** 2 + (0.001 * (u**2).sum(-1) if u is not None else 0.0)


class GymPendulumCost:
    state_dim, action_dim = 2, 1

    def __call__(self, states, actions):
        return gym_pendulum_step_cost(states[:, :-1], actions).sum(-1) + gym_pendulum_step_cost(states[:, -1], None)


def bench_gym_pendulum(K: int, H: int, repeats: int) -> None:
    dynamics, cost = GymPendulum(), GymPendulumCost()
    ours = MPPIPlanner(dynamics, cost, horizon=H, num_samples=K, noise_std=1.0, temperature=1.0,
                       action_low=-2.0, action_high=2.0, seed=0)
    x = torch.tensor([[3.0, 0.0]])
    try:
        from pytorch_mppi import MPPI
    except ImportError:
        t_ours = median_time(lambda: ours.plan(x), repeats)
        print(f"  closed form: lyagym MPPI {1 / t_ours:8.1f} plans/s   (pytorch_mppi not installed)")
        return
    theirs = MPPI(dynamics.step, gym_pendulum_step_cost, 2, torch.eye(1), num_samples=K, horizon=H, lambda_=1.0,
                  u_min=torch.tensor([-2.0]), u_max=torch.tensor([2.0]),
                  terminal_state_cost=lambda s, a: gym_pendulum_step_cost(s[0, :, -1], None))
    t_ours, t_theirs = interleaved_medians([lambda: ours.plan(x), lambda: theirs.command(x[0])], repeats)
    print(f"  closed form: lyagym MPPI {1 / t_ours:8.1f} plans/s   pytorch_mppi {1 / t_theirs:8.1f} plans/s   "
          f"ratio {t_theirs / t_ours:5.2f}x  (target >= 2x)")


def bench_overhead(K: int, H: int, repeats: int) -> None:
    from lyagym.learned_models import SimpleDynamics

    n = 4
    model = SimpleDynamics(n, 2, hidden=(100, 100), dt=0.05).requires_grad_(False)
    cost = PendulumCost(2, "swingup")
    planner = MPPIPlanner(model, cost, horizon=H, num_samples=K, noise_std=1.0, action_low=-2, action_high=2, seed=0)
    x = torch.zeros(1, n)
    actions = torch.zeros(K, H, 2).uniform_(-2, 2)
    x_batch = x.expand(K, n)

    def raw():
        with torch.inference_mode():  # the planner's own mode: compare like with like
            model.rollout(x_batch, actions)

    t_plan, t_raw = interleaved_medians([lambda: planner.plan(x), raw], 2 * repeats)
    overhead = t_plan / t_raw - 1
    print(f"  SimpleDynamics(4, 2, 100-100): plan {t_plan * 1e3:7.2f} ms   raw rollout {t_raw * 1e3:7.2f} ms   "
          f"overhead {100 * overhead:5.1f}%  (target <= 10%)")


def bench_batched(device: str, K: int, H: int, repeats: int, batches=(1, 64, 1024)) -> None:
    dynamics = PendulumDynamics(n_links=1, dt=0.05).to(device, torch.float32)
    cost = PendulumCost(1, "swingup")
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    for b in batches:
        k = K if b * K <= 2_000_000 else max(16, 2_000_000 // b)
        planner = MPPIPlanner(dynamics, cost, horizon=H, num_samples=k, noise_std=1.0, action_low=-2, action_high=2, seed=0)
        x = torch.rand(b, 2, device=device) - 0.5
        t = median_time(lambda: planner.plan(x), max(3, repeats // 2), sync)
        print(f"  {device:5s} B={b:5d} K={k:5d} H={H}: {b / t:10.1f} states planned/s  ({1 / t:7.2f} calls/s)")


def network_evaluations(model, rows: int, H: int):
    """A function that runs only the network of ``H`` RK4 steps of ``model`` (``4 H`` evaluations
    of ``fhat``) over ``rows`` rows, as ``MLPField`` runs it: the compiled kernel where the
    rollout uses it, else oneDNN's hidden layers between BLAS thin layers, else the feature-major
    products; in the rollout's blocks, on buffers of the rollout's layout."""
    from lyagym.learned_models.mlp_rollout import BLOCK_ROWS, FUSED_BLOCK_ROWS, MLPField

    field = MLPField.lower(model.fhat, model.state_dim, model.action_dim)
    x0 = torch.zeros(rows, model.state_dim)
    fused = field._fuses(x0)
    count = -(-rows // (FUSED_BLOCK_ROWS if fused or field.native_weights(x0) is not None else BLOCK_ROWS))
    networks = []
    for part in torch.arange(rows).tensor_split(count):
        first = torch.rand(field.weights[0].shape[1], len(part))
        first[-1] = 1.0
        networks.append(field._network(first, torch.empty(field.weights[-1].shape[0], len(part)), fused))

    def run():
        for network in networks:
            for _ in range(4 * H):
                network()

    return run


def bench_learned(K: int, H: int, repeats: int) -> None:
    import gymnasium as gym

    from lyagym.agents.adapters import make_adapter
    from lyagym.agents.mbrl import world_model_for
    from lyagym.learned_models import SimpleDynamics

    try:
        from pytorch_mppi import MPPI
    except ImportError:
        print("  (pytorch_mppi not installed: pip install pytorch_mppi)")
        return
    adapter = make_adapter(gym.make("Pendulum-v1"))
    models = {"SimpleDynamics(2, 1, 100-100), plain MLP": SimpleDynamics(2, 1, hidden=(100, 100), dt=adapter.dt),
              "world_model_for(Pendulum-v1, 'simple'), priors": world_model_for(adapter, "simple"),
              "world_model_for(Pendulum-v1, 'ensemble'), 5 members, TS-inf": world_model_for(adapter, "ensemble"),
              "world_model_for(Pendulum-v1, 'stable'), certified": world_model_for(adapter, "stable"),
              "world_model_for(Pendulum-v1, 'ensemble-stable'), 5 certified members": world_model_for(adapter, "ensemble-stable")}
    cost = PendulumCost(1, "swingup")
    for name, model in models.items():
        model.requires_grad_(False)
        theirs = MPPI(lambda s, a: model.step(s, a), lambda s, a: cost.step_cost(s, a), 2, torch.eye(1), num_samples=K,
                      horizon=H, lambda_=1.0, u_min=torch.tensor([-2.0]), u_max=torch.tensor([2.0]),
                      terminal_state_cost=lambda s, a: cost.step_cost(s[0, :, -1]))
        for b in (1, 64):
            ours = MPPIPlanner(model, cost, horizon=H, num_samples=K, noise_std=1.0, temperature=1.0, action_low=-2.0,
                               action_high=2.0, seed=0)
            x = torch.rand(b, 2, generator=torch.Generator().manual_seed(b)) * 2 - 1

            def loop_theirs():
                with torch.no_grad():
                    for i in range(b):
                        theirs.command(x[i])

            single = hasattr(model, "fhat")
            mlp_field = single and model._inference_field() is not None  # the floor is an MLP field's
            if b > 1:
                t_ours, t_theirs = interleaved_medians([lambda: ours.plan(x), loop_theirs], max(3, repeats // 3))
                c_ours, c_theirs = interleaved_medians([lambda: ours.plan(x), loop_theirs], max(3, repeats // 3), time.thread_time)
            else:
                x_rows, actions = x.expand(K, 2), torch.rand(K, H, 1) * 4 - 2

                def lowered():
                    with torch.inference_mode():
                        model.rollout(x_rows, actions)

                def through_step():
                    with torch.inference_mode():
                        if single:
                            model._rollout_rows(x_rows, list(actions.unbind(1)))
                        else:
                            state = x_rows
                            for t in range(H):
                                state = model._step(state, actions[:, t])

                contenders = [lambda: ours.plan(x), loop_theirs, lowered, through_step] + ([network_evaluations(model, K, H)] if mlp_field else [])
                t_ours, t_theirs, t_low, t_step, *t_floor = interleaved_medians(contenders, repeats)
                c_ours, c_theirs = interleaved_medians(contenders[:2], repeats, time.thread_time)
            print(f"  {name}, B={b:3d}: lyagym MPPI {b / t_ours:7.1f} states/s   pytorch_mppi loop {b / t_theirs:7.1f} states/s   "
                  f"ratio {t_theirs / t_ours:5.2f}x, in CPU time {c_theirs / c_ours:5.2f}x  (target >= 2x)")
            if b == 1:
                floor = (f"the network alone {t_floor[0] * 1e3:6.1f} ms = {100 * t_floor[0] / t_ours:3.0f}% of ours, "
                         f"{100 * t_floor[0] / t_theirs:3.0f}% of pytorch_mppi's plan: ratio bound {t_theirs / t_floor[0]:4.2f}x; ") if mlp_field else ""
                if mlp_field:
                    how = "lowered" if model._lowered_field() is not None else "(no lowered path: steps)"
                else:  # a certified model's compiled rollout (kept in its cache once used), an ensemble's lowering
                    lowers = model.__dict__.get("_kernel_cache") if single else model._lowered()
                    how = "lowered" if getattr(lowers, "field", lowers) is not None else "(no lowered path: steps)"
                print(f"    {floor}rollout {t_low * 1e3:6.1f} ms {how} vs {t_step * 1e3:6.1f} ms through _step ({t_step / t_low:4.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the anchor figure)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--sections", type=int, nargs="+", choices=(1, 2, 3, 4), default=[1, 2, 3, 4],
                        help="which of the sections above to run (default all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    K, H = args.samples, args.horizon
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), K={K}, H={H}, medians of {args.repeats}")
    if 1 in args.sections:
        print("1. MPPI on the true pendulum dynamics (PendulumDynamics, RK4, dt=0.05), one state:")
        for n in (1, 2):
            bench_against_pytorch_mppi(n, K, H, args.repeats)
        print("   and on Gymnasium Pendulum-v1's closed-form dynamics (pytorch_mppi's example system):")
        bench_gym_pendulum(K, H, args.repeats)
    if 2 in args.sections:
        print("2. Planner overhead over the raw batched rollout of a learned model:")
        bench_overhead(K, H, args.repeats)
    if 3 in args.sections:
        print("3. Batched planning (MPPI, n=1 pendulum):")
        bench_batched("cpu", K, H, args.repeats)
        if torch.cuda.is_available():
            bench_batched("cuda", K, H, args.repeats)
    if 4 in args.sections:
        print("4. MPPI on learned models, B states per call vs a loop of pytorch_mppi single-state plans:")
        bench_learned(K, H, args.repeats)


if __name__ == "__main__":
    main()
