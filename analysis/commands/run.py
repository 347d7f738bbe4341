"""Run one experiment's grid through the result cache, then draw its figures.

Finished configs (``results/<experiment>/<key>.json``) are skipped, so an interrupted run
resumes where it stopped; ``--force`` recomputes them. ``--set`` applies to every config
of the grid.

The ``--set`` keys are the config's dotted field names and differ per experiment (a wrong
key's error lists the valid ones); ``seed=...`` exists in every experiment.

examples:
  lora-limits run rank_depth                       # quick profile, CPU, serial
  lora-limits run two_hop_reuse --jobs 2 --set pipeline.finetune.steps=100
  lora-limits run mechanism --set seed=0 --set familiarity=R --no-figures
  lora-limits run two_hop_reuse --profile paper --device cuda
  lora-limits run two_hop_reuse --engine dask --jobs 8   # local Dask cluster of 8 workers
  lora-limits run two_hop_reuse --scheduler tcp://head:8786   # an existing Dask cluster
  lora-limits run pretrained_two_hop               # after `make install-pretrained`
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.commands import add_profile_and_device
from analysis.errors import UsageError

HELP = "run an experiment's grid (cached, resumable, parallel) and draw its figures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", metavar="EXPERIMENT", help="experiment name (see `lora-limits list`)")
    add_profile_and_device(parser)
    parser.add_argument("--jobs", default="1", metavar="N", help="configs run at once (default 1)")
    parser.add_argument("--engine", choices=["serial", "process", "dask"],
                        help="serial, process (local worker processes) or dask "
                             "(default: serial for --jobs 1, else process)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field in every config, e.g. seed=1 or (two_hop_reuse) "
                             "pipeline.finetune.steps=100 (repeatable)")
    parser.add_argument("--force", action="store_true", help="recompute configs that are already cached")
    parser.add_argument("--results", default="results", metavar="DIR", help="result cache (default results/)")
    parser.add_argument("--figures", default="figures", metavar="DIR", help="figure folder (default figures/)")
    parser.add_argument("--no-figures", action="store_true", help="only fill the cache")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def parse_jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        raise UsageError(f"--jobs {text!r}: must be an integer >= 1") from None
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be an integer >= 1")
    return jobs


def device_name(device: str) -> str:
    """``--device``'s value resolved by :func:`toymodels.train.resolve_device`; absent CUDA
    is a usage error."""
    from toymodels.train import resolve_device

    try:
        return resolve_device(device).type
    except ValueError as exc:  # "device cuda: no CUDA device is available here; use cpu or auto"
        raise UsageError(f"--{exc}") from None


def preflight(experiment, configs: list) -> None:
    """The experiment's own readiness check (e.g. a missing extra), before any work starts."""
    if experiment.preflight:
        for config in configs:
            experiment.preflight(config)


def grid_with_overrides(experiment, profile: str, overrides: list[str]) -> list:
    """The experiment's grid with every ``--set`` applied to every config."""
    from toymodels.config import apply_overrides

    try:
        return [apply_overrides(config, overrides) for config in experiment.configs(profile)]
    except ValueError as exc:
        raise UsageError(f"--set: {exc}") from None


def sweep_and_draw(experiment, configs: list, *, results_dir, figures_dir, profile: str, overrides=(),
                   device: str, jobs: int, engine: str | None = None, scheduler: str | None = None,
                   force: bool = False, display=None):
    """One experiment through the cache, then its summary tables and figures (none when
    ``figures_dir`` is None); progress goes to ``display`` (analysis/display.py; None: none).
    Shared by ``run`` and ``reproduce``. Returns ``(sweep summary, results)``; results is
    None when a config failed (nothing is drawn)."""
    from analysis.cache import ResultCache, load_results
    from analysis.report import draw_figures
    from analysis.sweep import run_sweep

    summary = run_sweep(experiment, configs, ResultCache(results_dir, experiment.name), device=device,
                        jobs=jobs, engine=engine, scheduler=scheduler, force=force, progress=display is not None,
                        display=display)
    elsewhere = f", {summary.elsewhere} by another process" if summary.elsewhere else ""
    print(f"{experiment.name}: {summary.total} configs, {summary.cached} cached, {summary.computed} computed"
          f"{elsewhere}, {len(summary.failures)} failed ({summary.engine}, {summary.seconds:.1f} s) -> "
          f"{Path(results_dir) / experiment.name}/")
    if summary.failures:
        first = summary.failures[0]
        print(f"config {first.key} failed:\n{first.error}", file=sys.stderr)
        return summary, None
    results = load_results(experiment.name, configs, results_dir, profile, list(overrides))
    if experiment.summary:
        experiment.summary(results)
    if figures_dir is not None:
        for path in draw_figures(experiment, results, figures_dir, profile):
            if path.suffix == ".png":
                print(f"figure: {path}")
    return summary, results


def run(args) -> int:
    from analysis import registry
    from analysis.display import Display
    from analysis.sweep_engines import choose_engine

    experiment = registry.get(args.experiment)
    configs = grid_with_overrides(experiment, args.profile, args.overrides)
    jobs = parse_jobs(args.jobs)
    try:
        engine = choose_engine(args.engine, jobs, args.scheduler)
    except ValueError as exc:
        raise UsageError(f"--engine: {exc}") from None
    device = device_name(args.device)
    preflight(experiment, configs)
    with Display(enabled=not args.quiet) as display:
        summary, results = sweep_and_draw(
            experiment, configs, results_dir=args.results, figures_dir=None if args.no_figures else args.figures,
            profile=args.profile, overrides=args.overrides, device=device, jobs=jobs, engine=engine,
            scheduler=args.scheduler, force=args.force, display=display)
    if results is None:
        print(f"{len(summary.failures)} config(s) failed; finished ones are cached. Fix and rerun the same "
              "command to compute the rest; no figures were drawn.", file=sys.stderr)
        return 1
    return 0
