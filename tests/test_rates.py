"""Learned decay rates and what a certificate says about settling: the rate stays in its bounds
and is the one the model obeys and the certificate states; time_to holds on rollouts; every
model kind has a certificate; falsify says INCOMPLETE when its time limit cut it short."""

import copy
import dataclasses
import math
import pickle

import pytest
import torch

from lyagym.learned_models import Certificate, SimpleDynamics, StableControlledDynamics, StableDynamics, falsify, fit, load_model
from lyagym.learned_models import falsification
from lyagym.learned_models.ensemble import Ensemble, member_factory
from lyagym.learned_models.lyapunov import LyapunovFunction

SMALL = dict(hidden=(16,), lyap_hidden=(8,))
FALSIFY_SMALL = dict(n_samples=2000, shells=4, per_shell=100, large_norm_samples=200, grad_steps=10, grad_starts=16, rollouts=16, rollout_steps=10)


def _decaying_pairs(rate: float, n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, xdot) of a rotation decaying at ``rate``: ||x||^2 falls at exactly ``2 rate``."""
    x = torch.randn(n, 2) * 2
    A = torch.tensor([[-rate, 2.0], [-2.0, -rate]])
    return x, x @ A.T


def test_default_rate_is_learned_within_bounds_and_a_fixed_one_keeps_its_config():
    model = StableDynamics(2, **SMALL)
    assert model.learned_rate and model.alpha_bounds == (0.01, 10.0) and model.alpha == pytest.approx(1.0, rel=1e-6)
    assert "alpha_raw" in dict(model.named_parameters())
    fixed = StableDynamics(2, alpha=0.3, **SMALL)
    assert not fixed.learned_rate and fixed.alpha == 0.3 and "alpha_bounds" not in fixed.config()
    assert "alpha_raw" not in dict(fixed.named_parameters())
    for raw in (-1e4, 1e4, 0.0):  # the sigmoid keeps the rate inside [lo, hi] whatever the weight
        bounded = StableDynamics(2, alpha=0.5, alpha_bounds=(0.2, 0.8), **SMALL)
        with torch.no_grad():
            bounded.alpha_raw.fill_(raw)
        assert 0.2 <= bounded.alpha <= 0.8 and 0.2 * (1 - 1e-6) <= float(bounded._rate().detach()) <= 0.8 * (1 + 1e-6)  # float32
        assert bounded.certificate().alpha == bounded.alpha


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha_bounds=(0.5, 0.2)), "alpha_bounds"),
        (dict(alpha_bounds=(0.0, 1.0)), "alpha_bounds"),
        (dict(alpha_bounds=(0.1, math.inf)), "alpha_bounds"),
        (dict(alpha=2.0, alpha_bounds=(0.1, 1.0)), "alpha"),
        (dict(alpha=-1.0), "alpha"),
    ],
)
def test_bad_rates_are_refused_before_any_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StableDynamics(2, **SMALL, **kwargs)


def test_fit_moves_a_learned_rate_towards_the_data_and_stops_at_its_bounds():
    # Pairs decaying at V-rate ~0.02 pull the rate down to its lower bound; a strong push
    # (rate_weight) on pairs that decay fast takes it up to (not past) its upper bound.
    slow = StableDynamics(2, alpha=0.5, alpha_bounds=(0.2, 0.8), **SMALL)
    history = fit(slow, _decaying_pairs(0.01), epochs=15, progress=False, rate_lr=0.2, patience=None)
    assert len(history["alpha"]) == 15 and slow.alpha < 0.3 and slow.alpha >= 0.2
    fast = StableDynamics(2, alpha=0.5, alpha_bounds=(0.2, 0.8), **SMALL)
    fit(fast, _decaying_pairs(3.0), epochs=15, progress=False, rate_lr=0.2, rate_weight=1.0, patience=None)
    assert 0.7 < fast.alpha <= 0.8
    with pytest.raises(ValueError, match="rate_weight"):
        fit(fast, _decaying_pairs(1.0), epochs=1, progress=False, rate_weight=-1.0)
    with pytest.raises(ValueError, match="rate_lr"):
        fit(fast, _decaying_pairs(1.0), epochs=1, progress=False, rate_lr=0.0)


def test_the_learned_rate_is_what_the_model_obeys_and_what_its_certificate_states(tmp_path):
    model = StableDynamics(2, alpha=0.7, alpha_bounds=(0.1, 3.0), dt=0.05, **SMALL)
    with torch.no_grad():
        model.alpha_raw.add_(0.8)  # as after training: the rate is no longer the configured start
    alpha = model.alpha
    assert alpha != pytest.approx(0.7, rel=1e-3)
    x = torch.randn(400, 2) * 3
    with torch.no_grad():
        V, gV = model.lyapunov.forward_and_grad(x)
        decrease = (gV * model.derivative(x)).sum(-1) + alpha * V
        assert bool((decrease <= 1e-3 * V).all())  # continuous: dV/dt <= -alpha V (float32 tolerance)
        Vn = model.lyapunov(model.step(x))
        assert bool((Vn <= math.exp(-alpha * 0.05) * V * (1 + 1e-3)).all())  # the step map too
        # ... and not a faster one: somewhere the projection is active at exactly this rate.
        assert float((decrease / V).max()) > -1e-3
    cert = model.certificate()
    assert cert.alpha == alpha and cert.details["alpha_bounds"] == [0.1, 3.0]
    assert falsify(cert, model, **FALSIFY_SMALL).passed  # in float64 against the float32 model's rate
    # The rate travels with the weights: checkpoint, pickle, dtype copy; and the hash covers it.
    model.save(tmp_path / "m.pt")
    for twin in (load_model(tmp_path / "m.pt"), pickle.loads(pickle.dumps(model))):
        assert twin.alpha == alpha and cert.applies_to(twin)
    assert model.double().alpha == alpha
    moved = copy.deepcopy(model).float()
    moved.alpha = 0.5
    assert not cert.applies_to(moved) and moved.certificate().alpha == pytest.approx(0.5, rel=1e-6)


def test_learned_rate_gradient_through_the_projection_and_the_rescale():
    model = StableDynamics(2, alpha=0.7, alpha_bounds=(0.1, 3.0), dt=0.1, lyap_quadratic=True, **SMALL).double()
    x = torch.randn(6, 2, dtype=torch.float64) * 3
    lo, hi = model.alpha_bounds

    def field(raw):  # the ICNN-and-projection node and the separate projection node (quadratic V)
        return model._field_and_V(x, None, precise=False, alpha=lo + (hi - lo) * torch.sigmoid(raw))[0]

    def step(raw):
        model._rate = lambda: lo + (hi - lo) * torch.sigmoid(raw)
        try:
            return model._step(x, None)
        finally:
            del model._rate

    raw = model.alpha_raw.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(field, (raw,)) and torch.autograd.gradcheck(step, (raw,))
    plain = StableDynamics(2, alpha=0.7, alpha_bounds=(0.1, 3.0), **SMALL).double()
    raw = plain.alpha_raw.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: plain._field_and_V(x, None, alpha=lo + (hi - lo) * torch.sigmoid(r))[0], (raw,))


def test_ensemble_members_keep_their_own_learned_rates():
    ens = Ensemble(member_factory("stable", 2, 1, alpha=0.5, alpha_bounds=(0.1, 2.0), dt=0.05, **SMALL), 3, propagation="tsinf", sample=False)
    with torch.no_grad():
        dict(ens.named_parameters())["stacked.model.alpha_raw"].copy_(torch.tensor([-2.0, 0.0, 2.0]))
    members = [ens.member(i) for i in range(3)]
    rates = [m.alpha for m in members]
    assert rates[0] < rates[1] < rates[2] and [c.alpha for c in ens.certificate().members] == rates
    x, u = torch.randn(6, 2), torch.randn(6, 1)
    with torch.no_grad():
        y = ens.step(x, u)  # tsinf: row i on member i % 3, evaluated under vmap
        for i, m in enumerate(members):
            torch.testing.assert_close(y[i::3], m.step(x[i::3], u[i::3]), rtol=1e-5, atol=1e-6)


def test_calibrate_rate_is_the_slowest_rate_the_pairs_obey():
    # xdot = -0.3 x decreases every convex V with V(0) = 0 at rate >= 0.3 (grad V . x >= V).
    model = StableDynamics(2, alpha=1.0, alpha_bounds=(1e-3, 10.0), **SMALL)
    x = torch.randn(512, 2) * 2
    xdot = -0.3 * x
    alpha = model.calibrate_rate((x, xdot))
    rates = model.data_rates(x, xdot)
    assert alpha >= 0.3 * (1 - 1e-5) and alpha == pytest.approx(float(rates.min()), rel=1e-5) and bool((rates >= alpha * (1 - 1e-5)).all())
    assert model.certificate().alpha == model.alpha == alpha
    assert model.calibrate_rate((x, xdot), quantile=0.5) > alpha
    with pytest.raises(ValueError, match="learned rate"):
        StableDynamics(2, alpha=0.1, **SMALL).calibrate_rate((x, xdot))


def test_lower_constant_counts_the_learned_quadratic():
    V = LyapunovFunction(3, (8,), eps=0.01, quadratic=True).double()
    with torch.no_grad():
        V.L.copy_(torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.1, 0.0, 0.8]]))
    c1 = V.lower_constant()
    assert c1 > 0.1
    x = torch.randn(5000, 3, dtype=torch.float64)
    assert bool((V(x) >= c1 * (x * x).sum(-1)).all())


def test_time_to_matches_the_bound_and_holds_on_rollouts():
    model = StableDynamics(2, alpha=2.0, alpha_bounds=(0.1, 5.0), dt=0.05, **SMALL)
    box = [[-1.0, 1.5], [-0.5, 0.5]]
    eps = 1e-2
    cert = model.certificate(eps=eps, region=box)
    m, radius = cert.overshoot, math.hypot(1.5, 0.5)
    assert cert.region_radius(box) == pytest.approx(radius) and cert.region_radius(0.7) == 0.7
    t = cert.time_to(eps, box)
    exact = 2 / cert.alpha * math.log(m * radius / eps)
    assert exact <= t < exact + cert.h + 1e-9 and cert.details["settling"]["time"] == t
    assert "settles:   |x - x_eq| <= 0.01 after t = " in cert.summary() and "<= 1% of |x(0) - x_eq| after t = " in cert.summary()
    assert cert.time_to(m * radius, box) == 0.0 and math.isinf(dataclasses.replace(cert, alpha=0.0).time_to(eps, box))
    # Starts on the box's corners and inside it, rolled for the certified number of steps.
    corners = torch.tensor([[lo, hi] for lo in box[0] for hi in box[1]])
    inside = torch.rand(60, 2) * torch.tensor([2.5, 1.0]) - torch.tensor([1.0, 0.5])
    x0 = torch.cat([corners, inside])
    steps = round(t / cert.h)
    with torch.no_grad():
        traj = model.rollout(x0, steps)  # (batch, steps + 1, 2)
    dist = traj.norm(dim=-1)
    k = torch.arange(steps + 1)
    bound = m * x0.norm(dim=-1, keepdim=True) * torch.exp(-cert.alpha * cert.h * k / 2)
    assert bool((dist <= bound * (1 + 1e-4)).all())
    assert bool((dist[:, -1] <= eps).all())
    with pytest.raises(ValueError, match="eps"):
        cert.time_to(0.0, box)
    with pytest.raises(ValueError, match="box"):
        cert.time_to(eps, [[0.0, 1.0]])


def test_every_model_kind_has_a_certificate_and_the_unconstrained_claim_nothing():
    simple = SimpleDynamics(2, 1, hidden=(8,))
    cert = simple.certificate()
    assert cert.claim == "none" and cert.applies_to(simple) and "claims nothing" in cert.summary()
    report = cert.check(simple)
    assert report.passed and report.n_checked == 0 and "nothing to check" in report.summary()
    with pytest.raises(ValueError, match="claims nothing"):
        cert.time_to(1e-2, 1.0)
    assert Certificate.from_json(cert.to_json()) == cert
    controlled = StableControlledDynamics(2, 1, alpha_bounds=(0.1, 2.0), **SMALL)
    assert controlled.certificate().alpha == controlled.alpha
    ens = Ensemble(member_factory("simple", 2, 1, hidden=(8,)), 2)
    ens_cert = ens.certificate()
    assert ens_cert.members == [] and ens_cert.check(ens).passed


def test_falsify_reports_incomplete_when_its_time_limit_cuts_a_phase(monkeypatch):
    model = StableDynamics(2, **SMALL)
    cert = model.certificate()
    clock = iter(range(10**6))  # each reading of the clock is one second later
    monkeypatch.setattr(falsification.time, "perf_counter", lambda: float(next(clock)))
    report = falsify(cert, model, **{**FALSIFY_SMALL, "n_samples": 4000}, batch=500, time_limit=3.5)
    assert 0 < report.per_test["random"]["checked"] < 4000  # stopped part way through the first phase
    assert not report.complete and not report.passed and report.n_violations == 0
    assert report.verdict == "INCOMPLETE" and "INCOMPLETE" in report.summary() and "PASSED" not in report.summary()
    monkeypatch.undo()
    full = falsify(cert, model, **FALSIFY_SMALL)
    assert full.complete and full.passed and full.verdict == "PASSED"


def _box_starts(box, n: int = 60) -> torch.Tensor:
    """The box's corners and ``n`` uniform states inside it."""
    lo, hi = torch.tensor([b[0] for b in box]), torch.tensor([b[1] for b in box])
    corners = torch.cartesian_prod(*[torch.tensor(b) for b in box])
    return torch.cat([corners, lo + (hi - lo) * torch.rand(n, len(box))])


def test_settling_time_from_the_levels_of_v_holds_on_rollouts_and_is_tighter_than_the_overshoot_form():
    torch.manual_seed(0)
    model = StableDynamics(2, alpha=0.4, alpha_bounds=(0.1, 5.0), dt=0.05, lyap_quadratic=True, **SMALL)
    box, eps = [[-1.0, 1.5], [-0.5, 0.5]], 1e-2
    t = model.settling_time(eps, box)
    corners = torch.cartesian_prod(*[torch.tensor(b, dtype=torch.float64) for b in box])
    with torch.no_grad():
        v_max = float(copy.deepcopy(model.lyapunov).double()(corners).max())
    with torch.no_grad():  # the corner maximum is the maximum: no state of the box has a larger V
        inside = copy.deepcopy(model.lyapunov).double()(_box_starts(box, 20_000).double())
    assert model.lyapunov_max(box) == v_max >= float(inside.max())
    exact = math.log(v_max / (model.lyapunov.lower_constant() * eps**2)) / model.alpha
    assert exact <= t < exact + model.dt + 1e-9  # whole steps of the step map's claim
    assert t < model.certificate().time_to(eps, box)
    settling = model.certificate(eps=eps, region=box).details["settling"]  # the certificate states both times
    assert settling["time_from_levels"] == t < settling["time"] and settling["max_V_region"] == v_max
    assert "and after t = " in model.certificate(eps=eps, region=box).summary()
    assert "time_from_levels" not in model.certificate(eps=eps, region=2.0).details["settling"]  # a ball: no corner maximum
    x0 = _box_starts(box)
    with torch.no_grad():
        traj = model.rollout(x0, round(t / model.dt))
    assert bool((traj[:, -1].norm(dim=-1) <= eps).all())
    assert model.settling_time(1e3, box) == 0.0
    for bad, match in [(dict(eps=0.0), "eps"), (dict(box=[[0.0, 1.0]]), "box"), (dict(box=[[1.0, 0.0], [0.0, 1.0]]), "box"),
                       (dict(box=[[0.0, float("nan")], [0.0, 1.0]]), "box")]:
        with pytest.raises(ValueError, match=match):
            model.settling_time(**{"eps": eps, "box": box, **bad})
    warped = StableDynamics(2, warp="coupling", **SMALL)
    with pytest.raises(ValueError, match="convex"):
        warped.settling_time(eps, box)


def test_settle_within_raises_the_rate_to_just_what_the_time_needs_and_floors_it_there():
    torch.manual_seed(1)
    model = StableDynamics(2, alpha=0.2, alpha_bounds=(0.1, 5.0), dt=0.05, **SMALL)
    box, eps = [[-2.0, 2.0], [-2.0, 2.0]], 1e-3
    slow = model.settling_time(eps, box)
    seconds = slow / 3
    alpha = model.settle_within(eps, box, seconds)
    assert alpha == model.alpha and 2.9 * 0.2 < alpha < 3.1 * 0.2
    assert seconds - model.dt - 1e-9 <= model.settling_time(eps, box) <= seconds
    assert model.alpha_bounds[0] <= alpha and model.alpha_bounds[0] > 0.5 and model.config()["alpha"] >= model.alpha_bounds[0]
    with torch.no_grad():  # whatever training does to the raw weight, the rate stays at or above the floor
        model.alpha_raw.fill_(-1e4)
    assert model.alpha >= model.alpha_bounds[0] and model.settling_time(eps, box) <= seconds
    before = model.alpha
    assert before <= model.settle_within(eps, box, 10 * seconds) <= before * 1.001  # never lowered (nor raised beyond its floor's margin)
    with torch.no_grad():
        traj = model.rollout(_box_starts(box), round(seconds / model.dt))
    assert bool((traj[:, -1].norm(dim=-1) <= eps).all())
    rebuilt = StableDynamics(**model.config())  # the moved bounds are the model's config
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.alpha == model.alpha
    with pytest.raises(ValueError, match="upper bound"):
        model.settle_within(eps, box, seconds / 30)
    with pytest.raises(ValueError, match="seconds"):
        model.settle_within(eps, box, 0.0)
    with pytest.raises(ValueError, match="one step"):
        model.settle_within(eps, box, 0.01)
    fixed = StableDynamics(2, alpha=0.2, dt=0.05, **SMALL)
    assert fixed.settle_within(eps, box, 5.0) > 0.2 and fixed.settling_time(eps, box) <= 5.0


def test_fit_settling_refits_under_the_raised_rate_and_leaves_a_model_that_settles_alone():
    from lyagym.learned_models import fit_settling

    torch.manual_seed(2)
    x, xdot = _decaying_pairs(0.05)  # a slow spiral: the data decrease ||x||^2 at 0.1
    model = StableDynamics(2, alpha=0.2, alpha_bounds=(0.01, 5.0), dt=0.05, **SMALL)
    fit(model, (x, xdot), epochs=20, batch_size=128, lr=3e-3, val_fraction=0.0, patience=None, progress=False)
    box, eps = [[-2.0, 2.0], [-2.0, 2.0]], 1e-2
    slow = model.settling_time(eps, box)
    seconds = min(slow / 2, 20.0)
    out = fit_settling(model, (x, xdot), eps=eps, box=box, seconds=seconds, epochs=5, batch_size=128, lr=1e-3,
                       val_fraction=0.0, patience=None, progress=False)
    assert out["seconds_before"] == slow and out["seconds"] <= seconds and out["alpha"] > out["alpha_before"]
    assert len(out["history"]["train_loss"]) == 5 and model.settling_time(eps, box) == out["seconds"]
    with torch.no_grad():
        traj = model.rollout(_box_starts(box), round(seconds / model.dt))
    assert bool((traj[:, -1].norm(dim=-1) <= eps).all())
    state = copy.deepcopy(model.state_dict())
    again = fit_settling(model, (x, xdot), eps=eps, box=box, seconds=seconds + 1.0, epochs=5, progress=False)
    assert again["history"] is None and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="stable model"):
        fit_settling(SimpleDynamics(2), (x, xdot), eps=eps, box=box, seconds=1.0)
