"""Cost of an ensemble: E members evaluated as one vmapped computation vs one member.

Prints medians over interleaved repeats (so machine load hits all cases alike) and ratios:

- one training step (forward + backward + Adam, the Gaussian NLL) on a batch of 256 rows per
  member: ``Ensemble`` of E = 5 vs E = 1 (target: <= 2x on a 2-core CPU), for simple members
  and for certified stable members, both with the mechanical priors (sin/cos of the angles,
  control-affine, SiLU; simple members' networks and variance heads through the compiled
  training kernel of ``mlp_train_native`` where it runs, as the header line says); for
  reference also the plain single model's own training step (``fit``'s loss
  ``||model._step(x, u) - x'||^2``);
- one planning step of TS-infinity (no gradients, sampling on) on ``B*K = 30000`` rows vs one
  member stepping the same rows alone (``member._step``);
- the training step as ``fit_ensemble`` runs it (one epoch over ``--fit-rows`` transitions per
  timing, divided by its steps): besides the step itself each member's bootstrapped batch is
  gathered from the data, and once an epoch the held-out loss is computed and the best weights
  copied; E = 5 vs E = 1.

Timing: with one thread (default), CPU time of this thread (``time.thread_time``: load from
other processes on the machine does not count); with ``--threads 2`` or more, wall time
(``time.perf_counter``: the CPU time of one thread would miss the other threads' work), so
run it on an otherwise idle machine. Allocator: glibc's heap trimming and mmap of large
blocks are switched off, as in ``bench_stable.py`` (``--malloc system`` keeps glibc's defaults).

Usage::

    python examples/benchmarks/bench_ensemble.py                 # double pendulum sizes, 1 thread
    python examples/benchmarks/bench_ensemble.py --threads 2 --repeats 30
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import time

import torch

from lyagym.learned_models import Ensemble, fit_ensemble, member_factory
from lyagym.learned_models import mlp_native, mlp_train_native
from lyagym.learned_models.ensemble import ensemble_optimizer


def steady_malloc() -> bool:
    """Stop glibc from returning freed heap memory to the OS (and from mmap-ing large blocks),
    as in ``bench_stable.py``: E = 5 activations (0.5 MB each at batch 256, width 100) are above
    glibc's default mmap threshold and one member's are below it, so without this every E = 5
    activation is a fresh mmap with its page faults, a cost of the allocator, not of the model."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))
    except (OSError, AttributeError):
        return False


CLOCK = time.thread_time


def timed(fn, repeats: int, inner: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = CLOCK()
        for _ in range(inner):
            fn()
        out.append((CLOCK() - t) / inner)
    return out


def train_step(ens: Ensemble, opt: torch.optim.Optimizer, x, u, y):
    def run():
        loss, _ = ens._loss(x, u, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def single_train_step(model, opt, x, u, y):
    def run():
        loss = ((model._step(x, u) - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def bench(kind: str, args) -> dict[str, float]:
    n, m = 2 * args.links, args.links
    options = dict(dt=0.05, angle_dims=args.links, control_affine=True, activation="silu", hidden=tuple(args.hidden),
                   integrator=args.integrator)
    torch.manual_seed(0)
    factory = member_factory(kind, n, m, **options)
    ens5 = Ensemble(factory, args.members, propagation="tsinf")
    ens1 = Ensemble(factory, 1, propagation="tsinf")
    single = factory()
    b = args.batch
    x5, u5 = torch.randn(args.members, b, n), torch.randn(args.members, b, m)
    y5 = x5 + 0.05 * torch.randn_like(x5)
    x1, u1, y1 = x5[:1], u5[:1], y5[:1]
    cases = {
        f"train E={args.members}": train_step(ens5, ensemble_optimizer(ens5, lr=1e-4), x5, u5, y5),
        "train E=1": train_step(ens1, ensemble_optimizer(ens1, lr=1e-4), x1, u1, y1),
        "train single model": single_train_step(single, torch.optim.Adam(single.parameters(), 1e-4), x1[0], u1[0], y1[0]),
    }
    X, U = torch.randn(args.plan_batch, n), torch.randn(args.plan_batch, m)
    member = ens5.member(0)

    def plan_ens():
        with torch.no_grad():
            ens5.step(X, U)

    def plan_member():
        with torch.no_grad():
            member._step(X, U)

    cases[f"plan TS-inf E={args.members}"] = plan_ens
    cases["plan one member"] = plan_member
    # Whole training steps as fit_ensemble runs them (the same rows for both sizes): each
    # member's bootstrapped batch gathered from the data, the step, and once an epoch the
    # held-out loss and the copy of the best weights; per step of one epoch.
    N = args.fit_rows
    data = torch.randn(N, n), torch.randn(N, m)
    data = (*data, data[0] + 0.05 * torch.randn(N, n))
    steps = -(-(N - round(0.1 * N)) // b)  # fit_ensemble's 10% held out, batches of b rows
    for size in (args.members, 1):
        fitted = Ensemble(factory, size, propagation="tsinf")
        cases[f"fit_ensemble E={size}"] = lambda fitted=fitted: fit_ensemble(fitted, *data[:2], data[2], epochs=1, batch_size=b,
                                                                            patience=None, progress=False)
    for fn in cases.values():  # warm-up
        fn()
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved
        for name, fn in cases.items():
            results[name] += timed(fn, 1, args.inner)
    medians = {name: statistics.median(v) for name, v in results.items()}
    for size in (args.members, 1):
        medians[f"fit_ensemble E={size}"] /= steps  # per step
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", type=int, default=2, help="pendulum links: state_dim = 2 links, action_dim = links (default 2)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 100], help="fhat widths (default 100 100)")
    parser.add_argument("--members", type=int, default=5, help="E (default 5)")
    parser.add_argument("--integrator", default="euler", help="members' integrator (default euler, the MBRL loops' ensembles; rk4: four evaluations per step)")
    parser.add_argument("--batch", type=int, default=256, help="training rows per member (default 256)")
    parser.add_argument("--plan-batch", type=int, default=30000, help="planning rows B*K (default 30000)")
    parser.add_argument("--fit-rows", type=int, default=10240,
                        help="transitions fit_ensemble trains on, one epoch per timing (default 10240: 36 steps of 256 rows)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats (default 15)")
    parser.add_argument("--inner", type=int, default=3, help="calls per timing (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--clock", choices=["auto", "thread", "wall"], default="auto",
                        help="thread CPU time or wall time (auto: thread with 1 thread, wall with more)")
    parser.add_argument("--malloc", choices=["steady", "system"], default="steady",
                        help="steady (default): no heap trimming / mmap of large blocks (see steady_malloc); system: glibc defaults")
    parser.add_argument("--kinds", nargs="+", default=["simple", "stable"], choices=["simple", "stable"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steady = args.malloc == "steady" and steady_malloc()
    global CLOCK
    clock = args.clock if args.clock != "auto" else ("thread" if args.threads == 1 else "wall")
    CLOCK = time.thread_time if clock == "thread" else time.perf_counter
    print(f"clock={clock}  malloc={'steady' if steady else 'system'}  threads={args.threads}  links={args.links}  hidden={args.hidden}  integrator={args.integrator}  E={args.members}  batch={args.batch}  plan rows={args.plan_batch}")
    kernel = mlp_train_native.available()
    print("members' networks in training: " + (f"compiled kernel (mlp_train_native, {mlp_native.vector_floats()}-float vectors)"
                                                 if kernel else "torch's batched products (no compiled kernel here)"))
    E = args.members
    for kind in args.kinds:
        t = bench(kind, args)
        print(f"\n{kind} members (priors: sin/cos angles, control-affine, SiLU)")
        for name, v in t.items():
            print(f"  {name:<22} {v * 1e3:9.2f} ms")
        print(f"  training step  E={E} / E=1:           {t[f'train E={E}'] / t['train E=1']:.2f}x   (target <= 2x)")
        print(f"  fit_ensemble's step E={E} / E=1:      {t[f'fit_ensemble E={E}'] / t['fit_ensemble E=1']:.2f}x   "
              "(with the batch gathering and, once an epoch, validation and the best-weights copy)")
        print(f"  training step  E={E} / single model:  {t[f'train E={E}'] / t['train single model']:.2f}x")
        print(f"  planning step  TS-inf E={E} / member: {t[f'plan TS-inf E={E}'] / t['plan one member']:.2f}x")


if __name__ == "__main__":
    main()
