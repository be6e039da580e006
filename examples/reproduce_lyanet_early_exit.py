"""Reproduce a LyaNet study (Rodriguez et al. 2022); same as `lyagym reproduce lyanet-early-exit`.

Run ``python examples/reproduce_lyanet_early_exit.py --help`` for the options (output folder, epochs, seed, ...).
"""

import argparse
import sys

from lyagym.agents.cli import parse_with_threads

from lyagym.agents.reproduce import lyanet_early_exit


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=lyanet_early_exit.__doc__.splitlines()[0])
    lyanet_early_exit.add_arguments(parser)
    return lyanet_early_exit.run(parse_with_threads(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
