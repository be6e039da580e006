"""Reproduce Manek & Kolter (2019) Fig. 3; same as `lyagym reproduce fig3`.

Run ``python examples/reproduce_fig3.py --help`` for the options (output folder, --size preset, seed).
"""

import argparse
import sys

from lyagym.agents.cli import parse_with_threads

from lyagym.agents.reproduce import fig3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=fig3.__doc__.splitlines()[0])
    fig3.add_arguments(parser)
    return fig3.run(parse_with_threads(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
