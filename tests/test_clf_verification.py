"""Formal verification of stabilisability certificates (control Lyapunov functions).

The plant is the linear saddle of ``test_control_lyapunov.py``, ``xdot = [[0, 1], [1, 0]] x +
[0, 1] u`` with ``|u| <= 2``, here as a control-affine ``SimpleDynamics`` (whose field the
bounds cover) with weights that make its field exactly that on ``|x_i| < 10``: the drift is
``A (relu(x + 10) - relu(10 - x)) / 2`` and the gain the output bias.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lyagym.learned_models import SimpleDynamics
from lyagym.learned_models.bounds import LinearBounds
from lyagym.learned_models.clf_verification import (fallback_bounds, region_box, region_coordinates, stabilisability_bounds,
                                                    verify_stabilisability)
from lyagym.learned_models.control_lyapunov import ControlLyapunov, MeanMap

D64 = torch.float64
A = torch.tensor([[0.0, 1.0], [1.0, 0.0]])


def saddle(gain: float = 1.0, integrator: str = "rk4", dt: float = 0.05) -> SimpleDynamics:
    model = SimpleDynamics(2, 1, hidden=(4,), dt=dt, integrator=integrator, control_affine=True, activation="relu")
    with torch.no_grad():
        first, last = model.fhat.net[0], model.fhat.net[-1]
        first.weight.copy_(torch.cat([torch.eye(2), -torch.eye(2)]))
        first.bias.fill_(10.0)
        last.weight.zero_()
        last.weight[:2].copy_(torch.cat([A, -A], 1) / 2)
        last.bias.zero_()
        last.bias[3] = gain  # B = [0, gain]^T, the flattened (n, m) gain's second entry
    return model


def certified(time_domain: str = "discrete", correction: float = 0.3, box: float = 3.0) -> tuple[SimpleDynamics, ControlLyapunov]:
    """The saddle and an LQR ``V`` with a nonzero correction ``h``, certified by sampling."""
    torch.manual_seed(0)
    plant = saddle()
    V = ControlLyapunov(2, 1, box=[[-box, box], [-box, box]], u_low=[-2.0], u_high=[2.0], hidden=(8,), time_domain=time_domain)
    V.initialise(plant)
    with torch.no_grad():
        V.correction[-1].weight.normal_(0.0, correction)
    V.certify_region(plant, samples=4000)
    return plant, V


def test_the_plant_is_the_saddle():
    x, u = torch.randn(64, 2, dtype=D64) * 3, torch.randn(64, 1, dtype=D64)
    f = saddle().to(D64).derivative(x, u)
    assert torch.allclose(f, x @ A.double().T + u * torch.tensor([0.0, 1.0], dtype=D64), atol=1e-12)


@pytest.mark.parametrize("time_domain", ["discrete", "continuous"])
def test_certified_region_is_verified_and_sampled_states_agree(time_domain):
    plant, V = certified(time_domain)
    cert = V.certificate(plant)
    rho, inner = cert.details["rho"], cert.details["inner_level"]
    assert rho > 0 and float(V.correction[-1].weight.detach().abs().max()) > 0
    out = cert.verify(plant, lyapunov=V, budget_s=30)
    formal = out.details["formal"]
    assert formal["status"] == "verified" and formal["fraction"] == pytest.approx(1.0) and "formal" in out.evidence
    assert formal["region_fraction"] == 1.0 and formal["rho"] == rho and formal["inner_level"] == inner and formal["covers_claim"]
    # a box holding only part of the set: that part is proven, but the claim gains no evidence
    part = cert.verify(plant, lyapunov=V, budget_s=30, box=[[0.2, 1.0], [-1.0, 1.0]])
    assert part.details["formal"]["status"] == "verified" and not part.details["formal"]["covers_claim"]
    assert part.evidence == ["falsification"]
    assert formal["condition"].startswith("V(step(x, u_fb(x)))" if time_domain == "discrete" else "grad V . f(x, u_fb(x))")
    assert out.evidence[0] == "falsification" and cert.evidence == ["falsification"]  # a copy; the original is unchanged
    # the same keys as the other claims' formal details
    from lyagym.learned_models.verification import VerificationResult

    assert set(VerificationResult("verified", 1.0, 1, 0.0, 0.0, []).details()) <= set(formal)
    # 1e6 states uniform in the annulus' bounding box, >= 1e5 of them in the annulus: none violates the claim
    X = torch.tensor(formal["box"], dtype=D64)
    gen = torch.Generator().manual_seed(3)
    x = X[:, 0] + (X[:, 1] - X[:, 0]) * torch.rand(1_000_000, 2, generator=gen, dtype=D64)
    V64, plant64 = copy.deepcopy(V).double(), copy.deepcopy(plant).double()
    with torch.no_grad():
        v = V64(x)
    x = x[(v <= rho) & (v >= inner)]
    assert x.shape[0] > 100_000
    r = V64.violation(plant64, x)
    assert bool((r <= 1e-12).all()), float(r.max())


def test_planted_violations_are_never_verified():
    plant, V = certified(correction=0.0)
    rho = float(V.rho)
    for planted in ("gain", "rho", "weak input"):
        model = plant
        V.rho.fill_(rho)
        if planted == "gain":  # a wrong gain K: u_fb barely pushes back
            V.gain.mul_(0.2)
        elif planted == "rho":  # a region twice as large as the input can hold
            V.rho.fill_(2 * rho)
        else:  # the claim made for a plant whose input is 20x weaker
            model = saddle(gain=0.05)
        cert = V.certificate(model)
        formal = cert.verify(model, lyapunov=V, budget_s=10).details["formal"]
        assert formal["status"] == "counterexample", planted
        x = torch.tensor([formal["counterexample"]], dtype=D64)
        V64 = copy.deepcopy(V).double()
        with torch.no_grad():  # plain evaluation: the state is in the claimed annulus and violates the decrease
            v = float(V64(x))
            d = float(V64(copy.deepcopy(model).double().step(x, V64.fallback(None, x))) - math.exp(-cert.alpha * cert.h) * v)
        assert cert.details["inner_level"] <= v <= cert.details["rho"] and d > 0
        assert d == pytest.approx(formal["counterexample_h"], rel=1e-9)
        if planted == "gain":
            V.gain.div_(0.2)
    # a budget too small to finish is never "verified"
    res = verify_stabilisability(plant, V, alpha=float(V.alpha), rho=2 * rho, inner_level=float(V.inner) * rho, budget_s=1e-6)
    assert res.status != "verified" and res.fraction < 1


@pytest.mark.parametrize("time_domain,method", [("discrete", "rk4"), ("discrete", "euler"), ("continuous", None)])
def test_bounds_are_never_tighter_than_sampled_values(time_domain, method):
    # two random smooth control-affine members with an angle, their mean map and each alone
    torch.manual_seed(1)
    members = [SimpleDynamics(2, 1, hidden=(12,), dt=0.1, integrator=method or "rk4", angle_dims=1, control_affine=True,
                              activation="silu").to(D64) for _ in range(2)]
    V = ControlLyapunov(2, 1, box=[[-2.0, 2.0], [-3.0, 3.0]], u_low=[-1.0], u_high=[1.5], angle_dims=(0,), hidden=(6,),
                        time_domain=time_domain).to(D64)
    with torch.no_grad():
        V.P.copy_(torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=D64))
        V.gain.copy_(torch.tensor([[3.0, 1.0]], dtype=D64))
        V.u_eq.fill_(0.2)
        V.x_eq.copy_(torch.tensor([0.1, -0.2], dtype=D64))
        V.correction[-1].weight.normal_(0.0, 0.5)
    gen = torch.Generator().manual_seed(4)
    alpha, boxes, k = 0.7, 200, 64
    for scale in (1.0, 0.3, 0.1, 0.03):  # small boxes too: there the bounds are tight, and a wrong plane shows
        centre = (torch.rand(boxes, 2, generator=gen, dtype=D64) - 0.5) * torch.tensor([1.5, 3.0], dtype=D64)
        half = scale * torch.rand(boxes, 2, generator=gen, dtype=D64) * torch.tensor([0.4, 0.8], dtype=D64)
        lo, hi = centre - half, centre + half  # u_fb saturates on some, straddles a kink of the clip on others
        x = (lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(boxes, k, 2, generator=gen, dtype=D64)).reshape(-1, 2)
        for claim in ([MeanMap(members)], members):
            b = stabilisability_bounds(V, claim, lo, hi, alpha=alpha, time_domain=time_domain, h=0.1, method=method, levels=(0.2, 1.0),
                                       multipliers=((0.1, 0.0), (1.0, 0.0), (10.0, 0.0), (0.0, 0.5), (1.0, 1.0)))
            u = V.fallback(None, x)
            with torch.no_grad():
                v = V(x)
                if time_domain == "discrete":
                    d = torch.stack([V(m.step(x, u)) for m in claim]).amax(0) - math.exp(-alpha * 0.1) * v
                else:
                    g = V.value_and_grad(x)[1]
                    d = torch.stack([(g * m.derivative(x, u)).sum(-1) for m in claim]).amax(0) + alpha * v
            for name, exact in (("V", v), ("d", d), ("u", u)):
                lower, upper = (t.unsqueeze(1) for t in b[name])
                exact = exact.reshape(boxes, k, *exact.shape[1:])
                assert bool((exact >= lower).all()) and bool((exact <= upper).all()), (name, scale)
            assert bool(torch.isfinite(b["d"][1]).all())  # these boxes' steps stay within pi of x_eq
            # the S-procedure's bound holds for the states of each box in the annulus 0.2 <= V <= 1
            inside = (v.reshape(boxes, k) <= 1.0) & (v.reshape(boxes, k) >= 0.2)
            assert bool((d.reshape(boxes, k) <= b["d_region"][1].unsqueeze(1))[inside].all())
            assert bool((b["d_region"][1] <= b["d"][1]).all()) and bool((b["d_region"][1] < b["d"][1]).any())
        # u_fb's planes themselves (what the step's bounds use), not only their extremes
        planes = fallback_bounds(V, LinearBounds.from_box(lo, hi).shift(-V.x_eq))
        xi = ((x.reshape(boxes, k, 2) - ((lo + hi) / 2).unsqueeze(1)) / ((hi - lo) / 2).unsqueeze(1)).unsqueeze(-1)
        u = u.reshape(boxes, k, 1)
        assert bool((u >= (planes.lA.unsqueeze(1) @ xi).squeeze(-1) + planes.lb.unsqueeze(1) - 1e-12).all())
        assert bool((u <= (planes.uA.unsqueeze(1) @ xi).squeeze(-1) + planes.ub.unsqueeze(1) + 1e-12).all())
    # in the region's coordinates x = x_eq + T w, V's quadratic part is |w|^2: its bounds are exact
    T, s = region_coordinates(V, 1.0)
    assert torch.allclose(T.T @ V.P @ T, torch.eye(2, dtype=D64), atol=1e-12) and torch.allclose(s, torch.ones(2, dtype=D64), rtol=1e-5)
    box = region_box(V, 1.0)
    assert torch.allclose(box[:, 1] - V.x_eq, torch.sqrt(torch.linalg.inv(V.P).diagonal()), rtol=1e-6)


def test_bad_arguments_are_refused_before_work():
    plant, V = certified(correction=0.0)
    cert = V.certificate(plant)
    with pytest.raises(TypeError, match="lyapunov"):
        cert.verify(plant)
    with pytest.raises(ValueError, match="rho and u_box"):
        cert.verify(plant, lyapunov=V, rho=1.0)
    with pytest.raises(ValueError, match="other weights"):
        cert.verify(saddle(gain=0.5), lyapunov=V)
    with pytest.raises(ValueError, match="lyapunov_hash"):
        _, other = certified(correction=0.1)
        cert.verify(plant, lyapunov=other)
    with pytest.raises(ValueError, match="rho must be > 0"):
        verify_stabilisability(plant, V, alpha=0.1, rho=0.0, inner_level=0.0)
    pendulum = ControlLyapunov(2, 1, box=[[-3.0, 3.0], [-3.0, 3.0]], u_low=[-2.0], u_high=[2.0], angle_dims=(0,))
    with pytest.raises(ValueError, match="within pi of x_eq"):
        verify_stabilisability(plant, pendulum, alpha=0.1, rho=1.0, inner_level=0.0, box=[[-3.5, 3.0], [-1.0, 1.0]])


@pytest.mark.parametrize("ensemble", ["every", "mean"])
def test_an_ensembles_claim_is_verified_for_every_member_or_their_mean(ensemble):
    from lyagym.learned_models import Ensemble

    ens = Ensemble([saddle(gain=1.0), saddle(gain=0.7)], propagation="expectation", var_hidden=(4,))
    V = ControlLyapunov(2, 1, box=[[-3.0, 3.0], [-3.0, 3.0]], u_low=[-2.0], u_high=[2.0], hidden=(), ensemble=ensemble)
    V.initialise(ens)
    V.certify_region(ens, samples=4000)
    cert = V.certificate(ens)
    out = cert.verify(ens, lyapunov=V, budget_s=30)
    assert out.details["formal"]["status"] == "verified" and "formal" in out.evidence
    # a gain 0.3x too weak for the saddle: refuted on the same set
    V.gain.mul_(0.3)
    res = verify_stabilisability(ens, V, alpha=cert.alpha, rho=cert.details["rho"], inner_level=cert.details["inner_level"],
                                 budget_s=10)
    assert res.status == "counterexample"


def test_cli_verifies_a_control_lyapunov_checkpoint(tmp_path, capsys):
    import json

    from lyagym.agents import cli
    from lyagym.learned_models import save_model
    from lyagym.learned_models.control_lyapunov import control_lyapunov_payload

    plant, V = certified()
    path = tmp_path / "m.pt"
    save_model(plant, path, metadata={"control_lyapunov": control_lyapunov_payload(V)})
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["verify", str(path), "--budget-s", "30", "--out", str(out), "--no-progress"]) == 0
        result = json.loads(out.read_text())
        assert result["claim"] == "stabilisability" and result["status"] == "verified" and result["covers_claim"]
        assert "formal" in result["evidence"] and result["rho"] == pytest.approx(float(V.rho))
        assert result["alpha"] == pytest.approx(float(V.alpha))
        capsys.readouterr()
        for bad in (["--alpha", "1"], ["--rho", "0.1"], ["--box=-1,1"]):
            assert cli.main(["verify", str(path), *bad]) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (bad, err)
        V.rho.fill_(0.0)  # certifies nothing: nothing to prove
        save_model(plant, path, metadata={"control_lyapunov": control_lyapunov_payload(V)})
        assert cli.main(["verify", str(path)]) == 2
        assert "rho = 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
