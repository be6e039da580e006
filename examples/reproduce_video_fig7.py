"""Manek & Kolter (2019) Fig. 7: stable vs unconstrained latent dynamics on a video texture.

Same as ``lyagym reproduce video-fig7``; run with ``--help`` for the options, e.g.

    python examples/reproduce_video_fig7.py --out runs/video_fig7
    python examples/reproduce_video_fig7.py --video my_bonfire.mp4 --size 48
"""

import argparse

from lyagym.agents.cli import parse_with_threads
from lyagym.agents.reproduce import video_fig7

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=video_fig7.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    video_fig7.add_arguments(parser)
    raise SystemExit(video_fig7.run(parse_with_threads(parser)))
