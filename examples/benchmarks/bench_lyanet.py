"""Benchmark: Monte Carlo LyaNet vs adjoint neural ODE training on sklearn digits, one run.

Prints, for the same model (``lyanet_digits.build_model``) and data:

- wall-clock per training epoch (median over epochs) of adjoint, Monte Carlo LyaNet
  (Alg. 1) at each ``--n-samples`` Gamma ((eta, t) pairs per example) and path-integral
  LyaNet (Alg. 2), and the ratio adjoint / LyaNet;
- time to reach the neural ODE's accuracy: the adjoint model's final test error is the
  target; each LyaNet method trains until it first reaches it (at most ``--budget-factor``
  times the baseline's epochs: a LyaNet epoch is several times cheaper); the cumulative
  training time (validation excluded) to the target, and the ratio (target: Monte
  Carlo >= 3x faster);
- inference time with early termination (median of repeats): ``t = 1`` vs ``t = 0.25``,
  with the test error and cross-entropy at each;
- the same with a learning-rate grid (``--lrs``; the paper tunes each method's own by grid
  search, appendix C): the adjoint and each Monte Carlo Gamma train again at every rate,
  each method is compared at the rate with its smallest median time to the target, and
  the per-seed ratios and their median are printed;
- with several ``--seeds`` (default 0-4), the median of each ratio over seeds (a seed that
  never reaches the target counts as 0x).

The per-seed tables use the same model, batch (64) and Adam learning rate (the first of
``--lrs``, 1e-3) for every method; Gamma is Monte Carlo's own knob. Fewer pairs per example
make an epoch cheaper and slow learning per epoch only a little on this 10-D hidden state.

    OMP_NUM_THREADS=1 python examples/benchmarks/bench_lyanet.py [--seeds 0 1 2 3 4] [--lrs 1e-3 3e-3 5e-3] [--n-samples 2 8]

Timings are noisy on a shared machine: compare the ratios, which are measured in one process.

Measured (2-core CPU shared with other jobs, seeds 0-4, Gamma = 2):

- each method at its best rate of {1e-3, 3e-3, 5e-3} (both pick 5e-3): Monte Carlo reaches
  the neural ODE's accuracy 3.77x sooner (median; per seed 3.77x / 3.69x / 5.98x / 4.71x /
  3.17x): the 3x target is met on every seed. With the grid {1e-3, 2e-3, 3e-3} (both pick
  3e-3): median 3.69x (3.69x / 3.06x / 3.86x / 2.62x / 4.26x); a separate sweep of the same
  comparison gave 3.6x. Gamma = 8 at its best rate of that grid: median 2.13x.
- at the shared rate 1e-3: median 2.44-2.45x over two runs (per seed 1.6-6.9x; 2.99x in an
  earlier run). Per epoch Monte Carlo is 6.7-11.7x cheaper (Gamma 8: 3-5x), but at this rate it
  needs 1.1-5x as many epochs as the adjoint takes to first reach its own final error.
- path-integral training is 0.66-0.95x the adjoint's speed per epoch (it rolls the ODE out
  and re-takes every segment) and reaches the target 0.24-0.55x as fast, on 4 of 5 seeds.
- fusing Adam (``lyanet._adam``) took the per-epoch ratio from 6.3-7.7x to 8-10.5x: the
  default per-tensor update was a quarter of a Monte Carlo step.
- early termination at ``t = 0.25`` costs a quarter of the solver steps: 2.8-5.5x faster
  inference, test cross-entropy 1.10-1.16 (LyaNet) vs 1.19-1.23 (neural ODE), from log 10.
"""

from __future__ import annotations

import argparse
import itertools
import math
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
          f"{args.budget_factor * args.epochs} (stopping at the target), batch 64, Adam lr {args.lrs[0]:g} for all, rk4 step 0.1, threads={args.threads}; "
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

    # The learning-rate grid (the paper's protocol tunes each method's own): the adjoint and
    # every Monte Carlo Gamma again at each further rate, stopping at the same target.
    times = {(label, args.lrs[0]): _time_to(h, target) for label, (_, h) in runs.items()}
    for lr in args.lrs[1:]:
        for label, method, gamma in labels:
            if method == "path_integral":
                continue  # slow, and not the target: reported at the first rate only
            model = build_model(64, 10, kappa=args.kappa, seed=seed)
            epochs = args.epochs if method == "adjoint" else args.budget_factor * args.epochs
            hist = fit(model, xtr, ytr, method=method, kappa=args.kappa, epochs=epochs, seed=seed, n_samples=gamma, lr=lr,
                       x_val=xte, y_val=yte, progress=True, stop_at_error=target)
            times[(label, lr)] = _time_to(hist, target)
    if len(args.lrs) > 1:
        print("Time to the target (s) at each Adam learning rate:")
        for label in [lab for lab, method, _ in labels if method != "path_integral"]:
            print(f"  {label:<15}" + "".join(f"  lr {lr:g}: " + ("not reached" if times[(label, lr)] is None else f"{times[(label, lr)]:.1f}")
                                           for lr in args.lrs))

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
    return ratios, times


def tuned_ratios(per_seed_times: list[dict], lrs: list[float]) -> None:
    """Each method at its own best learning rate of the grid -- the one with the smallest
    median time to the target over seeds (never reached = infinite) -- and the per-seed
    ratio adjoint / method at those rates; prints them with their median."""
    labels = sorted({label for times in per_seed_times for label, _ in times}, key=lambda lab: (lab != "adjoint", lab))

    def best_lr(label: str) -> float:
        return min(lrs, key=lambda lr: statistics.median(math.inf if t.get((label, lr)) is None else t[(label, lr)]
                                                           for t in per_seed_times))

    base_lr = best_lr("adjoint")
    print(f"\nEach method at its best learning rate of {lrs} (smallest median time to the target); adjoint: lr {base_lr:g}:")
    for label in labels:
        if label in ("adjoint", "path_integral"):  # the baseline; path integral runs at the first rate only
            continue
        lr = best_lr(label)
        ratios = []
        for times in per_seed_times:
            base, own = times[("adjoint", base_lr)], times[(label, lr)]
            ratios.append(0.0 if own is None or base is None else base / own)
        print(f"  adjoint / {label} (lr {lr:g}) to target: median {statistics.median(ratios):.2f}x   per seed: "
              + ", ".join(f"{r:.2f}x" for r in ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the adjoint baseline (default: %(default)s)")
    parser.add_argument("--budget-factor", type=int, default=3,
                        help="LyaNet trains at most this many times the baseline's epochs, stopping once it reaches the "
                        "baseline's final test error (default: %(default)s)")
    parser.add_argument("--kappa", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (split, initialisation, training); "
                        "with several, the median ratio over seeds is printed at the end (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="inference timing repeats")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 5e-3],
                        help="Adam learning rates: the first is every method's in the per-seed tables (and sets the "
                        "target); the adjoint and Monte Carlo also run at the others, and each is compared at its best "
                        "(default: %(default)s)")
    parser.add_argument("--n-samples", type=int, nargs="+", default=[2, 8],
                        help="Monte Carlo (eta, t) pairs per example, Gamma; one Monte Carlo run per value (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [bench_seed(args, seed) for seed in args.seeds]
    per_seed = [ratios for ratios, _ in results]
    if len(args.lrs) > 1:
        tuned_ratios([times for _, times in results], args.lrs)
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
