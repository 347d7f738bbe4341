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


def _int_arg(name: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--{name} {text!r}: must be an integer >= {minimum}") from None
    if value < minimum:
        raise UsageError(f"--{name} {value}: must be an integer >= {minimum}")
    return value


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def print_table(checks, out=None) -> None:
    out = out or sys.stdout
    rows = [(c.id, c.statement, _fmt(c.predicted), _fmt(c.measured), _fmt(c.tolerance), c.status) for c in checks]
    head = ("ID", "statement", "predicted", "measured", "tolerance", "status")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(6)]
    widths[1] = min(widths[1], 72)
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line, file=out)
    print("-" * len(line), file=out)
    for r in rows:
        cells = [r[0], r[1] if len(r[1]) <= 72 else r[1][:69] + "...", *r[2:]]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)), file=out)


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


def run(args) -> int:
    import torch

    from theory.claims import ClaimSettings, registry, run_claims

    # The claims use tiny matrices, where BLAS threads cost far more than they save (measured:
    # 41 s with 2 threads vs 4.5 s with 1 on a loaded 2-core machine).
    torch.set_num_threads(1)

    settings = ClaimSettings(instances=_int_arg("instances", args.instances, 10),
                             seed=_int_arg("seed", args.seed, 0))
    valid = list(registry())
    unknown = [c for c in (args.claim or []) if c not in valid]
    if unknown:
        raise UsageError(f"unknown claim ID {', '.join(unknown)}; valid IDs: {', '.join(valid)}")
    start = time.perf_counter()
    checks = run_claims(args.claim, settings)
    elapsed = time.perf_counter() - start
    figures = [] if args.no_figures else write_theory_figures(checks, Path(args.figures), settings)
    failed = [c for c in checks if not c.passed]
    if args.json:
        json.dump({"claims": [c.as_json() for c in checks]}, sys.stdout, indent=1)
        print()
    else:
        print_table(checks)
        print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed "
              f"({len(checks)} checks, {elapsed:.1f} s)")
        for p in figures:
            if p.suffix == ".png":
                print(f"figure: {p}")
    return 1 if failed else 0
