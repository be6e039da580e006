"""``lyagym reproduce mbrl-envs``: PETS and MBPO against SAC on any env with an adapter.

Each (env, method, seed) **cell** is one independent run: it is stored in
``OUT/<env>/<method>/seed<s>-<settings hash>/cell.json`` when it finishes and reused by any
later invocation with the same settings (``--rerun`` forces it; ``--stored-only`` only
summarises). A PETS, MBPO or SAC cell interrupted midway resumes from its run folder's committed
state, as an uninterrupted run would have gone on, and so does a SAC cell (``train_baseline``
commits SAC after every episode). Cells run one after the other, in ``--workers N`` local processes,
or on a Ray cluster (``--backend ray``, the ``ray`` extra); the stored results are the same
whichever way they ran (each cell seeds everything it uses and runs on one thread).

Methods: ``pets-<model>`` (``run_pets``; ``<model>`` one of ``simple``, ``stable``,
``ensemble``, ``ensemble-stable``, ``clf``, ``ensemble-clf``), ``mbpo-<model>`` (``run_mbpo``)
and ``sac`` (SB3 SAC on the real env, the reference). Stable models are certified towards the
adapter's rest state; the clf models (for plants that are not open-loop stable) by a control
Lyapunov function fitted after every fit, used as PETS' terminal cost and safeguard
(``run_pets(..., control_lyapunov=True)``); their check is the stabilisability certificate's.

**Evaluation.** For SAC, the greedy policy on a separate env copy every ``--eval-every``
training steps from a fixed start; for MBPO the greedy policy after every real episode and
every ``--eval-every`` real steps within episodes,
from the same start; for PETS each planned episode (with the model fitted on the steps
before it) is its own evaluation, from the same start (``MBRLConfig.mpc_reset_seed``). **Metric**
(``summarise_paired``): seed ``s`` of every method starts its evaluations where SAC's seed ``s``
does, and starts differ in the return they allow, so seed ``s``'s target is SAC seed ``s``'s
final return; a run reaches it at the first ``real_steps`` whose evaluation return is within
``--tolerance x |target|``; the ratio is SAC seed ``s``'s steps to its target over the run's,
and the table gives each seed's ratio and the median. Writes ``evaluations.csv``,
``episodes.csv`` and ``summary.md`` (one table per env, and each certified method's
certificate checks after training).

Example::

    lyagym reproduce mbrl-envs --envs Pendulum-v1 --methods pets-ensemble pets-ensemble-stable sac \\
        --seeds 0 1 2 3 4 --workers 2 --out runs/mbrl-envs
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Any

from ..cli_types import folder, integer, number
from ..mbrl_config import MBRLConfig

__all__ = ["add_arguments", "run", "run_cell", "certificate_check", "summarise_paired", "ENV_DEFAULTS"]

#: per env: SAC's budget and evaluation interval, real episodes of PETS / MBPO (the cap) and,
#: where failing episodes end early, their budget of real steps (``MBRLConfig.max_real_steps``)
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "Pendulum-v1": {"sac_steps": 10_000, "eval_every": 500, "pets_episodes": 3, "mbpo_episodes": 10},
    "MountainCarContinuous-v0": {"sac_steps": 20_000, "eval_every": 1000, "pets_episodes": 4, "mbpo_episodes": 10},
    "InvertedPendulum-v5": {"sac_steps": 30_000, "eval_every": 500, "pets_episodes": 30, "pets_steps": 2000,
                            "mbpo_episodes": 300, "mbpo_steps": 2000},
    "InvertedDoublePendulum-v5": {"sac_steps": 20_000, "eval_every": 1000, "pets_episodes": 30, "pets_steps": 5000,
                                  "mbpo_episodes": 300, "mbpo_steps": 10_000},
    "lyagym/NLinkPendulum-v0": {"sac_steps": 20_000, "eval_every": 200, "pets_episodes": 8, "mbpo_episodes": 10},
}
MODELS = ("simple", "stable", "ensemble", "ensemble-stable", "clf", "ensemble-clf")
#: ``MBRLConfig`` fields that only ``run_mbpo`` reads and that a PETS cell's key leaves out
MBPO_ONLY_FIELDS = ("sac_target_entropy", "eval_every")
#: ``MBRLConfig`` fields of an ensemble's fit: a cell's settings key, and the value of the fit
#: before the field existed (cells at that value leave it out of their key, so the cells stored
#: then keep theirs: ``--nll-beta 0 --ensemble-lr 0.001`` reprints them)
ENSEMBLE_FIT_FIELDS = {"ensemble_nll_beta": ("nll_beta", 0.0), "ensemble_lr": ("ensemble_lr", 1e-3)}
#: ``MBRLConfig`` fields of an ensemble's multi-step fine-tune: in a cell's key only where it runs
ROLLOUT_FIT_FIELDS = ("rollout_fit_steps", "rollout_fit_lr")
#: ``evaluation_episode`` resets with ``EVAL_RESET_SEED + seed``: every method is scored from that start
EVAL_RESET_SEED = 1_000_003


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1"], help=f"env ids, of {sorted(ENV_DEFAULTS)}")
    parser.add_argument("--links", type=integer(1), default=2, help="links of lyagym/NLinkPendulum-v0")
    parser.add_argument("--methods", nargs="+", default=["pets-ensemble", "pets-ensemble-stable", "sac"],
                        help="pets-<model>, mbpo-<model> (model: simple, stable, ensemble, ensemble-stable, clf, ensemble-clf) or sac")
    parser.add_argument("--seeds", nargs="+", type=integer(0), default=[0, 1, 2, 3, 4])
    parser.add_argument("--episodes", type=integer(0), default=None, help="real episodes of PETS/MBPO after the random one (default per env)")
    parser.add_argument("--max-real-steps", type=integer(1), default=None, help="PETS/MBPO budget of real steps (default per env)")
    parser.add_argument("--sac-steps", type=integer(1), default=None, help="SAC's real steps (default per env)")
    parser.add_argument("--eval-every", type=integer(1), default=None, help="SAC and MBPO evaluation interval in real steps (default per env)")
    parser.add_argument("--random-steps", dest="random_episode_steps", type=integer(1), default=None,
                        help="length of PETS's / MBPO's random first episode (default: the env's; MBRLConfig's: a whole episode)")
    parser.add_argument("--planner", choices=["mppi", "cem", "icem"], default=None, help="PETS's planner (default: MBRLConfig's, mppi)")
    parser.add_argument("--propagation", choices=["tsinf", "ts1", "expectation"], default=None,
                        help="PETS's propagation of an ensemble's particles (default: the env's; MBRLConfig's: tsinf)")
    parser.add_argument("--sac-updates", type=integer(1), default=None,
                        help="MBPO's SAC updates per real step (default: the env's; MBRLConfig's: 10)")
    parser.add_argument("--samples", type=integer(1), default=None, help="planner samples per iteration (default: MBRLConfig's)")
    parser.add_argument("--particles", type=integer(1), default=None, help="PETS particles per candidate (default 5)")
    parser.add_argument("--fit-steps", type=integer(0), default=None,
                        help="at least this many Adam steps per world-model fit (default: MBRLConfig's)")
    parser.add_argument("--ensemble-size", type=integer(1), default=5)
    parser.add_argument("--rollout-fit-steps", type=integer(0), default=None,
                        help="Adam steps of the ensembles' multi-step fine-tune after each fit (default: the env's; 0: none)")
    parser.add_argument("--nll-beta", type=number(0, maximum=1), default=None,
                        help="ensembles' beta-NLL (default: MBRLConfig's; 0 is the plain NLL)")
    parser.add_argument("--ensemble-lr", type=number(0, strict=True), default=None,
                        help="ensembles' Adam step (default: MBRLConfig's; --nll-beta 0 --ensemble-lr 0.001 reprints the "
                        "cells stored before these options)")
    parser.add_argument("--tolerance", type=number(0), default=0.05, help="fraction of |SAC's final return| a run may fall short")
    parser.add_argument("--workers", type=integer(1), default=1, help="cells run in this many local processes")
    parser.add_argument("--backend", choices=["local", "ray"], default="local", help="local processes or a Ray cluster")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole pipeline")
    parser.add_argument("--rerun", action="store_true", help="run every cell again")
    parser.add_argument("--stored-only", action="store_true", help="only summarise the stored cells")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=folder, default="runs/mbrl-envs")


def _slug(env_id: str) -> str:
    return env_id.replace("/", "_")


def cell_settings(env_id: str, method: str, args) -> dict[str, Any]:
    """Everything that determines a cell's result (its storage key, with the seed)."""
    defaults = ENV_DEFAULTS.get(env_id, ENV_DEFAULTS["Pendulum-v1"])
    settings: dict[str, Any] = {"env": env_id, "method": method}
    if method != "sac":  # a change of the loops' defaults makes new cells
        loop_defaults = dataclasses.asdict(MBRLConfig())
        for name in (*ENSEMBLE_FIT_FIELDS, *ROLLOUT_FIT_FIELDS):  # an ensemble cell states its own (below)
            loop_defaults.pop(name)
        if method.startswith("pets"):  # settings only MBPO reads cannot change a PETS result
            for name in MBPO_ONLY_FIELDS:
                loop_defaults.pop(name)
        defaults_json = json.dumps(loop_defaults, sort_keys=True)
        settings["config_defaults"] = hashlib.sha1(defaults_json.encode()).hexdigest()[:8]
    if method.startswith("pets"):
        settings["protocol"] = "planned episodes from the evaluation start"
        from lyagym.agents.adapters import ADAPTERS, EnvAdapter

        planning = getattr(ADAPTERS.get(env_id, EnvAdapter), "planning_reward", EnvAdapter.planning_reward)
        if planning != EnvAdapter.planning_reward:  # an adapter's shaped planning reward (a class attribute)
            settings["planning_reward"] = planning
    if env_id == "lyagym/NLinkPendulum-v0":
        settings["links"] = args.links
    if method == "sac":
        settings.update(sac_steps=args.sac_steps or defaults["sac_steps"], eval_every=args.eval_every or defaults["eval_every"])
    else:
        algo = method.split("-", 1)[0]
        settings["episodes"] = args.episodes or defaults[f"{algo}_episodes"]
        if algo == "mbpo":  # evaluated at SAC's interval of real steps, within episodes too
            settings["eval_every"] = args.eval_every or defaults["eval_every"]
        budget = args.max_real_steps or defaults.get(f"{algo}_steps")
        if budget is not None:
            settings["max_real_steps"] = budget
        for name in ("samples", "particles"):
            if getattr(args, name) is not None:
                settings[name] = getattr(args, name)
        if algo == "pets" and getattr(args, "planner", None) not in (None, MBRLConfig.planner):  # the default keeps stored keys
            settings["planner"] = args.planner
        from lyagym.agents.adapters import make_adapter

        env_config = make_adapter(_make_env(settings)).config_overrides  # the env's own settings (its adapter's)
        propagation = getattr(args, "propagation", None)
        if propagation is None and algo == "pets":  # MBPO's branched rollouts are TS-1 whatever the env's setting
            propagation = env_config.get("propagation", MBRLConfig.propagation)
        if "ensemble" in method and propagation not in (None, MBRLConfig.propagation):  # the default keeps stored keys
            settings["propagation"] = propagation
            if propagation == "expectation" and algo == "pets":  # its planner rolls each candidate out once (make_mpc_planner)
                settings["particles"] = 1
        random_steps = getattr(args, "random_episode_steps", None)
        own_random_steps = env_config.get("random_episode_steps") or env_config.get("episode_steps", MBRLConfig.episode_steps)
        if random_steps is not None and random_steps != own_random_steps:
            settings["random_episode_steps"] = random_steps  # the env's own length keeps the stored keys
        fit_steps = int(args.fit_steps if getattr(args, "fit_steps", None) is not None else env_config.get("fit_steps", MBRLConfig.fit_steps))
        if fit_steps != MBRLConfig.fit_steps:  # the cells stored before a fit of another length keep their keys
            settings["fit_steps"] = fit_steps
        if "ensemble" in method:  # the fit's settings only where they differ from the fit before them
            settings.update(ensemble_fit_settings(args))
            settings["ensemble_size"] = args.ensemble_size
            settings["member_integrator"] = "euler"  # make_world_model's default for ensembles
            rollout_steps = args.rollout_fit_steps if getattr(args, "rollout_fit_steps", None) is not None else \
                env_config.get("rollout_fit_steps", MBRLConfig.rollout_fit_steps)
            if rollout_steps:  # the cells stored before the fine-tune existed keep their keys
                settings["rollout_fit_steps"] = int(rollout_steps)
                settings["rollout_fit_lr"] = float(env_config.get("rollout_fit_lr", MBRLConfig.rollout_fit_lr))
        if method.endswith("clf"):  # the stabilisability certificate's construction (a change makes new cells)
            settings["clf"] = ("LQR gain on the data box, 100 correction steps, discrete decrease of the mean map (sampled and climbed), "
                               "safeguard, terminal weight 1 capped at the data box's level")
        if "stable" in method:  # the certified decay rate: learned within bounds (the models' default)
            from lyagym.learned_models.stable import ALPHA_BOUNDS, ALPHA_INIT

            settings["rate"] = f"learned in [{ALPHA_BOUNDS[0]:g}, {ALPHA_BOUNDS[1]:g}] from {ALPHA_INIT:g}"
    if args.quick:
        settings["quick"] = True
    if method.startswith("mbpo"):  # the env's own MBPO settings are part of the key
        mbpo_config = {name: value for name, value in env_config.items() if name != "propagation"}  # MBPO samples TS-1
        updates = getattr(args, "sac_updates", None)
        if updates is not None and updates != env_config.get("sac_updates_per_step", MBRLConfig.sac_updates_per_step):
            mbpo_config["sac_updates_per_step"] = updates  # the env's own number keeps the stored keys
        settings["env_config"] = json.loads(json.dumps(mbpo_config, sort_keys=True))
    return settings


def _make_env(settings: dict[str, Any]):
    import gymnasium as gym

    import lyagym.envs  # noqa: F401  (registers lyagym/NLinkPendulum-v0)

    if settings["env"] == "lyagym/NLinkPendulum-v0":
        from lyagym.agents.adapters import make_pendulum_env

        return make_pendulum_env(settings["links"], episode_steps=60 if settings.get("quick") else 200)
    return gym.make(settings["env"], **({"max_episode_steps": 60} if settings.get("quick") else {}))


def ensemble_fit_settings(args) -> dict[str, float]:
    """An ensemble cell's fit settings that differ from the fit before they existed."""
    from lyagym.agents.mbrl_config import MBRLConfig

    defaults = MBRLConfig()
    settings = {}
    for name, (key, before) in ENSEMBLE_FIT_FIELDS.items():  # the flag of each field is named as its settings key
        value = getattr(args, key, None)
        value = getattr(defaults, name) if value is None else value
        value = defaults.lr if value is None else value  # ensemble_lr's None: the loops' lr
        if value != before:
            settings[key] = value
    return settings


def _cell_config_and_model(settings: dict[str, Any], adapter, seed: int, device: str):
    """A PETS / MBPO cell's ``MBRLConfig`` and its freshly built world model (one place, so a
    run and the later certificate check of its committed weights build the same model)."""
    from lyagym.agents.mbrl import config_for, world_model_for

    algo, kind = settings["method"].split("-", 1)
    if kind not in MODELS:
        raise ValueError(f"unknown world model in method {settings['method']!r}; choose one of {MODELS}")
    overrides: dict[str, Any] = {"episodes": settings["episodes"], "seed": seed, "max_real_steps": settings.get("max_real_steps")}
    if algo == "pets":  # planned episodes start where SAC's and MBPO's greedy evaluations do
        overrides["mpc_reset_seed"] = EVAL_RESET_SEED + seed
    if "samples" in settings:
        overrides["num_samples"] = settings["samples"]
    if "particles" in settings:
        overrides["particles"] = settings["particles"]
    if "planner" in settings:
        overrides["planner"] = settings["planner"]
    overrides["propagation"] = settings.get("propagation", MBRLConfig.propagation)  # a key without it: TS-infinity
    if "random_episode_steps" in settings:
        overrides["random_episode_steps"] = settings["random_episode_steps"]
    overrides["fit_steps"] = settings.get("fit_steps", MBRLConfig.fit_steps)  # a key without it: the default fit
    for name, (key, before) in ENSEMBLE_FIT_FIELDS.items():  # only ensembles read them
        overrides[name] = settings.get(key, before)
    if "ensemble_size" in settings:
        overrides["ensemble_size"] = settings["ensemble_size"]
    overrides["rollout_fit_steps"] = settings.get("rollout_fit_steps", 0)
    overrides["rollout_fit_lr"] = settings.get("rollout_fit_lr", MBRLConfig.rollout_fit_lr)
    if algo == "mbpo":
        overrides["eval_every"] = settings.get("eval_every")
        if "sac_updates_per_step" in settings.get("env_config", {}):  # the env's own or --sac-updates
            overrides["sac_updates_per_step"] = settings["env_config"]["sac_updates_per_step"]
    small: dict[str, Any] = {}
    if settings.get("quick"):
        overrides.update(episodes=1, episode_steps=60, random_episode_steps=60, num_samples=16, horizon=5, iterations=1,
                         warmup_iterations=1, fit_epochs=2, fit_steps=0, particles=2, ensemble_size=2, model_rollouts=2, model_train_every=20,
                         sac_updates_per_step=1, sac_batch_size=32, rollout_fit_steps=min(2, overrides["rollout_fit_steps"]))
        small = {"hidden": (16, 16)} if "stable" not in kind else {"hidden": (16, 16), "lyap_hidden": (8, 8), "sigma_hidden": (4,)}
    config = config_for(adapter, **overrides)
    extra = {"ensemble_size": config.ensemble_size, "propagation": config.propagation} if kind.startswith("ensemble") else {}
    return config, world_model_for(adapter, kind, seed=seed, device=device, **small, **extra)


def run_cell(settings: dict[str, Any], seed: int, cell_dir: str, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Run one cell; ``{"evaluations": [...], "episodes": [...]}`` (not stored; see ``load_or_run``)."""
    import torch

    from lyagym.agents.adapters import make_adapter
    from lyagym.agents.mbrl import run_mbpo, run_pets
    from lyagym.agents.sb3_baselines import baseline_cell

    torch.set_num_threads(1)
    env = _make_env(settings)
    adapter = make_adapter(env)
    method, quick = settings["method"], settings.get("quick", False)
    if method == "sac":
        steps = 300 if quick else settings["sac_steps"]
        # a killed cell goes on from its last episode
        evaluations, episodes = baseline_cell("sac", env, steps, os.path.join(cell_dir, "run"), seed=seed, device=device, progress=progress,
                                              eval_every=100 if quick else settings["eval_every"], adapter=adapter, method="sac",
                                              **({"learning_starts": 50} if quick else {}))
        return {"evaluations": evaluations, "episodes": episodes}
    algo, kind = method.split("-", 1)
    config, model = _cell_config_and_model(settings, adapter, seed, device)
    run_dir = os.path.join(cell_dir, "run")
    if algo == "pets":
        resume = os.path.exists(os.path.join(run_dir, "manifest.json"))
        episodes = run_pets(env, model, None, config, adapter=adapter, out_dir=run_dir, method=method, resume=resume,
                            progress=progress, control_lyapunov=kind.endswith("clf"))
        evaluations = [{"method": method, "seed": seed, "real_steps": r["learn_steps"], "return": r["return"],
                        "steps_used": episodes[-1]["real_steps"]} for r in episodes if r["policy"] == "mpc"]
    elif algo == "mbpo":
        from lyagym.agents.mbpo import MBPO_STATE
        from lyagym.agents.run_log import committed_file, read_csv

        # a killed cell goes on from its last committed episode (one committed before MBPO
        # stored its replays starts over)
        resume = os.path.exists(committed_file(run_dir, MBPO_STATE))
        episodes = run_mbpo(env, model, config, adapter=adapter, out_dir=run_dir, method=method, resume=resume, overwrite=not resume,
                            progress=progress, device=device)
        scored = committed_file(run_dir, "evaluations.csv")  # the resumed run's earlier evaluations too
        evaluations = [{"method": method, "seed": seed, "real_steps": r["real_steps"], "return": r["return"],
                        "steps_used": episodes[-1]["real_steps"]} for r in (read_csv(scored) if os.path.exists(scored) else [])]
    else:
        raise ValueError(f"unknown method {method!r}: pets-<model>, mbpo-<model> or sac")
    return {"evaluations": evaluations, "episodes": episodes}


def certificate_check(settings: dict[str, Any], seed: int, folder: str, device: str = "cpu") -> dict[str, Any] | None:
    """A stable-model cell's certificate after training: the final committed model of its run
    folder, rebuilt, its certificate issued and ``check``-ed (``falsify`` with its defaults).
    ``None`` for cells without a certified model or without a committed model."""
    import torch

    from lyagym.agents.adapters import make_adapter
    from lyagym.agents.run_log import RunFolder

    method = settings["method"]
    kind = method.split("-", 1)[-1]
    if method == "sac" or ("stable" not in kind and not (kind.endswith("clf") and method.startswith("pets"))):
        return None
    run = RunFolder(os.path.join(folder, "run"), algo=method.split("-", 1)[0], settings={})
    manifest = run.manifest()
    if manifest is None:
        return None
    torch.set_num_threads(1)
    _, model = _cell_config_and_model(settings, make_adapter(_make_env(settings)), seed, device)
    model.load_state_dict(torch.load(run.file(manifest, "model_weights.pt"), map_location=model.device, weights_only=True))
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if kind.endswith("clf"):  # the control Lyapunov function the last episodes planned with, as committed
        from lyagym.learned_models.control_lyapunov import ControlLyapunov

        adapter = make_adapter(_make_env(settings))
        box = [[-1.0, 1.0]] * adapter.state_dim  # every buffer, the box included, comes from the committed weights
        from lyagym.agents.world_models import CLF_ENSEMBLE_CLAIM

        V = ControlLyapunov(adapter.state_dim, adapter.action_dim, box=box, u_low=adapter.action_low, u_high=adapter.action_high,
                            x_eq=[0.0] * adapter.state_dim, angle_dims=adapter.angle_dims,
                            ensemble=CLF_ENSEMBLE_CLAIM).to(model.device, model.dtype)
        V.load_state_dict(torch.load(run.file(manifest, "clf_weights.pt"), map_location=model.device, weights_only=True))
        cert = V.certificate(model)
        report = cert.check(model, lyapunov=V)
        extra = {"rho": float(V.rho), "box_fraction": V.box_fraction(), "box": cert.details["box"], "alpha": cert.alpha,
                 "time_to_1e-2": cert.time_to(1e-2, math.sqrt(float(V.rho) / cert.c1)) if float(V.rho) > 0 else None}
    else:
        report = model.certificate().check(model)
    reports = getattr(report, "reports", [report])  # an ensemble's check holds one report per member
    return {"passed": bool(report.passed), "models": len(reports), "models_passed": sum(bool(r.passed) for r in reports),
            "checked": int(sum(r.n_checked for r in reports)), "violations": int(sum(r.n_violations for r in reports)),
            "worst_violation": float(max(r.worst_violation for r in reports)),
            "tolerance": float(min(r.tolerance for r in reports)), "seconds": round(time.perf_counter() - t0, 1), **extra}


def cell_dir(out: str, settings: dict[str, Any], seed: int) -> str:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(out, _slug(settings["env"]), settings["method"], f"seed{seed}-{digest}")


def load_or_run(out: str, settings: dict[str, Any], seed: int, rerun: bool = False, stored_only: bool = False,
                device: str = "cpu") -> dict[str, Any] | None:
    """The stored result of a cell, or run it and store it (``cell.json``, atomically)."""
    from lyagym.agents.data import atomic_save

    folder = cell_dir(out, settings, seed)
    path = os.path.join(folder, "cell.json")
    if not rerun and os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored.get("settings") == settings:
            if "certificate" not in stored and not stored_only:  # a cell stored before the check existed
                stored["certificate"] = certificate_check(settings, seed, folder, device)
                atomic_save(path, lambda f: f.write(json.dumps(stored, default=float)), mode="w")
            return stored
    if stored_only:
        return None
    from lyagym.agents.run_log import RunFolder, RunFolderBusy

    run = RunFolder(os.path.join(folder, "run"), algo=settings["method"], settings={})
    try:  # before a rerun empties the folder: a cell that another process is running is left to it
        run.lock()
    except RunFolderBusy as e:
        print(f"lyagym reproduce mbrl-envs: skipped {settings['env']} {settings['method']} seed {seed}: {e}", file=sys.stderr)
        return None
    try:
        if rerun:
            import shutil

            for name in os.listdir(run.path):
                if name != ".lock":
                    target = os.path.join(run.path, name)
                    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        t0 = time.perf_counter()
        result = run_cell(settings, seed, folder, device=device)
        result.update(settings=settings, seed=seed, seconds=round(time.perf_counter() - t0, 1), device=str(device))
        result["certificate"] = certificate_check(settings, seed, folder, device)
        atomic_save(path, lambda f: f.write(json.dumps(result, default=float)), mode="w")
    finally:
        run.release()
    return result


def _cell_entry(job: tuple) -> tuple:
    """A worker's task (top level, so it pickles under ``spawn``): ``(key, result)``."""
    out, settings, seed, rerun, stored_only, device = job
    return (settings["env"], settings["method"], seed), load_or_run(out, settings, seed, rerun, stored_only, device)


def _run_all(jobs: list[tuple], workers: int, backend: str) -> list[tuple]:
    if backend == "ray":
        try:
            import ray
        except ImportError:
            raise SystemExit("lyagym reproduce mbrl-envs: --backend ray needs Ray: pip install \"lyagym[ray]\"") from None
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(_cell_entry)
        return ray.get([remote.remote(job) for job in jobs])
    if workers <= 1:
        return [_cell_entry(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter per worker (no forked torch thread pools), one thread each
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_cell_entry, jobs))


def _ratio(sac_steps: float, steps: float) -> float:
    """SAC's real steps to its target over a method's: 0 when the method never got there, 1 when
    both took as many (also none: a start already at the target), infinite when the method
    needed none and SAC some."""
    if not (math.isfinite(steps) and math.isfinite(sac_steps)):
        return 0.0
    if steps == sac_steps:
        return 1.0
    return math.inf if steps == 0 else sac_steps / steps


def summarise_paired(evaluations: list[dict], tolerance: float = 0.05) -> tuple[str, dict]:
    """Markdown table of the sample-efficiency metric with each seed paired with SAC's run of
    the same seed: every method's seed ``s`` is evaluated from the same start as SAC's seed
    ``s`` (``EVAL_RESET_SEED + s``), and starts differ in how much return they allow
    (``Pendulum-v1``: -123 from one, -233 from another), so seed ``s``'s target is SAC seed
    ``s``'s final return, reached at ``>= target - tolerance |target|``; the ratio is the real
    steps SAC seed ``s`` took to reach it over the method's."""
    import numpy as np

    from lyagym.agents.reproduce.mbrl_swingup import _by_method, steps_to_reach

    by_method = _by_method(evaluations)
    sac = by_method.get("sac", {})
    targets = {seed: runs[-1]["return"] for seed, runs in sac.items()}
    sac_steps = {seed: steps_to_reach(sac[seed], targets[seed], tolerance) for seed in sac}
    lines = [
        (f"Per seed, SAC's final return from that seed's evaluation start ({', '.join(f'{targets[k]:.1f}' for k in sorted(targets))}"
         f" for seeds {', '.join(map(str, sorted(targets)))}), reached at >= target - {tolerance:g} |target|; SAC got there "
         f"after {', '.join('never' if not math.isfinite(sac_steps[k]) else f'{sac_steps[k]:.0f}' for k in sorted(sac_steps))} real steps."
         if sac else "No SAC run: the steps-to-SAC columns are left empty."),
        "",
        "| method | seeds | final eval return (mean +- std) | real steps to SAC's return, per seed | ratio to SAC, per seed | median ratio |",
        "|---|---|---|---|---|---|",
    ]
    numbers: dict[str, Any] = {"targets": targets, "sac_steps": sac_steps, "tolerance": tolerance, "methods": {}}
    for method, runs in by_method.items():
        finals = [r[-1]["return"] for r in runs.values()]
        paired = [seed for seed in sorted(runs) if seed in targets]
        reach = [steps_to_reach(runs[seed], targets[seed], tolerance) for seed in paired]
        ratios = [_ratio(sac_steps[seed], k) for seed, k in zip(paired, reach)]
        median = float(np.median(ratios)) if ratios else math.nan
        numbers["methods"][method] = {"final_return": float(np.mean(finals)), "seeds": sorted(runs), "steps_to_target": reach,
                                      "ratios": ratios, "median_ratio": median}
        lines.append(f"| {method} | {len(runs)} | {np.mean(finals):.1f} +- {np.std(finals):.1f} | "
                     f"{', '.join('never' if not math.isfinite(k) else f'{k:.0f}' for k in reach)} | "
                     f"{', '.join(f'{x:.1f}x' for x in ratios)} | {f'**{median:.1f}x**' if ratios else ''} |")
    return "\n".join(lines), numbers


def certificate_lines(results: dict[tuple, dict], env: str) -> str:
    """Markdown lines: per certified method, how many seeds' final models pass their certificate check."""
    lines = []
    for method in dict.fromkeys(key[1] for key in results if key[0] == env):
        checks = {key[2]: res.get("certificate") for key, res in results.items() if key[:2] == (env, method)}
        done = {seed: c for seed, c in checks.items() if c}
        if not done:
            continue
        passed = [seed for seed, c in sorted(done.items()) if c["passed"]]
        worst = max(c["worst_violation"] for c in done.values())
        region = ""
        if all("rho" in c for c in done.values()):  # a stabilisability certificate: its region
            region = "; certified region {V <= rho}: rho " + ", ".join(f"{c['rho']:.3g}" for c in done.values()) + \
                ", share of the data's box " + ", ".join(f"{100 * c['box_fraction']:.2g}%" for c in done.values())
        lines.append(f"- {method}: certificate check after training passed on {len(passed)} of {len(done)} seeds "
                     f"({sum(c['models_passed'] for c in done.values())} of {sum(c['models'] for c in done.values())} "
                     f"models, {sum(c['checked'] for c in done.values()):,} checks, {sum(c['violations'] for c in done.values())} "
                     f"violations, worst normalised violation {worst:.2g}){region}")
    return ("\n".join(lines) + "\n") if lines else ""


def run(args: argparse.Namespace) -> int:
    from lyagym.agents.run_log import write_csv
    from lyagym.agents.data import atomic_save

    if args.workers < 1:
        print(f"lyagym reproduce mbrl-envs: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    unknown = [e for e in args.envs if e not in ENV_DEFAULTS]
    if unknown:
        print(f"lyagym reproduce mbrl-envs: no defaults for {unknown}; choose from {sorted(ENV_DEFAULTS)}", file=sys.stderr)
        return 2
    for method in args.methods:
        if method != "sac" and (method.split("-", 1)[0] not in ("pets", "mbpo") or method.split("-", 1)[-1] not in MODELS):
            print(f"lyagym reproduce mbrl-envs: unknown method {method!r}: pets-<model>, mbpo-<model> or sac "
                  f"(model: {', '.join(MODELS)})", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    jobs = [(args.out, cell_settings(env, method, args), seed, args.rerun, args.stored_only, args.device)
            for env in args.envs for method in args.methods for seed in args.seeds]
    results = {key: result for key, result in _run_all(jobs, args.workers, args.backend) if result is not None}
    if not results:
        print("no cells to summarise")
        return 1
    evaluations = [dict(r, env=key[0]) for key, res in results.items() for r in res["evaluations"]]
    episodes = [dict(r, env=key[0]) for key, res in results.items() for r in res["episodes"]]
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "evaluations.csv"), evaluations)
    write_csv(os.path.join(args.out, "episodes.csv"), episodes)
    sections = [f"# lyagym reproduce mbrl-envs\n\n{len(results)} cells, {time.perf_counter() - t0:.0f} s.\n"]
    for env in args.envs:
        rows = [r for r in evaluations if r["env"] == env]
        if rows:
            table, _ = summarise_paired(rows, tolerance=args.tolerance)
            sections.append(f"## {env}\n\n{table}\n\n{certificate_lines(results, env)}")
    text = "\n".join(sections)
    atomic_save(os.path.join(args.out, "summary.md"), lambda f: f.write(text), mode="w")
    print(text)
    print(f"wrote {args.out}/evaluations.csv, episodes.csv, summary.md")
    return 0
