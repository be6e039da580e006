"""Reproduce Manek & Kolter (2019) Fig. 5; same as `lyagym reproduce fig5`.

Example: ``python examples/reproduce_fig5.py --links 1 2 4 6 8`` (see ``--help``).
"""

import argparse
import sys

from lyagym.agents.cli import parse_with_threads

from lyagym.agents.reproduce import fig5


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=fig5.__doc__.splitlines()[0])
    fig5.add_arguments(parser)
    return fig5.run(parse_with_threads(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
