"""The multi-env MBRL study: cells are stored and reused, and running them in worker
processes (or on Ray) stores the same results as running them one after the other."""

import csv
import os

import pytest

from lyagym.agents.cli import main

ARGS = ["reproduce", "mbrl-envs", "--quick", "--envs", "Pendulum-v1", "--methods", "pets-simple", "mbpo-simple", "sac",
        "--seeds", "0", "1"]


def _rows(path):
    with open(path, newline="") as f:
        rows = [{k: v for k, v in r.items()} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: (r["method"], r["seed"], float(r["real_steps"])))


def test_worker_processes_store_the_same_cells_as_a_serial_run(tmp_path, capsys):
    serial, parallel = str(tmp_path / "serial"), str(tmp_path / "parallel")
    assert main(ARGS + ["--out", serial]) == 0
    assert main(ARGS + ["--workers", "2", "--out", parallel]) == 0
    a, b = _rows(os.path.join(serial, "evaluations.csv")), _rows(os.path.join(parallel, "evaluations.csv"))
    assert {r["method"] for r in a} == {"pets-simple", "mbpo-simple", "sac"}
    assert a == b
    cells = [d for d, _, files in os.walk(serial) if "cell.json" in files]
    assert len(cells) == 6
    # a later invocation reuses every stored cell (no run folder is touched again)
    stamps = {c: os.path.getmtime(os.path.join(c, "cell.json")) for c in cells}
    assert main(ARGS + ["--stored-only", "--out", serial]) == 0
    assert {c: os.path.getmtime(os.path.join(c, "cell.json")) for c in cells} == stamps
    assert "## Pendulum-v1" in capsys.readouterr().out


def _killed_and_resumed(tmp_path, monkeypatch, method: str, module, name: str, killed_after: int):
    """Run a quick cell whole, then again killed when its episode ``killed_after`` ends (by its
    loop ``module.name``), then again: ``(whole, resumed, resume flags the loop saw)``."""
    import argparse

    from lyagym.agents.reproduce import mbrl_envs

    parser = argparse.ArgumentParser()
    mbrl_envs.add_arguments(parser)
    settings = mbrl_envs.cell_settings("Pendulum-v1", method, parser.parse_args(["--quick"]))
    whole = mbrl_envs.run_cell(settings, 0, str(tmp_path / "whole"))

    class Killed(Exception):
        pass

    def stop(row):
        if row["episode"] == killed_after:
            raise Killed

    started = []
    loop = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: started.append(kw["resume"]) or loop(*a, on_episode=stop, **kw))
    with pytest.raises(Killed):
        mbrl_envs.run_cell(settings, 0, str(tmp_path / "cut"))
    monkeypatch.setattr(module, name, lambda *a, **kw: started.append(kw["resume"]) or loop(*a, **kw))
    return whole, mbrl_envs.run_cell(settings, 0, str(tmp_path / "cut")), started


def _without_times(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_a_killed_mbpo_cell_goes_on_from_its_last_committed_episode(tmp_path, monkeypatch):
    """A cell whose worker died after its first episode was committed resumes there when the
    study runs it again, and stores what an uninterrupted cell stores."""
    import lyagym.agents.mbrl as mbrl

    whole, resumed, started = _killed_and_resumed(tmp_path, monkeypatch, "mbpo-simple", mbrl, "run_mbpo", killed_after=0)
    assert started == [False, True]
    assert len(whole["episodes"]) == 2 and whole["evaluations"] and resumed["evaluations"] == whole["evaluations"]
    assert _without_times(resumed["episodes"]) == _without_times(whole["episodes"])


def test_a_killed_sac_cell_goes_on_from_its_last_committed_episode(tmp_path, monkeypatch):
    """The reference's cells resume too: killed in its second episode, a quick SAC cell goes on
    from the first and stores what an uninterrupted cell stores."""
    import lyagym.agents.sb3_baselines as baselines

    whole, resumed, started = _killed_and_resumed(tmp_path, monkeypatch, "sac", baselines, "train_baseline", killed_after=1)
    assert started == [False, True]
    assert len(whole["episodes"]) == 5 and [r["real_steps"] for r in whole["evaluations"]] == [0, 100, 200, 300]
    assert resumed["evaluations"] == whole["evaluations"] and _without_times(resumed["episodes"]) == _without_times(whole["episodes"])


def test_study_refuses_bad_arguments(tmp_path, capsys):
    assert main(["reproduce", "mbrl-envs", "--methods", "pets-bogus", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "mbrl-envs", "--workers", "0", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "mbrl-envs", "--envs", "CartPole-v1", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_ray_backend_stores_the_same_cells(tmp_path):
    pytest.importorskip("ray")
    args = ["reproduce", "mbrl-envs", "--quick", "--envs", "Pendulum-v1", "--methods", "pets-simple", "--seeds", "0"]
    assert main(args + ["--out", str(tmp_path / "serial")]) == 0
    assert main(args + ["--backend", "ray", "--out", str(tmp_path / "ray")]) == 0
    assert _rows(str(tmp_path / "serial" / "evaluations.csv")) == _rows(str(tmp_path / "ray" / "evaluations.csv"))


def test_certified_cells_store_their_certificate_check(tmp_path, capsys):
    import json

    out = str(tmp_path / "study")
    args = ["reproduce", "mbrl-envs", "--quick", "--envs", "Pendulum-v1", "--methods", "pets-stable", "pets-ensemble-stable",
            "--seeds", "0", "--out", out]
    assert main(args) == 0
    cells = {}
    for d, _, files in os.walk(out):
        if "cell.json" in files:
            with open(os.path.join(d, "cell.json")) as f:
                cell = json.load(f)
            cells[cell["settings"]["method"]] = cell["certificate"]
    # the quick ensemble has 2 members (not --ensemble-size's 5): the check rebuilds the model the run used
    for method, members in (("pets-stable", 1), ("pets-ensemble-stable", 2)):
        check = cells[method]
        assert check["passed"] and check["models"] == check["models_passed"] == members
        assert check["checked"] > 0 and check["violations"] == 0 and check["worst_violation"] <= check["tolerance"]
    printed = capsys.readouterr().out
    assert "pets-stable: certificate check after training passed on 1 of 1 seeds" in printed
    assert "pets-ensemble-stable: certificate check after training passed on 1 of 1 seeds" in printed


def test_a_cells_key_follows_the_ensemble_fit_it_ran_with():
    """The ensembles' fit (beta-NLL, Adam step) is part of an ensemble cell's key (a different
    fit is a different result) and of no single-model cell's; at the fit before these options
    (beta 0, the loops' lr) a cell keys as the cells stored then (no entries, the loops'
    defaults without the fields), and runs that fit."""
    import argparse
    import dataclasses
    import hashlib
    import json

    from lyagym.agents.mbrl_config import MBRLConfig
    from lyagym.agents.reproduce import mbrl_envs

    parser = argparse.ArgumentParser()
    mbrl_envs.add_arguments(parser)

    def key(method, *extra):
        return mbrl_envs.cell_settings("Pendulum-v1", method, parser.parse_args(list(extra)))

    defaults = MBRLConfig()
    assert defaults.ensemble_nll_beta != 0.0 and defaults.ensemble_lr != defaults.lr
    assert key("pets-ensemble")["nll_beta"] == defaults.ensemble_nll_beta
    assert key("pets-ensemble")["ensemble_lr"] == defaults.ensemble_lr
    assert key("pets-ensemble") == key("pets-ensemble", "--nll-beta", str(defaults.ensemble_nll_beta))
    assert key("mbpo-ensemble") != key("mbpo-ensemble", "--nll-beta", "0.25")
    assert key("mbpo-ensemble") != key("mbpo-ensemble", "--ensemble-lr", "0.01")
    assert key("pets-simple") == key("pets-simple", "--nll-beta", "0", "--ensemble-lr", "0.01")
    before = dataclasses.asdict(defaults)
    for name in ("ensemble_nll_beta", "ensemble_lr", *mbrl_envs.ROLLOUT_FIT_FIELDS, *mbrl_envs.MBPO_ONLY_FIELDS):
        before.pop(name)
    plain = key("pets-ensemble", "--nll-beta", "0", "--ensemble-lr", str(defaults.lr))
    assert "nll_beta" not in plain and "ensemble_lr" not in plain
    assert plain["config_defaults"] == hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:8]
    config = mbrl_envs._cell_config_and_model({**plain, "quick": True}, _adapter(), 0, "cpu")[0]
    assert (config.ensemble_nll_beta, config.ensemble_lr) == (0.0, defaults.lr)
    config = mbrl_envs._cell_config_and_model({**key("pets-ensemble"), "quick": True}, _adapter(), 0, "cpu")[0]
    assert (config.ensemble_nll_beta, config.ensemble_lr) == (defaults.ensemble_nll_beta, defaults.ensemble_lr)
    assert main(["reproduce", "mbrl-envs", "--nll-beta", "2", "--stored-only"]) == 2
    # the multi-step fine-tune: in an ensemble cell's key only where it runs, and then run
    assert "rollout_fit_steps" not in key("pets-ensemble") and config.rollout_fit_steps == 0
    tuned = key("pets-ensemble", "--rollout-fit-steps", "300")
    assert (tuned["rollout_fit_steps"], tuned["rollout_fit_lr"]) == (300, defaults.rollout_fit_lr)
    assert {k: v for k, v in tuned.items() if not k.startswith("rollout_fit")} == key("pets-ensemble")
    assert key("pets-simple", "--rollout-fit-steps", "300") == key("pets-simple")
    config = mbrl_envs._cell_config_and_model(tuned, _adapter(), 0, "cpu")[0]
    assert (config.rollout_fit_steps, config.rollout_fit_lr) == (300, defaults.rollout_fit_lr)
    assert mbrl_envs._cell_config_and_model({**tuned, "quick": True}, _adapter(), 0, "cpu")[0].rollout_fit_steps == 2
    # PETS's planner: the default keys as before, another one is in the key and runs
    assert key("pets-ensemble", "--planner", defaults.planner) == key("pets-ensemble")
    icem = key("pets-ensemble", "--planner", "icem")
    assert icem["planner"] == "icem" and mbrl_envs._cell_config_and_model(icem, _adapter(), 0, "cpu")[0].planner == "icem"
    assert "planner" not in key("mbpo-ensemble", "--planner", "icem")
    assert key("pets-ensemble", "--propagation", defaults.propagation) == key("pets-ensemble")
    mean = key("pets-ensemble", "--propagation", "expectation")
    assert mbrl_envs._cell_config_and_model(mean, _adapter(), 0, "cpu")[0].propagation == "expectation"
    assert "propagation" not in key("pets-simple", "--propagation", "expectation")
    assert main(["reproduce", "mbrl-envs", "--planner", "gradient", "--stored-only"]) == 2
    # MBPO's SAC updates per real step: the env's own number keys as before, another is in the key and runs
    assert key("mbpo-ensemble", "--sac-updates", str(defaults.sac_updates_per_step)) == key("mbpo-ensemble")
    busier = key("mbpo-ensemble", "--sac-updates", "40")
    assert busier["env_config"]["sac_updates_per_step"] == 40 and busier != key("mbpo-ensemble")
    assert mbrl_envs._cell_config_and_model(busier, _adapter(), 0, "cpu")[0].sac_updates_per_step == 40
    assert key("pets-ensemble", "--sac-updates", "40") == key("pets-ensemble")
    # the random first episode's length: the env's own keys as before, another is in the key and runs
    assert key("pets-ensemble", "--random-steps", str(defaults.episode_steps)) == key("pets-ensemble")
    short = key("mbpo-ensemble", "--random-steps", "50")
    assert short["random_episode_steps"] == 50
    assert mbrl_envs._cell_config_and_model(short, _adapter(), 0, "cpu")[0].random_episode_steps == 50
    assert main(["reproduce", "mbrl-envs", "--ensemble-lr", "0", "--stored-only"]) == 2


def _adapter():
    import gymnasium as gym

    from lyagym.agents.adapters import make_adapter

    return make_adapter(gym.make("Pendulum-v1"))


def test_a_cells_key_and_fit_follow_the_envs_own_fit_length():
    """The double pendulum's adapter asks for longer fits than ``MBRLConfig``'s: its cells key
    and run that length, ``--fit-steps`` overrides it, and a cell at the loops' default length
    keys as the cells stored before the option (no entry) and runs that length, not the env's."""
    import argparse

    import gymnasium as gym

    from lyagym.agents.adapters import make_adapter, make_pendulum_env
    from lyagym.agents.adapters.n_link_pendulum import DOUBLE_PENDULUM_FIT_STEPS
    from lyagym.agents.mbrl_config import MBRLConfig
    from lyagym.agents.reproduce import mbrl_envs

    parser = argparse.ArgumentParser()
    mbrl_envs.add_arguments(parser)

    def key(env_id, *extra):
        return mbrl_envs.cell_settings(env_id, "pets-ensemble", parser.parse_args(["--links", "2", *extra]))

    assert DOUBLE_PENDULUM_FIT_STEPS != MBRLConfig.fit_steps
    double = make_adapter(make_pendulum_env(2))
    assert key("lyagym/NLinkPendulum-v0")["fit_steps"] == DOUBLE_PENDULUM_FIT_STEPS
    assert key("lyagym/NLinkPendulum-v0") == key("lyagym/NLinkPendulum-v0", "--fit-steps", str(DOUBLE_PENDULUM_FIT_STEPS))
    before = key("lyagym/NLinkPendulum-v0", "--fit-steps", str(MBRLConfig.fit_steps))
    assert "fit_steps" not in before
    assert "fit_steps" not in key("Pendulum-v1") and key("Pendulum-v1", "--fit-steps", "500")["fit_steps"] == 500
    assert mbrl_envs._cell_config_and_model(before, double, 0, "cpu")[0].fit_steps == MBRLConfig.fit_steps
    assert mbrl_envs._cell_config_and_model(key("lyagym/NLinkPendulum-v0"), double, 0, "cpu")[0].fit_steps == DOUBLE_PENDULUM_FIT_STEPS
    assert mbrl_envs._cell_config_and_model(key("Pendulum-v1"), make_adapter(gym.make("Pendulum-v1")), 0, "cpu")[0].fit_steps \
        == MBRLConfig.fit_steps
    assert main(["reproduce", "mbrl-envs", "--fit-steps", "-1", "--stored-only"]) == 2


def test_the_double_pendulums_pets_cells_key_and_run_its_own_propagation():
    """The double pendulum's adapter asks PETS for expectation propagation: its ensemble cells
    key and run it (the key of ``--propagation expectation``), ``--propagation tsinf`` keys as
    the cells stored before (no entry) and runs TS-infinity, not the env's; other envs, single
    models and MBPO (TS-1 rollouts whatever the env says) are keyed as before."""
    import argparse

    import gymnasium as gym

    from lyagym.agents.adapters import make_adapter, make_pendulum_env
    from lyagym.agents.adapters.n_link_pendulum import DOUBLE_PENDULUM_PROPAGATION
    from lyagym.agents.mbrl_config import MBRLConfig, config_for
    from lyagym.agents.reproduce import mbrl_envs

    parser = argparse.ArgumentParser()
    mbrl_envs.add_arguments(parser)

    def key(env_id, method, *extra, links=2):
        return mbrl_envs.cell_settings(env_id, method, parser.parse_args(["--links", str(links), *extra]))

    pendulum = "lyagym/NLinkPendulum-v0"
    double = make_adapter(make_pendulum_env(2))
    assert DOUBLE_PENDULUM_PROPAGATION != MBRLConfig.propagation
    assert config_for(double).propagation == DOUBLE_PENDULUM_PROPAGATION  # the CLI's loops read it too
    assert config_for(make_adapter(make_pendulum_env(1))).propagation == MBRLConfig.propagation
    for method in ("pets-ensemble", "pets-ensemble-stable"):
        own = key(pendulum, method)
        assert (own["propagation"], own["particles"]) == (DOUBLE_PENDULUM_PROPAGATION, 1)  # the mean map draws nothing
        assert own == key(pendulum, method, "--propagation", DOUBLE_PENDULUM_PROPAGATION) == key(pendulum, method, "--particles", "5")
        ts_inf = key(pendulum, method, "--propagation", MBRLConfig.propagation)
        assert "propagation" not in ts_inf and "particles" not in ts_inf
        assert {k: v for k, v in own.items() if k not in ("propagation", "particles")} == ts_inf
        assert mbrl_envs._cell_config_and_model({**own, "quick": True}, double, 0, "cpu")[0].propagation == DOUBLE_PENDULUM_PROPAGATION
        config, model = mbrl_envs._cell_config_and_model({**ts_inf, "quick": True}, double, 0, "cpu")
        assert config.propagation == model.propagation == MBRLConfig.propagation
    assert "propagation" not in key(pendulum, "pets-ensemble", links=1)
    assert "propagation" not in key(pendulum, "pets-simple")
    mbpo = key(pendulum, "mbpo-ensemble")
    assert "propagation" not in mbpo and "propagation" not in mbpo["env_config"]
    assert mbpo["env_config"]["fit_steps"] == double.config_overrides["fit_steps"]
    assert "propagation" not in key("Pendulum-v1", "pets-ensemble")
    assert config_for(make_adapter(gym.make("Pendulum-v1"))).propagation == MBRLConfig.propagation


def test_a_cell_that_another_process_is_running_is_skipped_not_run_twice(tmp_path, capsys):
    """A study that finds a cell's run folder held by another process (a killed study's
    worker still running it) skips that cell with a one-line message, even with --rerun,
    and leaves the folder as the other process has it."""
    import argparse
    import subprocess
    import sys
    import textwrap

    from lyagym.agents.reproduce import mbrl_envs

    parser = argparse.ArgumentParser()
    mbrl_envs.add_arguments(parser)
    settings = mbrl_envs.cell_settings("Pendulum-v1", "pets-simple", parser.parse_args(["--quick"]))
    run_dir = os.path.join(mbrl_envs.cell_dir(str(tmp_path), settings, 0), "run")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "episodes.csv"), "w") as f:
        f.write("the other process's rows\n")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from lyagym.agents.run_log import RunFolder
        RunFolder({run_dir!r}, algo="pets", settings={{}}).lock()
        print("held", flush=True)
        sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert mbrl_envs.load_or_run(str(tmp_path), settings, 0, rerun=True) is None
        assert f"skipped Pendulum-v1 pets-simple seed 0: {run_dir!r} is being written by another process (pid {holder.pid})" \
            in capsys.readouterr().err
        with open(os.path.join(run_dir, "episodes.csv")) as f:
            assert f.read() == "the other process's rows\n"
    finally:
        holder.communicate("\n", timeout=60)
    result = mbrl_envs.load_or_run(str(tmp_path), settings, 0, rerun=True)  # free now: rerun empties and runs it
    assert result is not None and result["episodes"] and os.path.exists(os.path.join(run_dir, "manifest.json"))


def test_paired_table_ratios_are_sacs_steps_over_the_methods():
    """Each seed's target is SAC's final return from that seed's start; a method's ratio is SAC's
    real steps to it over the method's: never -> 0x, as many (also both none) -> 1x, none where
    SAC needed some -> infinite, else the quotient; the median over seeds."""
    import math

    from lyagym.agents.reproduce.mbrl_envs import summarise_paired

    def runs(method, seed, curve):
        return [{"method": method, "seed": seed, "real_steps": s, "return": r} for s, r in curve]

    evaluations = (runs("sac", 0, [(0, -900), (1000, -300), (2000, -200)])  # target -200, reached at 2000
                   + runs("sac", 1, [(0, -150), (1000, -150)])  # from seed 1's start the target is there at 0
                   + runs("pets", 0, [(0, -900), (200, -195)])  # 2000 / 200
                   + runs("pets", 1, [(0, -150), (200, -100)])  # both at 0
                   + runs("slow", 0, [(0, -900), (4000, -250)])  # never within 5% of -200
                   + runs("slow", 1, [(0, -400), (500, -150)]))  # SAC at 0, this one at 500
    table, numbers = summarise_paired(evaluations, tolerance=0.05)
    methods = numbers["methods"]
    assert methods["pets"]["ratios"] == [10.0, 1.0] and methods["pets"]["median_ratio"] == 5.5
    assert methods["sac"]["ratios"] == [1.0, 1.0]
    assert methods["slow"]["ratios"] == [0.0, 0.0] and methods["slow"]["steps_to_target"][0] == math.inf
    assert "| pets | 2 |" in table and "10.0x, 1.0x | **5.5x** |" in table and "inf" not in table
