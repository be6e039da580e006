"""A newcomer's first hour (threads, defaults, --device errors, help text,
import cost, fit's early stop, Certificate summaries, plots, README install text)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lyagym.agents.cli import check_device, main


def _run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------- item 13: imports and help
def test_help_imports_no_torch_gymnasium_sb3():
    last = _run_python(
        "import sys, contextlib, io\n"
        "from lyagym.agents.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main([]); \n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'gymnasium', 'stable_baselines3', 'sympy') if m in sys.modules))"
    )
    assert last == "[]"


def test_info_imports_no_gymnasium_sb3_sympy():
    last = _run_python(
        "import sys, contextlib, io\n"
        "from lyagym.agents.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    assert main(['info']) == 0\n"
        "assert 'threads: 1' in buf.getvalue(), buf.getvalue()\n"
        "print(sorted(m for m in ('gymnasium', 'stable_baselines3', 'sympy') if m in sys.modules))"
    )
    assert last == "[]"


def test_info_cache_dir_matches_envs(monkeypatch, tmp_path):
    from lyagym.agents.cli_info import cache_dir
    from lyagym.envs.symbolic import cache_dir as envs_cache_dir

    for env in ({}, {"XDG_CACHE_HOME": str(tmp_path)}, {"LYAGYM_CACHE_DIR": str(tmp_path / "c")}):
        monkeypatch.delenv("LYAGYM_CACHE_DIR", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert cache_dir() == str(envs_cache_dir())


@pytest.mark.parametrize("command", ["demo", "train", "plan", "mbrl", "reproduce fig3"])
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(command.split() + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "(default:" in text
    # options without their own help text show their default too
    if command == "train":
        assert "--epochs EPOCHS       (default: 100)" in text


def test_top_level_help_documents_threads(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--threads" in text and "(default: 1)" in text


# ---------------------------------------------------------------- item 10: threads
def test_threads_default_one_and_override():
    code = (
        "import contextlib, io, torch\n"
        "from lyagym.agents.cli import main\n"
        "torch.set_num_threads(2)\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['reproduce', '--list'])\n"
        "a = torch.get_num_threads()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['reproduce', '--list', '--threads', '2'])\n"
        "b = torch.get_num_threads()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--threads=1', 'reproduce', '--list'])\n"
        "print(a, b, torch.get_num_threads())"
    )
    assert _run_python(code) == "1 2 1"


@pytest.mark.parametrize("bad", [["--threads", "x"], ["--threads", "-1"], ["--threads"]])
def test_threads_bad_value(bad, capsys):
    assert main(["info"] + bad) == 2
    err = capsys.readouterr().err
    assert "--threads expects an integer >= 0" in err


# ---------------------------------------------------------------- item 12: --device
def _cuda_missing() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.mark.skipif(not _cuda_missing(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["demo", "--size", "tiny"], ["plan", "--steps", "1"], ["train", "--epochs", "1"],
                                     ["mbrl", "--episodes", "0"]])
def test_device_cuda_without_cuda_is_one_line_exit_2(command, tmp_path, capsys):
    out = tmp_path / "out"
    argv = command + ["--device", "cuda", "--out", str(out / "m.pt" if command[0] == "train" else out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "--device cuda" in lines[0] and "--device cpu" in lines[0]
    assert captured.out == ""  # no work started
    assert not out.exists()  # and no output folder


def test_check_device_messages():
    assert check_device("cpu") is None
    assert "--device expects" in check_device("gpu")
    if _cuda_missing():
        assert "CPU-only" in check_device("cuda:0") or "no GPU" in check_device("cuda:0")


def test_demo_prepare_output_creates_no_folder(tmp_path):
    from lyagym.agents.demo import prepare_output

    folder = prepare_output(tmp_path / "a" / "b", ["x.png"], overwrite=False)
    assert not folder.exists()


# ---------------------------------------------------------------- item 15: Certificate
def test_certificate_summary_and_meaning():
    import json

    from lyagym.learned_models import StableDynamics
    from lyagym.learned_models.certificate import Certificate

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cert = StableDynamics(2, dt=0.05).certificate("continuous")
    text = str(cert)
    assert text == cert.summary() and len(text) < 1200 and len(text.splitlines()) <= 10
    for word in ("exponential stability", "region:", "alpha:", "c1, c2:", "overshoot:", "evidence:  by_construction",
                 "precision: float32 weights", cert.weights_hash[:12]):
        assert word in text, word
    assert f"{cert.overshoot:.4g}" in text and f"{cert.c2:.4g}" in text
    d = json.loads(cert.to_json())
    assert set(d["meaning"]) >= {"alpha", "c1", "c2", "overshoot"} and "sqrt(c2 / c1)" in d["meaning"]["overshoot"]
    assert Certificate.from_json(cert.to_json()) == cert  # "meaning" is derived, not a field
    assert "c1" in Certificate.__doc__ and "overshoot" in Certificate.__doc__


@pytest.mark.parametrize("domain", ["continuous", "discrete"])
def test_iss_dissipation_matches_time_domain(domain):
    from lyagym.learned_models import StableControlledDynamics

    cert = StableControlledDynamics(2, 1, dt=0.05).certificate(domain)
    assert cert.time_domain == domain
    text = cert.iss_gain["dissipation"]
    if domain == "discrete":
        assert "V(x_{k+1}) <= exp(-alpha h) V(x_k) + (1 - exp(-alpha h))" in text and "dV/dt" not in text
        assert "x_k" in cert.iss_gain["state_bound"]
    else:
        assert text.startswith("dV/dt <= -alpha V") and "x_{k+1}" not in text
    assert "inputs:" in cert.summary()


# ---------------------------------------------------------------- item 14: fit says when it stops early
def _tiny_fit(**kwargs):
    import torch

    from lyagym.learned_models import SimpleDynamics, fit

    torch.manual_seed(0)
    x = torch.randn(64, 2)
    model = SimpleDynamics(2, hidden=(8,))
    return fit(model, (x, -x), batch_size=32, seed=0, **kwargs)


def test_fit_early_stop_is_reported(capsys):
    history = _tiny_fit(epochs=50, lr=1e-12, patience=2, progress=True)
    assert history["stopped_early"] and history["stop_reason"] == "patience"
    n, best = history["epochs_run"], history["best_epoch"]
    assert n < 50
    message = history["stop_message"]
    assert f"stopped at epoch {n} of 50" in message and f"at epoch {best + 1}" in message
    assert f"{history['best_val_loss']:.4g}" in message and "best validation loss" in message
    captured = capsys.readouterr()
    assert message in captured.out + captured.err  # printed, not only in the vanished bar


def test_fit_without_early_stop_says_nothing(capsys):
    history = _tiny_fit(epochs=3, lr=1e-3, patience=None, progress=False)
    assert not history["stopped_early"] and history["stop_reason"] is None and history["stop_message"] is None
    assert "stopped" not in capsys.readouterr().out


def test_lyanet_bars_are_named(monkeypatch):
    import lyagym.learned_models.lyanet as lyanet

    seen = []
    real = lyanet.tqdm

    def spy(*args, **kwargs):
        seen.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(lyanet, "tqdm", spy)
    import torch

    from lyagym.learned_models.lyanet_world_model import LyaNetWorldModel

    model = LyaNetWorldModel(2, 0, dt=0.1, width=8, depth=1)
    x = torch.randn(32, 2)
    model.fit(x, None, 0.9 * x, epochs=2, finetune_epochs=1, progress=False)
    assert len(seen) == 2 and seen[0] != seen[1]
    assert "fit" in seen[0] and "fine-tune" in seen[1]


# ---------------------------------------------------------------- item 16: plots
def _capture_figures(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    return figures


def test_plan_plot_wraps_to_minus_pi_pi_and_has_torques(monkeypatch, tmp_path):
    import math

    import numpy as np

    from lyagym.agents.cli_plan import plot_angles, wrapped_for_plot

    t, w = wrapped_for_plot(np.arange(4.0), np.array([0.0, 3.0, 3.3, 3.2]))  # crosses +pi once
    finite = w[np.isfinite(w)]
    assert (finite >= -math.pi).all() and (finite < math.pi).all()
    assert np.isnan(w).sum() == 1 and np.isnan(t).sum() == 1 and np.isnan(w[2])

    figures = _capture_figures(monkeypatch)
    x = np.zeros((21, 2))
    x[:, 0] = np.linspace(0.0, 1.2 * math.pi, 21)  # a swing past upright
    path = tmp_path / "p.png"
    plot_angles(str(path), x, 0.05, 1, math.pi, title="t", actions=np.linspace(-1, 1, 20)[:, None])
    assert path.exists()
    fig = figures[-1]
    angle_ax, torque_ax = fig.axes
    y = angle_ax.lines[0].get_ydata()
    y = y[np.isfinite(y)]
    assert y.min() >= -math.pi and y.max() < math.pi  # never [0, 2 pi)
    assert "torque" in torque_ax.get_ylabel()


def test_demo_plots_legend_batch_and_reference(monkeypatch, tmp_path):
    import numpy as np

    from lyagym.agents import demo

    episode = demo.simulate_swingup(1, 0.05, frame_every=100, frame_size=32)
    batch = demo.simulate_batch(1, 8, 0.05)
    assert batch["energy_samples"].shape == (len(batch["times"]), 4)
    assert batch["upright_energy"] > batch["energy_quantiles"][0, 0]
    figures = _capture_figures(monkeypatch)
    demo.plot_trajectory(episode, batch, tmp_path / "t.png", "t")
    energy_ax, batch_ax = figures[-1].axes[1], figures[-1].axes[3]
    assert energy_ax.get_legend() is not None
    assert "energy" in [t.get_text() for t in energy_ax.get_legend().get_texts()][0]
    labels = [t.get_text() for t in batch_ax.get_legend().get_texts()]
    assert any("single pendulums" in label for label in labels) and any("upright" in label for label in labels)

    class Score:
        def __init__(self, v):
            self.per_step, self.average = np.full(5, v), v

    demo.plot_rollout_error({"simple": Score(0.1), "equilibrium": Score(0.5)}, {"simple": {"val_loss": [1.0, 0.5]}},
                            tmp_path / "r.png", 0.05, "t")
    labels = [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]
    assert any(label.startswith("x = 0") for label in labels)


def test_examples_default_to_one_thread():
    import argparse
    import pathlib

    import torch

    from lyagym.agents.cli import parse_with_threads

    torch.set_num_threads(2)
    args = parse_with_threads(argparse.ArgumentParser(), [])
    assert args.threads == 1 and torch.get_num_threads() == 1
    parse_with_threads(argparse.ArgumentParser(), ["--threads", "2"])
    assert torch.get_num_threads() == 2
    own = argparse.ArgumentParser()
    own.add_argument("--threads", type=int, default=None)  # a study's own option (fig5) is kept
    assert parse_with_threads(own, []).threads is None and torch.get_num_threads() == 1
    torch.set_num_threads(1)
    root = pathlib.Path(__file__).resolve().parents[1] / "examples"
    for name in ["mbrl_swingup.py", "mpc_swingup.py", "quickstart_pendulum.py"] + sorted(p.name for p in root.glob("reproduce_*.py")):
        text = (root / name).read_text()
        assert "parse_with_threads(parser" in text, name


# ---------------------------------------------------------------- items 10, 11, 17: the README says it
def _readme() -> str:
    import pathlib

    return (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_install_text_is_honest():
    text = _readme()
    assert "pip install torch==2.13.0 && pip install -e . && lyagym demo" in text  # the two commands stay
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "CUDA build" in text and "so pip does not pull the\nCUDA build" not in text


def test_readme_threads_and_video_block():
    import re

    text = _readme()
    assert "--threads N" in text and "10-15x slower" in text
    video = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "make_texture" in b]
    assert len(video) == 1
    assert 'projection="exact"' in video[0] and "print(" in video[0] and "perf_counter" in video[0]
    assert "SB3VectorEnv" in text
