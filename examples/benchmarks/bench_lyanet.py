"""Benchmark: Monte Carlo LyaNet vs adjoint neural ODE training on sklearn digits, one run.

Prints, for the same model (``lyanet_digits.build_model``) and data:

- wall-clock per training epoch (median over epochs) of adjoint, Monte Carlo LyaNet
  (Alg. 1) and path-integral LyaNet (Alg. 2), and the ratio adjoint / LyaNet;
- time to reach the neural ODE's accuracy: the adjoint model's final test error is the
  target; the cumulative training time (validation excluded) at which each method first
  reaches it, and the ratio (issue target: Monte Carlo >= 3x faster);
- inference time with early termination (median of repeats): ``t = 1`` vs ``t = 0.25``,
  with the test error at each.

    OMP_NUM_THREADS=1 python examples/benchmarks/bench_lyanet.py [--epochs 60] [--seed 0]

Timings are noisy on a shared machine: compare the ratios, which are measured in one process.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from lyagym.agents.reproduce.lyanet_digits import build_model, load_digits_split
from lyagym.learned_models.lyanet import evaluate, fit


def _time_to(history, target: float) -> float | None:
    for elapsed, err in zip(itertools.accumulate(history.epoch_time), history.val_error):
        if err <= target + 1e-12:
            return elapsed
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the adjoint baseline and the cap for LyaNet")
    parser.add_argument("--kappa", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="inference timing repeats")
    parser.add_argument("--n-samples", type=int, default=8, help="Monte Carlo (eta, t) pairs per example")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte = load_digits_split(seed=args.seed)

    runs = {}
    for method in ("adjoint", "monte_carlo", "path_integral"):
        model = build_model(64, 10, kappa=args.kappa, seed=args.seed)
        hist = fit(model, xtr, ytr, method=method, kappa=args.kappa, epochs=args.epochs, seed=args.seed, n_samples=args.n_samples,
                   x_val=xte, y_val=yte, progress=True)
        runs[method] = (model, hist)
    target = runs["adjoint"][1].val_error[-1]
    print(f"\nDigits, {xtr.shape[0]} train / {xte.shape[0]} test, {args.epochs} epochs, batch 64, rk4 step 0.1, "
          f"threads={args.threads}, Monte Carlo pairs per example {args.n_samples}. Target = neural ODE (adjoint) final test error {100 * target:.2f}%.")
    print(f"{'method':<15}{'s/epoch (median)':>18}{'final err %':>13}{'best err %':>12}{'time to target s':>18}")
    base_epoch = statistics.median(runs["adjoint"][1].epoch_time)
    base_tt = _time_to(runs["adjoint"][1], target)
    for method, (_, h) in runs.items():
        tt = _time_to(h, target)
        print(f"{method:<15}{statistics.median(h.epoch_time):>18.3f}{100 * h.val_error[-1]:>13.2f}"
              f"{100 * min(h.val_error):>12.2f}{('%.1f' % tt) if tt is not None else 'not reached':>18}")
    for method in ("monte_carlo", "path_integral"):
        h = runs[method][1]
        tt = _time_to(h, target)
        per_epoch = base_epoch / statistics.median(h.epoch_time)
        to_target = f"{base_tt / tt:.2f}x" if tt is not None else "n/a (target not reached)"
        print(f"adjoint / {method}: per-epoch {per_epoch:.2f}x, time-to-neural-ODE-accuracy {to_target}")

    print("\nInference with early termination (rk4, step 0.05, whole test set, median of repeats):")
    for method, (model, _) in runs.items():
        cells = []
        for t in (1.0, 0.25):
            with torch.no_grad():
                seconds = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model(xte, t, step_size=0.05)
                    seconds.append(time.perf_counter() - start)
            err = evaluate(model, xte, yte, t=t, step_size=0.05)[0]
            cells.append((statistics.median(seconds), err))
        (s1, e1), (s2, e2) = cells
        print(f"{method:<15} t=1: {1e3 * s1:6.2f} ms, err {100 * e1:5.2f}% | t=0.25: {1e3 * s2:6.2f} ms, err {100 * e2:5.2f}%"
              f" | speed-up {s1 / s2:.2f}x")


if __name__ == "__main__":
    main()
