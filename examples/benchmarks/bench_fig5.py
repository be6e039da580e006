"""Benchmark: the full Fig. 5 study for n = 8 (both models trained and evaluated).

Target: <= 10 minutes on a 2-core CPU. The anchor is that budget; a second anchor
in the same run is the cost of the evaluation's physics alone (1000 RK4 rollouts of 999
steps of the 8-link pendulum), so the printed ratios say how the study compares with the
budget and with simply simulating the ground truth once.

Run::

    python examples/benchmarks/bench_fig5.py                 # default preset, n = 8
    python examples/benchmarks/bench_fig5.py --links 1 2 4 6 8 --size full
"""

from __future__ import annotations

import argparse
import time

import torch

from lyagym.agents.reproduce.fig5 import MODELS, PRESETS, study
from lyagym.agents.reproduce.pendulum_eval import N_STEPS, initial_states

BUDGET_SECONDS = 600.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", type=int, nargs="+", default=[8])
    parser.add_argument("--size", choices=sorted(PRESETS), default="default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from lyagym.envs import PendulumDynamics

    config = PRESETS[args.size]
    # Anchor 2: the ground-truth physics of the evaluation, once.
    physics = PendulumDynamics(n_links=max(args.links))
    x0 = initial_states(physics.n_links, config.eval_states).numpy()
    start = time.perf_counter()
    physics.simulate(x0, config.eval_steps, dt=0.01, method="rk4")
    physics_seconds = time.perf_counter() - start

    start = time.perf_counter()
    rows = study(args.links, config, progress=True)
    total = time.perf_counter() - start

    print()
    print(f"Fig. 5 study, links {args.links}, preset {args.size!r}, torch threads {torch.get_num_threads()}")
    for r in rows:
        train = f"train {r['train_seconds']:6.1f} s" if r["model"] in MODELS else " " * 14
        print(f"  n={r['n_links']} {r['model']:<22} {train}  average error {r['average_error']:.4g}")
    print(f"  physics of the evaluation alone ({config.eval_states} x {N_STEPS} RK4 steps, n={physics.n_links}): {physics_seconds:.1f} s")
    print(f"total study time: {total:.1f} s; budget {BUDGET_SECONDS:.0f} s; ratio study/budget = {total / BUDGET_SECONDS:.2f} "
          f"({'meets' if total <= BUDGET_SECONDS else 'MISSES'} the <= 10 min target)")
    print(f"ratio study/physics-only = {total / physics_seconds:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
