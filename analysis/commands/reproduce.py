"""Reproduce everything: the theory checks, every experiment, every figure and the report.

Runs `lora-limits theory`, then `lora-limits run EXPERIMENT` for every experiment of
`lora-limits list` (through the result cache: a second run recomputes nothing), then
writes figures/report.md with a verdict per claim computed from the confidence intervals.
An interrupted reproduction resumes where it stopped.

Each stage starts with a ``== stage k/N: ... ==`` header (stdout). Progress goes to stderr:
a bar per stage with the time left estimated from the cache's recorded timings, and a line
per running config (base training, each LoRA, scoring); ``--quiet`` turns it off.

examples:
  lora-limits reproduce                          # quick profile on the CPU (the main job)
  lora-limits reproduce --jobs 1                 # one config at a time (default: one per core)
  lora-limits reproduce --quiet > reproduce.log  # no progress; the log holds only results
  lora-limits reproduce --profile paper --device cuda
  lora-limits reproduce --only pretrained_two_hop --figures figures/pretrained   # make pretrained
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from analysis.commands import add_profile_and_device

HELP = "run the theory checks, every experiment, every figure and the report (the main job)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_and_device(parser)
    cores = os.cpu_count() or 1
    parser.add_argument("--jobs", default=str(min(cores, 4)), metavar="N",
                        help=f"configs run at once, one BLAS thread each when N >= cores (default {min(cores, 4)}: "
                             "this machine's cores, at most 4)")
    parser.add_argument("--results", default="results", metavar="DIR", help="result cache (default results/)")
    parser.add_argument("--figures", default="figures", metavar="DIR", help="figures and report.md (default figures/)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this experiment (repeatable), whatever profiles reproduce gives it; "
                             "skips the theory checks (`lora-limits theory` runs them)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args) -> int:
    from analysis.display import Display

    if not args.quiet:  # before the imports below, which take seconds on a loaded machine
        print(f"lora-limits reproduce: loading the {args.profile} profile's experiments", file=sys.stderr, flush=True)
    with Display(enabled=not args.quiet) as display:
        return _reproduce(args, display)


def _reproduce(args, display) -> int:
    from analysis import registry
    from analysis.commands.run import device_name, parse_jobs, preflight, sweep_and_draw
    from analysis.commands.theory import check_theory, print_summary
    from analysis.errors import UsageError
    from analysis.report import NOT_MEASURED, claim_verdicts, missing, write_report
    from theory.claims import ClaimSettings

    experiments = registry.experiments()
    if unknown := [n for n in args.only if n not in experiments]:
        raise UsageError(f"--only {unknown[0]}: no such experiment; choose from {', '.join(experiments)}")
    for experiment in experiments.values():
        experiment.configs(args.profile)  # an unknown profile fails here, before any work
    if args.only:
        experiments = {n: e for n, e in experiments.items() if n in args.only}
    else:
        experiments = {n: e for n, e in experiments.items() if args.profile in e.reproduce_profiles}
    for experiment in experiments.values():
        preflight(experiment, experiment.configs(args.profile))
    jobs, device = parse_jobs(args.jobs), device_name(args.device)
    figures_dir = Path(args.figures)

    theory = not args.only
    stages = theory + len(experiments)
    checks = []
    if theory:
        print(f"== stage 1/{stages}: theory ==", flush=True)
        checks, figures, elapsed = check_theory(None, ClaimSettings(), figures_dir, display)
        for c in checks:
            if not c.passed:
                print(f"FAIL {c.id}: {c.statement} (predicted {c.predicted}, measured {c.measured})")
        print_summary(checks, figures, elapsed)
    failed_configs = 0
    for stage, experiment in enumerate(experiments.values(), 1 + theory):
        print(f"\n== stage {stage}/{stages}: {experiment.name}: {experiment.description} ==", flush=True)
        summary, results = sweep_and_draw(
            experiment, experiment.configs(args.profile), results_dir=args.results, figures_dir=figures_dir,
            profile=args.profile, device=device, jobs=jobs, display=display)
        if results is None:
            failed_configs += len(summary.failures)
            continue
        for verdict, _ in claim_verdicts(experiment, results):
            print(f"{verdict.claim.id}: {verdict.outcome} - {verdict.claim.statement} ({verdict.reason})")
        for measure in experiment.claims:
            if (why := missing(measure, results)) is not None:
                print(f"{measure.claim.id}: {NOT_MEASURED} - {measure.claim.statement} ({why})")
    if failed_configs:
        print(f"\n{failed_configs} config(s) failed; no report written. Fix and rerun "
              f"`lora-limits reproduce --profile {args.profile}` to compute the rest.", file=sys.stderr)
        return 1
    report = write_report(figures_dir / "report.md", experiments, args.profile, args.results, figures_dir,
                          [c.as_json() for c in checks])
    print(f"\nreport: {report}")
    return 1 if any(not c.passed for c in checks) else 0
