"""Certificates hold where and in the dtype they say, name exactly the model, and refuse bad input.

The sweep is the fast version of ``examples/benchmarks/probe_certificate.py``: seeded states
log-uniform over norm bands 1e-12 .. 1e8 around the equilibrium, through the model's own
``step``, against the tolerance and excluded ball the certificate states for the dtype.
"""

import copy
import json
import math

import pytest
import torch

from lyagym.agents.costs import LyapunovTerminalCost
from lyagym.learned_models import (
    Certificate,
    Ensemble,
    StableControlledDynamics,
    StableDynamics,
    falsify,
    load_model,
)
from lyagym.learned_models.ensemble import member_factory
from lyagym.learned_models.icnn import ICNN, _ICNNValueAndGrad
from lyagym.learned_models.integrators import functorch_safe

SMALL = dict(hidden=(16, 16), lyap_hidden=(12, 12))
QUICK = dict(n_samples=2000, per_shell=100, large_norm_samples=300, grad_steps=10, grad_starts=16, rollouts=16, rollout_steps=10)
BANDS = range(-12, 8)  # 1e-12 .. 1e8


def _kinds():
    torch.manual_seed(0)
    return {
        "stable": StableDynamics(2, alpha=0.5, dt=0.05, **SMALL),
        "stable-tangent-quadratic-xeq": StableDynamics(3, lyap_shift="tangent", lyap_quadratic=True, x_eq=[1.0, -2.0, 0.5], **SMALL),
        "controlled-priors": StableControlledDynamics(4, 2, angle_dims=2, control_affine=True, activation="silu", **SMALL),
        "ensemble": Ensemble(member_factory("stable", 3, 1, alpha=0.5, dt=0.05, **SMALL), 2, propagation="tsinf", sample=False),
    }


def _excess(model, x, u, cert):
    """Normalised excess of the discrete bound (ISS allowance gamma ||u||^2), per row."""
    members = [model.member(i) for i in range(model.size)] if isinstance(model, Ensemble) else [model]
    rows = torch.arange(x.shape[0]) % len(members)
    with torch.no_grad():
        y = model.step(x, u)
        Vx, Vy = torch.empty_like(x[:, 0]), torch.empty_like(x[:, 0])
        for i, member in enumerate(members):
            Vx[rows == i], Vy[rows == i] = member.lyapunov(x[rows == i]), member.lyapunov(y[rows == i])
    a, h = cert.alpha, cert.h
    gamma = cert.iss_gain["gamma"] if isinstance(cert.iss_gain, dict) else 0.0
    s = gamma * (u * u).sum(-1) if u is not None else 0.0
    return (Vy - math.exp(-a * h) * Vx + math.expm1(-a * h) / a * s) / Vx


def _sweep(model, cert, dtype, per_band=150, seed=0):
    """States (and inputs scaled like them) over the norm bands, outside the excluded ball."""
    gen = torch.Generator().manual_seed(seed)
    n = len(cert.equilibrium)
    k = torch.tensor(list(BANDS), dtype=torch.float64).repeat_interleave(per_band)
    r = 10 ** (k + torch.rand(k.numel(), generator=gen, dtype=torch.float64))
    r = r[r >= 1.01 * cert.excluded_radius(dtype)]
    w = torch.randn(r.numel(), n, generator=gen, dtype=torch.float64)
    x = torch.tensor(cert.equilibrium, dtype=torch.float64) + w / w.norm(dim=-1, keepdim=True) * r.unsqueeze(-1)
    u = None
    if model.action_dim:
        v = torch.randn(r.numel(), model.action_dim, generator=gen, dtype=torch.float64)
        u = (v / v.norm(dim=-1, keepdim=True) * (r.clamp(max=1.0) * torch.rand(r.numel(), generator=gen, dtype=torch.float64)).unsqueeze(-1))
        u[::4] = 0.0
        u = u.to(dtype)
    return x.to(dtype), u, r


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["stable", "stable-tangent-quadratic-xeq", "controlled-priors", "ensemble"])
def test_discrete_claim_holds_at_every_norm_in_every_dtype(kind, dtype):
    model = _kinds()[kind].to(dtype)
    cert = (model.member(0) if isinstance(model, Ensemble) else model).certificate()
    assert cert.time_domain == "discrete" and set(cert.numerics) == {"float32", "float64"}
    x, u, r = _sweep(model, cert, dtype)
    assert r.min() < 1e-11 or cert.excluded_radius(dtype) > 1e-12  # the sweep reaches the smallest band it may
    excess = _excess(model, x, u, cert)
    assert torch.isfinite(excess).all()
    assert excess.max() <= cert.tolerance(dtype), f"{kind} {dtype}: worst {float(excess.max()):.3g} at |dx| {float(r[excess.argmax()]):.3g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["stable", "stable-tangent-quadratic-xeq", "controlled-priors"])
def test_continuous_claim_holds_at_every_norm_in_every_dtype(kind, dtype):
    """grad V . f <= -alpha V (+ gamma ||u||^2) for f as computed, from the edge of the excluded
    ball (1e-145 in float64 at x_eq = 0) to 1e8: the projection's rounding guard."""
    model = _kinds()[kind].to(dtype)
    cert = model.certificate("continuous")
    x, u, r = _sweep(model, cert, dtype)
    edge = torch.randn(50, x.shape[1], dtype=torch.float64)
    edge = torch.tensor(cert.equilibrium, dtype=torch.float64) + edge / edge.norm(dim=-1, keepdim=True) * 1.01 * cert.excluded_radius(dtype)
    x = torch.cat([x, edge.to(dtype)])
    u = None if u is None else torch.cat([u, torch.zeros(50, u.shape[1], dtype=dtype)])
    with torch.no_grad():
        V, gV = model.lyapunov.forward_and_grad(x)
        decrease = (gV * model.derivative(x, u)).sum(-1) + cert.alpha * V
    if u is not None:
        decrease = decrease - cert.iss_gain["gamma"] * (u * u).sum(-1)
    worst = (decrease / V).max()
    assert worst <= cert.tolerance(dtype), f"{kind} {dtype}: worst {float(worst):.3g}"


def test_stated_tolerance_and_excluded_ball_follow_the_rounding():
    """float32 resolves less than float64; only a nonzero x_eq needs a ball (the stored states'
    rounding u |x_eq| over the distance), and it scales with |x_eq|."""
    at_origin = StableDynamics(2, **SMALL).certificate()
    far = StableDynamics(2, x_eq=[100.0, 0.0], **SMALL).certificate()
    near = StableDynamics(2, x_eq=[1.0, 0.0], **SMALL).certificate()
    assert at_origin.tolerance(torch.float32) > at_origin.tolerance(torch.float64)
    assert at_origin.excluded_radius(torch.float64) < 1e-100 and at_origin.excluded_radius(torch.float32) < 1e-12
    for dtype in (torch.float32, torch.float64):
        assert far.excluded_radius(dtype) == pytest.approx(100 * near.excluded_radius(dtype), rel=1e-2)
    assert near.excluded_radius(torch.float32) > 100 * near.excluded_radius(torch.float64)
    with pytest.raises(ValueError, match="dtype"):
        at_origin.tolerance(torch.float16)


def test_check_finds_what_the_probe_finds():
    """A certificate that claims float32 precision up to x_eq itself for a nonzero x_eq is
    false (the states round by u |x_eq|): the sweep finds violations and so does check()."""
    torch.manual_seed(1)
    model = StableDynamics(2, x_eq=[3.0, -1.0], alpha=0.5, dt=0.05, **SMALL).float()
    honest = model.certificate()
    assert honest.check(model, dtype=torch.float32, **QUICK).passed
    assert honest.check(model, **QUICK).passed  # float64 copy
    bold = copy.deepcopy(honest)
    bold.numerics["float32"] = {"tolerance": 1e-6, "radius": 0.0}
    x, u, r = _sweep(model, bold, torch.float32)
    found = _excess(model, x, u, bold) > bold.tolerance(torch.float32)
    assert found.any()
    report = bold.check(model, dtype=torch.float32, **QUICK)
    assert not report.passed and report.per_test["shells"]["violations"] > 0
    near = (report.counterexamples.double() - torch.tensor(bold.equilibrium, dtype=torch.float64)).norm(dim=-1)
    assert near.min() < honest.excluded_radius(torch.float32)  # found inside the ball the honest certificate excludes


def test_centered_icnn_pass_keeps_relative_precision_near_the_reference():
    torch.manual_seed(0)
    g = ICNN(3, (8, 6))
    with torch.no_grad():
        for layer in g.W:  # biases that put some units in each piece of eq. 13
            layer.bias.mul_(5.0)
    ref = torch.randn(1, 3)
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-8, 1e-4, 1.0):
        dx = scale * torch.randn(64, 3, generator=gen)
        x32 = torch.cat([ref + dx, ref])
        x64 = torch.cat([x32[:-1].double(), x32[-1:].double()])
        g64 = copy.deepcopy(g).double()
        with torch.no_grad():
            exact = g64(x64, centered=True)  # the same stored states, float64 arithmetic
            exact_abs = g64(x64)
            fast = g(x32, centered=True).double()
        torch.testing.assert_close(exact[:-1], exact_abs[:-1] - exact_abs[-1], rtol=0, atol=1e-14)
        rel = ((fast[:-1] - exact[:-1]).abs() / exact[:-1].abs().clamp_min(1e-30)).median()
        assert rel < 1e-4, (scale, float(rel))
        with functorch_safe():  # the plain (vmap) pass gives the same numbers
            torch.testing.assert_close(g(x32, centered=True), fast.float())
    # The hand-written backward of the centered pass is the derivative of what it computes.
    gd = ICNN(3, (5, 4)).double()
    inputs = (torch.randn(6, 3, dtype=torch.float64, requires_grad=True), gd.theta.detach().clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda x, th: _ICNNValueAndGrad.apply(gd.widths, gd.d, x, th, True), inputs, eps=1e-6, atol=1e-6)


# -- the certificate names exactly the model --------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda m: setattr(m, "keep_guarantee", False),
        lambda m: setattr(m, "alpha", 0.02),  # a learned rate (the default) moves its weight alpha_raw
        lambda m: setattr(m, "integrator", "euler"),
        lambda m: setattr(m, "dt", 0.2),
        lambda m: m.double(),
    ],
    ids=["keep_guarantee", "alpha", "integrator", "dt", "double"],
)
def test_certificate_stops_applying_after_any_change_the_claim_depends_on(change):
    model = StableDynamics(2, **SMALL)
    cert = model.certificate()
    assert cert.applies_to(model) and LyapunovTerminalCost(model, certificate=cert)
    changed = copy.deepcopy(model)
    change(changed)
    assert not cert.applies_to(changed)
    with pytest.raises(ValueError, match="certificate"):
        LyapunovTerminalCost(changed, certificate=cert)
    if changed.dt != cert.h:  # falsify refuses a model that steps another h outright
        with pytest.raises(ValueError, match="step h"):
            falsify(cert, changed)
    else:
        assert not falsify(cert, changed, n_samples=10, shells=1, per_shell=1, large_norm_samples=1, grad_steps=0, rollouts=0).applies


def test_ensemble_certificate_follows_the_ensemble_config():
    ens = Ensemble(member_factory("stable", 2, 0, **SMALL), 2)
    cert = ens.certificate()
    assert cert.applies_to(ens) and all(c.applies_to(ens.member(i)) for i, c in enumerate(cert.members))
    assert not cert.applies_to(copy.deepcopy(ens).double())
    ens.propagation = "tsinf"  # how step samples, not what the members compute
    assert cert.applies_to(ens)
    with torch.no_grad():
        dict(ens.named_parameters())["stacked.model.fhat.0.weight"][1].add_(1e-3)  # member 1 fine-tuned
    assert not cert.applies_to(ens) and cert.members[0].applies_to(ens.member(0)) and not cert.members[1].applies_to(ens.member(1))


def test_checkpoint_with_an_edited_config_or_nan_weights_is_refused(tmp_path):
    model = StableDynamics(2, **SMALL)
    path = tmp_path / "m.pt"
    model.save(path)
    cert = model.certificate()
    assert cert.applies_to(load_model(path))
    payload = torch.load(path, weights_only=True)
    payload["config"]["alpha"] = 5.0  # the weights (and their hash) untouched
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="config does not match"):
        load_model(tmp_path / "edited.pt")
    # A version-1 file (weights hash only) still loads.
    legacy = torch.load(path, weights_only=True)
    legacy["format_version"] = 1
    del legacy["model_hash"]
    torch.save(legacy, tmp_path / "v1.pt")
    assert load_model(tmp_path / "v1.pt").alpha == model.alpha
    # NaN or inf weights are refused, even when saved consistently with their hashes.
    for bad in (math.nan, math.inf):
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken.fhat[0].weight[0, 0] = bad
        broken.save(tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="NaN or inf"):
            load_model(tmp_path / "bad.pt")


# -- bad input: an error naming the argument, before any work --------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tol=math.nan), "tol"),
        (dict(tol=-1.0), "tol"),
        (dict(max_norm=math.nan), "max_norm"),
        (dict(max_norm=math.inf), "max_norm"),
        (dict(n_samples=-1), "n_samples"),
        (dict(batch=0), "batch"),
        (dict(shells=2.5), "shells"),
        (dict(dtype=torch.float16), "dtype"),
        (dict(input_scale=math.nan), "input_scale"),
        (dict(time_limit=0), "time_limit"),
    ],
)
def test_falsify_rejects_bad_arguments(kwargs, name):
    model = StableDynamics(2, **SMALL)
    with pytest.raises(ValueError, match=name):
        falsify(model.certificate(), model, **kwargs)
    with pytest.raises(TypeError, match="cert"):
        falsify({"claim": "exponential_stability"}, model)


def test_falsify_refuses_a_model_in_an_unsupported_dtype():
    model = StableDynamics(2, **SMALL).half()
    with pytest.raises(ValueError, match="dtype"):
        falsify(Certificate(claim="exponential_stability", alpha=0.1, equilibrium=[0.0, 0.0]), model, dtype=None)


def _cert_dict(**changes):
    d = StableDynamics(2, **SMALL).certificate().to_dict()
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "changes, name",
    [
        (dict(h=-1.0), "h must"),
        (dict(h=math.nan), "h must"),
        (dict(c1=-1.0), "c1 must"),
        (dict(c1=0.0), "c1 must"),
        (dict(c2=1e-9), "c2 must"),
        (dict(equilibrium=[0.0, math.nan]), "equilibrium"),
        (dict(format_version="x"), "format_version"),
        (dict(format_version=99), "format_version"),
        (dict(numerics={"float16": {"tolerance": 1e-3, "radius": 0.0}}), "numerics"),
        (dict(numerics={"float32": {"tolerance": -1.0, "radius": 0.0}}), "numerics"),
        (dict(alpha="fast"), "alpha"),
    ],
)
def test_certificate_fields_are_validated(tmp_path, changes, name):
    with pytest.raises(ValueError, match=name):
        Certificate.from_dict(_cert_dict(**changes))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_cert_dict(**changes)))
    with pytest.raises(ValueError, match=name):
        Certificate.load(path)


def test_certificate_load_refuses_binary_and_incomplete_files(tmp_path):
    binary = tmp_path / "b.json"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not UTF-8"):
        Certificate.load(binary)
    partial = tmp_path / "p.json"
    partial.write_text(json.dumps({"format_version": 2, "alpha": 0.1}))
    with pytest.raises(ValueError, match="claim"):
        Certificate.load(partial)
    # A version-1 certificate (weights-only hash) loads, but names no model any more.
    model = StableDynamics(2, **SMALL)
    old = Certificate.from_dict({**_cert_dict(), "format_version": 1, "numerics": {}})
    assert old.format_version == 1 and not old.applies_to(model)
