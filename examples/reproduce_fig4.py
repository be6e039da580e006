"""Reproduce Manek & Kolter (2019) Fig. 4; same as `lyagym reproduce fig4`.

Run ``python examples/reproduce_fig4.py --help`` for the options (output folder, --size preset, seed).
"""

import argparse
import sys

from lyagym.agents.cli import parse_with_threads

from lyagym.agents.reproduce import fig4


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=fig4.__doc__.splitlines()[0])
    fig4.add_arguments(parser)
    return fig4.run(parse_with_threads(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
