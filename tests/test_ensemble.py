"""Ensemble: members batched with vmap equal the members alone; PETS propagation, heads, training, certificates."""

import pickle

import pytest
import torch

from lyagym.learned_models import (
    PROPAGATIONS,
    Ensemble,
    EnsembleCertificate,
    SimpleDynamics,
    StableControlledDynamics,
    StableDynamics,
    WorldModel,
    check_world_model,
    fit_ensemble,
    load_model,
    member_factory,
)

torch.set_num_threads(1)

PRIORS = dict(angle_dims=1, control_affine=True, activation="silu")
SMALL = dict(hidden=(16, 16), dt=0.05)
STABLE = dict(lyap_hidden=(8, 8), alpha=0.1)
KINDS = {
    "simple": lambda: member_factory("simple", 2, 1, **SMALL, **PRIORS),
    "stable": lambda: member_factory("stable", 2, 1, **SMALL, **STABLE, **PRIORS),
    "stable-tangent-quadratic": lambda: member_factory("stable", 2, 1, **SMALL, **STABLE, **PRIORS, lyap_shift="tangent", lyap_quadratic=True),
}
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _ensemble(kind="stable", E=3, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    kw.setdefault("var_hidden", (16,))
    return Ensemble(KINDS[kind](), E, **kw).to(dtype)


def _damped_linear(N=400, seed=0, noise=0.01):
    """x_{k+1} = A x_k + B u_k + noise: a damped oscillator at dt = 0.05."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 2, generator=g)
    u = torch.randn(N, 1, generator=g)
    A = torch.tensor([[1.0, 0.05], [-0.05, 0.95]])
    B = torch.tensor([[0.0], [0.05]])
    return x, u, x @ A.T + u @ B.T + noise * torch.randn(N, 2, generator=g)


def _nll(ens, x, u, y):
    E = ens.size
    with torch.no_grad():
        return float(ens._loss(x.expand(E, -1, -1), u.expand(E, -1, -1), y.expand(E, -1, -1))[1].mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", list(KINDS))
def test_vmapped_members_equal_members_alone_with_gradients(kind, dtype):
    E = 3
    ens = _ensemble(kind, E, dtype, propagation="tsinf", sample=False)
    x = (2 * torch.randn(10, 2, dtype=dtype)).requires_grad_(True)
    u = torch.randn(10, 1, dtype=dtype).requires_grad_(True)
    y = ens.step(x, u)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    grads = {name: p.grad for name, p in ens.stacked.named_parameters()}
    tol = TOL[dtype]
    for i in range(E):
        rows = torch.arange(i, 10, E)
        member = ens.member(i)
        assert type(member) is ens.member_class
        xi, ui = x.detach()[rows].requires_grad_(True), u.detach()[rows].requires_grad_(True)
        yi = member.step(xi, ui)  # the fast single-model path (custom autograd Functions)
        torch.testing.assert_close(y[rows], yi, rtol=tol, atol=tol)
        (yi * w[rows]).sum().backward()
        torch.testing.assert_close(x.grad[rows], xi.grad, rtol=10 * tol, atol=10 * tol)
        torch.testing.assert_close(u.grad[rows], ui.grad, rtol=10 * tol, atol=10 * tol)
        for name, p in member.named_parameters():
            torch.testing.assert_close(grads[f"model.{name}"][i], p.grad, rtol=10 * tol, atol=10 * tol, msg=name)


def test_warped_stable_members_match_in_float64():
    torch.manual_seed(1)
    ens = Ensemble(lambda: StableDynamics(2, hidden=(8,), lyap_hidden=(8,), warp="coupling", dt=0.05), 2, propagation="tsinf",
                   sample=False, var_hidden=(8,)).double()
    x = 3 * torch.randn(6, 2, dtype=torch.float64)
    y = ens.step(x)
    for i in range(2):
        torch.testing.assert_close(y[i::2], ens.member(i).step(x[i::2]), rtol=1e-12, atol=1e-12)


def test_world_model_protocol_devices_and_dtypes():
    ens = _ensemble("stable", 3)
    assert isinstance(ens, WorldModel)
    check_world_model(ens, batch=7)
    assert ens.size == 3 and ens.state_dim == 2 and ens.action_dim == 1 and ens.dt == 0.05
    assert ens.device == torch.device("cpu") and ens.dtype == torch.float32
    ens64 = ens.double()
    assert ens64.dtype == torch.float64 and ens64.member(0).dtype == torch.float64
    traj = ens64.rollout(torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 6, 1, dtype=torch.float64))
    assert traj.shape == (4, 7, 2)


@pytest.mark.parametrize("batch", [9, 2])  # batch % E != 0 (padded), and batch < E
def test_tsinf_keeps_each_row_on_member_i_mod_E(batch):
    E = 3
    ens = _ensemble("simple", E, propagation="tsinf", sample=False)
    x0 = torch.randn(batch, 2)
    actions = torch.randn(batch, 5, 1)
    traj = ens.rollout(x0, actions)
    for i in range(min(E, batch)):
        rows = torch.arange(i, batch, E)
        torch.testing.assert_close(traj[rows], ens.member(i).rollout(x0[rows], actions[rows]), rtol=1e-5, atol=1e-6)


def test_ts1_mixes_members_and_is_seeded():
    E = 3
    ens = _ensemble("simple", E, propagation="ts1", sample=False)
    x, u = torch.randn(30, 2), torch.randn(30, 1)
    with torch.no_grad():
        means = ens.predict(x, u)[0]  # (E, 30, 2)
        ens.reset_generator(7)
        a = ens.step(x, u)
        b = ens.step(x, u)
        ens.reset_generator(7)
        a2 = ens.step(x, u)
    torch.testing.assert_close(a, a2)  # same seed, same assignment
    # every row is some member's mean, each member takes a third of the rows, and the
    # assignment changes between steps
    which_a = ((means - a).abs().amax(-1) < 1e-6).float().argmax(0)
    which_b = ((means - b).abs().amax(-1) < 1e-6).float().argmax(0)
    assert ((means - a).abs().amax(-1) < 1e-6).any(0).all()
    assert torch.bincount(which_a, minlength=E).tolist() == [10, 10, 10]
    assert (which_a != which_b).any()
    # differentiable through the permutation (gradient planners)
    xg = x.clone().requires_grad_(True)
    ens.step(xg, u).sum().backward()
    assert torch.isfinite(xg.grad).all() and (xg.grad != 0).all()


def test_expectation_is_the_mean_of_member_means():
    ens = _ensemble("stable", 3, propagation="expectation")
    x, u = torch.randn(8, 2), torch.randn(8, 1)
    with torch.no_grad():
        y = ens.step(x, u)
        ref = torch.stack([ens.member(i).step(x, u) for i in range(3)]).mean(0)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ens.step(x, u), y)  # no sampling


def test_sampling_adds_the_predicted_noise():
    ens = _ensemble("simple", 2, propagation="tsinf")
    x, u = torch.zeros(4000, 2), torch.zeros(4000, 1)
    with torch.no_grad():
        mean, logvar = ens.predict(x, u)
        y = ens.step(x, u)
    rows = torch.arange(4000)
    resid = (y - mean[rows % 2, rows]) / logvar[rows % 2, rows].mul(0.5).exp()
    assert 0.9 < float(resid.std()) < 1.1 and abs(float(resid.mean())) < 0.1
    ens.sample = False
    with torch.no_grad():
        torch.testing.assert_close(ens.step(x, u), mean[rows % 2, rows])
    det = _ensemble("simple", 2, propagation="tsinf", probabilistic=False)
    assert det.max_logvar is None and det.predict(x[:3], u[:3])[1] is None


def test_variance_head_stays_within_its_soft_bounds():
    ens = _ensemble("simple", 3)
    raw = torch.linspace(-1e3, 1e3, 2001).reshape(-1, 1).expand(-1, 2).unsqueeze(0).expand(3, -1, -1)
    lv = ens._bounded_logvar(raw)
    assert (lv >= ens.min_logvar).all()  # equal only where softplus underflows
    assert (lv <= ens.max_logvar + 1e-4).all()  # + exp(-(max - min)): the second softplus
    # and in the middle it passes the raw value nearly unchanged
    mid = ens._bounded_logvar(torch.tensor([[[-4.0, -4.0]]]))
    assert abs(float(mid[0, 0, 0].detach()) + 4.0) < 0.02
    # predicted log-variances, in state units, respect the same bounds shifted by the scale
    x, u, y = _damped_linear(200)
    fit_ensemble(ens, x, u, y, epochs=2, progress=False)
    with torch.no_grad():
        _, logvar = ens.predict(10 * torch.randn(500, 2), 10 * torch.randn(500, 1))
    normalised = logvar - 2 * ens.target_scale.log()
    assert (normalised >= ens.min_logvar - 1e-5).all() and (normalised <= ens.max_logvar + 1e-4).all()


def test_fit_reduces_nll_and_bootstrapped_members_differ():
    x, u, y = _damped_linear(400)
    ens = _ensemble("simple", 3)
    ens.calibrate(x, u, y)  # what fit_ensemble does first: NLL before and after in the same units
    before = _nll(ens, x, u, y)
    history = fit_ensemble(ens, x, u, y, epochs=15, batch_size=64, lr=1e-2, progress=False, seed=1)
    after = _nll(ens, x, u, y)
    assert after < before - 1.5
    assert history["val_loss"][history["best_epoch"]] == history["best_val_loss"] == min(history["val_loss"])
    assert set(history) >= {"train_loss", "val_loss", "best_epoch", "stopped_early", "epochs_run"}
    assert history["best_val_loss"] < 1e-3
    # the DynamicsNet scales were calibrated once, the same for every member
    scales = ens.stacked.model.fhat.output_scale
    assert bool(ens.calibrated) and torch.equal(scales[0], scales[1]) and not torch.equal(scales[0], torch.ones(2))
    # bootstrapped members differ
    with torch.no_grad():
        means = ens.predict(x[:50], u[:50])[0]
    assert (means[0] - means[1]).abs().max() > 1e-4
    assert (means[1] - means[2]).abs().max() > 1e-4


def test_early_stopping_restores_the_best_weights():
    x, u, y = _damped_linear(120)
    ens = _ensemble("simple", 2)
    h = fit_ensemble(ens, x, u, y, epochs=40, lr=0.05, patience=2, progress=False)
    assert h["stopped_early"] and h["epochs_run"] < 40
    n_val = h["n_val"]
    assert n_val == 12


def test_stable_members_keep_their_certificates_after_training():
    x, u, y = _damped_linear(300)
    ens = _ensemble("stable", 2)
    fit_ensemble(ens, x, u, y, epochs=3, batch_size=64, progress=False)
    cert = ens.certificate()
    assert isinstance(cert, EnsembleCertificate) and cert.certified and cert.evidence == "per_member"
    assert [c.weights_hash for c in cert.members] == [ens.member(i).certificate().weights_hash for i in range(2)]
    assert cert.members[0].weights_hash != cert.members[1].weights_hash
    assert all(c.claim == "input_to_state_stability" and "by_construction" in c.evidence for c in cert.members)
    assert "noise" in cert.covers and "not covered" in cert.covers.lower()
    text = str(cert)  # readable: one line per member with its own claim, rate and evidence, and the weights
    assert text.startswith("Ensemble certificate: 2 members of StableControlledDynamics, each with its own certificate")
    for i, member in enumerate(cert.members):
        assert f"member {i}:  input to state stability" in text and f"alpha {member.alpha:.4g}" in text
    assert "Gaussian noise" in text and cert.weights_hash[:12] in text
    report = cert.check(ens, n_samples=2000, per_shell=100, large_norm_samples=500, grad_steps=5, grad_starts=32, rollouts=32,
                        rollout_steps=10, time_limit=30)
    assert report.passed, report.summary()
    assert cert.applies_to(ens)
    assert EnsembleCertificate.from_json(cert.to_json()) == cert
    fit_ensemble(ens, x, u, y, epochs=1, progress=False)
    assert not cert.applies_to(ens)


def test_simple_members_carry_no_certificate():
    ens = _ensemble("simple", 2)
    cert = ens.certificate()
    assert cert.evidence == "none" and cert.members == [] and not cert.certified
    assert "no stability certificate" in cert.covers
    assert str(cert).startswith("Ensemble certificate: 2 members of SimpleDynamics, claims nothing\n  why:")
    assert all(ens.member(i).certificate().claim == "none" for i in range(2))
    result = cert.check(ens)  # claims nothing: passes, saying there is nothing to check
    assert result.passed and "nothing to check" in result.summary() and "no stability certificate" in result.summary()


def test_save_load_and_pickle_round_trips(tmp_path):
    x, u, y = _damped_linear(100)
    ens = _ensemble("stable", 3, propagation="tsinf", sample=False)
    fit_ensemble(ens, x, u, y, epochs=1, progress=False)
    ref = ens.step(x[:7], u[:7])
    path = tmp_path / "ens.pt"
    ens.save(path, metadata={"note": "test"})
    for loaded in (Ensemble.load(path), load_model(path), pickle.loads(pickle.dumps(ens))):
        assert isinstance(loaded, Ensemble) and loaded.size == 3 and loaded.member_class is StableControlledDynamics
        assert loaded.propagation == "tsinf" and bool(loaded.calibrated)
        torch.testing.assert_close(loaded.step(x[:7], u[:7]), ref, rtol=0, atol=0)
    # sampling resumes from the stored seed in a copy
    ens.sample = True
    ens.reset_generator(3)
    copy_ = pickle.loads(pickle.dumps(ens))
    copy_.reset_generator(3)
    torch.testing.assert_close(ens.step(x[:7], u[:7]), copy_.step(x[:7], u[:7]))


def test_member_extraction_leaves_the_global_rng_alone():
    ens = _ensemble("stable", 2)
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    ens.member(1)
    ens.certificate()
    torch.testing.assert_close(torch.rand(3), a)


def test_members_from_a_list_and_propagation_settable():
    torch.manual_seed(0)
    models = [SimpleDynamics(2, 1, hidden=(8,)) for _ in range(2)]
    ens = Ensemble(models, var_hidden=(8,))
    assert ens.size == 2
    x, u = torch.randn(4, 2), torch.randn(4, 1)
    torch.testing.assert_close(ens.member(1).step(x, u), models[1].step(x, u))
    for p in PROPAGATIONS:
        ens.propagation = p
        assert ens.step(x, u).shape == (4, 2)


def test_bad_inputs_raise_clear_errors():
    factory = KINDS["simple"]()
    with pytest.raises(ValueError, match="size"):
        Ensemble(factory, 0)
    with pytest.raises(ValueError, match="propagation"):
        Ensemble(factory, 2, propagation="ts2")
    with pytest.raises(TypeError, match="one class"):
        Ensemble([SimpleDynamics(2, 1), StableControlledDynamics(2, 1)])
    with pytest.raises(ValueError, match="configuration"):
        Ensemble([SimpleDynamics(2, 1), SimpleDynamics(2, 1, hidden=(8,))])
    with pytest.raises(ValueError, match="fixed-step"):
        Ensemble(lambda: SimpleDynamics(2, 1, integrator="dopri5"), 2)
    with pytest.raises(TypeError, match="factory"):
        Ensemble(3)
    ens = _ensemble("simple", 2)
    with pytest.raises(ValueError, match="propagation"):
        ens.propagation = "TS1"
    with pytest.raises(ValueError, match=r"x must have shape \(batch, state_dim=2\)"):
        ens.step(torch.zeros(3, 3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="u must have shape"):
        ens.step(torch.zeros(3, 2), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="NaN"):
        ens.step(torch.full((3, 2), float("nan")), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="float64"):
        ens.step(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="actions must have shape"):
        ens.rollout(torch.zeros(3, 2), torch.zeros(3, 4, 2))
    with pytest.raises(IndexError, match="member index"):
        ens.member(2)
    x, u, y = _damped_linear(20)
    with pytest.raises(ValueError, match="x_next must have shape"):
        fit_ensemble(ens, x, u, y[:5], progress=False)
    with pytest.raises(ValueError, match="pass u"):
        fit_ensemble(ens, x, None, y, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit_ensemble(ens, x, u, y, epochs=0, progress=False)


def test_beta_nll_gives_the_mean_the_squared_errors_gradient():
    """beta-NLL with beta = 1: the members' mean networks get exactly the gradient of
    0.5 * mean(r^2) (the variance head is only weighted out of the mean's gradient); with
    beta = 0 the gradient is the plain NLL's, which differs by the variance."""
    ens = _ensemble("simple", E=3, dtype=torch.float64)
    det = _ensemble("simple", E=3, dtype=torch.float64, probabilistic=False)
    fhat = {name for name, _ in det.stacked.named_parameters()}
    with torch.no_grad():  # the same mean networks in both
        for name, p in det.stacked.named_parameters():
            p.copy_(dict(ens.stacked.named_parameters())[name])
        ens.target_scale.fill_(0.7)
        det.target_scale.fill_(0.7)
    x, u, y = _damped_linear(N=30)
    xs, us, ys = (t.to(torch.float64).expand(3, -1, -1) for t in (x, u, y))

    def mean_grads(model, **kw):
        model.zero_grad(set_to_none=True)
        model._loss(xs, us, ys, **kw)[0].backward()
        return {n: p.grad.clone() for n, p in model.stacked.named_parameters() if n in fhat}

    squared = mean_grads(det)
    beta_one = mean_grads(ens, nll_beta=1.0)
    plain = mean_grads(ens, nll_beta=0.0)
    assert fhat and all(n in beta_one for n in fhat)
    for name in fhat:
        torch.testing.assert_close(beta_one[name], 0.5 * squared[name], rtol=1e-10, atol=1e-12)
    assert any(not torch.allclose(plain[n], 0.5 * squared[n], rtol=1e-3) for n in fhat)


def test_fit_ensemble_rejects_a_beta_outside_0_1():
    ens = _ensemble("simple", E=2)
    x, u, y = _damped_linear(N=20)
    with pytest.raises(ValueError, match="nll_beta"):
        fit_ensemble(ens, x, u, y, epochs=1, nll_beta=1.5, progress=False)
