"""The `lyagym` command line: help, info, and the reproduce registry."""

import os
import subprocess
import sys

from lyagym.agents import cli


def test_help_lists_every_command(capsys):
    try:
        cli.main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_info_prints_versions_and_cache_dir():
    out = subprocess.run([sys.executable, "-m", "lyagym.agents.cli", "info"], capture_output=True, text=True, check=True).stdout
    assert "torch" in out and "gymnasium" in out
    assert "cache" in out.lower()
    import shutil

    kernels = next(line for line in out.splitlines() if line.startswith("compiled kernels"))
    assert ("built with" in kernels) == bool(shutil.which("cc") or shutil.which("gcc") or shutil.which("clang") or os.environ.get("CC"))
    off = subprocess.run([sys.executable, "-m", "lyagym.agents.cli", "info"], capture_output=True, text=True, check=True,
                         env={**os.environ, "LYAGYM_NATIVE": "0"}).stdout
    assert "compiled kernels  off (LYAGYM_NATIVE=0" in off


def test_unknown_command_fails():
    proc = subprocess.run([sys.executable, "-m", "lyagym.agents.cli", "fly"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "fly" in proc.stderr
