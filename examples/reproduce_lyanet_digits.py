"""Reproduce a LyaNet study (Rodriguez et al. 2022); same as `lyagym reproduce lyanet-digits`.

Run ``python examples/reproduce_lyanet_digits.py --help`` for the options (output folder, epochs, seed, ...).
"""

import argparse
import sys

from lyagym.agents.cli import parse_with_threads

from lyagym.agents.reproduce import lyanet_digits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=lyanet_digits.__doc__.splitlines()[0])
    lyanet_digits.add_arguments(parser)
    return lyanet_digits.run(parse_with_threads(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
