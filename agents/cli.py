"""The ``lyagym`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``lyagym
--help`` stays fast and a broken optional piece never takes the whole CLI down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command: (module under lyagym.agents, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("cli_info", "versions, torch devices and the cache directory"),
    "demo": ("demo", "the main job: pendulum data, world models, certificate, MPC; writes plots and a GIF"),
    "train": ("cli_train", "train a world model on pendulum data and save a checkpoint"),
    "plan": ("cli_plan", "run an MPC planner on an env (the pendulum by default) with a world model"),
    "mbrl": ("cli_mbrl", "model-based RL (PETS / MBPO) or an SB3 baseline on any env with an adapter"),
    "reproduce": ("reproduce.cli", "reproduce a paper figure or table (see `lyagym reproduce --list`)"),
}


def _load(module: str):
    return importlib.import_module(f"lyagym.agents.{module}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lyagym",
        description="Pendulum environments, certified stable world models and MPC agents.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Find the chosen command (first non-option word) and let its module add its arguments.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in COMMANDS:
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        try:
            module = _load(COMMANDS[chosen][0])
        except ImportError as e:
            print(f"lyagym {chosen}: not available in this installation ({e})", file=sys.stderr)
            return 2
        module.add_arguments(sub_action.choices[chosen])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(_load(args._module).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
