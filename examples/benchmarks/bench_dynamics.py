"""Speed of the pendulum physics core (``lyagym.envs.PendulumDynamics``).

Run:  python examples/benchmarks/bench_dynamics.py [--quick] [--repeats 3] [--threads 1] [--compile]

Printed in one run, each beside its anchor where one exists:

1. Sympy derivation (Kane's method + code generation up to ``EXPANDED_MAX_LINKS``, the
   structured tables beyond; ``--derive-links`` adds sizes, e.g. 16 32) for n = 1, 2, 4, 8: cold (a fresh
   process with an empty cache directory, sympy import included) and cached (a second fresh
   process reading the cache). Anchor: the 2019 reference code needs 6.8 s for n = 8.
   Targets: n = 8 cold <= 3 s, cached <= 0.2 s.
2. The paper's evaluation reference: 1000 initial states drawn from [-pi, pi]^2n, 999 RK4
   steps of h = 0.01, numpy float64 (``PendulumDynamics.simulate``). Anchors (2019 code):
   95 s, 125 s, 430 s, 38 min for n = 1, 2, 4, 8. Target: n = 8 <= 5 s.
3. Batched throughput of chained RK4 steps (env-steps/s) for n = 2 at batch 1, 1k, 64k:
   numpy float64 and torch float32 (CPU, and CUDA when present); with ``--compile`` also a
   ``torch.compile``'d step at 64k (the target there: >= 20M env-steps/s on 2 cores).
4. The single-state fast path ``step_single`` (plain floats, RK4) for n = 1, 2, next to the
   raw ``step`` of Gymnasium's ``Pendulum-v1`` / ``Acrobot-v1`` timed in the same run. This is
   physics only; env-vs-env figures are in ``bench_envs.py``.

All times are medians of ``--repeats`` runs (after a warm-up) unless marked single-shot.
The machine load matters: other processes on a 2-core box inflate every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from lyagym.envs import PendulumDynamics

REFERENCE_2019_S = {1: 95.0, 2: 125.0, 4: 430.0, 8: 38 * 60.0}
DERIVATION_2019_S = {8: 6.8}

_TIMER = r"""
import json, sys, time
t0 = time.perf_counter()
from lyagym.envs import dynamics, structured, symbolic
t1, c1 = time.perf_counter(), time.process_time()
n = int(sys.argv[1])
# the form PendulumDynamics uses at this n: expanded code, or the structured tables
if n <= dynamics.EXPANDED_MAX_LINKS:
    symbolic.compile_pendulum(n)
else:
    structured.load_structure(n)
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"import_s": t1 - t0, "compile_s": t2 - t1, "compile_cpu_s": c2 - c1}))
"""


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


def time_compile_in_subprocess(n: int, cache: str) -> dict:
    env = dict(os.environ, LYAGYM_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", _TIMER, str(n)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_derivation(sizes, repeats: int) -> None:
    print("\n== 1. sympy derivation (Kane's method + codegen), fresh process each ==")
    print(f"{'n':>3} {'cold s':>8} {'(cpu s)':>8} {'cached s':>9} {'import s':>9}  vs 2019")
    for n in sizes:
        cold, cold_cpu, cached, imp = [], [], [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
                c = time_compile_in_subprocess(n, cache)
                w = time_compile_in_subprocess(n, cache)
            cold.append(c["compile_s"])
            cold_cpu.append(c["compile_cpu_s"])
            cached.append(w["compile_s"])
            imp.append(w["import_s"])
        cold_s, cached_s = statistics.median(cold), statistics.median(cached)
        anchor = DERIVATION_2019_S.get(n)
        vs = f"2019: {anchor:.1f} s -> {anchor / cold_s:.1f}x faster cold" if anchor else ""
        print(f"{n:>3} {cold_s:>8.3f} {statistics.median(cold_cpu):>8.3f} {cached_s:>9.4f} {statistics.median(imp):>9.3f}  {vs}")
    print("   cold includes importing sympy; 'import s' is importing lyagym.envs (torch, gymnasium),")
    print("   paid once per process whatever the cache; cpu s = process CPU time (what an idle box would take)")


def bench_reference(sizes, repeats: int) -> None:
    print("\n== 2. evaluation reference: 1000 states x 999 RK4 steps (h = 0.01), numpy float64 ==")
    print(f"{'n':>3} {'ours s':>8} {'(cpu s)':>8} {'2019 s':>8} {'speed-up':>9}")
    for n in sizes:
        dyn = PendulumDynamics(n)
        x0 = np.random.default_rng(0).uniform(-math.pi, math.pi, (1000, 2 * n))
        reps = repeats if n <= 4 else max(1, repeats // 2)
        runs = [_once(lambda: dyn.simulate(x0, 999)) for _ in range(reps)]
        t = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        anchor = REFERENCE_2019_S[n]
        print(f"{n:>3} {t:>8.2f} {cpu:>8.2f} {anchor:>8.0f} {anchor / t:>8.0f}x")
    print("   cpu s = process CPU time of the (single-threaded numpy) run; wall s suffers from other load")


def _once(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_batched(batches, repeats: int, compile_64k: bool) -> None:
    print("\n== 3. batched RK4 step, n = 2, chained x = step(x, u) (env-steps/s) ==")
    dyn = PendulumDynamics(2)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{'batch':>7} {'numpy f64':>12} " + " ".join(f"{'torch f32 ' + d:>16}" for d in devices))
    chain = 10
    for batch in batches:
        x0 = np.random.default_rng(0).uniform(-1, 1, (batch, 4))
        u = np.zeros((batch, 2))

        def run_numpy():
            x = x0
            for _ in range(chain):
                x = dyn.step(x, u)

        row = [batch * chain / median_time(run_numpy, repeats)]
        for device in devices:
            xt = torch.tensor(x0, dtype=torch.float32, device=device)
            ut = torch.tensor(u, dtype=torch.float32, device=device)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

            def run_torch():
                x = xt
                for _ in range(chain):
                    x = dyn.step(x, ut)

            with torch.no_grad():
                row.append(batch * chain / median_time(run_torch, repeats, sync))
        print(f"{batch:>7} " + " ".join(f"{r:>12.3g}" if i == 0 else f"{r:>16.3g}" for i, r in enumerate(row)))
    if compile_64k:
        batch = 65536
        step = torch.compile(lambda x, u: dyn.step(x, u), dynamic=False)
        x = torch.rand(4, batch).T  # the layout step() returns: stride 1 along the batch
        u = torch.zeros(2, batch).T
        t0 = time.perf_counter()
        with torch.no_grad():
            step(x, u)
            compile_s = time.perf_counter() - t0
            rate = batch / median_time(lambda: step(x, u), max(repeats, 5))
        print(f"  {batch} torch f32 cpu, torch.compile: {rate:.3g} env-steps/s (compiled in {compile_s:.0f} s)")
    print(f"   torch threads: {torch.get_num_threads()} (on a loaded box, 1 thread avoids OpenMP spin-waits)")


def bench_single(repeats: int, steps: int) -> None:
    import gymnasium as gym

    print(f"\n== 4. one state, RK4 physics step (steps/s, median of {repeats} x {steps} steps) ==")
    anchors = {1: ("Pendulum-v1", np.array([0.0], dtype=np.float32)), 2: ("Acrobot-v1", 1)}
    for n, (env_id, action) in anchors.items():
        dyn = PendulumDynamics(n)
        x = np.full(2 * n, 0.1)
        u = np.zeros(n)

        def ours():
            s = x
            for _ in range(steps):
                s = dyn.step_single(s, u)

        env = gym.make(env_id).unwrapped
        env.reset(seed=0)

        def theirs():
            for _ in range(steps):
                env.step(action)

        ours_rate = steps / median_time(ours, repeats)
        their_rate = steps / median_time(theirs, repeats)
        print(f"   n={n}: step_single {ours_rate:>9.0f}/s   {env_id} (unwrapped) step {their_rate:>9.0f}/s   ratio {ours_rate / their_rate:.1f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (n <= 4, batch <= 1k), for a smoke run")
    parser.add_argument("--derive-links", type=int, nargs="*", default=[], help="extra sizes for the derivation figure (e.g. 16 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median reported)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["derivation", "reference", "batched", "single"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd step at batch 64k (needs a C++ compiler; ~30 s to compile)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [1, 2, 4] if args.quick else [1, 2, 4, 8]
    print(f"lyagym physics benchmark | torch {torch.__version__} | numpy {np.__version__} | {os.cpu_count()} CPUs | load avg {os.getloadavg()[0]:.1f}")
    if "derivation" not in args.skip:
        bench_derivation(sizes + args.derive_links, args.repeats)
    if "reference" not in args.skip:
        bench_reference(sizes, args.repeats)
    if "batched" not in args.skip:
        bench_batched([1, 1000] if args.quick else [1, 1000, 65536], args.repeats, args.compile and not args.quick)
    if "single" not in args.skip:
        bench_single(args.repeats, 2000 if args.quick else 20000)
    print(f"\nload avg at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
