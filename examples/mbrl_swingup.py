"""Model-based RL (PETS / Dyna with stable and simple world models) vs SAC and PPO on the
pendulum swing-up, with learning curves; same as `lyagym reproduce mbrl-swingup`.

Examples::

    python examples/mbrl_swingup.py --links 1 --seeds 0 1 2
    python examples/mbrl_swingup.py --links 2 --methods mpc-true pets-stable pets-simple sac --sac-steps 50000
    python examples/mbrl_swingup.py --quick
"""

import argparse
import sys

from lyagym.agents.reproduce import mbrl_swingup


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=mbrl_swingup.__doc__.splitlines()[0])
    mbrl_swingup.add_arguments(parser)
    return mbrl_swingup.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
