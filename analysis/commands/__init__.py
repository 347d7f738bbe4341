"""One module per CLI verb (see analysis/cli.py), and the options the sweep verbs share."""
from __future__ import annotations

import argparse

PROFILE_HELP = ("quick (default: sized for 2 CPU cores) or paper (5 seeds, every method, more depths: the "
                "toy experiments took 3.3 h on 2 CPU cores, measured 2026-12-03; a GPU is the place for it)")


def add_profile_and_device(parser: argparse.ArgumentParser) -> None:
    """``--profile`` and ``--device``, as ``run`` and ``reproduce`` take them."""
    parser.add_argument("--profile", default="quick", metavar="P", help=PROFILE_HELP)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to train (default auto: CUDA when present)")
