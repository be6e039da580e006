"""Benchmark: Monte Carlo LyaNet vs adjoint neural ODE training on sklearn digits, one run.

Prints, for the same model (``lyanet_digits.build_model``) and data:

- wall-clock per training epoch (median over epochs) of adjoint, Monte Carlo LyaNet
  (Alg. 1) at each ``--n-samples`` Gamma ((eta, t) pairs per example) and path-integral
  LyaNet (Alg. 2), and the ratio adjoint / LyaNet;
- time to reach the neural ODE's accuracy: the adjoint model's final test error is the
  target; each LyaNet method trains until it first reaches it (at most ``--budget-factor``
  times the baseline's epochs: a LyaNet epoch is several times cheaper); the cumulative
  training time (validation excluded) to the target, and the ratio (issue target: Monte
  Carlo >= 3x faster);
- inference time with early termination (median of repeats): ``t = 1`` vs ``t = 0.25``,
  with the test error and cross-entropy at each;
- with several ``--seeds`` (default 0 1 2), the median of each ratio over seeds (a seed that
  never reaches the target counts as 0x).

Every method uses the same model, batch (64) and Adam learning rate (1e-3); Gamma is Monte
Carlo's own knob. Fewer pairs per example make an epoch cheaper and, on this 10-D hidden
state, barely slow learning per epoch.

    OMP_NUM_THREADS=1 python examples/benchmarks/bench_lyanet.py [--epochs 60] [--seeds 0 1 2] [--n-samples 2 8]

Timings are noisy on a shared machine: compare the ratios, which are measured in one process.

Measured (2-core CPU shared with other jobs; ``--seeds 0 1 2 3 4``, fused Adam): time to the
neural ODE's accuracy, adjoint / Monte Carlo with Gamma = 2: 7.28x / 2.09x / 1.77x / 2.99x /
3.01x, median 2.99x -- the issue's 3x sits on the median, not above it; Gamma = 8: median
1.36x (1.05-4.07x). Per epoch Monte Carlo is 8.0-10.5x (Gamma 2) / 3.7-5.0x (Gamma 8) cheaper,
but needs 1.1-5x as many epochs (48-136) as the adjoint takes to first reach its own final
error (20-49 of its 60). The ratio
moves with the run: the same benchmark before Adam was fused gave 5.10x / 1.77x / 3.70x (seeds
0-2) and 1.94x / 2.91x (seeds 3-4), and a separate sweep 5.36x / 2.08x / 3.41x / 1.19x / 3.42x
(median 3.41x). Fusing Adam (``lyanet._adam``) took the per-epoch ratio from 6.3-7.7x to
8-10.5x: the default per-tensor Adam update was a quarter of a Monte Carlo step. Tuning batch
and learning rate helps the adjoint too (batch 128, lr 2e-3 for both: the adjoint reaches the
target 1.6-2.0x sooner and Monte Carlo leads by 3.5x / 1.9x / 2.9x). Path-integral training
is 0.5-0.9x the adjoint's speed per epoch (it rolls the ODE out and re-takes every segment).
Early termination at ``t = 0.25`` costs a quarter of the solver steps: 2.9-5.4x faster
inference.
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


def bench_seed(args: argparse.Namespace, seed: int) -> dict[str, float | None]:
    """Train the three methods on one seed's split, print its tables, return the ratios."""
    xtr, ytr, xte, yte = load_digits_split(seed=seed)
    runs = {}
    target = None
    # Monte Carlo once per Gamma ((eta, t) pairs per example), labelled "monte_carlo/G"
    labels = [("adjoint", "adjoint", 1)] + [(f"monte_carlo/{g}", "monte_carlo", g) for g in args.n_samples]
    labels.append(("path_integral", "path_integral", 1))
    for label, method, gamma in labels:
        model = build_model(64, 10, kappa=args.kappa, seed=seed)
        # The baseline trains its epochs; LyaNet may train up to budget_factor times as many
        # and stops as soon as it reaches the baseline's final test error (the target).
        epochs = args.epochs if method == "adjoint" else args.budget_factor * args.epochs
        hist = fit(model, xtr, ytr, method=method, kappa=args.kappa, epochs=epochs, seed=seed, n_samples=gamma,
                   x_val=xte, y_val=yte, progress=True, stop_at_error=target)
        runs[label] = (model, hist)
        if method == "adjoint":
            target = hist.val_error[-1]
    print(f"\nSeed {seed}: digits, {xtr.shape[0]} train / {xte.shape[0]} test, adjoint {args.epochs} epochs, LyaNet up to "
          f"{args.budget_factor * args.epochs} (stopping at the target), batch 64, Adam lr 1e-3 for all, rk4 step 0.1, threads={args.threads}; "
          f"monte_carlo/G: Gamma = G (eta, t) pairs per example. Target = neural ODE (adjoint) final test error {100 * target:.2f}%.")
    print(f"{'method':<17}{'s/epoch (median)':>18}{'epochs':>8}{'final err %':>13}{'best err %':>12}{'time to target s':>18}")
    base_epoch = statistics.median(runs["adjoint"][1].epoch_time)
    base_tt = _time_to(runs["adjoint"][1], target)
    for method, (_, h) in runs.items():
        tt = _time_to(h, target)
        print(f"{method:<17}{statistics.median(h.epoch_time):>18.3f}{len(h.epoch_time):>8}{100 * h.val_error[-1]:>13.2f}"
              f"{100 * min(h.val_error):>12.2f}{('%.1f' % tt) if tt is not None else 'not reached':>18}")
    ratios: dict[str, float | None] = {}
    for method in [label for label in runs if label != "adjoint"]:
        h = runs[method][1]
        tt = _time_to(h, target)
        ratios[f"{method} per-epoch"] = base_epoch / statistics.median(h.epoch_time)
        ratios[f"{method} to target"] = base_tt / tt if tt is not None else None
        to_target = f"{base_tt / tt:.2f}x" if tt is not None else "n/a (target not reached)"
        print(f"adjoint / {method}: per-epoch {ratios[f'{method} per-epoch']:.2f}x, time-to-neural-ODE-accuracy {to_target}")

    print("\nInference with early termination (rk4, step 0.05, whole test set, median of repeats; CE = mean test "
          "cross-entropy of the prediction, Fig. 3's quantity: log 10 = 2.303 is the untrained start):")
    for method, (model, _) in runs.items():
        cells = []
        for t in (1.0, 0.25):
            with torch.no_grad():
                seconds = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model(xte, t, step_size=0.05)
                    seconds.append(time.perf_counter() - start)
            err, loss = evaluate(model, xte, yte, t=t, step_size=0.05)
            cells.append((statistics.median(seconds), err, loss))
        (s1, e1, l1), (s2, e2, l2) = cells
        ratios[f"{method} early-exit speed-up"] = s1 / s2
        print(f"{method:<17} t=1: {1e3 * s1:6.2f} ms, err {100 * e1:5.2f}%, CE {l1:.3f} | t=0.25: {1e3 * s2:6.2f} ms, "
              f"err {100 * e2:5.2f}%, CE {l2:.3f} | speed-up {s1 / s2:.2f}x")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the adjoint baseline (default: %(default)s)")
    parser.add_argument("--budget-factor", type=int, default=3,
                        help="LyaNet trains at most this many times the baseline's epochs, stopping once it reaches the "
                        "baseline's final test error (default: %(default)s)")
    parser.add_argument("--kappa", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (split, initialisation, training); "
                        "with several, the median ratio over seeds is printed at the end (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="inference timing repeats")
    parser.add_argument("--n-samples", type=int, nargs="+", default=[2, 8],
                        help="Monte Carlo (eta, t) pairs per example, Gamma; one Monte Carlo run per value (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    per_seed = [bench_seed(args, seed) for seed in args.seeds]
    if len(per_seed) > 1:
        print(f"\nMedian over seeds {args.seeds} (adjoint / method; a seed that never reached the target counts as 0x):")
        for key in per_seed[0]:
            values = [r[key] for r in per_seed]
            missed = sum(v is None for v in values)
            cell = f"{statistics.median(0.0 if v is None else v for v in values):.2f}x"
            print(f"  {key:<36}{cell:>8}   per seed: " + ", ".join("not reached" if v is None else f"{v:.2f}x" for v in values)
                  + (f"  ({missed} not reached)" if missed else ""))


if __name__ == "__main__":
    main()
