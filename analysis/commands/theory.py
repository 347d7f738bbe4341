"""Check every claim of the paper's theory numerically and with SymPy.

Prints one row per check (ID, statement, predicted, measured, tolerance, PASS/FAIL),
writes the theory figures, and exits 1 if any check fails.

examples:
  lora-limits theory                     # all claims, 1000 random T2 instances
  lora-limits theory --claim P1 T2       # just these
  lora-limits theory --json > out.json   # machine-readable
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from analysis.errors import UsageError
from analysis.tables import print_table

HELP = "verify the theory claims (P1, T2, RANK-1, RANK-2, MERGE-*) and draw their figures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--claim", nargs="+", metavar="ID", help="claim IDs to run (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON {\"claims\": [...]} instead of a table")
    parser.add_argument("--instances", default="1000", metavar="N",
                        help="random instances for statistical claims (integer >= 10; default 1000)")
    parser.add_argument("--seed", default="0", metavar="S", help="seed for every random draw (default 0)")
    parser.add_argument("--figures", default="figures", metavar="DIR",
                        help="where to write figures (default figures/)")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _int_arg(name: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--{name} {text!r}: must be an integer >= {minimum}") from None
    if value < minimum:
        raise UsageError(f"--{name} {value}: must be an integer >= {minimum}")
    return value


def print_checks(checks, out=None) -> None:
    """The theory table: one row per check, long statements truncated."""
    rows = [(c.id, c.statement, c.predicted, c.measured, c.tolerance, c.status) for c in checks]
    print_table(("ID", "statement", "predicted", "measured", "tolerance", "status"), rows, out,
                max_width={1: 72}, rule=True)


def write_theory_figures(checks, out_dir: Path, settings) -> list[Path]:
    from analysis.figures.theory import theory_figures
    from analysis.plotstyle import save_figure

    written = []
    for name, claim_id, fn in theory_figures():
        mine = [c for c in checks if c.id.split(".")[0] == claim_id]
        if mine:
            fig, data = fn(mine)
            config = {"claim": claim_id, "instances": settings.instances, "seed": settings.seed}
            written += save_figure(fig, out_dir, name, data, config)
    return written


def check_theory(ids, settings, figures_dir: Path | None, display=None):
    """Run the claims (all when ``ids`` is empty) and draw their figures unless
    ``figures_dir`` is None; ``display`` (analysis/display.py) shows the claim being checked.
    Returns ``(checks, figure paths, seconds)``."""
    import torch

    from analysis.display import Display
    from theory.claims import registry, run_claims

    # The claims use tiny matrices, where BLAS threads cost far more than they save (measured:
    # 41 s with 2 threads vs 4.5 s with 1 on a loaded 2-core machine).
    torch.set_num_threads(1)
    valid = list(registry())
    unknown = [c for c in (ids or []) if c not in valid]
    if unknown:
        raise UsageError(f"unknown claim ID {', '.join(unknown)}; valid IDs: {', '.join(valid)}")
    display = display or Display(enabled=False)
    ids = ids or valid
    steps = [f"checking {i}" for i in ids] + ([] if figures_dir is None else ["drawing figures"])
    display.start("theory", len(steps))
    display.note(steps[0])
    start, checks = time.perf_counter(), []
    for i, claim_id in enumerate(ids):
        checks += run_claims([claim_id], settings)
        display.advance(note=(steps + [""])[i + 1])
    elapsed = time.perf_counter() - start
    figures = [] if figures_dir is None else write_theory_figures(checks, figures_dir, settings)
    if figures_dir is not None:
        display.advance(note="")
    display.finish()
    return checks, figures, elapsed


def print_summary(checks, figures, elapsed) -> None:
    failed = [c for c in checks if not c.passed]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed ({len(checks)} checks, {elapsed:.1f} s)")
    for p in figures:
        if p.suffix == ".png":
            print(f"figure: {p}")


def run(args) -> int:
    from theory.claims import ClaimSettings

    settings = ClaimSettings(instances=_int_arg("instances", args.instances, 10),
                             seed=_int_arg("seed", args.seed, 0))
    figures_dir = None if args.no_figures else Path(args.figures)
    from analysis.display import Display

    with Display(enabled=not args.quiet) as display:
        checks, figures, elapsed = check_theory(args.claim, settings, figures_dir, display)
    if args.json:
        json.dump({"claims": [c.as_json() for c in checks]}, sys.stdout, indent=1)
        print()
    else:
        print_checks(checks)
        print_summary(checks, figures, elapsed)
    return 1 if any(not c.passed for c in checks) else 0
