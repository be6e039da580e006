"""Cost of the stability guarantee: StableDynamics vs SimpleDynamics, measured in the same run.

Prints medians over repeats (interleaved, so machine load hits both alike) and ratios:

- training step (forward + backward + Adam) on a batch of derivative pairs, at n links
  (state_dim = 2n; target at n = 8: stable/simple <= 2.5x; the 2019 code: ~10x);
- one RK4 step over 1000 states without gradients (target <= 3x; 2019 code: ~20x), with
  the guarantee-keeping rescale (our default) and without it;
- the same two figures for a 2019-style stable model that gets grad V from
  ``torch.autograd.grad(create_graph=True)`` instead of the analytic ICNN gradient.

Timing: CPU time of this thread (``time.thread_time``), medians over repeats, every case
interleaved in one process with ``torch.set_num_threads(1)`` (``--threads``), so machine load
hits all cases alike. Allocator: by default glibc's heap trimming is switched off for this
process (``mallopt``). Otherwise the page faults of re-growing the trimmed heap (hundreds per
step, a few microseconds each in a VM) land on whichever model happens to allocate after a
trim: the same build measured stable/simple anywhere from 2.2x to 2.7x between runs.
``--malloc system`` keeps glibc's defaults.

Usage::

    python examples/benchmarks/bench_stable.py            # n = 8, 1 thread
    python examples/benchmarks/bench_stable.py --links 1 8 --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import statistics
import time

import torch
import torch.nn.functional as F

from lyagym.learned_models import SimpleDynamics, StableDynamics
from lyagym.learned_models.integrators import rk4


def autograd_derivative(model: StableDynamics, x: torch.Tensor) -> torch.Tensor:
    """Eq. 10 the 2019 way: V by a forward pass, grad V by autograd with create_graph."""
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        V = model.lyapunov(xg)
        (gV,) = torch.autograd.grad(V.sum(), xg, create_graph=torch.is_grad_enabled() or x.requires_grad)
    fx = model._fhat_centered(x, None)
    return fx - gV * (F.relu((gV * fx).sum(-1) + model.alpha * V) / (gV * gV).sum(-1).clamp_min(1e-30)).unsqueeze(-1)


def steady_malloc() -> bool:
    """Stop glibc from returning freed heap memory to the OS (and from mmap-ing large blocks)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))
    except (OSError, AttributeError):
        return False


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.thread_time()
        fn()
        out.append(time.thread_time() - t)
    return out


def bench(links: int, batch: int, states: int, repeats: int, inner: int) -> dict[str, float]:
    n = 2 * links
    torch.manual_seed(0)
    simple = SimpleDynamics(n)
    stable = StableDynamics(n)
    stable_2019 = StableDynamics(n)
    stable_2019.load_state_dict(stable.state_dict())
    stable_rec = StableDynamics(n, d=1.0, lyap_shift="tangent", lyap_quadratic=True)  # the example's V options
    x = torch.randn(batch, n)
    xdot = torch.randn(batch, n)
    opts = {id(m): torch.optim.Adam(m.parameters(), lr=1e-3) for m in (simple, stable, stable_2019, stable_rec)}

    def train_step(model, derivative):
        def run():
            for _ in range(inner):
                loss = ((derivative(x) - xdot) ** 2).mean()
                opts[id(model)].zero_grad(set_to_none=True)
                loss.backward()
                opts[id(model)].step()

        return run

    xs = torch.randn(states, n)

    def rk4_step(model, derivative=None, rescale=True):
        def run():
            with torch.no_grad():
                for _ in range(inner):
                    if derivative is None:
                        model.step(xs) if rescale else rk4(lambda z: model._derivative(z, None), xs, model.dt)
                    else:
                        rk4(derivative, xs, model.dt)

        return run

    cases = {
        "train simple": train_step(simple, lambda z: simple._derivative(z, None)),
        "train stable": train_step(stable, lambda z: stable._derivative(z, None)),
        "train stable (tangent + quadratic V)": train_step(stable_rec, lambda z: stable_rec._derivative(z, None)),
        "train stable (2019-style autograd)": train_step(stable_2019, lambda z: autograd_derivative(stable_2019, z)),
        "rk4 simple": rk4_step(simple),
        "rk4 stable (+rescale, default)": rk4_step(stable),
        "rk4 stable (no rescale)": rk4_step(stable, rescale=False),
        "rk4 stable (tangent + quadratic V)": rk4_step(stable_rec),
        "rk4 stable (2019-style autograd)": rk4_step(stable_2019, lambda z: autograd_derivative(stable_2019, z)),
    }
    for fn in cases.values():  # warm up
        fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):  # interleave so load spikes hit every case alike
        for k, fn in cases.items():
            samples[k] += timed(fn, 1)
    return {k: statistics.median(v) / inner for k, v in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--links", type=int, nargs="+", default=[8], help="pendulum links n (state_dim = 2n)")
    p.add_argument("--batch", type=int, default=256, help="training batch size")
    p.add_argument("--states", type=int, default=1000, help="states per RK4 step")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--inner", type=int, default=5, help="calls per timed sample")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--malloc", choices=["steady", "system"], default="steady", help="glibc heap trimming off (default) or glibc's defaults")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    allocator = "glibc defaults"
    if args.malloc == "steady":
        allocator = "heap trimming off (mallopt)" if steady_malloc() else "glibc defaults (mallopt unavailable)"
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), float32, median of {args.repeats} x {args.inner} calls, "
        f"CPU time of this thread; allocator: {allocator}; load average {os.getloadavg()[0]:.2f}\n"
    )
    for links in args.links:
        t = bench(links, args.batch, args.states, args.repeats, args.inner)
        print(f"n = {links} links (state_dim {2 * links}); training batch {args.batch}, RK4 over {args.states} states")
        print(f"  {'case':<38} {'ms':>8} {'vs simple':>10}")
        for kind in ("train", "rk4"):
            base = t[f"{kind} simple"]
            for k, v in t.items():
                if k.startswith(kind):
                    print(f"  {k:<38} {1e3 * v:8.3f} {v / base:9.2f}x")
        print(
            f"  -> training step stable/simple = {t['train stable'] / t['train simple']:.2f}x (target <= 2.5x, 2019 code ~10x); "
            f"RK4 step stable/simple = {t['rk4 stable (+rescale, default)'] / t['rk4 simple']:.2f}x (target <= 3x, 2019 code ~20x)"
        )
        print(f"  (load average {os.getloadavg()[0]:.2f})\n")


if __name__ == "__main__":
    main()
