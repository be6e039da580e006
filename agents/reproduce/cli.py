"""``lyagym reproduce NAME``: run one paper study (see ``STUDIES``)."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import STUDIES


def _study_module(name: str):
    return importlib.import_module(f"lyagym.agents.reproduce.{STUDIES[name][0]}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    sub = parser.add_subparsers(dest="study", metavar="STUDY")
    for name, (_, summary) in STUDIES.items():
        p = sub.add_parser(name, help=summary, description=summary)
        try:
            _study_module(name).add_arguments(p)
        except ImportError:
            p.set_defaults(_unavailable=True)


def run(args: argparse.Namespace) -> int:
    if args.list or args.study is None:
        for name, (_, summary) in STUDIES.items():
            try:
                _study_module(name)
                status = ""
            except ImportError:
                status = "  [not available yet]"
            print(f"{name:<20}{summary}{status}")
        return 0
    if getattr(args, "_unavailable", False):
        print(f"lyagym reproduce {args.study}: this study is not available in this installation", file=sys.stderr)
        return 2
    try:
        return int(_study_module(args.study).run(args) or 0)
    except FileExistsError as e:  # prepare_output: results of an earlier run in --out, before any work
        print(f"lyagym reproduce {args.study}: {e}", file=sys.stderr)
        return 2
