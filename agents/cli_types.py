"""Argument types of the ``lyagym`` command line: numbers checked by argparse itself.

Each factory returns an argparse ``type=`` callable that converts one flag's text and raises
``argparse.ArgumentTypeError`` with what the flag accepts, so a bad value ends the command in
one line (``lyagym train: argument --dt: expected a finite number > 0, got 'nan'``, exit
code 2) before any module is imported or any work starts. They are plain functions of the
text, with no torch or numpy, so ``lyagym --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

__all__ = ["integer", "number", "folder", "existing_path", "out_file"]


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[minimum, maximum]`` (either bound may be ``None``)."""
    accepted = _range_text("an integer", minimum, maximum, ">=")

    def convert(text: str) -> int:
        try:
            value = int(text, 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}")
        return value

    convert.__name__ = "integer"  # argparse names the type in its own messages
    convert.minimum, convert.maximum, convert.strict = minimum, maximum, False  # what the flag accepts, for --help and tests
    return convert


#: Default magnitude bound of a float flag: every float setting of the CLI (rates, weights,
#: temperatures, torques, tolerances, states) is meaningful far below it, and the float32 models
#: overflow (1e300 in a float32 tensor is inf) long before float64 does.
BOUND = 1e6


def number(minimum: float | None = None, *, strict: bool = False, maximum: float | None = BOUND) -> Callable[[str], float]:
    """An argparse type: a finite float ``>= minimum`` (``> minimum`` with ``strict``), ``<= maximum``;
    ``minimum=None`` means ``-BOUND``.

    NaN and infinities are refused whatever the bounds: every float flag of the CLI is a
    physical or numerical setting that NaN would turn into a silent NaN result (or a crash far
    from the flag)."""
    minimum = -BOUND if minimum is None else minimum
    accepted = _range_text("a finite number", minimum, maximum, ">" if strict else ">=")

    def convert(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None
        low_ok = minimum is None or (value > minimum if strict else value >= minimum)
        if not math.isfinite(value) or not low_ok or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}")
        return value

    convert.__name__ = "number"
    convert.minimum, convert.maximum, convert.strict = minimum, maximum, strict
    return convert


def folder(text: str) -> str:
    """An argparse type for an output folder: a path that is a folder or does not exist yet
    (it is created on the first write), never an existing file."""
    import os

    if not text:
        raise argparse.ArgumentTypeError("expected a folder path, got ''")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a folder, but {text!r} is a file")
    return text


def existing_path(text: str) -> str:
    """An argparse type for an input: a file or folder that exists."""
    import os

    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"expected an existing file or folder, got {text!r} (not found)")
    return text


def out_file(flag: str, path: str, *, overwrite: bool, companions: tuple[str, ...] = ()) -> str | None:
    """``None`` if ``path`` (and each companion file written beside it) may be written, else the
    one-line reason naming ``flag``: its folder must exist, and existing files are only replaced
    with ``--overwrite``."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{flag} {path!r} is a folder; expected a file path"
    if not os.path.isdir(folder):
        return f"{flag} {path!r}: the folder {os.path.dirname(path) or '.'!r} does not exist; create it first"
    if not os.access(folder, os.W_OK):
        return f"{flag} {path!r}: the folder {os.path.dirname(path) or '.'!r} is not writable"
    if not overwrite:
        existing = [p for p in (path, *companions) if os.path.exists(p)]
        if existing:
            return f"{flag}: {' and '.join(existing)} {'exists' if len(existing) == 1 else 'exist'}; pass --overwrite to replace it or choose another {flag}"
    return None


def _range_text(kind: str, minimum, maximum, low_op: str) -> str:
    if minimum is not None and maximum is not None:
        low_bracket = "[" if low_op == ">=" else "("
        return f"{kind} in {low_bracket}{minimum:g}, {maximum:g}]"
    if minimum is not None:
        return f"{kind} {low_op} {minimum:g}"
    if maximum is not None:
        return f"{kind} <= {maximum:g}"
    return kind
