"""Our n-link pendulum beside MuJoCo's twin of it, in one process run (the ``bench`` extra).

    python examples/benchmarks/bench_mujoco.py                  # n = 1 2 4 8 16 32
    python examples/benchmarks/bench_mujoco.py --links 1 8 --quick

The MJCF twin is built here: hinge joints about -y (so a positive angle swings the chain
toward +x, as ours), a point mass at each rod's end (inertia 1e-12), joint damping
(``damping_mode="joint"``, ``b = 0.3``), links of 1 m, a motor on every joint, RK4 at the same ``dt``, contacts off.
MuJoCo's joint angles are relative, ours absolute: ``q_i = theta_1 + .. + theta_i``.

1. Agreement: both integrate the same start for 1 s (RK4, dt = 0.01, constant torques); the
   largest state difference is printed first, before any timing.
2. Single state: ``PendulumDynamics.step_single`` against ``mujoco.mj_step``.
3. Env step: ``gym.make("lyagym/NLinkPendulum-v0")`` against a MuJoCo-backed Gymnasium env
   defined here with the same observation (``cos q, sin q, qdot``), reward and wrappers.
4. Batches of 1k and 64k states: ``PendulumDynamics.step`` on a float32 CPU tensor without
   autograd (the vector env's call: the compiled sweep or vectorised torch, whichever
   ``PendulumDynamics`` picks), torch only (no compiled backend: what autograd and
   accelerators run, the expanded code up to 4 links, the torch sweep beyond), a closed-form
   reference written
   for the comparison (point-mass ``M_ij = l_i l_j sum_{k >= max(i,j)} m_k cos(q_i - q_j)``,
   batched Cholesky solve, torch float64), against ``mujoco.rollout`` (one thread).
5. Accuracy per cost: RK4 error after 1 s against a DOP853 reference (rtol 1e-12) of MuJoCo
   at dt = 0.01 and of ours at the step that costs the same single-state time.

Timing: CPU time of this thread (``time.thread_time``; MuJoCo and torch both run on this
thread: ``torch.set_num_threads(1)``, ``mujoco.rollout`` with ``nthread=0``), medians over
``--repeats``, every case interleaved with its MuJoCo anchor so machine load hits both alike.
Ratios are MuJoCo's time over ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

try:
    import mujoco
    from mujoco import rollout as mj_rollout
except ImportError as exc:  # pragma: no cover - the bench extra
    raise SystemExit(f"bench_mujoco needs MuJoCo: pip install 'lyagym[bench]' ({exc})")

import lyagym.envs  # noqa: F401  (registers lyagym/NLinkPendulum-v0)
from lyagym.envs import PendulumDynamics, rewards
from lyagym.envs.n_link_pendulum import NLinkPendulumEnv

DT = 0.01


DAMPING = 0.3
#: Every link 1 m long (the chain is n metres): with links of 1/n, the default, the chain's
#: fastest modes of n >= 16 outrun RK4 at dt = 0.01 and both simulators diverge.
LENGTH = 1.0


def mjcf(n: int, masses, lengths, b: float, dt: float = DT, gravity: float = 9.81) -> str:
    """The MJCF twin of ``PendulumDynamics(n, masses, lengths, damping_mode="joint")``."""
    bodies = ""
    for i in range(n):
        offset = 0.0 if i == 0 else -lengths[i - 1]
        bodies += (f'<body pos="0 0 {offset}"><joint name="j{i}" type="hinge" axis="0 -1 0" damping="{b}"/>'
                   f'<inertial pos="0 0 {-lengths[i]}" mass="{masses[i]}" diaginertia="1e-12 1e-12 1e-12"/>')
    bodies += "</body>" * n
    motors = "".join(f'<motor joint="j{i}" gear="1"/>' for i in range(n))
    return (f'<mujoco><option timestep="{dt}" integrator="RK4" gravity="0 0 {-gravity}"><flag contact="disable"/></option>'
            f"<worldbody>{bodies}</worldbody><actuator>{motors}</actuator></mujoco>")


def make_twin(n: int):
    dyn = PendulumDynamics(n, damping=DAMPING, lengths=LENGTH, damping_mode="joint", dt=DT)
    model = mujoco.MjModel.from_xml_string(mjcf(n, dyn.masses.tolist(), dyn.lengths.tolist(), dyn.damping))
    return dyn, model, mujoco.MjData(model)


def set_absolute(data, x: np.ndarray, n: int) -> None:
    data.qpos[:] = np.diff(x[:n], prepend=0.0)
    data.qvel[:] = np.diff(x[n:], prepend=0.0)


def absolute(data, n: int) -> np.ndarray:
    return np.concatenate([np.cumsum(data.qpos), np.cumsum(data.qvel)])


def start_state(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-1.0, 1.0, n), rng.uniform(-1.0, 1.0, n)])


def agreement(n: int) -> float:
    dyn, model, data = make_twin(n)
    x = start_state(n)
    u = np.linspace(-0.2, 0.2, n)
    set_absolute(data, x, n)
    data.ctrl[:] = u
    ours = x
    for _ in range(100):
        mujoco.mj_step(model, data)
        ours = dyn.step_single(ours, u)
    return float(np.abs(absolute(data, n) - ours).max())


def interleaved(cases: dict, repeats: int) -> dict:
    """Median thread-CPU time per call of each ``fn(): calls`` in ``cases``, alternating them."""
    times = {k: [] for k in cases}
    for _ in range(repeats):
        for name, (fn, calls) in cases.items():
            t = time.thread_time()
            fn()
            times[name].append((time.thread_time() - t) / calls)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- single state


def bench_single(n: int, repeats: int, calls: int) -> dict:
    dyn, model, data = make_twin(n)
    x = start_state(n)
    u = [0.05] * n
    set_absolute(data, x, n)
    data.ctrl[:] = u
    xs = x.copy()

    def ours():
        nonlocal xs
        for _ in range(calls):
            xs = dyn.step_single(xs, u)

    def theirs():
        for _ in range(calls):
            mujoco.mj_step(model, data)

    return interleaved({"ours": (ours, calls), "mujoco": (theirs, calls)}, repeats)


class MujocoChainEnv(gym.Env):
    """The MuJoCo twin as a Gymnasium env with ``NLinkPendulumEnv``'s observation and reward
    (absolute angles from MuJoCo's relative ones, the same clipping, the same float code)."""

    def __init__(self, n_links: int = 2):
        template = NLinkPendulumEnv(n_links=n_links, damping=DAMPING, lengths=LENGTH, damping_mode="joint", dt=DT)
        self.n = n_links
        self.action_space, self.observation_space = template.action_space, template.observation_space
        self._template = template
        dyn = template.dynamics
        self.model = mujoco.MjModel.from_xml_string(mjcf(n_links, dyn.masses.tolist(), dyn.lengths.tolist(), dyn.damping))
        self.data = mujoco.MjData(self.model)
        self._u_low, self._u_high = template._u_low, template._u_high
        self._target, self._weights = template._target, template.weights

    def _xs(self) -> list[float]:
        return [*itertools.accumulate(self.data.qpos.tolist()), *itertools.accumulate(self.data.qvel.tolist())]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        x = self.np_random.uniform(self._template.init_low, self._template.init_high)
        mujoco.mj_resetData(self.model, self.data)
        set_absolute(self.data, x, self.n)
        return self._template._observe(self._xs()), {}

    def step(self, action):
        u = [lo if a < lo else hi if a > hi else a for a, lo, hi in zip(action.tolist(), self._u_low, self._u_high)]
        reward = -rewards.pendulum_cost_floats(self._xs(), u, self._target, **self._weights)
        self.data.ctrl[:] = u
        mujoco.mj_step(self.model, self.data)
        return self._template._observe(self._xs()), reward, False, False, {}


def bench_env(n: int, repeats: int, calls: int) -> dict:
    if "bench/MujocoChain-v0" not in gym.registry:
        gym.register("bench/MujocoChain-v0", entry_point=MujocoChainEnv, max_episode_steps=500)
    ours = gym.make("lyagym/NLinkPendulum-v0", n_links=n, damping=DAMPING, lengths=LENGTH, damping_mode="joint", dt=DT)
    theirs = gym.make("bench/MujocoChain-v0", n_links=n)
    action = np.full(n, 0.05, dtype=np.float32)

    def run(env):
        def go():
            for _ in range(calls):
                _, _, term, trunc, _ = env.step(action)
                if term or trunc:
                    env.reset()
        return go

    ours.reset(seed=0)
    theirs.reset(seed=0)
    return interleaved({"ours": (run(ours), calls), "mujoco": (run(theirs), calls)}, repeats)


# ----------------------------------------------------------------------------- batches


class ClosedFormReference:
    """Point-mass chain from its textbook mass matrix, batched, Cholesky-solved (float64)."""

    def __init__(self, dyn: PendulumDynamics):
        n = dyn.n_links
        m, l = torch.tensor(dyn.masses), torch.tensor(dyn.lengths)
        tail = torch.flip(torch.cumsum(torch.flip(m, [0]), 0), [0])  # sum_{k >= i} m_k
        idx = torch.arange(n)
        self.A = l[:, None] * l[None, :] * tail[torch.maximum(idx[:, None], idx[None, :])]
        self.grav = dyn.gravity * l * tail
        D = torch.zeros(n, n, dtype=torch.float64)  # joint damping
        for i in range(n):
            D[i, i] -= dyn.damping
            if i > 0:
                D[i, i - 1] += dyn.damping
                D[i - 1, i] += dyn.damping
                D[i - 1, i - 1] -= dyn.damping
        self.D, self.n, self.dt = D, n, dyn.dt
        E = torch.eye(n, dtype=torch.float64)
        E[idx[:-1], idx[1:]] = -1.0
        self.E = E

    def accel(self, q, w, u):
        diff = q[:, :, None] - q[:, None, :]
        M = self.A * torch.cos(diff)
        f = -(self.A * torch.sin(diff)) @ (w * w)[:, :, None]
        f = f[..., 0] - self.grav * torch.sin(q) + w @ self.D.T + u @ self.E.T
        return torch.cholesky_solve(f[..., None], torch.linalg.cholesky(M))[..., 0]

    def step(self, x, u):
        n, h = self.n, self.dt
        def f(s):
            return torch.cat([s[:, n:], self.accel(s[:, :n], s[:, n:], u)], 1)
        k1 = f(x)
        k2 = f(x + 0.5 * h * k1)
        k3 = f(x + 0.5 * h * k2)
        k4 = f(x + h * k3)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def bench_batch(n: int, batch: int, repeats: int) -> dict:
    dyn, model, data = make_twin(n)
    rng = np.random.default_rng(1)
    x0 = np.concatenate([rng.uniform(-1, 1, (batch, n)), rng.uniform(-1, 1, (batch, n))], 1)
    u = np.full((batch, n), 0.05)
    xt, ut = torch.tensor(x0, dtype=torch.float32), torch.tensor(u, dtype=torch.float32)
    torch_only = PendulumDynamics(**dyn.config())
    torch_only._kernel_pending, torch_only._kernel = False, None  # the pure-torch sweep / expanded code
    ref = ClosedFormReference(dyn)
    x64, u64 = torch.tensor(x0), torch.tensor(u)

    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.empty((batch, mujoco.mj_stateSize(model, spec)))
    for b in range(min(batch, 1)):
        set_absolute(data, x0[b], n)
        mujoco.mj_getState(model, data, state[b], spec)
    state[:] = state[0]
    state[:, 1:1 + n] = np.diff(x0[:, :n], prepend=0.0, axis=1)  # [time, qpos, qvel, ...]
    state[:, 1 + n:1 + 2 * n] = np.diff(x0[:, n:], prepend=0.0, axis=1)
    ctrl = np.full((batch, 1, n), 0.05)
    runner = mj_rollout.Rollout(nthread=0)

    with torch.no_grad():
        cases = {
            "ours": (lambda: dyn.step(xt, ut), batch),
            "torch": (lambda: torch_only.step(xt, ut), batch),
            "reference": (lambda: ref.step(x64, u64), batch),
            "mujoco": (lambda: runner.rollout(model, data, state, ctrl, nstep=1), batch),
        }
        if batch * n * n > 1 << 24:  # (batch, n, n) float64 matrices past ~130 MB each: skipped
            del cases["reference"]
        out = interleaved(cases, repeats)
        out.setdefault("reference", math.nan)
    runner.close()
    return out


# ----------------------------------------------------------------------------- accuracy


def accuracy(n: int, single: dict) -> tuple[float, float, float]:
    """(MuJoCo's RK4 error at dt, ours at the equal-cost step, that step) after 1 s."""
    dyn, model, data = make_twin(n)
    x = start_state(n, seed=2)
    u = np.full(n, 0.05)
    exact = dyn.reference_solve(x, np.array([0.0, 1.0]), u, rtol=1e-12, atol=1e-12)[-1]
    set_absolute(data, x, n)
    data.ctrl[:] = u
    for _ in range(int(round(1.0 / DT))):
        mujoco.mj_step(model, data)
    theirs = np.abs(absolute(data, n) - exact).max()
    steps = max(int(round(1.0 / DT)), int(1.0 / DT * single["mujoco"] / single["ours"]))
    h = 1.0 / steps
    xs = x
    for _ in range(steps):
        xs = dyn.step_single(xs, u, dt=h)
    return float(theirs), float(np.abs(xs - exact).max()), h


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--links", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--batches", type=int, nargs="+", default=[1000, 65536])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="few calls, small batches: a smoke run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    calls = 200 if args.quick else 2000
    batches = [min(b, 256) for b in args.batches] if args.quick else args.batches
    print(f"MuJoCo {mujoco.__version__}, torch {torch.__version__}, {args.threads} torch thread(s), rollout nthread=0; "
          f"thread CPU time, medians of {args.repeats} interleaved repeats; ratio = MuJoCo / ours (> 1: ours faster)")
    print("\n1. agreement over 1 s (RK4, dt = 0.01, damping_mode='joint', b = 0.3, links of 1 m): max |x_ours - x_mujoco|")
    for n in args.links:
        print(f"   n = {n:2d}: {agreement(n):.1e}")
    print("\n2./3./5. single state and env step (us per step), accuracy at equal cost (error after 1 s)")
    print("    n | step_single | mj_step | ratio |  env  | MuJoCo env | ratio | MuJoCo err (dt=0.01) | ours at equal cost (dt)")
    for n in args.links:
        s = bench_single(n, args.repeats, calls)
        e = bench_env(n, args.repeats, calls // 2)
        theirs, ours, h = accuracy(n, s)
        print(f"   {n:2d} | {s['ours'] * 1e6:11.2f} | {s['mujoco'] * 1e6:7.2f} | {s['mujoco'] / s['ours']:5.2f} | "
              f"{e['ours'] * 1e6:5.2f} | {e['mujoco'] * 1e6:10.2f} | {e['mujoco'] / e['ours']:5.2f} | "
              f"{theirs:20.1e} | {ours:.1e} ({h:.4f})", flush=True)
    for batch in batches:
        print(f"\n4. batch {batch}: us per state-step; ratio = mujoco.rollout / ours")
        print("    n | ours (step, f32) | torch only | closed-form ref | rollout | ratio ours | ratio torch | ours / ref")
        for n in args.links:
            b = bench_batch(n, batch, max(3, args.repeats // 2))
            print(f"   {n:2d} | {b['ours'] * 1e6:16.3f} | {b['torch'] * 1e6:10.3f} | {b['reference'] * 1e6:15.3f} | "
                  f"{b['mujoco'] * 1e6:7.3f} | {b['mujoco'] / b['ours']:10.2f} | {b['mujoco'] / b['torch']:11.2f} | "
                  f"{b['ours'] / b['reference']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
