"""Reproduce a LyaNet study (Rodriguez et al. 2022); same as `lyagym reproduce lyanet-pendulum`.

Run ``python examples/reproduce_lyanet_pendulum.py --help`` for the options (output folder, epochs, seed, ...).
"""

import argparse
import sys

from lyagym.agents.cli import parse_with_threads

from lyagym.agents.reproduce import lyanet_pendulum


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=lyanet_pendulum.__doc__.splitlines()[0])
    lyanet_pendulum.add_arguments(parser)
    return lyanet_pendulum.run(parse_with_threads(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
