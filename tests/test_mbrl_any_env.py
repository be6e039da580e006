"""The model-based loops on any env with an adapter: PETS and MBPO run on each built-in adapter
and on a user's own env, honour terminations, commit their run folder as one unit, and a
resumed PETS run gives the same rows as an uninterrupted one."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import lyagym.envs  # noqa: F401
from lyagym.agents.adapters import make_adapter
from lyagym.agents.mbrl import config_for, run_mbpo, run_pets, world_model_for
from lyagym.agents.run_log import RunFolder, committed_file, read_csv

from test_adapters import PointMass, point_mass_done, point_mass_reward

SMALL = {"simple": {"hidden": (16, 16)}, "stable": {"hidden": (16, 16), "lyap_hidden": (8, 8), "sigma_hidden": (4,)}}


def tiny(adapter, **kw):
    base = dict(episodes=1, random_episodes=1, episode_steps=25, random_episode_steps=25, num_samples=16, horizon=4,
                iterations=1, warmup_iterations=1, fit_epochs=2, fit_steps=0, ensemble_size=2, particles=2, model_rollouts=2,
                model_train_every=10, sac_updates_per_step=1, sac_batch_size=16)
    return config_for(adapter, **{**base, **kw})


def model_for(adapter, kind):
    member = "stable" if "stable" in kind else "simple"
    extra = {"ensemble_size": 2} if kind.startswith("ensemble") else {}
    return world_model_for(adapter, kind, **SMALL[member], **extra)


ENVS = ["Pendulum-v1", "MountainCarContinuous-v0", "InvertedPendulum-v5", "InvertedDoublePendulum-v5"]


@pytest.mark.parametrize("env_id", ENVS)
def test_pets_with_an_ensemble_runs_on_every_built_in_adapter(env_id):
    if "Inverted" in env_id:
        pytest.importorskip("mujoco")
    env = gym.make(env_id)
    adapter = make_adapter(env)
    kind = "ensemble-stable" if adapter.open_loop_stable else "ensemble"
    rows = run_pets(env, model_for(adapter, kind), None, tiny(adapter), progress=False)
    assert [r["policy"] for r in rows] == ["random", "mpc"]
    assert all(np.isfinite(r["return"]) for r in rows) and np.isfinite(rows[-1]["model_val_loss"])
    assert rows[-1]["real_steps"] == sum(r["steps"] for r in rows)
    for r in rows:  # an episode shorter than its budget ended in a real termination
        assert r["steps"] == 25 or r["terminated"] == 1


def test_pets_and_mbpo_run_on_a_users_env_and_stop_at_its_termination(tmp_path):
    env = gym.wrappers.TimeLimit(PointMass(), 60)
    adapter = make_adapter(env, reward_fn=point_mass_reward, termination_fn=point_mass_done)
    config = tiny(adapter, episode_steps=60, random_episode_steps=60, episodes=2)
    rows = run_pets(env, model_for(adapter, "ensemble"), None, config, adapter=adapter, out_dir=str(tmp_path / "pets"),
                    progress=False)
    assert len(rows) == 3 and all(r["steps"] == 60 or r["terminated"] for r in rows)
    mbpo = run_mbpo(env, model_for(adapter, "simple"), config, adapter=adapter, out_dir=str(tmp_path / "mbpo"), progress=False)
    assert [r["policy"] for r in mbpo] == ["random", "sac", "sac"]
    assert all("eval_return" in r for r in mbpo[1:])
    assert os.path.exists(committed_file(str(tmp_path / "mbpo"), "sac.zip"))


def test_mbpo_fills_sac_with_mixed_real_and_model_batches():
    from lyagym.agents.mbpo import MixedReplay, TensorReplay, rollout_length

    real, model = TensorReplay(100, 3, 1), TensorReplay(100, 3, 1)
    real.add(torch.zeros(10, 3), torch.zeros(10, 1), torch.zeros(10, 3), torch.zeros(10), torch.zeros(10))
    mixed = MixedReplay(real, model, real_ratio=0.25)
    assert mixed.sample(8).observations.shape == (8, 3)  # all real while the model store is empty
    model.add(torch.ones(50, 3), torch.ones(50, 1), torch.ones(50, 3), torch.ones(50), torch.zeros(50))
    batch = mixed.sample(8)
    assert int((batch.observations[:, 0] == 0).sum()) == 2  # 25 % real, the rest model data
    assert batch.rewards.shape == (8, 1) and batch.dones.shape == (8, 1)
    assert [rollout_length(e, (2, 6, 1, 5)) for e in (0, 2, 4, 6, 9)] == [1, 1, 3, 5, 5]
    with pytest.raises(ValueError, match="rollout_schedule"):
        rollout_length(0, (0, 1, 3, 2))


@pytest.mark.parametrize("kind", ["simple", "ensemble"])
def test_mbpo_ends_a_branched_rollout_whose_model_overflows_and_keeps_the_others(kind):
    """A model that overflows from one buffer state (it raises when called directly) ends
    that branched rollout at its first step, with a finite transition marked done; a rollout
    from a state where the model stays finite runs its whole length."""
    from lyagym.agents.data import TransitionBuffer
    from lyagym.agents.mbpo import TensorReplay, _Agent, _branch_rollouts

    from lyagym.learned_models import Ensemble, SimpleDynamics, member_factory

    adapter = make_adapter(gym.make("Pendulum-v1"))
    torch.manual_seed(0)
    model = (SimpleDynamics(2, 1, hidden=(8,), dt=0.05, integrator="euler") if kind == "simple" else
             Ensemble(member_factory("simple", 2, 1, hidden=(8,), dt=0.05, integrator="euler"), 2, propagation="tsinf", sample=False))
    with torch.no_grad():  # plain MLPs, weights of 1e20, no biases: f(x, u) = 0 at x = (0, 0), u = 0; overflow elsewhere
        for name, p in model.named_parameters():
            if "logvar" not in name:
                p.copy_(torch.zeros_like(p) if name.endswith("bias") else p.sign() * 1e20)
    with pytest.raises(ValueError, match="overflowed float32 from finite inputs"):
        model.step(torch.tensor([[0.5, 0.5]]), torch.ones(1, 1))
    buffer = TransitionBuffer(2, 1)
    buffer.add_trajectory(np.array([[0.0, 0.0], [0.5, 0.5], [0.0, 0.0]]), np.zeros((2, 1)))  # transitions from (0, 0) and (0.5, 0.5)
    agent = _Agent(adapter, tiny(adapter), "cpu", 0)
    agent.sample_scaled = lambda feats: torch.zeros(feats.shape[0], 1)  # u = 0: the state (0, 0) stays put
    store = TensorReplay(10, adapter.feature_dim, 1)
    generator = np.random.default_rng(0)
    while True:  # draw until the two rollouts start from the two states
        state = generator.bit_generator.state
        if sorted(generator.integers(0, 2, size=2).tolist()) == [0, 1]:
            generator.bit_generator.state = state
            break
    added = _branch_rollouts(model, agent, adapter, buffer, store, count=2, length=3, generator=generator)
    assert added == 4  # the diverging rollout's one transition, the other's three
    assert torch.isfinite(store.next_obs[:added]).all() and torch.isfinite(store.rewards[:added]).all()
    assert store.dones[:added].sum() == 1
    with pytest.raises(ValueError, match="overflowed float32 from finite inputs"):  # raising again outside
        model.step(torch.tensor([[0.5, 0.5]]), torch.ones(1, 1))


def test_a_resumed_pets_run_equals_an_uninterrupted_one(tmp_path):
    env = gym.make("Pendulum-v1")
    adapter = make_adapter(env)
    full = tiny(adapter, episodes=2)
    straight = run_pets(env, model_for(adapter, "ensemble"), None, full, out_dir=str(tmp_path / "a"), progress=False)
    run_pets(env, model_for(adapter, "ensemble"), None, tiny(adapter, episodes=1), out_dir=str(tmp_path / "b"), progress=False)
    fresh = model_for(adapter, "ensemble")  # the resume restores the committed, already fitted weights into it
    resumed = run_pets(env, fresh, None, full, out_dir=str(tmp_path / "b"), resume=True, progress=False)
    # bit-identical: every field of every row (but the wall clock) and the final weights
    def fields(rows):  # NaN (no model fitted yet) compares as equal to NaN
        return [{k: ("nan" if v != v else v) for k, v in r.items() if k != "wall_s"} for r in rows]

    assert fields(resumed) == fields(straight)
    assert len(read_csv(str(tmp_path / "b" / "episodes.csv"))) == 3
    weights = [torch.load(committed_file(str(tmp_path / run), "model_weights.pt"), weights_only=True) for run in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_run_folder_commits_as_one_unit_and_refuses_foreign_resumes(tmp_path):
    env = gym.make("Pendulum-v1")
    adapter = make_adapter(env)
    out = str(tmp_path / "run")
    run_pets(env, model_for(adapter, "simple"), None, tiny(adapter), out_dir=out, progress=False)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["algo"] == "pets" and manifest["episodes"] == 2
    states = [n for n in os.listdir(out) if n.startswith("state-")]
    assert states == [manifest["state"]]  # older states are gone once the new one is committed
    # a state folder left by a kill before its manifest was written is never read
    os.makedirs(os.path.join(out, "state-999999"))
    assert RunFolder(out, algo="pets", settings={}).manifest()["state"] == manifest["state"]
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_pets(env, model_for(adapter, "simple"), None, tiny(adapter), out_dir=out, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        run_pets(env, model_for(adapter, "simple"), None, tiny(adapter, horizon=5), out_dir=out, resume=True, progress=False)
    with pytest.raises(ValueError, match="cannot be resumed"):
        run_mbpo(env, model_for(adapter, "simple"), tiny(adapter), out_dir=out, resume=True, progress=False)
    with pytest.raises(ValueError, match="episodes"):
        run_pets(env, model_for(adapter, "simple"), None, tiny(adapter, episodes=-1), progress=False)


@pytest.mark.parametrize("kind", ["simple", "ensemble"])
def test_an_mbpo_run_killed_mid_episode_and_resumed_equals_an_uninterrupted_one(tmp_path, kind):
    """Killed during its third episode (after the second was committed) and resumed, an MBPO
    run takes the same steps as one never interrupted: the same rows, evaluations, SAC and
    model weights; ``progress.csv`` keeps one row per episode (a row logged after the
    committed state is dropped)."""
    from stable_baselines3 import SAC

    env = gym.make("Pendulum-v1", max_episode_steps=15)
    adapter = make_adapter(env)
    config = tiny(adapter, episodes=3, episode_steps=15, random_episode_steps=15, model_train_every=10, model_rollouts=3,
                  rollout_schedule=(0, 2, 1, 2), eval_every=7)

    class Killed(Exception):
        pass

    def kill_in_the_third_episode(evaluation):
        if evaluation["real_steps"] > 45:
            raise Killed

    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    model = model_for(adapter, kind)
    rows = run_mbpo(env, model, config, adapter=adapter, out_dir=whole, progress=False)
    assert kind == "simple" or model.propagation == "tsinf"  # its rollouts drew TS-1; the user's setting is given back
    with pytest.raises(Killed):
        run_mbpo(env, model_for(adapter, kind), config, adapter=adapter, out_dir=cut, progress=False, on_eval=kill_in_the_third_episode)
    assert json.load(open(os.path.join(cut, "manifest.json")))["episodes"] == 3
    with open(os.path.join(cut, "progress.csv"), "a") as f:  # as if killed between SAC's log row and the commit
        f.write(",".join(["999"] * len(open(os.path.join(cut, "progress.csv")).readline().split(","))) + "\n")
    resumed = run_mbpo(env, model_for(adapter, kind), config, adapter=adapter, out_dir=cut, resume=True, progress=False)

    def without_wall_time(rows):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    assert [r["real_steps"] for r in rows] == [15, 30, 45, 60]
    assert without_wall_time(read_csv(committed_file(cut, "episodes.csv"))) == without_wall_time(read_csv(committed_file(whole, "episodes.csv")))
    assert without_wall_time(resumed[3:]) == without_wall_time(rows[3:])
    assert read_csv(committed_file(cut, "evaluations.csv")) == read_csv(committed_file(whole, "evaluations.csv"))
    for name in ("model_weights.pt",):
        a, b = (torch.load(committed_file(folder, name), weights_only=True) for folder in (whole, cut))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (SAC.load(committed_file(folder, "sac.zip")) for folder in (whole, cut))
    assert all(torch.equal(x, y) for x, y in zip(a.policy.state_dict().values(), b.policy.state_dict().values()))
    assert torch.equal(a.log_ent_coef, b.log_ent_coef)
    progress = read_csv(os.path.join(cut, "progress.csv"))
    assert [r["time/real_steps"] for r in progress] == [15, 30, 45, 60] == [r["time/real_steps"] for r in read_csv(os.path.join(whole, "progress.csv"))]
    assert all(r["train/critic_loss"] != "" for r in progress[1:])  # SAC's statistics, after it has trained


def test_expectation_plans_each_candidate_once_as_its_particles_would_be_copies():
    """TS-infinity plans with the config's particles; expectation with one, and its cost of
    every candidate is what the particles' mean would have been (they draw nothing)."""
    from lyagym.agents.pets import make_mpc_planner

    env = gym.make("Pendulum-v1")
    adapter = make_adapter(env)
    model = model_for(adapter, "ensemble")
    spread = make_mpc_planner(model, adapter, adapter.planning_cost(), tiny(adapter, particles=4, propagation="tsinf"), 0)
    assert spread.num_particles == 4
    once = make_mpc_planner(model, adapter, adapter.planning_cost(), tiny(adapter, particles=4, propagation="expectation"), 0)
    assert once.num_particles == 1 and model.propagation == "expectation"
    x0 = torch.tensor([[0.3, -1.0], [2.5, 0.5]], dtype=model.dtype)
    actions = 2 * torch.rand(2, 6, 4, 1, generator=torch.Generator().manual_seed(0), dtype=model.dtype) - 1
    torch.testing.assert_close(spread.sequence_cost(x0, actions), once.sequence_cost(x0, actions))  # spread's model now averages too
    model.propagation = "tsinf"
    assert not torch.allclose(spread.sequence_cost(x0, actions), once.sequence_cost(x0, actions))


def test_loops_refuse_a_model_of_another_env():
    env = gym.make("Pendulum-v1")
    other = make_adapter(gym.make("MountainCarContinuous-v0"))
    with pytest.raises(ValueError, match="dt"):
        run_pets(env, model_for(other, "simple"), None, tiny(make_adapter(env)), progress=False)


def test_cli_mbrl_on_pendulum_v1_and_its_bad_input(tmp_path, capsys):
    from lyagym.agents.cli import main

    out = str(tmp_path / "cli")
    args = ["mbrl", "--env", "Pendulum-v1", "--algo", "pets", "--model", "ensemble-stable", "--episodes", "1",
            "--episode-steps", "20", "--samples", "8", "--horizon", "3", "--iterations", "1", "--warmup-iterations", "1",
            "--fit-epochs", "1", "--fit-steps", "0", "--ensemble-size", "2", "--particles", "2", "--rollout-fit-steps", "2",
            "--no-progress", "--out", out]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "pets: 2 episodes, 40 real steps" in printed
    # the run's model as a checkpoint that stands alone: load_model reads it, lyagym plan plans with it
    from lyagym.learned_models import load_model

    saved = committed_file(out, "model.pt")
    assert f"world model: {saved}" in printed
    weights = torch.load(committed_file(out, "model_weights.pt"), weights_only=True)
    loaded = load_model(saved)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights.items())
    assert main(["plan", "--env", "Pendulum-v1", "--model", saved, "--steps", "3", "--samples", "8", "--horizon", "3",
                 "--iterations", "1", "--no-progress"]) == 0
    assert "return" in capsys.readouterr().out
    # it records the env it learned: our 1-link pendulum has the same shapes and step but other physics
    assert loaded.checkpoint_metadata["env"] == "Pendulum-v1"
    assert main(["plan", "--links", "1", "--model", saved, "--steps", "3"]) == 2
    assert "learned --env Pendulum-v1, not lyagym/NLinkPendulum-v0" in capsys.readouterr().err
    assert main(["mbrl", "--model", "stable", "--rollout-fit-steps", "5", "--out", str(tmp_path / "v")]) == 2
    assert "--rollout-fit-steps fine-tunes an ensemble" in capsys.readouterr().err
    assert main(["mbrl", "--env", "Pendulum-v1", "--links", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--links" in capsys.readouterr().err
    assert main(["mbrl", "--episodes", "-1", "--out", str(tmp_path / "y")]) == 2
    assert main(["mbrl", "--algo", "sac", "--steps", "-5", "--out", str(tmp_path / "z")]) == 2
    assert main(["mbrl", "--algo", "mbpo", "--resume", "--out", out]) == 2
    assert main(["mbrl", "--env", "CartPole-v1", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "cannot be resumed" in err and "no built-in adapter" in err


def test_cli_mbrl_takes_mbpos_settings_and_refuses_them_elsewhere(tmp_path, capsys):
    """``lyagym mbrl --algo mbpo`` runs with the MBPO flags and its run folder records them (SAC
    saved with the entropy target, evaluations at the interval); with another --algo or a bad
    schedule each is one line and exit 2 before any folder is made."""
    from stable_baselines3 import SAC

    from lyagym.agents.cli import main

    out = str(tmp_path / "mbpo")
    args = ["mbrl", "--env", "Pendulum-v1", "--algo", "mbpo", "--model", "simple", "--episodes", "1", "--episode-steps", "20",
            "--fit-epochs", "1", "--fit-steps", "0", "--model-train-every", "10", "--model-rollouts", "3", "--rollout-schedule", "0", "2", "1", "2",
            "--real-ratio", "0.5", "--sac-updates", "2", "--sac-batch-size", "8", "--sac-target-entropy", "-0.3", "--eval-every", "7",
            "--no-progress", "--out", out]
    assert main(args) == 0
    assert "mbpo: 2 episodes, 40 real steps" in capsys.readouterr().out
    with open(os.path.join(out, "manifest.json")) as f:
        settings = json.load(f)["settings"]
    assert {k: settings[k] for k in ("model_train_every", "model_rollouts", "real_ratio", "sac_updates_per_step", "sac_batch_size",
                                     "sac_target_entropy", "eval_every")} == \
        {"model_train_every": 10, "model_rollouts": 3, "real_ratio": 0.5, "sac_updates_per_step": 2, "sac_batch_size": 8,
         "sac_target_entropy": -0.3, "eval_every": 7}
    assert list(settings["rollout_schedule"]) == [0, 2, 1, 2]
    assert SAC.load(committed_file(out, "sac.zip")).target_entropy == pytest.approx(-0.3)
    assert [int(r["real_steps"]) for r in read_csv(committed_file(out, "evaluations.csv"))] == [21, 28, 35, 40]
    assert main([*args, "--episodes", "2", "--resume"]) == 0  # one more episode (the last --episodes counts)
    assert "mbpo: 3 episodes, 60 real steps" in capsys.readouterr().out
    for extra, flag in ((["--algo", "pets", "--model-rollouts", "3"], "--model-rollouts"),
                        (["--algo", "sac", "--sac-target-entropy", "-1"], "--sac-target-entropy"),
                        (["--algo", "mbpo", "--rollout-schedule", "1", "15", "3", "2"], "rollout_schedule"),
                        (["--algo", "mbpo", "--real-ratio", "1.5"], "--real-ratio")):
        bad = str(tmp_path / "bad")
        assert main(["mbrl", "--env", "Pendulum-v1", *extra, "--out", bad]) == 2
        err = capsys.readouterr().err
        assert flag in err and len(err.strip().splitlines()) == 1 and not os.path.exists(bad)


def test_a_budget_of_real_steps_ends_both_loops(tmp_path):
    env = gym.make("Pendulum-v1")
    adapter = make_adapter(env)
    config = tiny(adapter, episodes=10, max_real_steps=60)  # 25-step episodes: 25, 50, then 75 >= 60 stops
    for loop, kind in ((run_pets, "ensemble"), (run_mbpo, "simple")):
        rows = loop(env, model_for(adapter, kind), config, adapter=adapter, progress=False) if loop is run_mbpo else \
            loop(env, model_for(adapter, kind), None, config, adapter=adapter, progress=False)
        assert [r["real_steps"] for r in rows] == [25, 50, 75]
    with pytest.raises(ValueError, match="max_real_steps"):
        run_pets(env, model_for(adapter, "simple"), None, tiny(adapter, max_real_steps=0), progress=False)
    # a resume may raise the budget, as it may add episodes
    out = str(tmp_path / "run")
    run_pets(env, model_for(adapter, "simple"), None, tiny(adapter, episodes=10, max_real_steps=30), out_dir=out, progress=False)
    more = run_pets(env, model_for(adapter, "simple"), None, tiny(adapter, episodes=10, max_real_steps=60), out_dir=out,
                    resume=True, progress=False)
    assert [r["real_steps"] for r in more] == [25, 50, 75]


def test_mbpo_refits_on_a_clock_of_real_steps_and_evaluates_within_episodes(tmp_path, monkeypatch):
    """The model is refitted every ``model_train_every`` real steps counted across episodes
    (sooner while D_env doubles), not after every episode; the greedy policy is scored every
    ``eval_every`` real steps within episodes and after each one; SAC gets the entropy target."""
    import lyagym.agents.mbpo as mbpo
    from stable_baselines3 import SAC

    sizes = []
    fit = mbpo.fit_model
    monkeypatch.setattr(mbpo, "fit_model", lambda model, data, *a: sizes.append(len(data)) or fit(model, data, *a))
    env = gym.make("Pendulum-v1", max_episode_steps=12)  # short evaluation episodes too
    adapter = make_adapter(env)
    config = tiny(adapter, episodes=5, episode_steps=12, random_episode_steps=12, model_train_every=20, eval_every=5,
                  sac_target_entropy=-0.05)
    evaluations = []
    rows = run_mbpo(env, model_for(adapter, "simple"), config, adapter=adapter, out_dir=str(tmp_path / "run"), progress=False,
                    on_eval=evaluations.append)
    assert [r["real_steps"] for r in rows] == [12, 24, 36, 48, 60, 72]
    assert sizes == [12, 24, 44, 64]  # after the random episode, then D_env doubled (12 steps), then every 20
    ends = [r["real_steps"] for r in rows]
    expected = [t for start, end in zip(ends, ends[1:]) for t in [*range(start + 1, end), end] if t % 5 == 0 or t == end]
    assert [e["real_steps"] for e in evaluations] == expected
    assert [e["return"] for e in evaluations if e["real_steps"] in ends] == [r["eval_return"] for r in rows[1:]]
    assert len(read_csv(committed_file(str(tmp_path / "run"), "evaluations.csv"))) == len(expected)
    assert SAC.load(committed_file(str(tmp_path / "run"), "sac.zip")).target_entropy == pytest.approx(-0.05)
    for bad in ({"eval_every": 0}, {"sac_target_entropy": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            run_mbpo(env, model_for(adapter, "simple"), tiny(adapter, **bad), progress=False)


def test_a_run_folder_has_one_writer_process_at_a_time(tmp_path):
    """A second process cannot prepare a folder another process is writing (its commits would
    interleave with the first one's); within one process the lock is re-entrant and counted,
    and it is free again once the holder releases every hold or exits."""
    import subprocess
    import sys
    import textwrap

    from lyagym.agents.run_log import RunFolder, RunFolderBusy

    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from lyagym.agents.run_log import RunFolder
        RunFolder({folder!r}, algo="pets", settings={{}}).prepare(resume=False)
        print("held", flush=True)
        sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            RunFolder(folder, algo="pets", settings={}).prepare(resume=False)
    finally:
        holder.communicate("\n", timeout=60)  # the holder exits: the system drops its lock
    run = RunFolder(folder, algo="pets", settings={})
    assert run.prepare(resume=False) is None
    inner = RunFolder(folder, algo="pets", settings={})
    assert inner.prepare(resume=True) is None  # re-entrant in this process
    inner.release()  # one of the two holds: still this process's
    busy = subprocess.run([sys.executable, "-c", f"from lyagym.agents.run_log import RunFolder; RunFolder({folder!r}, algo='pets', "
                           "settings={}).prepare(resume=True)"], capture_output=True, text=True, timeout=60)
    assert busy.returncode != 0 and f"pid {os.getpid()}" in busy.stderr
    run.release()
    other = subprocess.run([sys.executable, "-c", f"from lyagym.agents.run_log import RunFolder; RunFolder({folder!r}, algo='pets', "
                            "settings={}).prepare(resume=True); print('ok')"], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "ok", other.stderr


def test_fit_model_fine_tunes_an_ensemble_on_windows_of_the_planners_horizon(monkeypatch):
    """With ``rollout_fit_steps`` an ensemble's fit ends with the multi-step fine-tune on the
    buffer's windows of ``horizon`` steps, angles wrapped as the adapter says; a single model
    and ``rollout_fit_steps = 0`` skip it."""
    from lyagym.agents import world_models
    from lyagym.agents.data import collect_random_transitions
    from lyagym.learned_models import ensemble as ensemble_module

    env = gym.make("Pendulum-v1")
    adapter = make_adapter(env)
    buffer = collect_random_transitions(env, 2, 30, seed=0, adapter=adapter)
    calls = []
    tune = ensemble_module.fit_ensemble_rollouts

    def spy(model, x0, u, targets, **kw):
        calls.append((x0.shape, u.shape, targets.shape, kw["wrap_angles"], kw["steps"]))
        return tune(model, x0, u, targets, **kw)

    monkeypatch.setattr(ensemble_module, "fit_ensemble_rollouts", spy)
    monkeypatch.setattr("lyagym.learned_models.fit_ensemble_rollouts", spy)
    ens = model_for(adapter, "ensemble")
    world_models.fit_model(ens, buffer, tiny(adapter, horizon=6, rollout_fit_steps=3), progress=False)
    # 2 episodes of 30 transitions: 25 windows of 6 in each
    assert calls == [((50, 2), (50, 6, 1), (50, 6, 2), adapter.angle_dims, 3)]
    world_models.fit_model(model_for(adapter, "ensemble"), buffer, tiny(adapter, horizon=6), progress=False)
    world_models.fit_model(model_for(adapter, "simple"), buffer, tiny(adapter, horizon=6, rollout_fit_steps=3), progress=False)
    assert len(calls) == 1


@pytest.mark.parametrize("field, value", [("episodes", -1), ("horizon", 0), ("rollout_fit_steps", -1), ("rollout_fit_steps", 2.5),
                                          ("rollout_fit_lr", 0.0), ("rollout_fit_lr", float("nan")), ("propagation", "ts2")])
def test_the_loops_refuse_a_config_they_cannot_run_before_any_work(field, value, tmp_path):
    env = gym.make("Pendulum-v1")
    adapter = make_adapter(env)
    with pytest.raises(ValueError, match=f"config.{field}"):
        run_pets(env, model_for(adapter, "ensemble"), None, tiny(adapter, **{field: value}), adapter=adapter,
                 out_dir=str(tmp_path / "run"), progress=False)
    assert not os.path.exists(tmp_path / "run" / "episodes.csv")


def test_cli_pets_with_a_control_lyapunov_function_says_what_it_certifies(tmp_path, capsys):
    """After a clf run the CLI names the saved model and says whether its control Lyapunov
    function certifies a region (rho > 0, read back from the run's log) or nothing yet."""
    from lyagym.agents.cli import main

    out = tmp_path / "clf"
    args = ["mbrl", "--env", "Pendulum-v1", "--algo", "pets", "--model", "clf", "--episodes", "1", "--episode-steps", "12",
            "--samples", "8", "--horizon", "3", "--iterations", "1", "--warmup-iterations", "1", "--fit-epochs", "1",
            "--fit-steps", "0", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rho = float(read_csv(str(out / "episodes.csv"))[-1]["clf_rho"])
    line = next(s for s in printed.splitlines() if s.startswith("model and its control Lyapunov function:"))
    assert "model.pt" in line
    if rho > 0:
        assert "prove its certificate with `lyagym verify`" in line
    else:
        assert "certifies no region yet (rho = 0" in line


def test_cli_baseline_says_where_its_last_finished_episode_ended(tmp_path, capsys, monkeypatch):
    """A model-free budget may end inside an episode: the summary says so instead of reporting the
    last finished episode's step count as the run's."""
    import tempfile

    from lyagym.agents.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # SB3 writes nothing of its own there
    assert main(["mbrl", "--env", "Pendulum-v1", "--algo", "ppo", "--steps", "250", "--no-progress", "--out", str(tmp_path / "p")]) == 0
    assert "ppo: 1 finished episode, the last ending at real step 200 of 250" in capsys.readouterr().out


def test_cli_sac_run_resumes_and_extends(tmp_path, capsys, monkeypatch):
    """``lyagym mbrl --algo sac --resume`` goes on from the last finished episode's commit, here
    with a larger budget (no evaluations in this run: nothing of them to restore)."""
    import tempfile

    from lyagym.agents.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = str(tmp_path / "sac")
    args = ["mbrl", "--env", "Pendulum-v1", "--algo", "sac", "--no-progress", "--out", out]
    assert main([*args, "--steps", "205"]) == 0
    capsys.readouterr()
    assert main([*args, "--steps", "405"]) == 2  # not without --resume: the saved run is kept
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--steps", "405", "--resume"]) == 0
    assert "sac: 2 finished episodes, the last ending at real step 400 of 405" in capsys.readouterr().out
