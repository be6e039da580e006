"""Equations of motion of the planar n-link pendulum, derived with Kane's method and
compiled to straight-line Python for numpy, torch and plain floats (the *expanded* form, used
up to ``lyagym.envs.dynamics.EXPANDED_MAX_LINKS`` links; longer chains use the same derivation
read as coefficient tables, :mod:`lyagym.envs.structured`, whose cost grows like n).

The model: a chain of ``n`` point masses ``m_i`` on massless rods of length ``l_i``, hinged
at a fixed pivot. Angles are **absolute**, measured from the downward vertical (``q = 0``
hangs down, positive counter-clockwise), the state is ``x = (q_1..q_n, qdot_1..qdot_n)``.
Generalised forces on link ``i``:

- gravity ``-m g`` on every mass (``y`` up);
- damping, ``"absolute"``: ``-b qdot_i`` (friction against the ground, the convention of the
  paper's pendulum data) or ``"joint"``: ``-b (qdot_i - qdot_{i-1})`` at joint ``i`` with the
  reaction ``+b (qdot_{i+1} - qdot_i)`` from joint ``i + 1``;
- a motor at joint ``j`` (pivot = joint 1) applies ``+u_j`` to link ``j`` and ``-u_j`` to
  link ``j - 1``.

``sympy.physics.mechanics.KanesMethod`` gives ``M(q) qddot = f(q, qdot, u)``. Masses,
lengths, gravity and damping stay symbolic, so one derivation serves every parameter value of
a structure ``(n_links, damping_mode, actuated)``. The compiler then

1. rewrites ``sin q_i cos q_j - cos q_i sin q_j`` and ``cos q_i cos q_j + sin q_i sin q_j``
   (what Kane's method produces for absolute angles) as shared ``S_ij`` / ``C_ij`` products,
   so only ``2 n`` transcendental calls remain;
2. expands every entry into ``sum_k K_k * (state monomials)`` where the coefficients ``K_k``
   depend only on the parameters: they are evaluated once per ``PendulumDynamics``, not per
   step;
3. solves ``M qddot = f`` with an unrolled LDL^T factorisation (``M`` is symmetric positive
   definite), emitted as straight-line code, so the same source runs elementwise on numpy
   arrays, torch tensors (any device/dtype, differentiable) and Python floats;
4. common-subexpression-eliminates the lot (``sympy.cse``) and prints Python source.

The source is cached in :func:`cache_dir` keyed by structure, :data:`FORMAT_VERSION` and the
sympy version; loading a cached model never imports sympy. A corrupt or stale file is
rebuilt with a warning. A cached module is code that gets executed, and its checksum only
catches accidents (anyone who can edit the file can recompute it), so the cache directory is
created owner-only (``0700``) and a file, or a directory, that is not the user's own or that
group or others may write is never loaded: a warning says so and the model is derived again
in memory (see :func:`unsafe_reason`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import CodeType
from typing import Any, Sequence

from lyagym.learned_models.native import cache_dir, unsafe_reason
from lyagym.learned_models.native import private_dir as _private_dir

__all__ = ["FORMAT_VERSION", "DAMPING_MODES", "cache_dir", "unsafe_reason", "CompiledPendulum", "compile_pendulum", "derive_equations", "generate_source"]

#: Bump when the generated source changes meaning or layout; old cache files become stale.
FORMAT_VERSION = 7

DAMPING_MODES = ("absolute", "joint")

_HEADER = "# lyagym generated pendulum dynamics"


def _sympy_version() -> str:
    try:
        return metadata.version("sympy")
    except metadata.PackageNotFoundError:  # pragma: no cover - sympy is a hard dependency
        import sympy

        return sympy.__version__


def _check_structure(n_links: int, damping_mode: str, actuated: Sequence[int]) -> tuple[int, str, tuple[int, ...]]:
    if isinstance(n_links, bool) or not isinstance(n_links, int) or n_links < 1:
        raise ValueError(f"n_links must be an int >= 1, got {n_links!r}")
    if damping_mode not in DAMPING_MODES:
        raise ValueError(f"damping_mode must be one of {DAMPING_MODES}, got {damping_mode!r}")
    actuated = tuple(int(j) for j in actuated)
    if any(j < 0 or j >= n_links for j in actuated) or len(set(actuated)) != len(actuated):
        raise ValueError(f"actuated must hold distinct joint indices in [0, {n_links - 1}], got {actuated}")
    return n_links, damping_mode, tuple(sorted(actuated))


def structure_key(n_links: int, damping_mode: str, actuated: Sequence[int]) -> str:
    """File-name-safe key of one derivation (parameters excluded: they stay symbolic)."""
    act = "-".join(str(j) for j in actuated) if actuated else "none"
    return f"pendulum_n{n_links}_{damping_mode}_act{act}_f{FORMAT_VERSION}_sympy{_sympy_version()}"


# ----------------------------------------------------------------------------- derivation


def derive_equations(n_links: int, damping_mode: str = "absolute", actuated: Sequence[int] | None = None):
    """Kane's method for the n-link pendulum.

    Returns ``(M, forcing, energy, symbols)``: the ``(n, n)`` mass matrix and ``(n,)`` forcing
    of ``M(q) qddot = forcing`` and the total energy (kinetic + potential, potential zero at
    the pivot's height), as sympy expressions in plain symbols ``symbols["q"]``,
    ``symbols["w"]`` (= qdot), ``symbols["u"]`` (one per actuated joint), ``symbols["m"]``,
    ``symbols["l"]``, ``symbols["g"]``, ``symbols["b"]``. No simplification is attempted.
    """
    import sympy as sp
    from sympy.physics import mechanics as me

    actuated = tuple(range(n_links)) if actuated is None else actuated
    n, damping_mode, actuated = _check_structure(n_links, damping_mode, actuated)
    q = me.dynamicsymbols(f"q1:{n + 1}")
    w = me.dynamicsymbols(f"w1:{n + 1}")
    m = sp.symbols(f"m1:{n + 1}", positive=True)
    l = sp.symbols(f"l1:{n + 1}", positive=True)
    g, b = sp.symbols("g b", nonnegative=True)
    u = sp.symbols(" ".join(f"u{j + 1}" for j in actuated)) if actuated else ()
    u = (u,) if isinstance(u, sp.Symbol) else tuple(u)
    torque_at_joint = [sp.S.Zero] * (n + 1)  # index n: no joint beyond the tip
    for sym, j in zip(u, actuated):
        torque_at_joint[j] = sym

    ground = me.ReferenceFrame("N")
    pivot = me.Point("O")
    pivot.set_vel(ground, 0)
    frames, particles, loads = [], [], []
    parent = pivot
    for i in range(n):
        link = ground.orientnew(f"A{i + 1}", "Axis", (q[i], ground.z))
        link.set_ang_vel(ground, w[i] * ground.z)
        bob = parent.locatenew(f"P{i + 1}", -l[i] * link.y)  # q = 0: rod points down
        bob.v2pt_theory(parent, ground, link)
        frames.append(link)
        particles.append(me.Particle(f"bob{i + 1}", bob, m[i]))
        loads.append((bob, -m[i] * g * ground.y))
        parent = bob
    for i in range(n):
        if damping_mode == "absolute":
            friction = -b * w[i]
        else:  # joint i against link i-1 (ground for i = 0), plus the reaction of joint i+1
            friction = -b * (w[i] - (w[i - 1] if i > 0 else 0))
            if i + 1 < n:
                friction += b * (w[i + 1] - w[i])
        loads.append((frames[i], (torque_at_joint[i] - torque_at_joint[i + 1] + friction) * ground.z))

    kane = me.KanesMethod(ground, q_ind=q, u_ind=w, kd_eqs=[q[i].diff() - w[i] for i in range(n)])
    kane.kanes_equations(particles, loads)
    mass, forcing = kane.mass_matrix, kane.forcing

    # the pivot is fixed, so the kinetic energy is the quadratic form of Kane's mass matrix,
    # T = 1/2 qdot^T M(q) qdot (cheaper than summing particle energies through frame changes)
    kinetic = sum((mass[i, j] * w[i] * w[j] for i in range(n) for j in range(n)), sp.S.Zero) / 2
    potential = sum(m[i] * g * sum(-l[k] * sp.cos(q[k]) for k in range(i + 1)) for i in range(n))
    energy = kinetic + potential

    # plain symbols instead of functions of t, so the printers and cse see ordinary names
    qs = sp.symbols(f"q1:{n + 1}")
    ws = sp.symbols(f"w1:{n + 1}")
    plain = {**dict(zip(q, qs)), **dict(zip(w, ws))}
    mass = mass.xreplace(plain)
    forcing = forcing.xreplace(plain)
    energy = energy.xreplace(plain)
    symbols = {"q": qs, "w": ws, "u": u, "m": m, "l": l, "g": g, "b": b}
    return mass, forcing, energy, symbols


# ----------------------------------------------------------------------------- compilation


def _split_parameters(exprs, state_symbols, param_symbols, constants: dict):
    """Rewrite each expression as ``sum_k K_k * monomial_k`` with parameter-only ``K_k``.

    ``constants`` maps a canonical parameter expression to its ``K`` symbol (shared across
    calls so equal coefficients get one constant).
    """
    import sympy as sp

    state_set = set(state_symbols)
    out = []
    for expr in exprs:
        grouped: dict[Any, Any] = {}
        for term in sp.Add.make_args(sp.expand(expr)):
            coeff, rest = [], []
            for factor in sp.Mul.make_args(term):
                (rest if factor.free_symbols & state_set else coeff).append(factor)
            state_part = sp.Mul(*rest)
            grouped[state_part] = grouped.get(state_part, sp.S.Zero) + sp.Mul(*coeff)
        by_constant: dict[Any, Any] = {}
        for state_part, coeff in grouped.items():
            coeff = sp.expand(coeff)
            if coeff == 0:
                continue
            sign = 1
            if coeff.could_extract_minus_sign():
                coeff, sign = -coeff, -1
            if coeff.is_Number:
                k = coeff
            else:
                k = constants.setdefault(coeff, sp.Symbol(f"K{len(constants)}"))
            by_constant[k] = by_constant.get(k, sp.S.Zero) + sign * state_part
        out.append(sp.Add(*[k * sp.factor_terms(part) for k, part in by_constant.items()]))
    return out


def _ldl_solve(n: int, M, F):
    """Straight-line solution of the SPD system ``M a = F`` by LDL^T (no pivoting needed).

    ``M``/``F`` are symbols; returns ``(assignments, a)`` with ``assignments`` an ordered list
    of ``(symbol, expr)``. ``E_ij = L_ij D_j`` is kept to save multiplications."""
    import sympy as sp

    steps = []
    L = [[None] * n for _ in range(n)]
    E = [[None] * n for _ in range(n)]
    inv = [None] * n
    for j in range(n):
        d = sp.Symbol(f"ld_d{j}")
        steps.append((d, M[j][j] - sp.Add(*[L[j][k] * E[j][k] for k in range(j)])))
        inv[j] = sp.Symbol(f"ld_i{j}")
        steps.append((inv[j], 1 / d))
        for i in range(j + 1, n):
            E[i][j] = sp.Symbol(f"ld_e{i}_{j}")
            steps.append((E[i][j], M[i][j] - sp.Add(*[L[i][k] * E[j][k] for k in range(j)])))
            L[i][j] = sp.Symbol(f"ld_l{i}_{j}")
            steps.append((L[i][j], E[i][j] * inv[j]))
    y = []
    for i in range(n):
        y.append(sp.Symbol(f"ld_y{i}"))
        steps.append((y[i], F[i] - sp.Add(*[L[i][k] * y[k] for k in range(i)])))
    a = [None] * n
    for i in reversed(range(n)):
        a[i] = sp.Symbol(f"ld_a{i}")
        steps.append((a[i], y[i] * inv[i] - sp.Add(*[L[k][i] * a[k] for k in range(i + 1, n)])))
    return steps, a


def _py(e) -> str:
    """Python source of ``e`` (sums, products, integer powers, sin/cos) that avoids unary
    minus where it can: every avoided operator is one array pass fewer per evaluation."""
    import sympy as sp

    if e.is_Symbol:
        return e.name
    if e.is_Integer:
        return str(int(e))
    if e.is_Rational:
        return f"({e.p}/{e.q})"
    if e.is_Number:
        return repr(float(e))
    if e.is_Add:
        pos, neg = [], []
        for term in e.args:
            coeff, rest = term.as_coeff_Mul()
            (neg if coeff < 0 else pos).append(-term if coeff < 0 else term)
        if not pos:
            return "-(" + " + ".join(_py(t) for t in neg) + ")"
        return " + ".join(_py(t) for t in pos) + "".join(" - " + _wrap(t, add=True) for t in neg)
    if e.is_Mul:
        coeff, rest = e.as_coeff_Mul()
        if coeff < 0:
            return "-" + _wrap(-e, add=False)
        num, den = [], []
        for f in sp.Mul.make_args(e):
            if f.is_Pow and f.exp.is_Integer and f.exp < 0:
                den.append(f.base if f.exp == -1 else f.base ** (-f.exp))
            elif f.is_Rational and not f.is_Integer:
                if f.p != 1:
                    num.append(sp.Integer(f.p))
                den.append(sp.Integer(f.q))
            else:
                num.append(f)
        text = "*".join(_wrap(f, add=False) for f in num) if num else "1"
        if den:
            text += "/" + (_wrap(den[0], add=False) if len(den) == 1 else "(" + "*".join(_wrap(f, add=False) for f in den) + ")")
        return text
    if e.is_Pow and e.exp.is_Integer:
        if e.exp == 2 and e.base.is_Symbol:
            return f"{e.base.name}*{e.base.name}"
        if e.exp < 0:
            return f"1/{_wrap(e.base ** (-e.exp), add=False)}"
        return f"{_wrap(e.base, add=False)}**{int(e.exp)}"
    if isinstance(e, (sp.sin, sp.cos)):
        return f"{type(e).__name__}({_py(e.args[0])})"
    raise ValueError(f"cannot print {e!r}")


def _wrap(e, add: bool) -> str:
    """``_py(e)`` parenthesised for use as an operand (of ``-`` if ``add``, else of ``*``)."""
    text = _py(e)
    atomic = e.is_Symbol or (e.is_Number and e >= 0) or (e.is_Function)
    if atomic or (add and e.is_Mul and not text.startswith("-")) or (e.is_Pow and e.exp.is_Integer and e.exp > 0 and e.base.is_Symbol and not add):
        return text if not (e.is_Pow and "*" in text and not add) else f"({text})"
    return f"({text})"


def _emit_block(statements, outputs, free: bool = True) -> list[str]:
    """Lines for single-assignment ``statements`` ``[(symbol, expr)]``: dead ones dropped,
    and each temporary ``del``-eted right after its last use. Freeing early lets numpy and
    torch reuse the same few buffers instead of growing the heap (and page-faulting) by one
    array per statement, which dominated the cost of a call."""
    aliases = {}
    resolved = []
    for sym, expr in statements:  # copy propagation: ``a = b`` costs nothing, so drop it
        expr = expr.xreplace(aliases) if aliases else expr
        if expr.is_Symbol and sym not in outputs:
            aliases[sym] = expr
        else:
            resolved.append((sym, expr))
    statements = resolved
    live = set(outputs)
    kept = []
    for sym, expr in reversed(statements):
        if sym in live:
            kept.append((sym, expr))
            live |= expr.free_symbols
    kept.reverse()
    defined = {sym for sym, _ in kept}
    last_use = {}
    for i, (_, expr) in enumerate(kept):
        for x in expr.free_symbols:
            last_use[x] = i
    lines = []
    for i, (sym, expr) in enumerate(kept):
        lines.append(f"    {sym} = {_py(expr)}")
        dead = sorted(str(x) for x in expr.free_symbols if last_use.get(x) == i and x in defined and x not in outputs)
        if dead and free:
            lines.append(f"    del {', '.join(dead)}")
    return lines


def _tensor_reciprocal(line: str) -> str:
    """``x = 1/y`` -> ``x = y.reciprocal()``: for a tensor ``1/y`` is two kernels (reciprocal,
    then a multiplication by the Python scalar 1), this is one."""
    lhs, sep, rhs = line.partition(" = 1/")
    if sep and rhs.isidentifier():
        return f"{lhs} = {rhs}.reciprocal()"
    return line


def generate_source(n_links: int, damping_mode: str = "absolute", actuated: Sequence[int] | None = None) -> str:
    """Derive the model with Kane's method and print it as a Python module (a string).

    The module defines ``constants(m, l, g, b) -> tuple`` (parameter-only coefficients),
    ``accel(s1..sn, c1..cn, w1..wn, u.., K) -> (qddot_1, .., qddot_n)`` (s = sin q, c = cos q),
    ``accel_d(s.., c.., S_ij.., C_ij.., w.., u.., K)`` (torch only: also takes the sines and
    cosines of the angle differences, the fused rollout's cheaper form),
    ``energy(s1..sn, c1..cn, w1..wn, K)`` and, for plain floats, ``accel_f(q1..qn, ...)``,
    ``step_rk4`` and ``step_euler``.
    ``sin``/``cos`` are looked up in the module namespace, so the same code runs on numpy
    arrays, torch tensors or floats depending on what the namespace provides.
    """
    import sympy as sp

    actuated = tuple(range(n_links)) if actuated is None else actuated
    n, damping_mode, actuated = _check_structure(n_links, damping_mode, actuated)
    mass, forcing, energy, sy = derive_equations(n, damping_mode, actuated)
    q, w, u = sy["q"], sy["w"], sy["u"]

    # 1. trig products of two links -> S_ij = sin(q_i - q_j), C_ij = cos(q_i - q_j), i < j
    s = sp.symbols(f"s1:{n + 1}")
    c = sp.symbols(f"c1:{n + 1}")
    trig = {**{sp.sin(q[i]): s[i] for i in range(n)}, **{sp.cos(q[i]): c[i] for i in range(n)}}
    pair_defs = {}
    pair_map = {}
    # pairs ordered by offset d = j - i, the order ``accel_d`` takes them in: the caller forms
    # all differences of offset d at once as ``q[:n - d] - q[d:]``
    for i, j in ((i, i + d) for d in range(1, n) for i in range(n - d)):
        S = sp.Symbol(f"S{i + 1}_{j + 1}")
        C = sp.Symbol(f"C{i + 1}_{j + 1}")
        pair_defs[S] = s[i] * c[j] - c[i] * s[j]
        pair_defs[C] = c[i] * c[j] + s[i] * s[j]
        for expr, sym in ((pair_defs[S], S), (pair_defs[C], C)):
            pair_map[expr] = sym
            pair_map[sp.expand(-expr)] = -sym
    def rewrite(e):
        return e.xreplace(trig).xreplace(pair_map)

    mass = mass.applyfunc(rewrite)
    forcing = forcing.applyfunc(rewrite)
    energy = rewrite(energy)
    # the angles enter only through sin/cos, which callers compute for all links at once
    leftover = set(q) & set().union(mass.free_symbols, forcing.free_symbols, energy.free_symbols)
    if leftover:
        raise RuntimeError(f"angles outside sin/cos after rewriting: {leftover}")

    # 2. parameter-only coefficients -> constants K_k
    state = (*s, *c, *pair_defs, *w, *u)
    params = (*sy["m"], *sy["l"], sy["g"], sy["b"])
    constants: dict = {}
    m_entries = _split_parameters([mass[i, j] for i in range(n) for j in range(i + 1)], state, params, constants)
    f_entries = _split_parameters(list(forcing), state, params, constants)
    (e_expr,) = _split_parameters([energy], state, params, constants)
    M = [[None] * n for _ in range(n)]
    it = iter(m_entries)
    for i in range(n):
        for j in range(i + 1):
            M[i][j] = M[j][i] = next(it)

    # 3. M as symbols, then the LDL^T solve over them
    Msym = [[sp.Symbol(f"M{min(i, j)}_{max(i, j)}") for j in range(n)] for i in range(n)]
    Fsym = [sp.Symbol(f"F{i}") for i in range(n)]
    solve_steps, accel = _ldl_solve(n, Msym, Fsym)
    # M_00 (the whole chain's inertia about the pivot) depends on the parameters only, so its
    # inverse is one more coefficient K instead of a division per call
    k_defs = {k: e for e, k in constants.items()}
    if M[0][0].free_symbols <= set(k_defs):
        inv_m00 = sp.expand(1 / M[0][0].xreplace(k_defs))
        inv_sym = constants.setdefault(inv_m00, sp.Symbol(f"K{len(constants)}"))
        solve_steps = [(sym, inv_sym if sym.name == "ld_i0" else e) for sym, e in solve_steps]

    # 4. emit: pair products, M and F entries (cse), solve
    used = set().union(*(e.free_symbols for e in (*m_entries, *f_entries)))
    pair_lines = [(S, pair_defs[S]) for S in pair_defs if S in used]
    pre = [(Msym[i][j], M[i][j]) for i in range(n) for j in range(i, n)] + [(Fsym[i], f_entries[i]) for i in range(n)]
    repl, reduced = sp.cse([e for _, e in pre], symbols=sp.numbered_symbols("t"), order="none")

    k_syms = sorted(constants.values(), key=lambda k: int(k.name[1:]))
    k_defs = {k: e for e, k in constants.items()}
    krepl, kreduced = sp.cse([k_defs[k] for k in k_syms], symbols=sp.numbered_symbols("p"), order="none")

    def line(lhs, rhs):
        return f"    {lhs} = {_py(rhs)}"

    def unpack(names, source):
        if not names:
            return []
        return [f"    {', '.join(names)}{',' if len(names) == 1 else ''} = {source}"]

    def trig_defs(needed):
        out = []
        for x in needed:
            idx = (list(s) + list(c)).index(x)
            out.append((x, sp.sin(q[idx]) if idx < n else sp.cos(q[idx - n])))
        return out

    qn = [str(x) for x in q]
    wn = [str(x) for x in w]
    un = [str(x) for x in u]
    kn = [str(k) for k in k_syms]
    used_trig = [x for x in (*s, *c) if x in used or any(x in pair_defs[S].free_symbols for S, _ in pair_lines)]
    sn = [str(x) for x in s]
    cn = [str(x) for x in c]
    accel_body = pair_lines + list(repl) + [(sym, e) for (sym, _), e in zip(pre, reduced)] + solve_steps
    # ``accel_d`` takes S_ij = sin(q_i - q_j), C_ij = cos(q_i - q_j) from the caller: for
    # tensors two transcendental calls on all differences at once are cheaper than the four
    # products and two sums per pair of the product forms
    pair_sn = [str(S) for S in pair_defs if S.name.startswith("S")]
    pair_cn = [str(C) for C in pair_defs if C.name.startswith("C")]
    accel_d_body = list(repl) + [(sym, e) for (sym, _), e in zip(pre, reduced)] + solve_steps

    lines = [
        f"{_HEADER} (format {FORMAT_VERSION}); do not edit, delete to rebuild.",
        f"N_LINKS = {n}",
        f"DAMPING_MODE = {damping_mode!r}",
        f"ACTUATED = {actuated!r}",
        f"N_CONSTANTS = {len(k_syms)}",
        "",
        "",
        "def constants(m, l, g, b):",
        '    """Parameter-only coefficients K of the generated expressions (floats)."""',
        *unpack([str(x) for x in sy["m"]], "m"),
        *unpack([str(x) for x in sy["l"]], "l"),
        *[line(lhs, rhs) for lhs, rhs in krepl],
        f"    return ({', '.join(_py(e) for e in kreduced)}{',' if len(kreduced) == 1 else ''})",
        "",
        "",
        f"def accel({', '.join(sn + cn + wn + un + ['K'])}):",
        '    """Angular accelerations qddot solving M(q) qddot = f(q, qdot, u), for arrays.',
        "",
        "    Takes s_i = sin(q_i), c_i = cos(q_i): the caller computes them in one vectorised",
        '    call over all links. Temporaries are freed as soon as they are dead."""',
        *unpack(kn, "K"),
        *_emit_block(accel_body, [sp.Symbol(str(a)) for a in accel]),
        f"    return ({', '.join(str(a) for a in accel)},)",
        "",
        "",
        f"def accel_d({', '.join(sn + cn + pair_sn + pair_cn + wn + un + ['K'])}):",
        '    """``accel`` for torch tensors, taking the sines S_ij and cosines C_ij of the angle',
        '    differences q_i - q_j (pairs i < j ordered by j - i, then i) as well."""',
        *unpack(kn, "K"),
        *[_tensor_reciprocal(ln) for ln in _emit_block(accel_d_body, [sp.Symbol(str(a)) for a in accel])],
        f"    return ({', '.join(str(a) for a in accel)},)",
        "",
        "",
        f"def accel_f({', '.join(qn + wn + un + ['K'])}):",
        '    """``accel`` for plain floats (no buffers to free)."""',
        *unpack(kn, "K"),
        *_emit_block(trig_defs(used_trig) + accel_body, [sp.Symbol(str(a)) for a in accel], free=False),
        f"    return ({', '.join(str(a) for a in accel)},)",
    ]

    # energy: its own small cse
    e_used = e_expr.free_symbols
    e_pairs = [(S, pair_defs[S]) for S in pair_defs if S in e_used]
    erepl, (ereduced,) = sp.cse([e_expr], symbols=sp.numbered_symbols("t"), order="none")
    e_out = sp.Symbol("total_energy")
    lines += [
        "",
        "",
        f"def energy({', '.join(sn + cn + wn + ['K'])}):",
        '    """Kinetic + potential energy (potential zero at the pivot height)."""',
        *unpack(kn, "K"),
        *_emit_block(e_pairs + list(erepl) + [(e_out, ereduced)], [e_out]),
        f"    return {e_out}",
    ]

    # scalar integrators for the single-env fast path (floats in, tuple out)
    args = ", ".join(qn + wn + un + ["K"])
    half = ["h2 = 0.5 * h", "h6 = h / 6.0"]
    rk = [
        "",
        "",
        "def step_rk4(x, u, h, K):",
        '    """One classical RK4 step on a tuple/list of floats; returns a tuple."""',
        *unpack(qn + wn, "x"),
        *unpack(un, "u"),
        *[f"    {t}" for t in half],
        f"    a = accel_f({args})",
    ]
    def shifted(scale, k_vel, k_acc):
        return [f"{x} + {scale} * {v}" for x, v in zip(qn, k_vel)] + [f"{x} + {scale} * {k_acc}[{i}]" for i, x in enumerate(wn)]
    # stage velocities: k1 velocity = w, k2 velocity = w + h/2 a1, ...
    rk += [f"    v1 = ({', '.join(wn)},)" ]
    rk += [f"    v2 = ({', '.join(f'{x} + h2 * a[{i}]' for i, x in enumerate(wn))},)"]
    rk += [f"    b = accel_f({', '.join(shifted('h2', [f'v1[{i}]' for i in range(n)], 'a'))}, {', '.join(un + ['K']) })"]
    rk += [f"    v3 = ({', '.join(f'{x} + h2 * b[{i}]' for i, x in enumerate(wn))},)"]
    rk += [f"    c = accel_f({', '.join(shifted('h2', [f'v2[{i}]' for i in range(n)], 'b'))}, {', '.join(un + ['K'])})"]
    rk += [f"    v4 = ({', '.join(f'{x} + h * c[{i}]' for i, x in enumerate(wn))},)"]
    rk += [f"    d = accel_f({', '.join(shifted('h', [f'v3[{i}]' for i in range(n)], 'c'))}, {', '.join(un + ['K'])})"]
    rk += [
        "    return ("
        + ", ".join(f"{x} + h6 * (v1[{i}] + 2.0 * v2[{i}] + 2.0 * v3[{i}] + v4[{i}])" for i, x in enumerate(qn))
        + ", "
        + ", ".join(f"{x} + h6 * (a[{i}] + 2.0 * b[{i}] + 2.0 * c[{i}] + d[{i}])" for i, x in enumerate(wn))
        + ")"
    ]
    rk += [
        "",
        "",
        "def step_euler(x, u, h, K):",
        '    """One explicit Euler step on a tuple/list of floats; returns a tuple."""',
        *unpack(qn + wn, "x"),
        *unpack(un, "u"),
        f"    a = accel_f({args})",
        "    return (" + ", ".join(f"{x} + h * {v}" for x, v in zip(qn, wn)) + ", " + ", ".join(f"{x} + h * a[{i}]" for i, x in enumerate(wn)) + ")",
    ]
    lines += rk
    # the body hash lets a loader detect a truncated or edited file
    body = "\n".join(lines) + "\n"
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f"# sha256 {digest}\n" + body


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class CompiledPendulum:
    """Compiled equations of one structure. ``numpy``, ``torch`` and ``scalar`` are
    namespaces (dicts) holding ``accel``/``energy`` bound to that backend's sin/cos;
    ``scalar`` also has ``step_rk4``/``step_euler``. ``constants(m, l, g, b)`` returns the
    coefficient tuple ``K`` every function takes last."""

    n_links: int
    damping_mode: str
    actuated: tuple[int, ...]
    source: str
    path: Path | None
    numpy: dict
    torch: dict
    scalar: dict

    def constants(self, masses: Sequence[float], lengths: Sequence[float], gravity: float, damping: float) -> tuple[float, ...]:
        return tuple(float(k) for k in self.scalar["constants"](list(map(float, masses)), list(map(float, lengths)), float(gravity), float(damping)))

    def __reduce__(self):
        # The namespaces hold generated functions with no importable module: pickle the
        # structure and recompile on load (memo or disk cache; a fresh derivation if neither).
        return (compile_pendulum, (self.n_links, self.damping_mode, self.actuated), None)


def _verify(source: str) -> CodeType:
    """Compile a generated module after checking its checksum and format (a truncated,
    edited or older-format file raises ``ValueError``)."""
    first, _, body = source.partition("\n")
    if not first.startswith("# sha256 ") or hashlib.sha256(body.encode()).hexdigest() != first[len("# sha256 "):].strip():
        raise ValueError("checksum mismatch")
    if not body.startswith(f"{_HEADER} (format {FORMAT_VERSION})"):
        raise ValueError("not a lyagym pendulum module of this format")
    return compile(source, "<lyagym pendulum>", "exec")


def _namespaces(code: CodeType) -> tuple[dict, dict, dict]:
    """Execute the module three times, with numpy's, torch's and math's sin/cos."""
    import numpy as np
    import torch

    spaces = []
    for sin, cos in ((np.sin, np.cos), (torch.sin, torch.cos), (math.sin, math.cos)):
        ns = {"sin": sin, "cos": cos, "__builtins__": __builtins__}
        exec(code, ns)
        spaces.append(ns)
    return spaces[0], spaces[1], spaces[2]


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and a rename; the file is owner-only (0600:
    ``mkstemp``'s mode) in an owner-only directory."""
    _private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def compile_pendulum(n_links: int, damping_mode: str = "absolute", actuated: Sequence[int] | None = None, *, use_cache: bool = True) -> CompiledPendulum:
    """The compiled model of one structure: from the in-process memo, the disk cache, or a
    fresh Kane's-method derivation (which is then cached)."""
    actuated = tuple(range(n_links)) if actuated is None else actuated
    n, mode, act = _check_structure(n_links, damping_mode, actuated)
    if not use_cache:
        return _build(n, mode, act, use_cache=False)
    return _memo(n, mode, act, str(cache_dir()))


@functools.lru_cache(maxsize=64)
def _memo(n: int, mode: str, act: tuple[int, ...], directory: str) -> CompiledPendulum:
    return _build(n, mode, act, use_cache=True)


def _build(n: int, mode: str, act: tuple[int, ...], *, use_cache: bool) -> CompiledPendulum:
    path = cache_dir() / f"{structure_key(n, mode, act)}.py" if use_cache else None
    if path is not None and path.exists():
        reason = unsafe_reason(path.parent) or unsafe_reason(path)
        if reason is not None:
            # never executed, and not rewritten either: a directory others control stays theirs
            warnings.warn(f"lyagym: refusing to load pendulum cache {path}: {reason}; re-deriving in memory "
                          "(fix: remove the file, or make it and its directory yours and not writable by others)",
                          RuntimeWarning, stacklevel=3)
            path = None
    if path is not None and path.exists():
        try:
            source = path.read_text()
            code = _verify(source)
            ns = _namespaces(code)
            if ns[2].get("N_LINKS") != n or ns[2].get("DAMPING_MODE") != mode or tuple(ns[2].get("ACTUATED")) != act:
                raise ValueError("structure mismatch")
            return CompiledPendulum(n, mode, act, source, path, *ns)
        except Exception as exc:  # corrupt / stale: rebuild, never fatal
            warnings.warn(f"lyagym: ignoring unreadable pendulum cache {path} ({exc}); re-deriving", RuntimeWarning, stacklevel=3)
    source = generate_source(n, mode, act)
    code = _verify(source)
    ns = _namespaces(code)
    if path is not None:
        try:
            _write_atomic(path, source)
        except OSError as exc:
            warnings.warn(f"lyagym: could not write pendulum cache {path} ({exc}); continuing without it", RuntimeWarning, stacklevel=3)
    return CompiledPendulum(n, mode, act, source, path, *ns)
