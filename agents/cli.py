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
    "verify": ("cli_verify", "prove a model's Lyapunov decrease over a box of states (bound propagation + branch and bound)"),
    "reproduce": ("reproduce.cli", "reproduce a paper figure or table (see `lyagym reproduce --list`)"),
}


# torch threads unless --threads N: these models are small, so one thread is fastest, most of all
# on a busy machine (measured on a loaded 2-core machine: 10-15x slower with torch's default).
DEFAULT_THREADS = 1


def _pop_threads(argv: list[str]) -> tuple[list[str], int | None, str | None]:
    """Remove ``--threads N`` / ``--threads=N`` from anywhere in ``argv`` (it is global, parsed once here).

    Returns ``(rest, threads, error)``; ``threads`` is None when not given."""
    rest, threads = [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        if a == "--threads" or a.startswith("--threads="):
            if a == "--threads":
                if i + 1 >= len(argv):
                    return rest, None, "--threads expects an integer >= 0 (0: torch's default), got nothing"
                value, i = argv[i + 1], i + 2
            else:
                value, i = a.split("=", 1)[1], i + 1
            try:
                threads = int(value)
            except ValueError:
                threads = -1
            if threads < 0:
                return rest, None, f"--threads expects an integer >= 0 (0: torch's default), got {value!r}"
            continue
        rest.append(a)
        i += 1
    return rest, threads, None


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` (0: leave torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def parse_with_threads(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with a ``--threads`` option (added unless the parser has one)
    applied at once: the examples' default of one torch thread, as ``lyagym`` (``DEFAULT_THREADS``)."""
    if not any("--threads" in a.option_strings for a in parser._actions):
        parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                            help="torch CPU threads (0: torch's default; 1 suits these small models on a busy machine)")
    args = parser.parse_args(argv)
    threads = DEFAULT_THREADS if args.threads is None else args.threads
    if threads < 0:
        parser.error(f"--threads expects an integer >= 0 (0: torch's default), got {threads}")
    set_threads(threads)
    return args


def check_device(device: str | None) -> str | None:
    """None if torch can use ``device``, else a one-line message naming ``--device`` and what was expected."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        return f"--device expects a torch device such as cpu, cuda, cuda:0 or mps, got {device!r} ({e})"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda} but no GPU is visible"
            return (f"--device {device}: this torch ({torch.__version__}) is {build}; use --device cpu "
                    "or install a CUDA build of torch (see the README's install section)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible (cuda:0..cuda:{torch.cuda.device_count() - 1})"
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return f"--device {device}: MPS is not available in this torch/machine; use --device cpu"
    elif dev.type != "cpu":
        return f"--device expects cpu, cuda[:N] or mps, got {device!r}"
    return None


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: ...)`` after every option's help, except where the default is ``None`` and the
    help says what it stands for (``"... (default: the env's)"``): a second ``(default: None)``
    there would contradict it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None and action.help and "default" in action.help:
            return action.help
        return super()._get_help_string(action)


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option of ``parser`` (and of its subcommands) shows its default in ``--help``.

    ``ArgumentDefaultsHelpFormatter`` skips options without help text, so those get a blank one."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                show_defaults(child)
        elif (action.option_strings and not action.help and action.default is not argparse.SUPPRESS
              and not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            action.help = "(default: %(default)s)"


def _load(module: str):
    return importlib.import_module(f"lyagym.agents.{module}")


class _OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (exit code 2): the flag and what it accepts, no usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="lyagym",
        description="Pendulum environments, certified stable world models and MPC agents.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="torch CPU threads (torch.set_num_threads); 1 suits these small models, and torch's "
                        "default (one per core) ran 10-15x slower on a busy 2-core machine; 0: torch's default. "
                        "Also accepted after the command")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_module=module)
        # Arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, threads, error = _pop_threads(argv)
    if error:
        print(f"lyagym: {error}", file=sys.stderr)
        return 2
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
        show_defaults(sub_action.choices[chosen])
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        if e.code == 2:  # a usage mistake, already reported in one line by _OneLineParser
            return 2
        raise  # --help
    if args.command is None:
        parser.print_help()
        return 0
    args.threads = DEFAULT_THREADS if threads is None else threads
    # Commands with --device: fail in one line before any work when torch cannot use it.
    message = check_device(getattr(args, "device", None))
    if message:
        print(f"lyagym {args.command}: {message}", file=sys.stderr)
        return 2
    if args.command != "info" or "torch" in sys.modules:
        set_threads(args.threads)
    return int(_load(args._module).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
