"""Paper reproductions, runnable as ``lyagym reproduce NAME`` and from ``examples/``.

Each study is a module of this package exposing ``add_arguments(parser)`` and
``run(args) -> int``. The registry maps a study name to its module and a one-line summary;
a study whose module is not importable is listed as unavailable rather than breaking the CLI.
"""

from __future__ import annotations

STUDIES: dict[str, tuple[str, str]] = {
    # name: (module in lyagym.agents.reproduce, summary)
    "fig3": ("fig3", "Manek & Kolter Fig. 3: random fhat, V and the projected stable f (stream plots)"),
    "fig4": ("fig4", "Manek & Kolter Fig. 4: damped 1-link pendulum, simulated vs learned"),
    "fig5": ("fig5", "Manek & Kolter Fig. 5: n-link pendulum rollout error, simple vs stable"),
    "lyanet-toy": ("lyanet_toy", "LyaNet Fig. 1/4: 2-D toy task, neural ODE vs LyaNet"),
    "lyanet-digits": ("lyanet_digits", "LyaNet Table 1 analogue on sklearn digits with PGD attacks"),
    "lyanet-early-exit": ("lyanet_early_exit", "LyaNet Fig. 3: loss vs inference time with early termination"),
    "lyanet-pendulum": ("lyanet_pendulum", "LyaNet world model on the Fig. 5 protocol"),
    "video-fig7": ("video_fig7", "Manek & Kolter Fig. 7: stable vs unconstrained video texture rollouts"),
    "mbrl-swingup": ("mbrl_swingup", "MPC / model-based RL vs SAC and PPO on pendulum swing-up"),
    "mbrl-envs": ("mbrl_envs", "PETS / MBPO with ensembles vs SAC on any env with an adapter, cells in parallel"),
    "lasa": ("lasa", "LASA handwriting: stable vs plain models on human demonstrations, DTW beside SDSEF's"),
}
