"""``lyagym info``: versions, torch devices and the cache directory."""

from __future__ import annotations

import argparse
import importlib
import platform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def cache_dir() -> str:
    """Where derived pendulum equations are cached: the rule of ``lyagym.envs.symbolic.cache_dir``,
    repeated here so that ``lyagym info`` does not import gymnasium and sympy (a test keeps them equal)."""
    import os
    from pathlib import Path

    explicit = os.environ.get("LYAGYM_CACHE_DIR")
    if explicit:
        return str(Path(explicit).expanduser())
    xdg = os.environ.get("XDG_CACHE_HOME")
    return str((Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lyagym")


def run(args: argparse.Namespace) -> int:
    print(f"python            {platform.python_version()} ({platform.platform()})")
    for name in ("lyagym", "torch", "gymnasium", "stable_baselines3", "sympy", "scipy", "numpy", "torchdiffeq", "matplotlib", "tqdm"):
        try:
            from importlib.metadata import version

            dist = {"stable_baselines3": "stable-baselines3"}.get(name, name)
            v = version(dist)
        except Exception:
            try:
                v = getattr(importlib.import_module(name), "__version__", "?")
            except ImportError:
                v = "not installed"
        print(f"{name:<18}{v}")
    import torch

    from .cli import DEFAULT_THREADS, set_threads

    set_threads(getattr(args, "threads", DEFAULT_THREADS))
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    print(f"torch devices     {', '.join(devices)}  (threads: {torch.get_num_threads()})")
    print(f"cache dir         {cache_dir()}")
    return 0
