"""List the experiments: grid size per profile and how many of its configs are cached.

examples:
  lora-limits list
  lora-limits list --results /scratch/results
"""
from __future__ import annotations

import argparse

HELP = "list experiments with their grid sizes and cached results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", metavar="DIR", help="result cache (default results/)")
    parser.add_argument("--all", action="store_true", help="include hidden experiments (the self-test)")


def run(args) -> int:
    from analysis import registry
    from analysis.cache import ResultCache, unique_configs

    rows = []
    for name, experiment in registry.experiments(include_hidden=args.all).items():
        cache = ResultCache(args.results, name)
        cells = [name]
        for profile in registry.PROFILES:
            grid = unique_configs(experiment.configs(profile))
            cached = sum(cache.has(c.key(), c) for c in grid)
            cells.append(f"{cached}/{len(grid)}")
        rows.append(cells + [experiment.description])
    if not rows:
        print("no experiments registered yet (see analysis/registry.py)")
        return 0
    head = ["experiment", *(f"{p} (cached/grid)" for p in registry.PROFILES), "description"]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head) - 1)]
    for cells in [head] + rows:
        print("  ".join([c.ljust(w) for c, w in zip(cells, widths)] + [cells[-1]]).rstrip())
    return 0
