"""The README's Python examples run as written (each in a fresh interpreter, in a scratch
folder) and print what they did, so the quick start cannot drift from the code. The
video-texture example trains a VAE for minutes and is left to ``examples/``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
SLOW_MARKERS = ("make_texture",)  # trains a video VAE: minutes


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", [i for i, b in enumerate(BLOCKS) if not any(m in b for m in SLOW_MARKERS)])
def test_readme_python_example_runs(index, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"README example {index} failed:\n{BLOCKS[index]}\n{result.stderr[-2000:]}"
    # A reader copies the example to see it work: it must print what it did.
    assert result.stdout.strip(), f"README example {index} prints nothing to show that it worked:\n{BLOCKS[index]}"
