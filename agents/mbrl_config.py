"""``MBRLConfig``: the hyper-parameters of the model-based loops (PETS and MBPO)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["MBRLConfig", "config_from_args", "config_for"]


@dataclass
class MBRLConfig:
    """Hyper-parameters of both loops (defaults: the n = 1 pendulum swing-up at ``dt = 0.05``;
    ``config_for(adapter)`` applies an env's own settings)."""

    episodes: int = 5  #: real episodes after the random ones
    #: a budget of real env steps: no episode starts once the run has taken this many
    #: (``episodes`` stays the cap on episodes). For envs whose failing episodes end early
    #: (``InvertedPendulum-v5`` falls within 5-50 steps) an episode count says little about
    #: the data; ``None``: no budget
    max_real_steps: int | None = None
    random_episodes: int = 1  #: episodes of uniform random actions to start the data
    episode_steps: int = 200  #: real env steps per episode (termination may end one sooner)
    random_episode_steps: int | None = None  #: length of the random episodes (default ``episode_steps``)
    seed: int = 0
    # world-model fitting
    fit_epochs: int = 60
    #: at least this many Adam steps per fit: with little data an epoch is one or two batches,
    #: so epochs (and ``patience``) are scaled up until ``fit_epochs`` epochs make ``fit_steps`` steps.
    #: 60 epochs of 200 transitions are 60 steps: on ``Pendulum-v1`` (seed 1) the first planned
    #: episode then scored -729, with 2000 steps -230 (SAC's final return from that start: -233);
    #: the pendulum studies use 2000 too
    fit_steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    #: an ensemble's loss: beta of the beta-NLL (``fit_ensemble``; 0 is PETS's plain Gaussian NLL).
    #: The plain NLL teaches the mean slowly wherever the variance head calls the data noisy: on
    #: the double pendulum's 1,800 real transitions of a PETS run, 2000 Adam steps left its
    #: members' one-step validation error at 0.053, 10x a single model's fitted on the squared
    #: error (0.0055); with beta 0.5, 0.011, and PETS swung up (seed 0) where with the plain NLL
    #: it did not within 1,800 real steps
    ensemble_nll_beta: float = 0.5
    #: Adam's step for an ensemble's fits (``None``: ``lr``). The double pendulum's seed 3 (faster
    #: swings, velocities up to 16 rad/s) left the ensemble at a one-step validation error of
    #: 0.01-0.06 after each 2000-step fit at 1e-3 and PETS never swung up within 1,800 real steps;
    #: at 3e-3 it swung up after 1,200 learned from and held (-217, -206, -204)
    ensemble_lr: float | None = 3e-3
    #: Adam steps of an ensemble's multi-step fine-tune after each one-step fit
    #: (``fit_ensemble_rollouts``: every member rolls its mean over windows of ``horizon`` real
    #: steps, the planner's horizon); 0: none, the default. On the double pendulum 1000 steps cut
    #: the members' 15-step error on later episodes by 45% (seed 4, 800 transitions) but did not
    #: make PETS reach SAC's return sooner (5 seeds, README)
    rollout_fit_steps: int = 0
    rollout_fit_lr: float = 3e-3  #: Adam's step of that fine-tune
    val_fraction: float = 0.1
    patience: int = 15
    # PETS planner. Defaults tuned on the true physics of the n = 1 swing-up (dt 0.05, torque 5):
    # MPPI K = 300, H = 50 (2.5 s: a whole swing-up), 3 iterations per step, 30 for an
    # episode's first plan, noise std 1 -- return -288.1 +- 3.3 from SAC's evaluation starts
    # (SAC's final return: -289.0), where K = 300, H = 30, 2 iterations, std 2.5 swung up in
    # one go from 1 of 5 starts (``lyagym reproduce mbrl-swingup`` docstring). For n = 2 a
    # horizon of 15 works and 50 does not (the pendulum adapter sets it).
    planner: str = "mppi"
    horizon: int = 50
    num_samples: int = 300
    iterations: int = 3
    #: iterations of the first plan of each episode (no warm start yet); 0: ``iterations``
    warmup_iterations: int = 30
    noise_std: float | None = 1.0  #: ``None``: a quarter of the action range
    temperature: float = 0.5
    #: plan on ``AngleWrappedModel(model)``: rollouts wrap the angles after every step, so a
    #: swing over the top stays on the data's ``[-pi, pi)`` instead of extrapolating past pi
    wrap_angles: bool = True
    #: reset seed of every planned episode (``None``: a new one per episode). A study sets it to
    #: the seed of the baselines' greedy evaluation episodes, so each planned episode starts
    #: where they are scored and is an evaluation of the same kind
    mpc_reset_seed: int | None = None
    # ensembles (PETS trajectory sampling)
    ensemble_size: int = 5
    #: ``"tsinf"`` (a particle stays on one member), ``"ts1"`` (a fresh member every step), ``"expectation"``
    #: (the members' mean map). The double pendulum's adapter sets ``"expectation"`` (measured there:
    #: ``DOUBLE_PENDULUM_PROPAGATION``)
    propagation: str = "tsinf"
    #: particles per candidate sequence (PETS: P = 20); with an ensemble, a multiple of its size.
    #: Expectation propagation plans with one (its rollouts draw nothing, so particles would be copies)
    particles: int = 5
    # MBPO (Janner et al. 2019)
    model_train_every: int = 250  #: real steps between model fits (and rollout batches)
    model_rollouts: int = 400  #: branched model rollouts per real step (M; generated every ``model_train_every`` steps)
    rollout_schedule: tuple[int, int, int, int] = (1, 15, 1, 1)  #: ``(first episode, last, min length, max length)``
    model_retain_epochs: int = 1  #: model data kept, in units of one rollout batch
    real_ratio: float = 0.05  #: fraction of real transitions in each SAC batch
    sac_updates_per_step: int = 10  #: SAC gradient steps per real step (G)
    sac_batch_size: int = 256
    sac_learning_starts: int = 0  #: real steps before SAC updates begin (after the random episodes)
    #: SAC's entropy target (``None``: SB3's ``-action_dim``). MBPO's InvertedPendulum uses
    #: -0.05: a one-dimensional balancing action needs a nearly deterministic policy
    sac_target_entropy: float | None = None
    #: also evaluate the greedy policy every this many real steps within episodes (``None``:
    #: only after each episode)
    eval_every: int | None = None
    # legacy Dyna loop (SAC on imagined episodes only)
    imagined_envs: int = 128
    imagined_horizon: int = 20
    imagined_steps: int = 3000
    sac_gradient_steps: int = 1


def config_for(adapter, **overrides) -> MBRLConfig:
    """``MBRLConfig`` with ``adapter.config_overrides`` (an env's tuned settings) and then ``overrides``."""
    values = {**getattr(adapter, "config_overrides", {}), **overrides}
    return MBRLConfig(**values)


def config_from_args(args, **overrides) -> MBRLConfig:
    """An ``MBRLConfig`` from argparse ``args`` attributes with the same names."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(MBRLConfig) if getattr(args, f.name, None) is not None}
    values.update(overrides)
    return MBRLConfig(**values)
