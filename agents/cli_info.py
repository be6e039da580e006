"""``lyagym info``: versions, torch devices, the cache directory and the compiled kernels."""

from __future__ import annotations

import argparse
import importlib
import platform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def cache_dir() -> str:
    """Where derived pendulum equations and built kernels are cached (``lyagym.learned_models.native``,
    which imports neither gymnasium nor sympy)."""
    from lyagym.learned_models.native import cache_dir as directory

    return str(directory())


def native_kernels() -> str:
    """Whether compiled kernels can be built here (the compiler found), without building them."""
    from lyagym.learned_models.native import compiler, native_enabled

    if not native_enabled():
        return "off (LYAGYM_NATIVE=0 or Windows): learned models and the pendulum use their torch/numpy paths"
    cc = compiler()
    return f"built with {cc} on first use" if cc else "no C compiler found ($CC, cc, gcc, clang): torch/numpy paths"


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
    print(f"compiled kernels  {native_kernels()}")
    return 0
