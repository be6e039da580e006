"""The n-link pendulum in structured form: coefficient tables from Kane's method, solved by
an O(n) sweep.

The expanded form of :mod:`lyagym.envs.symbolic` prints every entry of ``M(q)^{-1} f`` as
straight-line code; its size (and its cost per step) grows like n^2..n^3. Here the same sympy
derivation is read as a few tables instead, whose size grows like n^2 at most and whose use
costs O(n) per state:

- the mass matrix ``M_ij = A_ij cos(q_i - q_j)`` (``A`` symmetric, parameter-only);
- the forcing ``f_i = sum_j B_ij sin(q_i - q_j) qdot_j^2 + G_i sin q_i + sum_j D_ij qdot_j
  + sum_k E_ik u_k`` (centripetal, gravity, damping, motors);
- the potential energy ``sum_k P_k cos q_k`` (the kinetic energy is ``qdot^T M qdot / 2``).

Each table entry is a polynomial in the parameters (masses, lengths, ``g``, ``b``), kept as
*data* (exponents and rational coefficients, JSON), so a cached derivation is read, never
executed. :func:`derive_structure` checks, term by term, that Kane's equations have exactly
this shape, and fails loudly otherwise.

For a chain, ``A_ij = r_i r_j mu_max(i,j)`` with ``mu`` decreasing (a point-mass chain: ``r_i =
l_i``, ``mu_i = m_i + .. + m_n``) and ``B = -A`` off the diagonal. :class:`ChainTables` finds
``r`` and ``mu`` from the numeric ``A`` and verifies both identities; then ``M a = f`` is
solved by a backward sweep of 2x2 articulated inertias and a forward sweep of velocities
(the articulated-body recursion of Featherstone's algorithm, specialised to a planar chain of
point masses), and the centripetal forces by two cumulative sums. The same code runs on
numpy arrays and torch tensors (any device/dtype, differentiable); ``envs/assets/
chain_kernel.c`` (see :mod:`lyagym.envs.native`) is the same sweep in C for one state or
a CPU batch.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

__all__ = ["STRUCTURE_VERSION", "StructureError", "derive_structure", "load_structure", "ChainTables"]

#: Bump when the tables change meaning or layout; older cache files become stale.
STRUCTURE_VERSION = 1


class StructureError(RuntimeError):
    """Kane's equations are not of the tabulated form (or the tables are not a chain's)."""


# ----------------------------------------------------------------------------- derivation


def _poly_data(coeff, params) -> list:
    """A parameter polynomial as ``[[num, den, [[param_index, power], ...]], ...]``."""
    import sympy as sp

    out = []
    for exps, c in sp.Poly(coeff, *params).terms():
        c = sp.Rational(c)
        out.append([int(c.p), int(c.q), [[k, int(e)] for k, e in enumerate(exps) if e]])
    return out


def derive_structure(n_links: int, damping_mode: str = "absolute", actuated: Sequence[int] | None = None) -> dict:
    """Kane's method (:func:`lyagym.envs.symbolic.derive_equations`) read as coefficient tables.

    Returns a JSON-serialisable dict: ``params`` (names in order), and the tables ``A``
    (``[[i, j, poly]]``, ``i <= j``), ``B`` and ``D`` (``[[i, j, poly]]``), ``G`` and ``P``
    (``[[i, poly]]``), ``E`` (``[[i, k, poly]]``, ``k`` the index into the actuated joints),
    each ``poly`` as :func:`_poly_data` writes it. Raises :class:`StructureError` if a term of
    the equations fits none of the tables."""
    import sympy as sp

    from .symbolic import _check_structure, derive_equations

    actuated = tuple(range(n_links)) if actuated is None else actuated
    n, damping_mode, actuated = _check_structure(n_links, damping_mode, actuated)
    mass, forcing, energy, sy = derive_equations(n, damping_mode, actuated)
    q, w, u = sy["q"], sy["w"], sy["u"]
    params = (*sy["m"], *sy["l"], sy["g"], sy["b"])
    s = sp.symbols(f"s1:{n + 1}")
    c = sp.symbols(f"c1:{n + 1}")
    trig = {**{sp.sin(q[i]): s[i] for i in range(n)}, **{sp.cos(q[i]): c[i] for i in range(n)}}
    gens = (*s, *c, *w, *u)
    index = {g: k for k, g in enumerate(gens)}

    def terms(expr):
        """``{monomial as {generator: power}: parameter coefficient}`` of a state polynomial."""
        poly = sp.Poly(expr.xreplace(trig), *gens)
        return {tuple((gens[k], e) for k, e in enumerate(exps) if e): coeff for exps, coeff in poly.terms()}

    def fail(what, mono):
        raise StructureError(f"{what}: term {mono} fits none of the structured tables")

    A, B, D, G, E, P = [], [], [], [], [], []
    for i in range(n):
        for j in range(i, n):
            t = terms(mass[i, j])
            if i == j:
                if set(t) - {()}:
                    fail(f"M[{i},{j}]", next(iter(set(t) - {()})))
                A.append([i, j, _poly_data(t.get((), sp.S.Zero), params)])
                continue
            cc, ss = ((c[i], 1), (c[j], 1)), ((s[i], 1), (s[j], 1))
            if set(t) - {cc, ss} or sp.expand(t.get(cc, 0) - t.get(ss, 0)) != 0:
                fail(f"M[{i},{j}]", sorted(set(t) - {cc, ss}, key=str) or "sin*sin vs cos*cos")
            A.append([i, j, _poly_data(t.get(cc, sp.S.Zero), params)])
    for i in range(n):
        t = terms(forcing[i])
        pending = dict(t)
        for j in range(n):
            if j == i:
                continue
            sc = tuple(sorted(((s[i], 1), (c[j], 1), (w[j], 2)), key=lambda p: index[p[0]]))
            cs = tuple(sorted(((c[i], 1), (s[j], 1), (w[j], 2)), key=lambda p: index[p[0]]))
            beta = pending.pop(sc, sp.S.Zero)
            if sp.expand(pending.pop(cs, sp.S.Zero) + beta) != 0:
                fail(f"f[{i}]", cs)
            if beta != 0:
                B.append([i, j, _poly_data(beta, params)])
        if ((s[i], 1),) in pending:
            G.append([i, _poly_data(pending.pop(((s[i], 1),)), params)])
        for j in range(n):
            if ((w[j], 1),) in pending:
                D.append([i, j, _poly_data(pending.pop(((w[j], 1),)), params)])
        for k in range(len(u)):
            if ((u[k], 1),) in pending:
                E.append([i, k, _poly_data(pending.pop(((u[k], 1),)), params)])
        if pending:
            fail(f"f[{i}]", next(iter(pending)))
    potential = terms(energy.xreplace({x: 0 for x in w}))
    for k in range(n):
        coeff = potential.pop(((c[k], 1),), None)
        if coeff is not None:
            P.append([k, _poly_data(coeff, params)])
    if potential:
        fail("potential energy", next(iter(potential)))
    return {
        "format": STRUCTURE_VERSION,
        "n_links": n,
        "damping_mode": damping_mode,
        "actuated": list(actuated),
        "params": [str(p) for p in params],
        "A": A, "B": B, "D": D, "G": G, "E": E, "P": P,
    }


def check_structure_data(data: Any, n: int, damping_mode: str, actuated: tuple[int, ...]) -> dict:
    """Validate loaded tables (types, index ranges, structure): ``ValueError`` if anything is off."""
    if not isinstance(data, dict) or data.get("format") != STRUCTURE_VERSION:
        raise ValueError("not structured pendulum tables of this format")
    if data.get("n_links") != n or data.get("damping_mode") != damping_mode or tuple(data.get("actuated", ())) != actuated:
        raise ValueError("structure mismatch")
    n_params = 2 * n + 2
    if not isinstance(data.get("params"), list) or len(data["params"]) != n_params:
        raise ValueError("bad parameter list")

    def poly_ok(p):
        return isinstance(p, list) and all(
            isinstance(t, list) and len(t) == 3 and isinstance(t[0], int) and isinstance(t[1], int) and t[1] > 0
            and all(isinstance(e, list) and len(e) == 2 and 0 <= e[0] < n_params and isinstance(e[1], int) and 0 < e[1] <= 8 for e in t[2])
            for t in p
        )

    dims = {"A": (n, n), "B": (n, n), "D": (n, n), "E": (n, len(actuated)), "G": (n,), "P": (n,)}
    for key, dim in dims.items():
        rows = data.get(key)
        if not isinstance(rows, list):
            raise ValueError(f"table {key} missing")
        for row in rows:
            idx, poly = row[:-1], row[-1]
            if len(idx) != len(dim) or not all(isinstance(v, int) and 0 <= v < d for v, d in zip(idx, dim)) or not poly_ok(poly):
                raise ValueError(f"bad entry in table {key}")
    return data


def _evaluate(poly: list, values: Sequence[float]) -> float:
    # exact rational coefficients, float parameters: the sum is formed in float64
    total = 0.0
    for num, den, powers in poly:
        term = float(Fraction(num, den))
        for k, e in powers:
            term *= values[k] ** e
        total += term
    return total


# ----------------------------------------------------------------------------- evaluation


class ChainTables:
    """The structured equations at one parameter value, and the O(n) solve.

    Args:
        data: tables from :func:`derive_structure` (or the cache).
        masses, lengths: ``(n,)``; gravity, damping: floats.

    Attributes (numpy float64): ``r``, ``mu`` (``A = r_i r_j mu_max(i,j)``), ``dmu``
    (``mu_i - mu_{i+1}``, > 0), ``G``, ``D`` ``(n, n)``, ``E`` ``(n, action_dim)``, ``P``;
    ``damping_bands`` ``(3, n)``: ``D``'s sub-, main and super-diagonal (``D`` is
    tridiagonal for both damping modes; checked).
    """

    def __init__(self, data: dict, masses: Sequence[float], lengths: Sequence[float], gravity: float, damping: float) -> None:
        n = int(data["n_links"])
        m = len(data["actuated"])
        values = [*map(float, masses), *map(float, lengths), float(gravity), float(damping)]
        A = np.zeros((n, n))
        for i, j, p in data["A"]:
            A[i, j] = A[j, i] = _evaluate(p, values)
        Bm = np.zeros((n, n))
        for i, j, p in data["B"]:
            Bm[i, j] = _evaluate(p, values)
        self.D = np.zeros((n, n))
        for i, j, p in data["D"]:
            self.D[i, j] = _evaluate(p, values)
        self.E = np.zeros((n, m))
        for i, k, p in data["E"]:
            self.E[i, k] = _evaluate(p, values)
        self.G = np.zeros(n)
        for i, p in data["G"]:
            self.G[i] = _evaluate(p, values)
        self.P = np.zeros(n)
        for i, p in data["P"]:
            self.P[i] = _evaluate(p, values)
        self.n_links, self.action_dim = n, m

        # A_ij = r_i r_j mu_max(i,j): the last column gives r (with mu_n = 1), the diagonal mu
        if not np.all(np.diag(A) > 0):
            raise StructureError("mass matrix diagonal must be > 0")
        r = A[:, -1] / math.sqrt(A[-1, -1])
        if not np.all(r > 0):
            raise StructureError("mass matrix is not a chain's (A[i, n-1] <= 0)")
        mu = np.diag(A) / (r * r)
        expected = np.outer(r, r) * mu[np.maximum.outer(np.arange(n), np.arange(n))]
        scale = np.sqrt(np.outer(np.diag(A), np.diag(A)))
        if np.max(np.abs(expected - A) / scale) > 1e-11:
            raise StructureError("mass matrix is not of the form r_i r_j mu_max(i,j)")
        off = ~np.eye(n, dtype=bool)
        if np.max(np.abs(Bm + A)[off] / scale[off], initial=0.0) > 1e-11:
            raise StructureError("centripetal coefficients are not -A")
        dmu = mu - np.append(mu[1:], 0.0)
        if not np.all(dmu > 0):
            raise StructureError("mu must decrease along the chain")
        if np.any(np.triu(self.D, 2)) or np.any(np.tril(self.D, -2)):
            raise StructureError("damping must be tridiagonal")
        self.r, self.mu, self.dmu = r, mu, dmu
        # Python floats for the sweeps' scalar factors (no numpy call inside traced code)
        self._r_floats, self._dmu_floats = r.tolist(), dmu.tolist()
        self.damping_bands = np.stack([np.append(0.0, np.diag(self.D, -1)), np.diag(self.D).copy(), np.append(np.diag(self.D, 1), 0.0)])
        self._torch_cache: dict = {}

    # -------------------------------------------------------------- shared numpy/torch code
    def _arrays(self, like):
        """The tables as columns ``(n, 1)`` matching ``like`` (numpy or a tensor's dtype/device)."""
        if isinstance(like, np.ndarray):
            return self._np
        import torch

        key = (like.dtype, like.device)
        cached = self._torch_cache.get(key)
        if cached is None:
            with torch.inference_mode(False):
                cached = {k: torch.as_tensor(v, dtype=like.dtype, device=like.device) for k, v in self._np.items()}
            self._torch_cache[key] = cached
        return cached

    @property
    def _np(self) -> dict:
        col = lambda a: np.ascontiguousarray(a, dtype=np.float64)[:, None]  # noqa: E731
        return {
            "r": col(self.r), "inv_r": col(1.0 / self.r), "mu": col(self.mu), "dmu": col(self.dmu),
            "dmu_eye": (self.dmu[:, None] * np.array([1.0, 0.0, 1.0]))[:, :, None],  # dmu_i I as (xx, xy, yy)
            "G_r": col(self.G / self.r),
            "Dlo_r": col(self.damping_bands[0] / self.r), "Dd_r": col(self.damping_bands[1] / self.r),
            "Dup_r": col(self.damping_bands[2] / self.r), "E_r": self.E / self.r[:, None], "P": col(self.P),
        }

    def accel(self, s, c, W, U):
        """Angular accelerations ``qddot`` from ``s = sin q``, ``c = cos q``, ``W = qdot``,
        each ``(n, *batch)``, and ``U``: ``(action_dim, *batch)`` or ``None``; numpy or torch.

        ``M a = f`` with ``M = diag(r) G diag(r)``, ``G_ij = mu_max(i,j) t_i . t_j`` (``t_i =
        (cos q_i, sin q_i)``): the unknown ``y = r a`` gives velocities ``v_k = sum_{i<=k} t_i
        y_i``, rod forces ``phi_i = sum_{k>=i} dmu_k v_k``, and ``t_i . phi_i = f_i / r_i``.
        Writing ``phi_i = K_i v_{i-1} + beta_i`` from the tip inwards (``K``: the 2x2
        articulated inertia of links ``i..n``) makes each ``y_i`` one division."""
        T = self._arrays(s)
        is_np = isinstance(s, np.ndarray)
        n = self.n_links
        batch_shape = tuple(s.shape[1:])
        if len(batch_shape) != 1:  # the tables are (n, 1) columns: work on (n, batch)
            s, c, W = (a.reshape(n, -1) for a in (s, c, W))
            U = None if U is None else U.reshape(U.shape[0], -1)
        # f / r. Centripetal: -sum_{j != i} mu_max(i,j) z_j sin(q_i - q_j), z = r w^2, split
        # into links before i (weight mu_i, exclusive prefix sums P) and after i (weight mu_j,
        # exclusive suffix sums S); leaving out j = i exactly keeps a huge w_i from leaving
        # rounding noise of size eps * w_i^2 where the true term is 0
        z = T["r"] * W * W
        zc, zs = z * c, z * s
        mzc, mzs = T["mu"] * zc, T["mu"] * zs
        if is_np:
            Pc, Ps = _shifted(np.cumsum(zc, 0), 1, True), _shifted(np.cumsum(zs, 0), 1, True)
            Sc, Ss = _shifted(np.cumsum(mzc[::-1], 0)[::-1], -1, True), _shifted(np.cumsum(mzs[::-1], 0)[::-1], -1, True)
        else:
            Pc, Ps = _shifted(zc.cumsum(0), 1, False), _shifted(zs.cumsum(0), 1, False)
            Sc, Ss = _shifted(mzc.flip(0).cumsum(0).flip(0), -1, False), _shifted(mzs.flip(0).cumsum(0).flip(0), -1, False)
        Y = T["mu"] * Ps + Ss
        X = T["mu"] * Pc + Sc
        g = c * Y - s * X + T["G_r"] * s + T["Dd_r"] * W
        if n > 1:  # the damping's off-diagonal bands: D_{i,i-1} w_{i-1} + D_{i,i+1} w_{i+1}
            g = g + T["Dlo_r"] * _shifted(W, 1, is_np) + T["Dup_r"] * _shifted(W, -1, is_np)
        if U is not None and self.action_dim:
            if is_np:
                g = g + np.tensordot(T["E_r"], U, 1)
            else:
                g = g + (T["E_r"] @ U.reshape(U.shape[0], -1)).reshape(g.shape)

        if not is_np:
            a = self._sweep_torch(s, c, g, T)
            return a if len(batch_shape) == 1 else a.reshape(n, *batch_shape)

        # backward sweep (tip to root)
        dmu = self._dmu_floats
        cs, ss, gs = list(c), list(s), list(g)
        Kxx = Kxy = Kyy = bx = by = 0.0
        sig, ntx, nty, gam = [None] * n, [None] * n, [None] * n, [None] * n
        for i in reversed(range(n)):
            ci, si = cs[i], ss[i]
            Nxx, Nxy, Nyy = Kxx + dmu[i], Kxy, Kyy + dmu[i]
            ntx[i] = Nxx * ci + Nxy * si
            nty[i] = Nxy * ci + Nyy * si
            inv = 1.0 / (ntx[i] * ci + nty[i] * si)
            sig[i] = inv
            gam[i] = gs[i] - (bx * ci + by * si)
            k = gam[i] * inv
            bx, by = bx + ntx[i] * k, by + nty[i] * k
            if i:  # K_0 is never used
                ax, ay = ntx[i] * inv, nty[i] * inv
                Kxx, Kxy, Kyy = Nxx - ntx[i] * ax, Nxy - ntx[i] * ay, Nyy - nty[i] * ay
        # forward sweep (root to tip)
        r = self._r_floats
        out = [None] * n
        vx = vy = 0.0
        for i in range(n):
            y = (gam[i] - (ntx[i] * vx + nty[i] * vy)) * sig[i]
            out[i] = y / r[i]
            vx, vy = vx + cs[i] * y, vy + ss[i] * y
        a = np.stack(out)
        return a if len(batch_shape) == 1 else a.reshape(n, *batch_shape)

    def _sweep_torch(self, s, c, g, T):
        """The two sweeps of :meth:`accel` for tensors, with the x/y components kept together as
        ``(2, batch)`` and ``K`` as ``(3, batch)`` (xx, xy, yy) and products fused
        (``addcmul``): at these sizes each kernel costs mostly its launch, and this issues
        ~22 per link instead of ~39 (the numpy form above, term by term)."""
        import torch

        n = self.n_links
        dmu = self._dmu_floats
        dot = functools.partial(torch.linalg.vecdot, dim=0)  # one kernel for x*x' + y*y'
        t_all = torch.stack((c, s), 1)  # (n, 2, batch): the unit tangents
        tangents, gs = t_all.unbind(0), g.unbind(0)
        K = b = None
        sig, nts, gam = [None] * n, [None] * n, [None] * n
        for i in reversed(range(n)):
            t = tangents[i]
            if K is None:  # the tip: K = 0, beta = 0
                N = None
                nt = t * dmu[i]
                inv = dot(nt, t).reciprocal()
                gam[i] = gs[i]
                b = nt * (gam[i] * inv)
            else:
                N = K + T["dmu_eye"][i]  # (3, batch): K + dmu_i I
                nt = torch.addcmul(N[0:2] * t[0:1], N[1:3], t[1:2])  # N t
                inv = dot(nt, t).reciprocal()
                gam[i] = gs[i] - dot(b, t)
                b = torch.addcmul(b, nt, gam[i] * inv)
            sig[i], nts[i] = inv, nt
            if i:  # K_i = N - (N t)(N t)^T / (t^T N t); K_0 is never used
                a = nt * inv
                NN = T["dmu_eye"][i].expand(3, *nt.shape[1:]) if N is None else N
                K = torch.cat((torch.addcmul(NN[0:2], nt[0:1], a, value=-1.0), torch.addcmul(NN[2:3], nt[1:2], a[1:2], value=-1.0)), 0)
        out = [None] * n
        v = None
        for i in range(n):
            y = gam[i] * sig[i] if v is None else (gam[i] - dot(nts[i], v)) * sig[i]
            out[i] = y
            v = tangents[i] * y if v is None else torch.addcmul(v, tangents[i], y)
        return torch.stack(out, 0) * T["inv_r"]

    def energy(self, s, c, W):
        """Kinetic + potential energy from ``(n, *batch)`` blocks: ``1/2 sum_k dmu_k |v_k|^2``
        with ``v_k = sum_{i<=k} r_i w_i t_i``, plus ``sum_k P_k cos q_k``."""
        T = self._arrays(s)
        n, batch_shape = self.n_links, tuple(s.shape[1:])
        s, c, W = (a.reshape(n, -1) for a in (s, c, W))
        z = T["r"] * W
        if isinstance(s, np.ndarray):
            vx, vy = np.cumsum(z * c, 0), np.cumsum(z * s, 0)
        else:
            vx, vy = (z * c).cumsum(0), (z * s).cumsum(0)
        return (0.5 * T["dmu"] * (vx * vx + vy * vy) + T["P"] * c).sum(0).reshape(batch_shape)


def _shifted(W, k: int, is_np: bool):
    """``W`` moved ``k`` rows down (``k = 1``: row ``i`` holds ``W_{i-1}``, row 0 zero; ``k = -1``:
    row ``i`` holds ``W_{i+1}``, the last row zero)."""
    if is_np:
        zero = np.zeros_like(W[:1])
        return np.concatenate([zero, W[:-1]] if k == 1 else [W[1:], zero], 0)
    import torch

    zero = torch.zeros_like(W[:1])
    return torch.cat([zero, W[:-1]] if k == 1 else [W[1:], zero], 0)


def structure_path(n: int, damping_mode: str, actuated: tuple[int, ...]):
    from .symbolic import cache_dir, structure_key

    return cache_dir() / f"{structure_key(n, damping_mode, actuated)}_tables{STRUCTURE_VERSION}.json"


@functools.lru_cache(maxsize=64)
def _memo(n: int, damping_mode: str, actuated: tuple[int, ...], directory: str) -> dict:
    return _load_or_derive(n, damping_mode, actuated, use_cache=True)


def load_structure(n_links: int, damping_mode: str = "absolute", actuated: Sequence[int] | None = None, *, use_cache: bool = True) -> dict:
    """The tables of one structure: from the in-process memo, the disk cache (JSON, read as
    data and validated), or :func:`derive_structure` (then cached)."""
    from .symbolic import _check_structure, cache_dir

    actuated = tuple(range(n_links)) if actuated is None else actuated
    n, mode, act = _check_structure(n_links, damping_mode, actuated)
    if not use_cache:
        return _load_or_derive(n, mode, act, use_cache=False)
    return _memo(n, mode, act, str(cache_dir()))


def _load_or_derive(n: int, mode: str, act: tuple[int, ...], *, use_cache: bool) -> dict:
    from .symbolic import _write_atomic, unsafe_reason

    path = structure_path(n, mode, act) if use_cache else None
    if path is not None and path.exists():
        reason = unsafe_reason(path.parent) or unsafe_reason(path)
        if reason is not None:
            warnings.warn(f"lyagym: refusing to load pendulum tables {path}: {reason}; re-deriving in memory", RuntimeWarning, stacklevel=4)
            path = None
        else:
            try:
                return check_structure_data(json.loads(path.read_text()), n, mode, act)
            except (ValueError, OSError, UnicodeDecodeError, TypeError, KeyError, IndexError) as exc:
                warnings.warn(f"lyagym: ignoring unreadable pendulum tables {path} ({exc}); re-deriving", RuntimeWarning, stacklevel=4)
    data = derive_structure(n, mode, act)
    if path is not None:
        try:
            _write_atomic(path, json.dumps(data, separators=(",", ":")))
        except OSError as exc:
            warnings.warn(f"lyagym: could not write pendulum tables {path} ({exc}); continuing without them", RuntimeWarning, stacklevel=4)
    return data
