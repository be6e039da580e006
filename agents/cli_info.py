"""``lyagym info``: versions, torch devices and the cache directory."""

from __future__ import annotations

import argparse
import importlib
import platform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def cache_dir() -> str:
    """Where derived pendulum equations are cached (see ``lyagym.envs``)."""
    try:
        from lyagym.envs.symbolic import cache_dir as envs_cache_dir
    except ImportError:
        return "(pendulum symbolic model not installed)"
    return str(envs_cache_dir())


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

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    print(f"torch devices     {', '.join(devices)}  (threads: {torch.get_num_threads()})")
    print(f"cache dir         {cache_dir()}")
    return 0
