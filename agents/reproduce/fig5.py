"""Manek & Kolter (2019) Fig. 5: n-link pendulum rollout error, simple vs stable (section 4.2).

For each number of links ``n`` the study

1. draws one training set from the true physics (``PendulumDynamics(n)``: point masses 1,
   lengths 1/n, g = 9.81, absolute damping 0.3) and trains both models on it -- the same
   pairs, the same optimiser settings, the same number of epochs, so both get the same
   data budget;
2. scores both with the paper's protocol (``pendulum_eval``): 1000 initial states uniform
   in ``[-pi/8, pi/8]^(2n)``, physics and model both stepped with RK4 at h = 0.01 for 999
   steps, squared state error with wrapped angle differences, averaged per trajectory;
3. writes into ``--out``: ``fig5.png`` (error at each step for the largest ``n``, and the
   average error over 999 steps against ``n``), ``fig5_per_step.csv``, ``fig5.csv`` and
   ``fig5.md`` (the table).

The training set. The paper trains on ``(x, xdot)`` pairs; the 2019 code drew ``200 n``
states uniformly from ``[-pi, pi]^(2n)`` (``--data box``). That box is almost entirely far
from where the evaluation trajectories go (angles within about 0.4 rad of hanging down), so
those models never see the states they are scored on. By default (``--data trajectories``)
we draw the states from physics trajectories started in the evaluation box -- from a
different seed than the evaluation states -- and label each with the exact ``xdot``.

Run::

    lyagym reproduce fig5 --links 1 2 4 6 8            # the whole study
    lyagym reproduce fig5 --links 8 --size default      # the timed n = 8 run (<= 10 min on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .fig3 import prepare_output, save_figure, save_text
from .pendulum_eval import HALF_WIDTH, N_STATES, N_STEPS, STEP_SIZE, rollout_error

__all__ = ["Fig5Config", "PRESETS", "add_arguments", "run", "training_data", "train_models", "study"]

MODELS = ("simple", "stable")
OUTPUTS = ("fig5.png", "fig5.csv", "fig5.md", "fig5_per_step.csv")


@dataclass(frozen=True)
class Fig5Config:
    """Every setting of the study; ``PRESETS`` holds the named ones (``--size``)."""

    samples_per_link: int = 4000  # (x, xdot) pairs per link: n links get n * samples_per_link
    data: str = "trajectories"  # "trajectories" (states visited from the eval box) or "box"
    box: float = math.pi  # half-width of the uniform box for data="box" (2019 code: pi)
    n_trajectories: int = 100  # physics trajectories the states are drawn from (data="trajectories")
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    alpha: float = 1e-3  # decay rate of the stable model (eq. 10)
    eps: float = 1e-3  # eps of V (eq. 12)
    lyap_hidden: tuple[int, ...] = (60, 60)
    hidden: tuple[int, ...] = (100, 100)
    warp: str | None = None
    eval_states: int = N_STATES
    eval_steps: int = N_STEPS
    seed: int = 0


PRESETS: dict[str, Fig5Config] = {
    # A smoke test: seconds, not a result.
    "tiny": Fig5Config(samples_per_link=400, n_trajectories=8, epochs=2, eval_states=16, eval_steps=50),
    "default": Fig5Config(),
    "full": Fig5Config(samples_per_link=10000, n_trajectories=200, epochs=60),
}


def training_data(physics, config: Fig5Config, *, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared training set: ``x, xdot`` of shape ``(n * samples_per_link, 2n)``.

    ``data="trajectories"``: states sampled from ``n_trajectories`` RK4 physics trajectories
    of 999 steps from initial states uniform in the evaluation box (seed ``seed + 1``, never
    the evaluation draw). ``data="box"``: states uniform in ``[-box, box]^(2n)``.
    Labels are the exact physics derivative in float64, cast to ``dtype``.
    """
    n = physics.n_links
    count = n * config.samples_per_link
    rng = np.random.default_rng(config.seed + 1)
    if config.data == "trajectories":
        x0 = rng.uniform(-HALF_WIDTH, HALF_WIDTH, size=(config.n_trajectories, 2 * n))
        visited = np.asarray(physics.simulate(x0, N_STEPS, dt=STEP_SIZE, method="rk4")).reshape(-1, 2 * n)
        x = visited[rng.choice(len(visited), size=count, replace=count > len(visited))]
    elif config.data == "box":
        x = rng.uniform(-config.box, config.box, size=(count, 2 * n))
    else:
        raise ValueError(f"data must be 'trajectories' or 'box', got {config.data!r}")
    xdot = np.asarray(physics.derivative(x))
    return torch.as_tensor(x, dtype=dtype), torch.as_tensor(xdot, dtype=dtype)


def build_models(n: int, config: Fig5Config) -> dict[str, torch.nn.Module]:
    """Untrained ``SimpleDynamics`` and ``StableDynamics`` for ``n`` links (seeded)."""
    from lyagym.learned_models import SimpleDynamics, StableDynamics

    torch.manual_seed(config.seed)
    simple = SimpleDynamics(2 * n, hidden=config.hidden, dt=STEP_SIZE, integrator="rk4")
    torch.manual_seed(config.seed)
    stable = StableDynamics(
        2 * n,
        hidden=config.hidden,
        lyap_hidden=config.lyap_hidden,
        alpha=config.alpha,
        eps=config.eps,
        warp=config.warp,
        dt=STEP_SIZE,
        integrator="rk4",
    )
    return {"simple": simple, "stable": stable}


def train_models(models, data, config: Fig5Config, *, progress: bool = True) -> dict[str, float]:
    """Fit every model on the same ``data``; returns name -> training seconds."""
    from lyagym.learned_models import fit

    seconds = {}
    for name, model in models.items():
        start = time.perf_counter()
        fit(
            model,
            data,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            progress=progress,
        )
        seconds[name] = time.perf_counter() - start
    return seconds


def study(links, config: Fig5Config, *, progress: bool = True, log=print) -> list[dict]:
    """Train and score both models for every ``n`` in ``links``; one row per (n, model)."""
    from lyagym.envs import PendulumDynamics

    rows = []
    for n in links:
        start = time.perf_counter()
        physics = PendulumDynamics(n_links=n)
        data = training_data(physics, config)
        models = build_models(n, config)
        train_seconds = train_models(models, data, config, progress=progress)
        t_eval = time.perf_counter()
        scores = rollout_error(
            physics, models, n_states=config.eval_states, n_steps=config.eval_steps, seed=config.seed, progress=progress
        )
        eval_seconds = time.perf_counter() - t_eval
        for name in models:
            s = scores[name]
            rows.append(
                {
                    "n_links": n,
                    "model": name,
                    "average_error": s.average,
                    "median_error": s.median,
                    "final_error": float(s.per_step[-1]),
                    "diverged": s.diverged,
                    "train_pairs": int(data[0].shape[0]),
                    "train_seconds": train_seconds[name],
                    "per_step": s.per_step,
                }
            )
        log(
            f"n={n}: average error simple {scores['simple'].average:.4g}, stable {scores['stable'].average:.4g} "
            f"({data[0].shape[0]} pairs, train {sum(train_seconds.values()):.0f} s, evaluate {eval_seconds:.0f} s, "
            f"total {time.perf_counter() - start:.0f} s)"
        )
    return rows


# --------------------------------------------------------------------------- outputs

_COLUMNS = ("n_links", "model", "average_error", "median_error", "final_error", "diverged", "train_pairs", "train_seconds")


def _csv_text(rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_COLUMNS)
    for r in rows:
        w.writerow([f"{r[c]:.6g}" if isinstance(r[c], float) else r[c] for c in _COLUMNS])
    return buf.getvalue()


def _per_step_csv_text(rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    names = [f"n{r['n_links']}_{r['model']}" for r in rows]
    w.writerow(["step", *names])
    for k in range(len(rows[0]["per_step"])):
        w.writerow([k, *(f"{r['per_step'][k]:.6g}" for r in rows)])
    return buf.getvalue()


def markdown_table(rows, config: Fig5Config, command: str) -> str:
    """The README table: average error over 999 steps per ``n``, simple vs stable."""
    by_n: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_n.setdefault(r["n_links"], {})[r["model"]] = r
    lines = [
        "| n links | train pairs | simple: avg error | stable: avg error | stable / simple | simple: final | stable: final |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, m in sorted(by_n.items()):
        s, t = m["simple"], m["stable"]
        ratio = t["average_error"] / s["average_error"] if s["average_error"] > 0 else float("nan")
        lines.append(
            f"| {n} | {s['train_pairs']} | {s['average_error']:.3g} | {t['average_error']:.3g} | {ratio:.2f} "
            f"| {s['final_error']:.2g} | {t['final_error']:.2g} |"
        )
    settings = ", ".join(f"{k}={v}" for k, v in asdict(config).items())
    return (
        "Average squared state error (wrapped angles) over 999 RK4 steps of h = 0.01 from 1000 states "
        f"uniform in [-pi/8, pi/8]^(2n); both models trained on the same pairs.\n\n"
        + "\n".join(lines)
        + f"\n\nCommand: `{command}`\n\nSettings: {settings}\n"
    )


def plot(rows, path) -> None:
    """Fig. 5: error at each step for the largest ``n`` (left), average error vs ``n`` (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_max = max(r["n_links"] for r in rows)
    colors = {"simple": "tab:orange", "stable": "tab:blue"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        if r["n_links"] == n_max:
            steps = np.arange(len(r["per_step"]))
            left.plot(steps, r["per_step"], label=r["model"].capitalize(), color=colors.get(r["model"]))
    left.set_xlabel("time step")
    left.set_ylabel("squared error")
    left.set_yscale("log")
    left.set_title(f"Error at each time step, {n_max}-link pendulum")
    left.legend()
    links = sorted({r["n_links"] for r in rows})
    width = 0.38
    for i, name in enumerate(MODELS):
        vals = [next(r["average_error"] for r in rows if r["n_links"] == n and r["model"] == name) for n in links]
        right.bar(np.arange(len(links)) + (i - 0.5) * width, vals, width, label=name.capitalize(), color=colors[name])
    right.set_xticks(np.arange(len(links)), [str(n) for n in links])
    right.set_xlabel("number of links n")
    right.set_ylabel("average error over steps")
    right.set_yscale("log")
    right.set_title("Average error over the rollout")
    right.legend()
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", type=int, nargs="+", default=[1, 2, 4, 6, 8], help="numbers of links (default: 1 2 4 6 8)")
    parser.add_argument("--size", choices=sorted(PRESETS), default="default", help="preset (default: %(default)s)")
    parser.add_argument("--out", default="./lyagym-output/fig5", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files in --out")
    parser.add_argument("--seed", type=int, default=None, help="seed of data, initialisation and evaluation")
    parser.add_argument("--data", choices=("trajectories", "box"), default=None, help="where training states come from")
    parser.add_argument("--samples-per-link", type=int, default=None, help="(x, xdot) pairs per link")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs for both models")
    parser.add_argument("--alpha", type=float, default=None, help="decay rate of the stable model")
    parser.add_argument("--eps", type=float, default=None, help="eps of the Lyapunov function")
    parser.add_argument("--warp", choices=("none", "coupling"), default=None, help="input warp of V")
    parser.add_argument("--eval-states", type=int, default=None, help="initial states of the evaluation (paper: 1000)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def config_from_args(args: argparse.Namespace) -> Fig5Config:
    config = PRESETS[args.size]
    overrides = {
        "seed": args.seed,
        "data": args.data,
        "samples_per_link": args.samples_per_link,
        "epochs": args.epochs,
        "alpha": args.alpha,
        "eps": args.eps,
        "eval_states": args.eval_states,
    }
    if args.warp is not None:
        overrides["warp"] = None if args.warp == "none" else args.warp
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None or k == "warp"})
    for name in ("samples_per_link", "epochs", "eval_states"):
        if getattr(config, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    for name in ("alpha", "eps"):
        if not getattr(config, name) > 0:
            raise SystemExit(f"--{name} must be > 0, got {getattr(config, name)}")
    return config


def run(args: argparse.Namespace) -> int:
    if any(n < 1 for n in args.links):
        raise SystemExit(f"--links must be positive integers, got {args.links}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    folder = prepare_output(args.out, OUTPUTS, args.overwrite)
    rows = study(sorted(set(args.links)), config, progress=not args.no_progress)
    command = "lyagym reproduce fig5 --links " + " ".join(str(n) for n in sorted(set(args.links))) + f" --size {args.size}"
    save_text(_csv_text(rows), folder / "fig5.csv")
    save_text(_per_step_csv_text(rows), folder / "fig5_per_step.csv")
    table = markdown_table(rows, config, command)
    save_text(table, folder / "fig5.md")
    plot(rows, folder / "fig5.png")
    print(table)
    print(f"wrote {', '.join(str(folder / name) for name in OUTPUTS)}")
    return 0
