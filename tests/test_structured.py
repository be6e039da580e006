"""The structured form (coefficient tables + O(n) sweep) and its compiled kernel agree with the
expanded form and with the closed-form point-mass chain at every n up to 32."""

import json
import os

import numpy as np
import pytest
import torch

from lyagym.envs import PendulumDynamics, native, structured, symbolic
from lyagym.envs.structured import ChainTables, StructureError


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LYAGYM_CACHE_DIR", str(tmp_path))
    symbolic._memo.cache_clear()
    structured._memo.cache_clear()
    yield tmp_path
    symbolic._memo.cache_clear()
    structured._memo.cache_clear()


def chain_data(n: int, damping_mode: str = "absolute", actuated=None) -> dict:
    """Tables of the point-mass chain written from the textbook formulas, not from sympy:
    ``A_ij = l_i l_j sum_{k >= max(i,j)} m_k``, ``B = -A``, ``G_i = -g l_i sum_{k >= i} m_k``,
    potential ``P_k = -g l_k sum_{j >= k} m_j`` (params: m1..mn, l1..ln, g, b)."""
    actuated = tuple(range(n)) if actuated is None else tuple(actuated)
    m = lambda k: k  # noqa: E731  (parameter indices)
    l = lambda k: n + k  # noqa: E731
    g, b = 2 * n, 2 * n + 1

    def mono(*powers, coeff=1):
        return [coeff, 1, [[k, e] for k, e in powers]]

    def A(i, j, sign=1):
        if i == j:
            return [mono((m(k), 1), (l(i), 2), coeff=sign) for k in range(i, n)]
        return [mono(*sorted([(m(k), 1), (l(i), 1), (l(j), 1)]), coeff=sign) for k in range(max(i, j), n)]

    grav = lambda i: [mono((m(k), 1), (l(i), 1), (g, 1), coeff=-1) for k in range(i, n)]  # noqa: E731
    D = []
    for i in range(n):
        if damping_mode == "absolute":
            D.append([i, i, [mono((b, 1), coeff=-1)]])
        else:
            D.append([i, i, [mono((b, 1), coeff=-2 if i + 1 < n else -1)]])
            if i > 0:
                D.append([i, i - 1, [mono((b, 1))]])
            if i + 1 < n:
                D.append([i, i + 1, [mono((b, 1))]])
    E = []
    for k, j in enumerate(actuated):  # +u on link j, -u on link j - 1
        E.append([j, k, [mono(coeff=1)]])
        if j > 0:
            E.append([j - 1, k, [mono(coeff=-1)]])
    return {
        "format": structured.STRUCTURE_VERSION, "n_links": n, "damping_mode": damping_mode, "actuated": list(actuated),
        "params": [f"m{k + 1}" for k in range(n)] + [f"l{k + 1}" for k in range(n)] + ["g", "b"],
        "A": [[i, j, A(i, j)] for i in range(n) for j in range(i, n)],
        "B": [[i, j, A(i, j, -1)] for i in range(n) for j in range(n) if i != j],
        "D": D, "G": [[i, grav(i)] for i in range(n)], "E": E, "P": [[i, grav(i)] for i in range(n)],
    }


def dense_accel(tables: ChainTables, x: np.ndarray, u: np.ndarray | None) -> np.ndarray:
    """``M^{-1} f`` by a dense solve of the tables (the reference for the O(n) sweep)."""
    n = tables.n_links
    q, w = x[:n], x[n:]
    r, mu = tables.r, tables.mu
    A = np.outer(r, r) * mu[np.maximum.outer(np.arange(n), np.arange(n))]
    diff = q[:, None] - q[None, :]
    f = -(A * np.sin(diff)) @ (w * w) + tables.G * np.sin(q) + tables.D @ w
    if u is not None and tables.action_dim:
        f = f + tables.E @ u
    return np.linalg.solve(A * np.cos(diff), f)


def sample(n, m, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(-3, 3, (batch, n)), rng.normal(0, 2, (batch, n))], 1)
    return x, rng.normal(size=(batch, m))


def sweep_numpy(tables, x, u):
    n = tables.n_links
    X = x.T
    return tables.accel(np.sin(X[:n]), np.cos(X[:n]), X[n:], None if u is None else u.T).T


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 21, 32])
@pytest.mark.parametrize("mode", ["absolute", "joint"])
def test_sweep_matches_dense_solve_up_to_32_links(n, mode):
    rng = np.random.default_rng(n)
    act = tuple(sorted(rng.choice(n, size=max(1, n // 2), replace=False).tolist()))
    tables = ChainTables(chain_data(n, mode, act), rng.uniform(0.2, 3, n), rng.uniform(0.2, 2, n), 9.81, 0.4)
    x, u = sample(n, len(act), 4, seed=n)
    ref = np.stack([dense_accel(tables, xb, ub) for xb, ub in zip(x, u)])
    scale = np.abs(ref).max()
    np.testing.assert_allclose(sweep_numpy(tables, x, u), ref, rtol=0, atol=1e-11 * scale)
    # torch, float64, differentiable: the gradient of sum(a) matches finite differences
    X = torch.tensor(x.T, requires_grad=True)
    a = tables.accel(torch.sin(X[:n]), torch.cos(X[:n]), X[n:], torch.tensor(u.T))
    np.testing.assert_allclose(a.detach().numpy().T, ref, rtol=0, atol=1e-11 * scale)
    (grad,) = torch.autograd.grad(a.sum(), X)
    k, eps = n, 1e-6  # d/d qdot_1 (state index n)
    xp, xm = x.copy(), x.copy()
    xp[0, k] += eps
    xm[0, k] -= eps
    fd = (sweep_numpy(tables, xp[:1], u[:1]).sum() - sweep_numpy(tables, xm[:1], u[:1]).sum()) / (2 * eps)
    assert abs(grad[k, 0].item() - fd) <= 1e-5 * max(1.0, abs(fd))


@pytest.mark.parametrize("n", [1, 4, 32])
def test_kernel_matches_numpy_sweep(n):
    kernel = native.kernel(ChainTables(chain_data(n, "joint"), np.ones(n), np.full(n, 1.0 / n), 9.81, 0.3))
    if kernel is None:
        pytest.skip("no C compiler: the numpy/torch path serves alone")
    tables = ChainTables(chain_data(n, "joint"), np.ones(n), np.full(n, 1.0 / n), 9.81, 0.3)
    x, u = sample(n, n, 3, seed=7)
    h = 0.01

    def rk4(xb, ub):
        f = lambda s: np.concatenate([s[n:], sweep_numpy(tables, s[None], ub[None])[0]])  # noqa: E731
        k1 = f(xb)
        k2 = f(xb + 0.5 * h * k1)
        k3 = f(xb + 0.5 * h * k2)
        k4 = f(xb + h * k3)
        return xb + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    ref = np.stack([rk4(xb, ub) for xb, ub in zip(x, u)])
    tol = dict(rtol=0, atol=1e-12 * n * np.abs(ref).max())  # summation order differs (C loops, numpy cumsum)
    np.testing.assert_allclose(kernel.step_batch(x, u, h), ref, **tol)
    np.testing.assert_allclose(kernel.step_list(x[0].tolist(), u[0].tolist(), h), ref[0], **tol)
    # one torque row for the whole batch; Euler; several steps
    np.testing.assert_allclose(kernel.step_batch(x, u[0], h), np.stack([rk4(xb, u[0]) for xb in x]), **tol)
    euler = x + h * np.concatenate([x[:, n:], sweep_numpy(tables, x, u)], 1)
    np.testing.assert_allclose(kernel.step_batch(x, u, h, 1, "euler"), euler, **tol)
    twice = kernel.step_batch(kernel.step_batch(x, u, h), u, h)
    np.testing.assert_allclose(kernel.step_batch(x, u, h, 2), twice, rtol=0, atol=0)


@pytest.mark.parametrize("n, mode, act", [(1, "absolute", (0,)), (2, "joint", (1,)), (3, "absolute", ()), (4, "joint", (0, 2, 3))])
def test_derived_tables_match_expanded_form(n, mode, act):
    """Both forms come from the same Kane's-method derivation and agree to round-off."""
    rng = np.random.default_rng(n)
    masses, lengths = rng.uniform(0.5, 2, n), rng.uniform(0.3, 1.5, n)
    data = structured.load_structure(n, mode, act)
    tables = ChainTables(data, masses, lengths, 9.81, 0.4)
    ref_tables = ChainTables(chain_data(n, mode, act), masses, lengths, 9.81, 0.4)
    for key in ("r", "mu", "G", "D", "E", "P"):
        np.testing.assert_allclose(getattr(tables, key), getattr(ref_tables, key), rtol=1e-13, atol=1e-13)
    compiled = symbolic.compile_pendulum(n, mode, act)
    K = compiled.constants(masses, lengths, 9.81, 0.4)
    x, u = sample(n, len(act), 5, seed=3)
    X = x.T
    expanded = np.stack(compiled.numpy["accel"](*np.sin(X[:n]), *np.cos(X[:n]), *X[n:], *u.T, K))
    np.testing.assert_allclose(sweep_numpy(tables, x, u if act else None), expanded.T, rtol=1e-12, atol=1e-12)
    energy = compiled.numpy["energy"](*np.sin(X[:n]), *np.cos(X[:n]), *X[n:], K)
    np.testing.assert_allclose(tables.energy(np.sin(X[:n]), np.cos(X[:n]), X[n:]), energy, rtol=1e-12, atol=1e-12)


def test_tables_are_cached_as_data(fresh_cache, monkeypatch):
    data = structured.load_structure(2, "joint", (1,))
    (path,) = fresh_cache.glob("pendulum_n2_joint_act1_*_tables*.json")
    assert json.loads(path.read_text()) == data
    structured._memo.cache_clear()
    monkeypatch.setattr(structured, "derive_structure", lambda *a: pytest.fail("derived again"))
    assert structured.load_structure(2, "joint", (1,)) == data


@pytest.mark.parametrize("damage", ["garbage", "index", "unsafe"])
def test_bad_or_unsafe_tables_are_rederived(fresh_cache, damage):
    data = structured.load_structure(1, "absolute", (0,))
    (path,) = fresh_cache.glob("pendulum_n1_*_tables*.json")
    if damage == "garbage":
        path.write_bytes(b"\xff{")
        match = "unreadable"
    elif damage == "index":
        bad = json.loads(path.read_text())
        bad["A"][0][0] = 5  # row 5 of a one-link chain
        path.write_text(json.dumps(bad))
        match = "unreadable"
    else:
        if not hasattr(os, "getuid"):
            pytest.skip("POSIX permissions")
        path.chmod(0o666)
        match = "refusing to load"
    structured._memo.cache_clear()
    with pytest.warns(RuntimeWarning, match=match):
        assert structured.load_structure(1, "absolute", (0,)) == data


def test_not_a_chain_is_refused():
    data = chain_data(3)
    data["A"] = [[i, j, [[1 if i == j else 0, 1, []]]] for i in range(3) for j in range(i, 3)]  # M = identity
    with pytest.raises(StructureError, match="chain"):
        ChainTables(data, np.ones(3), np.ones(3), 9.81, 0.1)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_kernel_in_a_directory_others_can_write_is_not_loaded(fresh_cache):
    native._library.cache_clear()
    try:
        if native._library() is None:
            pytest.skip("no C compiler")
        (lib,) = fresh_cache.glob("chain_kernel_*.so")
        assert lib.stat().st_mode & 0o077 == 0
        lib.chmod(0o777)
        native._library.cache_clear()
        with pytest.warns(RuntimeWarning, match="refusing to load"):
            assert native._library() is None
    finally:
        native._library.cache_clear()


@pytest.mark.parametrize("native_on", [True, False])
def test_pendulum_dynamics_structured_paths_agree(native_on):
    """Past EXPANDED_MAX_LINKS every path (numpy, torch with autograd, one state, rollout,
    energy) evaluates the tables; with and without the compiled kernel."""
    from lyagym.envs import dynamics as dynamics_module

    n = dynamics_module.EXPANDED_MAX_LINKS + 2
    dyn = PendulumDynamics(n, damping_mode="joint", actuated=(0, 3), masses=np.linspace(0.5, 2, n))
    assert dyn.form == "structured"
    if not native_on:
        dyn._kernel_pending, dyn._kernel = False, None
    ref_tables = ChainTables(chain_data(n, "joint", (0, 3)), dyn.masses, dyn.lengths, dyn.gravity, dyn.damping)
    x, u = sample(n, 2, 3, seed=11)
    deriv = dyn.derivative(x, u)
    np.testing.assert_allclose(deriv[:, n:], np.stack([dense_accel(ref_tables, xb, ub) for xb, ub in zip(x, u)]), rtol=1e-10, atol=1e-10)
    step = dyn.step(x, u)
    xt = torch.tensor(x, requires_grad=True)
    step_t = dyn.step(xt, torch.tensor(u))  # autograd: the torch sweep, never the kernel
    np.testing.assert_allclose(step_t.detach().numpy(), step, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(torch.autograd.grad(step_t.sum(), xt)[0]).all()
    np.testing.assert_allclose(dyn.step_single(x[0], u[0]), step[0], rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(dyn.step(torch.tensor(x), torch.tensor(u)).numpy(), step, rtol=1e-12, atol=1e-12)
    actions = torch.tensor(np.repeat(u[:, None], 3, 1))
    roll = dyn.rollout(torch.tensor(x), actions)
    with torch.enable_grad():
        roll_grad = dyn.rollout(torch.tensor(x, requires_grad=True), actions)
    np.testing.assert_allclose(roll.numpy(), roll_grad.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(roll[:, 1].numpy(), step, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dyn.simulate(x, 3, u=u), roll.numpy(), rtol=1e-12, atol=1e-12)
    energy = dyn.energy(x)
    q, w = x[:, :n], x[:, n:]
    A = np.outer(ref_tables.r, ref_tables.r) * ref_tables.mu[np.maximum.outer(np.arange(n), np.arange(n))]
    kinetic = 0.5 * np.einsum("bi,ij,bij,bj->b", w, A, np.cos(q[:, :, None] - q[:, None, :]), w)
    np.testing.assert_allclose(energy, kinetic + np.cos(q) @ ref_tables.P, rtol=1e-12)
    assert dyn.energy(x[0]).shape == () and torch.is_tensor(dyn.energy(torch.tensor(x)))


def test_derived_tables_match_the_textbook_chain_at_eight_links():
    """Kane's method read as tables (sympy, the source of truth) equals the point-mass chain's
    closed form at a size where the expanded form is no longer used."""
    n, act = 8, (0, 3, 7)
    rng = np.random.default_rng(8)
    masses, lengths = rng.uniform(0.5, 2, n), rng.uniform(0.3, 1.5, n)
    derived = ChainTables(structured.load_structure(n, "joint", act), masses, lengths, 9.81, 0.4)
    textbook = ChainTables(chain_data(n, "joint", act), masses, lengths, 9.81, 0.4)
    for key in ("r", "mu", "G", "D", "E", "P"):
        np.testing.assert_allclose(getattr(derived, key), getattr(textbook, key), rtol=1e-13, atol=1e-13)
