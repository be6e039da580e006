"""Environment throughput: our pendulum envs beside Gymnasium's, in one process run.

    python examples/benchmarks/bench_envs.py            # full run (about a minute on 2 CPU cores)
    python examples/benchmarks/bench_envs.py --quick    # smoke run (a few seconds)

1. Single env, steps/s through ``gym.make`` (same TimeLimit / OrderEnforcing /
   PassiveEnvChecker wrappers for every env), fixed in-range action, reset on truncation:
   ``lyagym/NLinkPendulum-v0`` with n = 1 and n = 2 against ``Pendulum-v1`` and
   ``Acrobot-v1`` stepped alternately in the same run. Targets: n = 2 >= 3x
   Acrobot-v1, n = 1 >= 1x Pendulum-v1.
2. Batched env-steps/s of ``NLinkPendulumVectorEnv`` (n = 2, float32, ``return_torch=True``)
   at batch 1, 1k and 64k on CPU, and on CUDA when present (plus 1M there), eager and
   with ``compile=True`` at 64k. Target: >= 20M env-steps/s at 64k on a 2-core CPU;
   >= 1e9 on one H100.

The batched table also gives env-steps per CPU second (summed over threads): on a machine
shared with other jobs the wall figure falls with our share of the cores, the CPU figure
much less, and times the number of idle cores it estimates an idle machine's rate. On a
busy machine pass ``--threads 1``: OpenMP threads that wait for a descheduled sibling
make multi-threaded wall figures collapse.

Every figure is the median of ``--repeats`` timed runs; runs of the anchor and of ours
alternate, so machine load hits both alike and the ratios are the figures to quote.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

import lyagym.envs  # noqa: F401  (registers lyagym/NLinkPendulum-v0)
from lyagym.envs import NLinkPendulumVectorEnv


def single_env_rate(env: gym.Env, steps: int) -> float:
    """Steps per second of ``env`` under a fixed action, resetting when an episode ends."""
    env.reset(seed=0)
    action = env.action_space.sample()
    if isinstance(env.action_space, gym.spaces.Box):
        action = np.zeros_like(action) + 0.5 * env.action_space.high
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def bench_single(steps: int, repeats: int) -> dict[str, float]:
    makers = {
        "Pendulum-v1": lambda: gym.make("Pendulum-v1"),
        "Acrobot-v1": lambda: gym.make("Acrobot-v1"),
        "NLinkPendulum n=1": lambda: gym.make("lyagym/NLinkPendulum-v0", n_links=1),
        "NLinkPendulum n=2": lambda: gym.make("lyagym/NLinkPendulum-v0", n_links=2),
        "NLinkPendulum n=2 acrobot": lambda: gym.make("lyagym/NLinkPendulum-v0", n_links=2, actuated=[1]),
    }
    envs = {name: make() for name, make in makers.items()}
    for env in envs.values():  # warm-up: the first step runs Gymnasium's passive checks
        single_env_rate(env, 200)
    rates: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(repeats):
        for name, env in envs.items():
            rates[name].append(single_env_rate(env, steps))
    return {name: statistics.median(r) for name, r in rates.items()}


def vector_rate(
    num_envs: int, device: str, steps: int, repeats: int, n_links: int = 2, compile: bool = False
) -> tuple[float, float]:
    """Median env-steps per wall second and per CPU second (all threads) of the torch vector
    env under random in-range torques (a fixed tensor).

    On a busy machine the wall figure drops with the share of the cores we get; the CPU
    figure does not, and times the number of free cores it estimates an idle machine's rate.
    """
    envs = NLinkPendulumVectorEnv(num_envs, n_links=n_links, device=device, return_torch=True, compile=compile)
    envs.reset(seed=0)
    high = torch.as_tensor(envs.single_action_space.high, device=envs.device)
    actions = (torch.rand(num_envs, envs.action_dim, device=envs.device) * 2 - 1) * high
    sync = (lambda: torch.cuda.synchronize(envs.device)) if envs.device.type == "cuda" else (lambda: None)
    for _ in range(3):
        envs.step(actions)
    sync()
    rates, cpu_rates = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            envs.step(actions)
        sync()
        rates.append(num_envs * steps / (time.perf_counter() - start))
        cpu_rates.append(num_envs * steps / max(time.process_time() - cpu_start, 1e-9))
    return statistics.median(rates), statistics.median(cpu_rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (median reported)")
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-batched", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd 64k figure")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)

    print(f"torch {torch.__version__}, gymnasium {gym.__version__}, torch threads {torch.get_num_threads()}")
    if not args.skip_single:
        steps = 2_000 if args.quick else 20_000
        print(f"\n== single env, steps/s (median of {repeats} x {steps} steps, through gym.make) ==")
        rates = bench_single(steps, repeats)
        for name, rate in rates.items():
            print(f"{name:28s} {rate:12,.0f}")
        r1 = rates["NLinkPendulum n=1"] / rates["Pendulum-v1"]
        r2 = rates["NLinkPendulum n=2"] / rates["Acrobot-v1"]
        r2a = rates["NLinkPendulum n=2 acrobot"] / rates["Acrobot-v1"]
        print(f"ratio n=1 / Pendulum-v1         {r1:6.2f}x   (target >= 1x: {'met' if r1 >= 1 else 'MISSED'})")
        print(f"ratio n=2 / Acrobot-v1          {r2:6.2f}x   (target >= 3x: {'met' if r2 >= 3 else 'MISSED'})")
        print(f"ratio n=2 acrobot / Acrobot-v1  {r2a:6.2f}x")

    if not args.skip_batched:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            batches = [1, 1024, 65536] + ([1 << 20] if device == "cuda" else [])
            print(f"\n== batched NLinkPendulumVectorEnv n=2 on {device}, env-steps/s (median of {repeats}) ==")
            print(f"{'':14s} {'per wall s':>14s} {'per CPU s':>14s}")
            for batch in batches:
                # enough steps for a measurable interval; fewer when each step is big
                steps = max(3, (20 if args.quick else 200) * 1024 // max(batch, 1024))
                if device == "cuda":
                    steps *= 10
                rate, cpu_rate = vector_rate(batch, device, steps, repeats)
                note = ""
                if batch == 65536 and device == "cpu":
                    note = f"   (target >= 20M: {'met' if rate >= 20e6 else 'MISSED'})"
                print(f"batch {batch:>8d}   {rate:14,.0f} {cpu_rate:14,.0f}{note}")
            if not (args.quick or args.no_compile):
                batch = 65536
                steps = 30 if device == "cpu" else 300
                rate, cpu_rate = vector_rate(batch, device, steps, repeats, compile=True)
                note = f"   compile=True (target >= 20M: {'met' if rate >= 20e6 else 'MISSED'})" if device == "cpu" else "   compile=True"
                print(f"batch {batch:>8d}   {rate:14,.0f} {cpu_rate:14,.0f}{note}")


if __name__ == "__main__":
    main()
