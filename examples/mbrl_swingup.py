"""Model-based RL (PETS / Dyna with stable and simple world models) vs SAC and PPO on the
pendulum swing-up, with learning curves; same as `lyagym reproduce mbrl-swingup`.

Examples (each (method, seed) run is stored under OUT and reused, so methods can run in
separate processes; ``--stored-only`` then summarises what has finished)::

    python examples/mbrl_swingup.py --links 1 --seeds 0 1 2 --methods sac ppo --out runs/mbrl_n1
    python examples/mbrl_swingup.py --links 1 --seeds 0 1 2 --methods pets-simple pets-stable --out runs/mbrl_n1
    python examples/mbrl_swingup.py --links 1 --seeds 0 1 2 --methods dyna-simple --out runs/mbrl_n1
    python examples/mbrl_swingup.py --links 1 --seeds 0 1 2 --stored-only \
        --methods pets-stable pets-simple dyna-simple sac ppo --out runs/mbrl_n1
    python examples/mbrl_swingup.py --links 2 --seeds 0 --episodes 12 --methods mpc-true pets-simple pets-stable sac --out runs/mbrl_n2
    python examples/mbrl_swingup.py --quick
"""

import argparse
import sys

from lyagym.agents.cli import parse_with_threads

from lyagym.agents.reproduce import mbrl_swingup


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=mbrl_swingup.__doc__.splitlines()[0])
    mbrl_swingup.add_arguments(parser)
    return mbrl_swingup.run(parse_with_threads(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
